"""What the feature tasks share (``fidelity``, ``segmentation``): model inputs, recovered
features, cost and timing.

A feature task runs a set of images through the unreduced model and through every reduced
configuration, recovers one feature per patch with :func:`tokenreduce.dense.dense_features`
(merged tokens copied back to their patches, pruned patches given their last feature), and
scores the reduced features against the unreduced ones in its own way. Cost is measured the
same way for both: analytic GFLOPs per image of the reduced forwards, throughput and the
paired speedup against the unreduced model on the first batch (interleaved, median of the
per-pair ratios, see :func:`tokenreduce.bench.metrics.paired_times`), peak tensor memory of
one forward, and the tokens entering attention averaged over the blocks.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ...dense import DenseFeatures, dense_features
from ..configs import BASELINE
from ..measure import (
    NOISY,
    THROUGHPUT,
    THROUGHPUT_HEADER,
    Steps,
    check_ints,
    cost_metrics,
    reduced_model,
    until_steady,
)
from ..metrics import median, paired_times, peak_memory_mb, time_call
from . import Column, Metrics, Plot, Task

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: the cost columns every feature task shows after its quality columns
COST_COLUMNS = (
    Column("gflops", "GFLOPs", ".3g", False),
    Column("flop_ratio", "FLOP ×", ".2f", True),
    Column("throughput_scaled", THROUGHPUT_HEADER, ".2f", True, flag=NOISY),
    Column("speedup", "speedup ×", ".2f", True, flag=NOISY),
    Column("speedup_cpu", "CPU-time speedup ×", ".2f", True),
    Column("speedup_per_flop", "speedup / FLOP ×", ".2f", True, flag=NOISY),
    Column("peak_mem_mb", "peak MiB", ".1f", False),
    Column("mean_tokens", "mean tokens", ".1f", False),
    Column("pruned_share", "pruned %", ".1f", False),
)


def pareto_plots(y: str, y_label: str) -> tuple[Plot, Plot]:
    """A feature task's Pareto plots of metric ``y``: against throughput and against GFLOPs."""
    return (
        Plot("throughput_scaled", y, THROUGHPUT, y_label),
        Plot("gflops", y, "GFLOPs per image", y_label, x_higher_is_better=False),
    )


# -- images to model inputs ------------------------------------------------------------------
@dataclass(frozen=True)
class ImageInput:
    """How images become inputs of one model: input ``size`` (H, W), ``channels``, the
    normalisation ``mean`` / ``std``, and the Hugging Face image ``processor`` when the model
    has one.

    :meth:`of` reads, in order: the model's image processor (``LoadedModel.processor``; the
    size is what it outputs, e.g. 224 x 224 for DINOv2's resize-to-256 and centre crop), a
    timm model's ``pretrained_cfg`` (``input_size``, ``mean``, ``std``), or a Hugging Face
    config's ``image_size`` and ``num_channels`` with ImageNet statistics.
    """

    size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    processor: Any = None

    @classmethod
    def of(cls, loaded: Any) -> ImageInput:
        model, processor = loaded.model, loaded.processor
        if processor is not None:
            probe = processor(images=[np.zeros((64, 64, 3), np.uint8)], return_tensors="pt")
            _, c, h, w = probe["pixel_values"].shape
            return cls(
                (h, w), c, tuple(processor.image_mean), tuple(processor.image_std), processor
            )
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        if "input_size" in cfg:
            c, h, w = cfg["input_size"]
            return cls(
                (h, w), c, tuple(cfg.get("mean", (0.0,) * c)), tuple(cfg.get("std", (1.0,) * c))
            )
        config = getattr(model, "config", None)
        config = getattr(config, "vision_config", None) or config
        size = getattr(config, "image_size", None)
        if size is None:
            raise ValueError(
                f"cannot tell the input size of this {type(model).__name__}: it has no image "
                "processor, no timm pretrained_cfg 'input_size' and no config 'image_size'"
            )
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        c = int(getattr(config, "num_channels", 3))
        if c not in (1, 3):
            raise ValueError(f"models with {c} input channels are not supported (1 or 3)")
        mean = IMAGENET_MEAN if c == 3 else (0.5,)
        std = IMAGENET_STD if c == 3 else (0.5,)
        return cls((int(h), int(w)), c, mean, std)

    def __call__(self, images: list[np.ndarray]) -> torch.Tensor:
        """HxWx3 uint8 images -> model inputs (N, C, H, W): the processor when there is one,
        else a centre crop to a square, a bicubic resize, grey for a 1-channel model."""
        if self.processor is not None:
            return self.processor(images=images, return_tensors="pt")["pixel_values"].float()
        from PIL import Image

        h, w = self.size
        out = []
        for image in images:
            side = min(image.shape[:2])
            top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
            im = Image.fromarray(image[top : top + side, left : left + side])
            im = im.resize((w, h), Image.Resampling.BICUBIC).convert(
                "L" if self.channels == 1 else "RGB"
            )
            out.append(np.asarray(im, dtype=np.float32).reshape(h, w, -1) / 255.0)
        return self.normalize(np.stack(out))

    def normalize(self, images: np.ndarray) -> torch.Tensor:
        """Float images (N, H, W, 3 or 1) in [0, 1] at :attr:`size` -> model inputs."""
        if images.shape[1:3] != self.size:
            raise ValueError(f"images are {images.shape[1:3]}, the model takes {self.size}")
        if self.channels == 1 and images.shape[-1] == 3:
            images = images @ np.array([0.299, 0.587, 0.114], dtype=images.dtype)[:, None]
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous()

    def display(self, x: torch.Tensor) -> np.ndarray:
        """A model input (C, H, W) back to the HxWxC uint8 image it shows."""
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        rgb = (x.float() * std + mean).clamp(0, 1).permute(1, 2, 0)
        return (rgb * 255).round().to(torch.uint8).numpy()


def data_hash(*arrays: np.ndarray | torch.Tensor) -> str:
    """A short SHA-256 of the arrays' bytes (the data part of a task's data id)."""
    h = hashlib.sha256()
    for a in arrays:
        a = a.numpy() if isinstance(a, torch.Tensor) else a
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:12]


# -- the task --------------------------------------------------------------------------------
class FeatureTask(Task):
    """Base of tasks that score a vision transformer's recovered features.

    Args:
        inputs: model inputs (N, C, H, W), scored in batches of ``batch_size``; the first
            batch is also the timed one.
        image_input: how the inputs were made (for drawing them).
        batch_size, repeats, warmup, threads: evaluation and timing batch, timed repeats and
            untimed warm-up calls per side, and the torch threads (recorded).
        picture_indices: inputs drawn as token maps for the report.
    """

    model_kind = "vision"
    method_kinds = ("tokens",)

    def __init__(
        self,
        inputs: torch.Tensor,
        image_input: ImageInput,
        *,
        batch_size: int = 4,
        threads: int = 1,
        repeats: int = 5,
        warmup: int = 1,
        picture_indices: tuple[int, ...] = (),
    ) -> None:
        if inputs.dim() != 4 or not inputs.is_floating_point() or len(inputs) == 0:
            raise ValueError(
                f"inputs must be float (N, C, H, W) with N >= 1, got {tuple(inputs.shape)}"
            )
        check_ints(
            ("batch_size", batch_size, 1),
            ("repeats", repeats, 1),
            ("warmup", warmup, 0),
            ("threads", threads, 1),
        )
        self.inputs, self.image_input = inputs, image_input
        self.batch_size, self.threads = batch_size, threads
        self.repeats, self.warmup = repeats, warmup
        self.picture_indices = tuple(i for i in picture_indices if 0 <= i < len(inputs))
        self._reference: DenseFeatures | None = None
        self._data_id = ""

    @classmethod
    def default_sweep(cls, loaded: Any):
        """Matched budgets (:mod:`tokenreduce.bench.matched`) for the model's patch count."""
        from ..matched import sweep_for

        return sweep_for(n_patches(loaded))

    def _batches(self, n: int) -> range:
        return range(0, n, self.batch_size)

    def steps(self, config: str) -> int:
        # preparation, scored batches, timing, memory
        return self.prepare_steps() + len(self._batches(len(self.inputs))) + 2

    def prepare_steps(self) -> int:
        """Progress steps :meth:`prepare` still has to do (0 once done)."""
        return 0

    def prepare(self, model: nn.Module, step: Callable[[], None]) -> None:
        """Work the task's metrics need once per process, given the unreduced model (a
        probe trained on its features); calls ``step`` :meth:`prepare_steps` times."""

    def check_model(self, model: nn.Module) -> None:
        try:
            out = dense_features(model, self.inputs[:1])
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"task {self.name!r} needs a patched vision transformer with a patch grid that "
                f"takes {tuple(self.inputs.shape[1:])} images; this "
                f"{type(model).__name__} does not fit ({err})"
            ) from None
        if out.patches.shape[1] < 1:
            raise ValueError(f"task {self.name!r}: the model has no patch tokens")

    def features(
        self, model: nn.Module, inputs: torch.Tensor, step: Callable[[], None] | None = None
    ) -> DenseFeatures:
        """Recovered features of ``inputs`` (batched); GFLOPs and tokens averaged per image."""
        parts: list[DenseFeatures] = []
        for start in self._batches(len(inputs)):
            parts.append(dense_features(model, inputs[start : start + self.batch_size]))
            if step is not None:
                step()
        n = len(inputs)
        return DenseFeatures(
            pooled=torch.cat([p.pooled for p in parts]),
            patches=torch.cat([p.patches for p in parts]),
            grid=parts[0].grid,
            pruned=torch.cat([p.pruned for p in parts]),
            gflops=sum(p.gflops * len(p.pooled) for p in parts) / n,
            mean_tokens=sum(p.mean_tokens * len(p.pooled) for p in parts) / n,
        )

    def reference(self, model: nn.Module) -> DenseFeatures:
        """The unreduced model's features of the inputs (computed once per task)."""
        if self._reference is None:
            self._reference = self.features(model, self.inputs)
        return self._reference

    def quality(
        self, model: nn.Module, feats: DenseFeatures, baseline: dict[str, Any] | None
    ) -> dict[str, Any]:
        """The task's own metrics of ``feats`` (the recovered features of the inputs);
        ``baseline`` holds the unreduced model's metrics once measured."""
        raise NotImplementedError

    def run(self, model: nn.Module, config: str, baseline: Metrics | None, step: Steps) -> Metrics:
        self.prepare(model, step)
        if config == BASELINE:
            feats = self._baseline_features(model, step)
            timed, peak = self._cost(model, None, step)
        else:
            with reduced_model(model, config) as (reduced, _):
                feats = self.features(reduced, self.inputs, step)
                timed, peak = self._cost(model, reduced, step)
        base_gflops = self.reference(model).gflops
        batch = len(self.inputs[: self.batch_size])
        values = _feature_costs(feats, base_gflops, *timed, batch, peak, baseline)
        values.update(self.quality(model, feats, baseline))
        values.update(images=len(self.inputs), repeats=self.repeats, warmup=self.warmup)
        return values

    def _baseline_features(self, model: nn.Module, step: Steps) -> DenseFeatures:
        """The unreduced features, computed with progress the first time, then reused."""
        if self._reference is None:
            self._reference = self.features(model, self.inputs, step)
        else:
            step.skip(len(self._batches(len(self.inputs))))
        return self._reference

    def _cost(
        self, model: nn.Module, reduced: nn.Module | None, step: Steps
    ) -> tuple[tuple[Timing, int], float]:
        """``((timing, attempts), peak)``: timing of the first batch (see :meth:`_timing`;
        timed again while noisy, :func:`~tokenreduce.bench.measure.until_steady`), then the
        peak tensor MiB of one forward of it through ``reduced`` (the plain ``model`` for
        the baseline)."""
        x = self.inputs[: self.batch_size]
        times = until_steady(
            lambda: self._timing(model, reduced, x), lambda t: (t.wall_base, t.wall_red)
        )
        step()
        peak = peak_memory_mb(lambda: _forward(model if reduced is None else reduced, x))
        step()
        return times, peak

    def _timing(self, model: nn.Module, reduced: nn.Module | None, x: torch.Tensor) -> Timing:
        """Time the unreduced model (alone when ``reduced`` is None, else interleaved with
        ``reduced``) on ``x``: wall-clock and process CPU seconds of the same calls."""
        cpu_base: list[float] = []
        cpu_red: list[float] = []
        base = _cpu_clocked(lambda: model(x), cpu_base)
        with torch.inference_mode():
            if reduced is None:
                for _ in range(self.warmup):
                    base()
                wall = [time_call(base) for _ in range(self.repeats)]
                cpu = cpu_base[self.warmup :]
                return Timing(wall, wall, cpu, cpu)
            red = _cpu_clocked(lambda: reduced(x), cpu_red)
            wall_base, wall_red = paired_times(base, red, self.repeats, self.warmup)
        return Timing(wall_base, wall_red, cpu_base[self.warmup :], cpu_red[self.warmup :])

    def pictures(self, model: nn.Module, config: str) -> dict[str, bytes]:
        """Token maps of the picture inputs (the plain input for the baseline)."""
        from PIL import Image

        from ... import viz

        out = {}
        for i in self.picture_indices:
            shown = self.image_input.display(self.inputs[i])
            if config == BASELINE:
                img = Image.fromarray(viz.to_rgb_array(shown))
            else:
                img = viz.visualize(model, self.inputs[i], config, image_for_display=shown)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            out[f"image-{i}"] = buf.getvalue()
        return out


def _forward(model: nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        model(x)


class Timing(NamedTuple):
    """Seconds of the timed calls, paired by index: wall clock and process CPU time of the
    unreduced and the reduced model (the same list twice for the baseline)."""

    wall_base: list[float]
    wall_red: list[float]
    cpu_base: list[float]
    cpu_red: list[float]


def _cpu_clocked(fn: Callable[[], object], out: list[float]) -> Callable[[], None]:
    """``fn``, appending the process CPU seconds of every call to ``out``."""

    def call() -> None:
        start = time.process_time()
        fn()
        out.append(time.process_time() - start)

    return call


def _feature_costs(
    feats: DenseFeatures,
    base_gflops: float,
    times: Timing,
    attempts: int,
    batch: int,
    peak: float,
    baseline: dict[str, Any] | None,
) -> dict[str, Any]:
    """The shared cost metrics (:func:`tokenreduce.bench.measure.cost_metrics`, ``attempts``
    timings taken) plus the CPU-time speedup and the share of pruned patches.

    ``speedup_cpu`` is the median of the paired ratios of the process CPU time of the same
    calls, which other processes on a shared machine disturb less (it counts the work of
    every torch thread).
    """
    values = cost_metrics(
        gflops=feats.gflops,
        base_gflops=base_gflops,
        mean_tokens=feats.mean_tokens,
        t_base=times.wall_base,
        t_red=times.wall_red,
        batch=batch,
        peak=peak,
        baseline=baseline,
        attempts=attempts,
    )
    speedup_cpu = median([b / r for b, r in zip(times.cpu_base, times.cpu_red, strict=True)])
    values.update(
        speedup_cpu=speedup_cpu,
        batch_cpu_ms_all=[1000 * t for t in times.cpu_red],
        baseline_batch_cpu_ms_all=[1000 * t for t in times.cpu_base],
        pruned_share=100.0 * float(feats.pruned.float().mean()),
    )
    return values


def n_patches(loaded: Any) -> int:
    """Patch tokens the model sees at its input size (matched budgets are shares of them)."""
    spec = ImageInput.of(loaded)
    x = torch.zeros(1, spec.channels, *spec.size)
    try:
        return int(dense_features(loaded.model, x).patches.shape[1])
    except (TypeError, RuntimeError) as err:
        raise ValueError(
            f"{loaded.name}: cannot read patch features of this {type(loaded.model).__name__} "
            f"at its input size {spec.size} ({err})"
        ) from None
