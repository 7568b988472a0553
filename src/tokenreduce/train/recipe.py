"""``finetune``: a vision classifier trained with a token method in the loop.

The recipe of the demo ViT's own training (:mod:`tokenreduce.train_demo`): AdamW without
weight decay on biases, norms and embeddings, linear warm-up then cosine decay, label
smoothing, gradient clipping at norm 1, optional exponential moving average of the weights.
Batches come from a permutation drawn per epoch from ``seed``, so a run is reproducible
(same seed, same weights, on the same machine and thread count) and resumes exactly from a
checkpoint.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .. import api
from ..data.fashion_mnist import preprocess
from ..methods.base import Method
from ..train_demo import _train_step, _update_ema, lr_at, make_optimizer
from . import checkpoint
from .gradients import check_trainable


class FinetuneError(ValueError):
    """A fine-tuning argument is outside what the recipe accepts."""


def _check_data(data, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, H, W) or (N, C, H, W), int64 labels (N,)), as ``fashion_mnist``
    returns them."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise FinetuneError(f"{what} must be a pair (images, labels), got {type(data).__name__}")
    images, labels = data
    if not (torch.is_tensor(images) and images.dtype == torch.uint8 and images.dim() in (3, 4)):
        got = getattr(images, "dtype", type(images).__name__), tuple(getattr(images, "shape", ()))
        raise FinetuneError(f"{what} images must be a uint8 tensor (N, H, W) or (N, C, H, W), "
                            f"got {got}")  # fmt: skip
    integers = torch.is_tensor(labels) and not labels.is_floating_point()
    if not (integers and labels.shape == images.shape[:1]):
        raise FinetuneError(f"{what} labels must be integers of shape ({len(images)},), got "
                            f"{tuple(getattr(labels, 'shape', ()))}")  # fmt: skip
    return images, labels.long()


def _total_steps(steps: int | None, epochs: float | None, n: int, batch_size: int) -> int:
    if (steps is None) == (epochs is None):
        raise FinetuneError(f"give exactly one of steps or epochs (got steps={steps}, "
                            f"epochs={epochs})")  # fmt: skip
    if steps is not None:
        if not (isinstance(steps, int) and steps >= 1):
            raise FinetuneError(f"steps must be an integer >= 1, got {steps!r}")
        return steps
    if not epochs > 0:
        raise FinetuneError(f"epochs must be a number > 0, got {epochs!r}")
    return max(1, round(epochs * (n // batch_size)))


def _check_settings(n: int, lr: float, batch_size: int, ema: float | None) -> None:
    if not (isinstance(batch_size, int) and 1 <= batch_size <= n):
        raise FinetuneError(f"batch_size must be an integer in [1, {n}] (the training "
                            f"images), got {batch_size!r}")  # fmt: skip
    if not lr > 0:
        raise FinetuneError(f"lr must be a number > 0, got {lr!r}")
    if ema is not None and not 0 < ema < 1:
        raise FinetuneError(f"ema must be None or a decay in (0, 1), got {ema!r}")


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """The training images of ``step``: a slice of the permutation of its epoch, drawn from
    ``seed`` and the epoch number alone (so a resumed run draws the same batches)."""
    per_epoch = n // batch_size
    epoch, b = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)[b * batch_size : (b + 1) * batch_size]


@torch.no_grad()
def evaluate(model: nn.Module, data, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent of ``model`` (patched or not) on ``data`` (images, labels)."""
    images, labels = _check_data(data, "eval_data")
    was_training, correct = model.training, 0
    model.eval()
    for i in range(0, len(images), batch_size):
        logits = model(preprocess(images[i : i + batch_size], model))
        correct += (logits.argmax(-1) == labels[i : i + batch_size]).sum().item()
    model.train(was_training)
    return 100.0 * correct / max(1, len(images))


def finetune(
    model: nn.Module,
    method: Method | str,
    train_data: tuple[torch.Tensor, torch.Tensor],
    *,
    steps: int | None = None,
    epochs: float | None = None,
    lr: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
    threads: int | None = None,
    out: str | Path | None = None,
    eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    ema: float | None = None,
    warmup: float = 0.05,
    weight_decay: float = 0.05,
    label_smoothing: float = 0.1,
    checkpoint_every: int = 50,
    log: Callable[[str], None] | None = print,
) -> nn.Module:
    """Fine-tune ``model`` with ``method`` reducing its tokens in every forward.

    Args:
        model: a vision classifier ``tokenreduce.patch`` supports (the demo ViT, a timm ViT);
            trained in place. Its ``pretrained_cfg`` sets the preprocessing.
        method: a token method or spec (``"tome:r=16"``, ``"evit:keep_ratio=0.7"``).
        train_data, eval_data: (uint8 images (N, H, W) or (N, C, H, W), int labels (N,)),
            e.g. ``tokenreduce.data.fashion_mnist("train")``.
        steps, epochs: the run's length; exactly one (epochs may be fractional).
        lr: peak learning rate (AdamW), reached after ``warmup`` (a fraction of the steps),
            then cosine decay to lr / 100.
        batch_size: images per step; seed: the batch order and every random draw.
        threads: torch intra-op threads (None: leave as set).
        out: folder for checkpoints every ``checkpoint_every`` steps and the final
            ``model.safetensors``; a run found there with the same settings is resumed.
        ema: decay of an exponential moving average of the weights (None: off); the
            average is what is returned and saved as final.
        log: called with each progress line (None: silent).

    Returns:
        ``model``, unpatched, in eval mode, with the fine-tuned weights: run it with the same
        method (``tokenreduce.patch(model, method)``), the reduction it was trained for.

    Raises:
        FinetuneError: bad data, length, learning rate, batch size or ``ema``, or ``out``
            holds a run with other settings.
        InvalidParameter: ``method`` is not a token method or does not fit the model.
    """
    method = check_trainable(method)
    images, labels = _check_data(train_data, "train_data")
    if eval_data is not None:
        _check_data(eval_data, "eval_data")
    _check_settings(len(images), lr, batch_size, ema)
    total = _total_steps(steps, epochs, len(images), batch_size)
    if threads is not None:
        torch.set_num_threads(threads)
    config = {"method": repr(method), "seed": seed, "steps": total, "lr": lr,
              "batch_size": batch_size, "ema": ema, "train_images": len(images)}  # fmt: skip
    run = _Run(model, method, config, Path(out) if out is not None else None, log)
    run.start(weight_decay, label_smoothing, ema)
    with api.patch(model, method):
        run.train(images, labels, warmup, checkpoint_every, eval_data)
    return run.finish(eval_data)


class _Run:
    """One fine-tuning run: its optimiser, weight average, step counter and folder."""

    def __init__(self, model, method, config: dict, out: Path | None, log) -> None:
        self.model, self.method, self.config, self.out = model, method, config, out
        self.log = log or (lambda line: None)
        self.step, self.ema = 0, None

    def start(self, weight_decay: float, label_smoothing: float, ema: float | None) -> None:
        """Seed, build the optimiser (and the average), and resume from ``out`` if it holds
        this run."""
        torch.manual_seed(self.config["seed"])
        self.opt = make_optimizer(self.model, weight_decay)
        self.crit = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.decay = ema
        if ema is not None:
            self.ema = copy.deepcopy(self.model).eval()  # unpatched: patching comes after
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            try:
                self.step = checkpoint.resume(self.out, self.model, self.ema, self.opt, self.config)
            except ValueError as err:
                raise FinetuneError(str(err)) from None
            if self.step:
                self.log(f"resumed from {self.out} at step {self.step}")

    def train(self, images, labels, warmup: float, every: int, eval_data) -> None:
        total, bs, seed = self.config["steps"], self.config["batch_size"], self.config["seed"]
        warmup_steps = min(total - 1, round(warmup * total))
        self.log(f"fine-tuning with {self.method!r}: {total} steps of {bs} images, "
                 f"from step {self.step}")  # fmt: skip
        self.model.train()
        t0, first, loss_sum, correct, seen = time.time(), self.step, 0.0, 0, 0
        while self.step < total:
            idx = batch_indices(self.step, len(images), bs, seed)
            x, y = preprocess(images[idx], self.model), labels[idx]
            lr = lr_at(self.step, total, warmup_steps, self.config["lr"], self.config["lr"] / 100)
            logits, loss = _train_step(self.model, self.opt, self.crit, x, y, lr)
            self.step += 1
            if self.ema is not None:
                _update_ema(self.ema, self.model, self.decay, self.step)
            loss_sum, seen = loss_sum + loss.item() * len(y), seen + len(y)
            correct += (logits.argmax(-1) == y).sum().item()
            if self.step % 10 == 0 or self.step == total:
                rate = (self.step - first) / (time.time() - t0)
                self.log(f"step {self.step}/{total} lr {lr:.2e} loss {loss_sum / seen:.4f} "
                         f"train-acc {100 * correct / seen:.2f}% ({rate:.2f} steps/s, "
                         f"{(total - self.step) / rate / 60:.1f} min left)")  # fmt: skip
                loss_sum, correct, seen = 0.0, 0, 0
            if self.step % every == 0 or self.step == total:
                self._checkpoint(eval_data if self.step % every == 0 else None)

    def _checkpoint(self, eval_data) -> None:
        if eval_data is not None:
            self.log(f"step {self.step}: eval top-1 {evaluate(self.model, eval_data):.2f}%")
        if self.out is not None:
            checkpoint.save(self.out, self.step, self.model, self.ema, self.opt, self.config)

    def finish(self, eval_data) -> nn.Module:
        """The final weights (the average where kept) in ``model``, saved and scored."""
        model = self.model
        if self.ema is not None:
            model.load_state_dict(self.ema.state_dict())
        model.eval()
        meta = {"method": self.config["method"], "step": self.step, "finetune": self.config}
        if eval_data is not None:
            with api.patch(model, self.method):
                meta["eval_top1"] = round(evaluate(model, eval_data), 2)
            self.log(f"final eval top-1 with {self.method!r}: {meta['eval_top1']:.2f}%")
        if self.out is not None:
            checkpoint.save_weights(model, self.out / checkpoint.FINAL, meta)
            self.log(f"saved {self.out / checkpoint.FINAL}")
        return model
