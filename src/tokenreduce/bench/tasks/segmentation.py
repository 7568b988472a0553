"""Dense prediction under token reduction: per-patch segmentation from a frozen vision
transformer's recovered patch features.

Data: synthetic shapes with exact masks (:mod:`tokenreduce.data.shapes`: circles, squares
and triangles of random size, rotation and colour on a noisy gradient), rendered from a seed
at the model's input size: training images from ``seed``, test images from ``seed + 1``.

Head: a linear layer on the unreduced model's patch features of the training images, each
patch labelled with the majority class of its pixels, trained by full-batch Adam for a few
hundred steps (seconds); the inputs' standardisation is folded into the layer. The same head
then reads every configuration's recovered patch features of the test images (merged tokens
copied back to their patches, pruned patches given their last feature, see
:mod:`tokenreduce.dense`). Each patch's class is painted on its pixels; mIoU is over the four
classes and every test pixel. Every row also stores the patch-grid ceiling, the mIoU of the
true per-patch majority labels painted the same way (the best any per-patch predictor does).

Cost columns as in :mod:`.features`. Default budgets are matched
(:mod:`tokenreduce.bench.matched`): pruning, merging and hybrids remove 25 / 50 / 75 % of the
patch tokens at the same blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ...data.shapes import CLASSES, miou, patch_labels, shapes
from ...dense import DenseFeatures
from ..configs import BASELINE
from ..measure import speedup_text
from . import Column, Options, check_ints, register
from .features import COST_COLUMNS, FeatureTask, ImageInput, data_hash, pareto_plots

TRAIN, TEST, QUICK_TRAIN, QUICK_TEST, QUICK_REPEATS = 48, 24, 16, 8, 3
HEAD_STEPS = 300


@register
class Segmentation(FeatureTask):
    """mIoU of a linear per-patch segmentation head on recovered patch features, against
    GFLOPs and throughput.

    Args:
        train_images, test_images: float images (N, H, W, 3) in [0, 1] at the model's input size.
        train_masks, test_masks: their exact class masks (N, H, W).
        image_input: the model's input normalisation (and size).
        seed: the seed the data was rendered from (recorded in the data id).
        head_steps: Adam steps of the linear head.
        batch_size, repeats, warmup, threads, picture_indices: see :class:`FeatureTask`.
    """

    name = "segmentation"
    description = (
        "per-patch segmentation mIoU of a linear head on recovered patch features (synthetic "
        "shapes with exact masks), against GFLOPs and throughput (any vision transformer)"
    )
    columns = (
        Column("miou", "mIoU", ".4f", True),
        Column("miou_delta", "Δ mIoU", "+.4f", True),
        Column("patch_acc", "patch acc %", ".2f", True),
        *COST_COLUMNS,
    )
    plots = pareto_plots("miou", "mIoU (synthetic shapes)")

    def __init__(
        self,
        train_images: np.ndarray,
        train_masks: np.ndarray,
        test_images: np.ndarray,
        test_masks: np.ndarray,
        image_input: ImageInput,
        *,
        seed: int = 0,
        head_steps: int = HEAD_STEPS,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_input.normalize(test_images), image_input, **kwargs)
        check_ints(("head_steps", head_steps, 1))
        for what, im, m in (
            ("train", train_images, train_masks),
            ("test", test_images, test_masks),
        ):
            if m.shape != im.shape[:3]:
                raise ValueError(f"{what} masks {m.shape} do not match images {im.shape[:3]}")
        self.train_inputs = image_input.normalize(train_images)
        self.train_masks, self.test_masks = train_masks, test_masks
        self.seed, self.head_steps = seed, head_steps
        self.head: nn.Linear | None = None
        h, w = image_input.size
        self._data_id = (
            f"shapes:seed={seed}[train {len(train_images)}, test {len(test_images)}, {h}x{w}]"
            f"#{data_hash(train_images, train_masks, test_images, test_masks)}"
        )

    @classmethod
    def from_options(cls, loaded: Any, options: Options) -> Segmentation:
        """48 training and 24 test images (``limit``: N test images) from seed 0 at the
        model's input size, a 300-step head, batches of 4 (also the timed batch), 5 timed
        repeats after 1 warm-up; ``quick``: 16 and 8 images, 3 repeats."""
        if loaded.kind != "vision":
            raise ValueError(
                f"task 'segmentation' needs a vision transformer with a patch grid; "
                f"{loaded.name} is a {loaded.kind!r} model"
            )
        if options.data is not None:
            raise ValueError("task 'segmentation' reads no --data: its images are rendered")
        q = options.quick
        image_input = ImageInput.of(loaded)
        train = shapes(QUICK_TRAIN if q else TRAIN, 0, image_input.size)
        test = shapes(options.limit or (QUICK_TEST if q else TEST), 1, image_input.size)
        task = cls(
            *train,
            *test,
            image_input,
            seed=0,
            batch_size=options.batch_size or 4,
            threads=options.threads,
            repeats=options.repeats or (QUICK_REPEATS if q else 5),
            warmup=options.warmup if options.warmup is not None else 1,
            picture_indices=(0, 1, 2),
        )
        task.check_model(loaded.model)
        return task

    @property
    def setting(self) -> dict[str, Any]:
        return {**super().setting, "head_steps": self.head_steps}

    def check_model(self, model: nn.Module) -> None:
        super().check_model(model)
        feats = self.features(model, self.inputs[:1])
        self._patch_size(feats)  # the input size must split into whole patches

    def _patch_size(self, feats: DenseFeatures) -> tuple[int, int]:
        (h, w), (rows, cols) = self.image_input.size, feats.grid
        if h % rows or w % cols:
            raise ValueError(f"a {h}x{w} image does not split into a {rows}x{cols} patch grid")
        return h // rows, w // cols

    def prepare_steps(self) -> int:
        return 0 if self.head is not None else len(self._batches(len(self.train_inputs))) + 1

    def prepare(self, model: nn.Module, step: Callable[[], None]) -> None:
        """Train the linear head on the unreduced model's training features (once)."""
        if self.head is not None:
            return
        feats = self.features(model, self.train_inputs, step)
        labels = patch_labels(self.train_masks, self._patch_size(feats))
        self.head = train_linear_head(
            feats.patches, torch.from_numpy(labels), len(CLASSES), self.head_steps
        )
        step()

    def quality(
        self, model: nn.Module, feats: DenseFeatures, baseline: dict[str, Any] | None
    ) -> dict[str, Any]:
        patch = self._patch_size(feats)
        with torch.inference_mode():
            pred = self.head(feats.patches).argmax(-1).numpy()
        truth = patch_labels(self.test_masks, patch)
        score = miou(pred, self.test_masks, patch)
        return {
            "miou": score,
            "miou_delta": score - (score if baseline is None else baseline["miou"]),
            "patch_acc": 100.0 * float((pred == truth).mean()),
            "ceiling_miou": miou(truth, self.test_masks, patch),
        }

    @classmethod
    def summary(cls, rows: list[tuple[str, dict[str, Any]]], max_drop: float = 0.02) -> list[str]:
        """The patch-grid ceiling, the best reduced configuration, and the fastest one within
        ``max_drop`` mIoU of the unreduced model."""
        from ..configs import label

        lines = []
        base = dict(rows).get(BASELINE)
        if base is not None:
            lines.append(
                f"unreduced mIoU {base['miou']:.4f}; patch-grid ceiling {base['ceiling_miou']:.4f} "
                "(true per-patch majority labels)"
            )
        reduced = [(c, m) for c, m in rows if c != BASELINE and "miou" in m]
        if reduced:
            c, m = max(reduced, key=lambda cm: cm[1]["miou"])
            lines.append(
                f"best reduced: {label(c)}: mIoU {m['miou']:.4f} ({m['miou_delta']:+.4f}), "
                f"{m['flop_ratio']:.2f}x fewer FLOPs, {speedup_text(m)} throughput"
            )
            ok = [(c, m) for c, m in reduced if m["miou_delta"] >= -max_drop]
            if ok:
                c, m = max(ok, key=lambda cm: cm[1]["speedup"])
                lines.append(
                    f"fastest within {max_drop} mIoU of the unreduced model: {label(c)}: "
                    f"{speedup_text(m)} throughput, mIoU {m['miou']:.4f}, "
                    f"{m['flop_ratio']:.2f}x fewer FLOPs"
                )
        return lines


def train_linear_head(
    feats: torch.Tensor, labels: torch.Tensor, classes: int, steps: int = HEAD_STEPS
) -> nn.Linear:
    """A linear classifier of features (..., C) into ``classes`` labels (...): softmax
    regression on standardised features from zero weights (a convex problem: no seed), by
    full-batch Adam (lr 1e-2, L2 weight decay 1e-4). The standardisation is folded into the
    returned layer. Adam is written out here: ``torch.optim`` would import the compiler stack,
    seconds of start-up for a few hundred steps that take less."""
    f = feats.reshape(-1, feats.shape[-1]).float().clone()  # a normal tensor for autograd
    y = labels.reshape(-1).long()
    mu, sd = f.mean(0), f.std(0) + 1e-6
    z = (f - mu) / sd
    weight = torch.zeros(classes, f.shape[1], requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    params = (weight, bias)
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    lr, beta1, beta2, eps, decay = 1e-2, 0.9, 0.999, 1e-8, 1e-4
    with torch.enable_grad():
        for t in range(1, steps + 1):
            loss = nn.functional.cross_entropy(z @ weight.T + bias, y)
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g, a, b in zip(params, grads, m1, m2, strict=True):
                    g = g + decay * p
                    a.mul_(beta1).add_(g, alpha=1 - beta1)
                    b.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    step = lr * (a / (1 - beta1**t)) / ((b / (1 - beta2**t)).sqrt() + eps)
                    p.sub_(step)
    head = nn.Linear(f.shape[1], classes)
    with torch.no_grad():
        head.weight.copy_(weight / sd)
        head.bias.copy_(bias - head.weight @ mu)
    return head.eval().requires_grad_(False)
