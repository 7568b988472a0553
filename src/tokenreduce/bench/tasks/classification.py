"""Image classification: top-1, analytic GFLOPs, throughput, speedup and peak memory.

For every configuration the whole evaluation set is classified in batches (top-1 in
percent, GFLOPs per image averaged over the set from the patched model's own trace), then
the first batch is timed against the unreduced model, interleaved, in the same process
(throughput in images per second from the median batch time; speedup as the median
over repeats of the ratio of the two back-to-back batch times, timed again while those
ratios are too noisy to trust and flagged if they stay so), and one
forward of that batch is watched for peak tensor memory (see
:class:`tokenreduce.bench.metrics.PeakTensorMemory`).
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import torch
from torch import nn

from ..configs import BASELINE
from ..measure import (
    NOISY,
    THROUGHPUT,
    THROUGHPUT_HEADER,
    Steps,
    check_ints,
    cost_metrics,
    reduced_model,
    speedup_text,
    until_steady,
)
from ..metrics import paired_times, peak_memory_mb, time_call
from . import Column, Metrics, Options, Plot, Task, register

QUICK_LIMIT, QUICK_BATCH, QUICK_REPEATS, QUICK_WARMUP = 128, 32, 3, 1


@register
class ImageClassification(Task):
    """Top-1 accuracy and cost of an image classifier on a labelled set of uint8 images.

    Args:
        images: uint8 images (N, H, W) or (N, C, H, W), turned into model inputs by
            ``tokenreduce.data.preprocess`` (the model's ``pretrained_cfg``).
        labels: int64 labels (N,).
        data_name: what the images are (``fashion-mnist:test``); the data id adds the count
            and a content hash.
        num_classes: number of classes the model must predict.
        batch_size, repeats, warmup: evaluation batch size (also the timed batch) and the
            timed repeats and untimed warm-up calls per side.
        threads: the torch thread count the numbers were measured with (recorded).
        picture_indices: images drawn as token maps for the report.
    """

    name = "classification"
    description = "Fashion-MNIST test top-1 against GFLOPs and throughput (image classifiers)"
    model_kind = "classifier"
    columns = (
        Column("top1", "top-1 %", ".2f", True),
        Column("top1_delta", "Δ top-1", "+.2f", True),
        Column("gflops", "GFLOPs", ".3g", False),
        Column("flop_ratio", "FLOP ×", ".2f", True),
        Column("throughput_scaled", THROUGHPUT_HEADER, ".0f", True, flag=NOISY),
        Column("speedup", "speedup ×", ".2f", True, flag=NOISY),
        Column("speedup_per_flop", "speedup / FLOP ×", ".2f", True, flag=NOISY),
        Column("peak_mem_mb", "peak MiB", ".1f", False),
        Column("mean_tokens", "mean tokens", ".1f", False),
    )
    plots = (
        Plot("throughput_scaled", "top1", THROUGHPUT, "top-1 (%)"),
        Plot("gflops", "top1", "GFLOPs per image", "top-1 (%)", x_higher_is_better=False),
    )

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        data_name: str,
        *,
        num_classes: int,
        batch_size: int = 64,
        threads: int = 1,
        repeats: int = 10,
        warmup: int = 2,
        picture_indices: tuple[int, ...] = (),
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() not in (3, 4):
            raise ValueError(
                f"images must be uint8 (N, H, W) or (N, C, H, W), got "
                f"{images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        if len(images) == 0:
            raise ValueError("no images to evaluate")
        check_ints(
            ("batch_size", batch_size, 1),
            ("repeats", repeats, 1),
            ("warmup", warmup, 0),
            ("threads", threads, 1),
        )
        self.images, self.labels = images, labels.long()
        self.data_name, self.num_classes = data_name, num_classes
        self.batch_size, self.threads = batch_size, threads
        self.repeats, self.warmup = repeats, warmup
        self.picture_indices = tuple(i for i in picture_indices if 0 <= i < len(images))
        digest = hashlib.sha256(images.contiguous().numpy().tobytes())
        digest.update(labels.contiguous().numpy().tobytes())
        self._data_id = f"{data_name}[{len(images)}]#{digest.hexdigest()[:12]}"

    @classmethod
    def from_options(cls, loaded, options: Options) -> ImageClassification:
        """The Fashion-MNIST test set (``options.data``, else ``$TOKENREDUCE_DATA``, else the
        Debian location), all 10k images in batches of 64, 10 timed repeats after 2 warm-ups;
        ``quick``: 128 images in batches of 32, 3 repeats after 1 warm-up."""
        from ...data import LABELS, fashion_mnist

        q = options.quick
        images, labels = fashion_mnist("test", path=options.data)
        limit = options.limit or (QUICK_LIMIT if q else None)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        task = cls(
            images,
            labels,
            "fashion-mnist:test",
            num_classes=len(LABELS),
            batch_size=options.batch_size or (QUICK_BATCH if q else 64),
            threads=options.threads,
            repeats=options.repeats or (QUICK_REPEATS if q else 10),
            warmup=options.warmup if options.warmup is not None else (QUICK_WARMUP if q else 2),
            picture_indices=first_of_each_class(labels),
        )
        task.check_model(loaded.model)
        return task

    def _batches(self) -> range:
        return range(0, len(self.images), self.batch_size)

    def steps(self, config: str) -> int:
        return len(self._batches()) + 2  # evaluation batches, timing, memory

    def _inputs(self, model: nn.Module, start: int, stop: int) -> torch.Tensor:
        from ...data import preprocess

        return preprocess(self.images[start:stop], model)

    def check_model(self, model: nn.Module) -> None:
        try:
            with torch.inference_mode():
                out = model(self._inputs(model, 0, 1))
        except Exception as err:  # any failure here means the model does not fit the data
            raise ValueError(
                f"the model cannot classify {self.data_name} images "
                f"({type(err).__name__}: {err}); check its pretrained_cfg input_size"
            ) from None
        if out.dim() != 2 or out.shape[-1] != self.num_classes:
            raise ValueError(
                f"the model outputs {tuple(out.shape[1:])} logits per image but "
                f"{self.data_name} has {self.num_classes} classes; use a model trained on it"
            )

    def run(self, model: nn.Module, config: str, baseline: Metrics | None, step: Steps) -> Metrics:
        with reduced_model(model, config) as (reduced, handle):
            correct, gflops, tokens = self._evaluate(model, reduced, handle, step)
            x = self._inputs(model, 0, min(self.batch_size, len(self.images)))
            (t_base, t_red), attempts = until_steady(
                lambda: self._time(model, reduced, x, config == BASELINE), lambda t: t
            )
            step()
            # the baseline's memory is watched on the plain model, without the adapter
            with torch.inference_mode():
                peak = peak_memory_mb(lambda: (model if config == BASELINE else reduced)(x))
            step()
        n = len(self.images)
        top1 = 100.0 * correct / n
        return {
            "top1": top1,
            "top1_delta": top1 - (top1 if baseline is None else baseline["top1"]),
            "correct": correct,
            "images": n,
            **cost_metrics(
                gflops=gflops,
                base_gflops=handle.baseline_gflops(),
                mean_tokens=tokens,
                t_base=t_base,
                t_red=t_red,
                batch=len(x),
                peak=peak,
                baseline=baseline,
                attempts=attempts,
            ),
            "repeats": self.repeats,
            "warmup": self.warmup,
        }

    def _evaluate(
        self, model: nn.Module, reduced: nn.Module, handle: Any, step: Steps
    ) -> tuple[int, float, float]:
        """Correct answers over the set, and GFLOPs and mean tokens per block per image (from
        the handle's trace of each batch)."""
        correct, gflops_sum, tokens_sum = 0, 0.0, 0.0
        with torch.inference_mode():
            for start in self._batches():
                stop = min(start + self.batch_size, len(self.images))
                logits = reduced(self._inputs(model, start, stop))
                correct += int((logits.argmax(-1) == self.labels[start:stop]).sum())
                tokens = handle.trace.attn_tokens
                gflops_sum += handle.gflops() * (stop - start)
                tokens_sum += sum(tokens) / len(tokens) * (stop - start)
                step()
        n = len(self.images)
        return correct, gflops_sum / n, tokens_sum / n

    def _time(
        self, model: nn.Module, reduced: nn.Module, x: torch.Tensor, is_baseline: bool
    ) -> tuple[list[float], list[float]]:
        """Seconds of the timed batches of the plain and the reduced model, paired by index
        (the plain model's twice for the baseline)."""
        with torch.inference_mode():
            if is_baseline:
                for _ in range(self.warmup):
                    model(x)
                t_base = [time_call(lambda: model(x)) for _ in range(self.repeats)]
                return t_base, t_base
            return paired_times(lambda: model(x), lambda: reduced(x), self.repeats, self.warmup)

    @classmethod
    def summary(cls, rows: list[tuple[str, dict[str, Any]]], max_drop: float = 0.5) -> list[str]:
        """The fastest configuration within ``max_drop`` top-1 points of the baseline."""
        from ..configs import label

        ok = [(c, m) for c, m in rows if c != BASELINE and m.get("top1_delta", -1e9) >= -max_drop]
        if not ok:
            return [f"no configuration stays within {max_drop} top-1 points of the baseline"]
        config, m = max(ok, key=lambda cm: cm[1]["speedup"])
        return [
            f"fastest within {max_drop} top-1 points of the baseline: {label(config)}: "
            f"{speedup_text(m)} throughput, top-1 {m['top1']:.2f}% ({m['top1_delta']:+.2f}), "
            f"{m['flop_ratio']:.2f}x fewer FLOPs, speedup / FLOP ratio "
            f"{m['speedup_per_flop']:.2f}"
        ]

    def pictures(self, model: nn.Module, config: str) -> dict[str, bytes]:
        """Token maps of the picture images (the plain input for the baseline)."""
        from ... import viz

        out = {}
        for i in self.picture_indices:
            x = self._inputs(model, i, i + 1)[0]
            if config == BASELINE:
                from PIL import Image

                img = Image.fromarray(viz.to_rgb_array(x))
            else:
                img = viz.visualize(model, x, config)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            out[f"image-{i}"] = buf.getvalue()
        return out


def first_of_each_class(labels: torch.Tensor, count: int = 4) -> tuple[int, ...]:
    """The indices of the first image of each of ``count`` different classes."""
    seen: dict[int, int] = {}
    for i, y in enumerate(labels.tolist()):
        if y not in seen:
            seen[y] = i
        if len(seen) == count:
            break
    return tuple(sorted(seen.values()))
