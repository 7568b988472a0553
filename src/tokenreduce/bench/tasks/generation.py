"""Image generation: what a reduction of the denoiser does to sampled images and to sampling
time (the class-conditional diffusion asset ``dit-fmnist``).

Every configuration samples the same images: sample ``i`` has class ``i % 10`` and its initial
noise from seed ``i``, and the sampler adds no noise after that (DPM-Solver++), so the
unreduced model's samples are a reference each reduced sample can be compared with. Per
configuration:

* fidelity to the unreduced sampler from the same seeds: PSNR (dB) and SSIM (scikit-image)
  per sample, averaged; a sample identical to the unreduced one counts as :data:`PSNR_CAP`;
* FD: the Frechet distance between the samples and real Fashion-MNIST test images in the
  demo ViT's feature space (its pooled 64-dimensional embedding), and its change against the
  baseline in percent. With a hundred samples it is a biased estimate: compare rows, not
  papers;
* class consistency: the share of samples the demo ViT assigns to their conditioning class;
* cost: analytic GFLOPs per sample of the denoiser's transformer sub-layers over all sampling
  steps, time per sample as the paired ratio against the unreduced sampler on one timed batch
  (:func:`~tokenreduce.bench.measure.cost_metrics`: ``throughput`` is samples per second),
  and peak tensor memory of one sampling step.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import torch
from torch import nn

from ...assets import dit_fmnist
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

#: PSNR (dB) given to a sample identical to the unreduced one (its PSNR is infinite)
PSNR_CAP = 100.0
#: the issue's goal: this speedup or more at no more than this FD increase (percent)
TARGET_SPEEDUP, TARGET_FD_INCREASE = 1.5, 5.0
SAMPLES, STEPS, REAL, BATCH, TIMED_BATCH, REPEATS, WARMUP = 100, 20, 2000, 50, 10, 5, 1
QUICK_SAMPLES, QUICK_STEPS, QUICK_REAL, QUICK_TIMED, QUICK_REPEATS = 20, 8, 500, 4, 3
#: samples drawn in the report's pictures (one of each class)
PICTURE_SAMPLES = 10


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to features ``a`` (N, D) and ``b`` (M, D):
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``. The matrix roots come
    from symmetric eigendecompositions (no complex parts); eigenvalues below zero from
    rounding count as zero. Raises ValueError for fewer than two rows or other widths."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(
            f"features must be (N, D) and (M, D) with N, M >= 2, got {a.shape} and {b.shape}"
        )
    a, b = a.astype(np.float64), b.astype(np.float64)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    mean_term = float(((a.mean(0) - b.mean(0)) ** 2).sum())
    trace_term = np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.clip(cross, 0, None)).sum()
    return mean_term + float(trace_term)


def fidelity(images: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR (dB, capped at :data:`PSNR_CAP`) and mean SSIM of uint8 images (N, H, W)
    against ``reference`` (N, H, W), sample by sample."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr, ssim = [], []
    for x, ref in zip(images.numpy(), reference.numpy(), strict=True):
        same = np.array_equal(x, ref)
        psnr.append(PSNR_CAP if same else min(PSNR_CAP, peak_signal_noise_ratio(ref, x)))
        ssim.append(1.0 if same else structural_similarity(ref, x, data_range=255))
    return float(np.mean(psnr)), float(np.mean(ssim))


def side_by_side(unreduced: torch.Tensor, reduced: torch.Tensor, scale: int = 3) -> bytes:
    """PNG of two rows of uint8 images (N, H, W): the unreduced samples above the reduced
    ones (one row only when ``reduced`` is None), enlarged ``scale`` times."""
    from PIL import Image

    rows = [unreduced] if reduced is None else [unreduced, reduced]
    grid = dit_fmnist.sample_grid(torch.cat(rows).numpy(), len(unreduced))
    picture = Image.fromarray(grid)
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


@register
class Generation(Task):
    """Fidelity, Frechet distance, class consistency and cost of sampling from a
    class-conditional pixel-space diffusion model with a reduced denoiser.

    Args:
        scheduler: the sampling scheduler (``dit_fmnist.sampling_scheduler()``).
        real_images: uint8 real images (M, 28, 28), the Frechet distance's reference.
        data_name: what the real images are (``fashion-mnist:test``); the data id adds
            the counts and a content hash.
        samples: images sampled per configuration (sample i: class i % 10, seed i).
        steps, guidance: sampling steps and classifier-free guidance scale.
        batch_size: samples generated together; timed_batch: samples of the timed call.
        repeats, warmup: timed and untimed calls per side; threads: torch threads (recorded).
    """

    name = "generation"
    description = (
        "fidelity to the unreduced sampler (PSNR, SSIM), Frechet distance in the demo ViT's "
        "features, class consistency and time per sample (class-conditional diffusion models)"
    )
    model_kind = "diffusion"
    method_kinds = ("local",)
    columns = (
        Column("psnr", "PSNR dB", ".2f", True),
        Column("ssim", "SSIM", ".4f", True),
        Column("fd", "FD", ".2f", False),
        Column("fd_increase", "Δ FD %", "+.1f", False),
        Column("consistency", "class %", ".1f", True),
        Column("gflops", "GFLOPs/sample", ".3g", False),
        Column("flop_ratio", "FLOP ×", ".2f", True),
        Column("throughput_scaled", THROUGHPUT_HEADER, ".2f", True, flag=NOISY),
        Column("speedup", "speedup ×", ".2f", True, flag=NOISY),
        Column("peak_mem_mb", "peak MiB", ".1f", False),
        Column("mean_tokens", "mean tokens", ".1f", False),
    )
    plots = (
        Plot("throughput_scaled", "ssim", THROUGHPUT, "SSIM to the unreduced sampler"),
        Plot("throughput_scaled", "consistency", THROUGHPUT, "class consistency (%)"),
    )

    def __init__(
        self,
        scheduler: Any,
        real_images: torch.Tensor,
        data_name: str,
        *,
        samples: int = SAMPLES,
        steps: int = STEPS,
        guidance: float = dit_fmnist.DEFAULT_GUIDANCE,
        batch_size: int = BATCH,
        timed_batch: int = TIMED_BATCH,
        repeats: int = REPEATS,
        warmup: int = WARMUP,
        threads: int = 1,
    ) -> None:
        check_ints(
            ("samples", samples, 2),
            ("steps", steps, 1),
            ("batch_size", batch_size, 1),
            ("timed_batch", timed_batch, 1),
            ("repeats", repeats, 1),
            ("warmup", warmup, 0),
            ("threads", threads, 1),
        )
        if real_images.dtype != torch.uint8 or real_images.dim() != 3 or len(real_images) < 2:
            raise ValueError(
                f"real_images must be at least 2 uint8 images (M, H, W), got "
                f"{real_images.dtype} {tuple(real_images.shape)}"
            )
        if not guidance >= 0:
            raise ValueError(f"guidance must be >= 0 (1: no guidance), got {guidance!r}")
        self.scheduler, self.real_images, self.data_name = scheduler, real_images, data_name
        self.labels = torch.arange(samples) % dit_fmnist.NUM_CLASSES
        self.sampling_steps, self.guidance = steps, float(guidance)
        self.batch_size, self.timed_batch = batch_size, min(timed_batch, samples)
        self.repeats, self.warmup, self.threads = repeats, warmup, threads
        digest = hashlib.sha256(real_images.contiguous().numpy().tobytes()).hexdigest()[:12]
        self._data_id = f"{data_name}[{len(real_images)}]#{digest}+samples[{samples}]"
        self._reference: torch.Tensor | None = None  # the unreduced samples
        self._real_features: np.ndarray | None = None
        self._last: tuple[str, torch.Tensor] | None = None  # (config, samples) for pictures
        self._classifier: nn.Module | None = None

    @classmethod
    def from_options(cls, loaded, options: Options) -> Generation:
        """The asset's sampler; ``limit`` samples (default 100, one class after another, seed
        i for sample i), 20 DPM-Solver++ steps at guidance 3, sampled in batches of 50
        (``batch_size``); the first 2000 Fashion-MNIST test images (``options.data``, else
        ``$TOKENREDUCE_DATA``, else the Debian location) as the FD reference; a timed batch of
        10 samples, 5 repeats after 1 warm-up. ``quick``: 20 samples, 8 steps, 500 real
        images, a timed batch of 4, 3 repeats."""
        from ...data import fashion_mnist

        scheduler = getattr(loaded.processor, "scheduler", None)
        if scheduler is None:
            raise ValueError(
                f"task 'generation' needs a sampler with a scheduler; --model {loaded.name!r} "
                "has none (use the asset dit-fmnist)"
            )
        q = options.quick
        real = fashion_mnist("test", path=options.data)[0][: QUICK_REAL if q else REAL]
        task = cls(
            scheduler,
            real,
            "fashion-mnist:test",
            samples=options.limit or (QUICK_SAMPLES if q else SAMPLES),
            steps=QUICK_STEPS if q else STEPS,
            batch_size=options.batch_size or BATCH,
            timed_batch=QUICK_TIMED if q else TIMED_BATCH,
            repeats=options.repeats or (QUICK_REPEATS if q else REPEATS),
            warmup=options.warmup if options.warmup is not None else WARMUP,
            threads=options.threads,
        )
        task.check_model(loaded.model)
        return task

    @property
    def setting(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "threads": self.threads,
            "steps": self.sampling_steps,
            "guidance": self.guidance,
            "timed_batch": self.timed_batch,
        }

    def steps(self, config: str) -> int:
        return len(self._batches()) + 2  # sampling batches, timing, memory

    def _batches(self) -> range:
        return range(0, len(self.labels), self.batch_size)

    def check_model(self, model: nn.Module) -> None:
        size = dit_fmnist.IMAGE_SIZE
        try:
            with torch.inference_mode():
                x = torch.zeros(1, 1, size, size, device=_device(model))
                out = model(x, timestep=torch.tensor([0]), class_labels=torch.tensor([0])).sample
        except Exception as err:  # any failure here means the model does not fit the task
            raise ValueError(
                f"the model cannot denoise 1-channel {size}x{size} images conditioned on a "
                f"class ({type(err).__name__}: {err}); use the asset dit-fmnist"
            ) from None
        if out.shape != x.shape:
            raise ValueError(
                f"the model predicts {tuple(out.shape[1:])} per image, not the noise of its "
                f"input {tuple(x.shape[1:])}; a learned-variance model is not supported"
            )

    # -- sampling ------------------------------------------------------------------------
    def _generate(self, model: nn.Module, start: int, stop: int, steps: int | None = None):
        """uint8 samples ``start:stop`` (their classes and seeds), by ``model``."""
        generators = [torch.Generator().manual_seed(i) for i in range(start, stop)]
        return dit_fmnist.generate(
            model,
            self.scheduler,
            self.labels[start:stop],
            steps or self.sampling_steps,
            self.guidance,
            generators,
        )

    def _sample_all(
        self, model: nn.Module, handle: Any, step: Steps
    ) -> tuple[torch.Tensor, float, float]:
        """Every sample, the GFLOPs per sample over all of its denoiser calls (both halves of
        a guided batch count) and the mean tokens self-attention ran on, from the handle's
        trace after each call."""
        calls: list[tuple[float, float]] = []

        def record(*_: Any) -> None:
            tokens = handle.trace.attn_tokens
            calls.append((handle.gflops(), sum(tokens) / max(1, len(tokens))))

        hook = model.register_forward_hook(record)
        images, gflops, tokens = [], 0.0, []
        try:
            for start in self._batches():
                stop = min(start + self.batch_size, len(self.labels))
                calls.clear()
                images.append(self._generate(model, start, stop))
                gflops += sum(g for g, _ in calls) * (stop - start)
                tokens += [t for _, t in calls]
                step()
        finally:
            hook.remove()
        rows_per_sample = 1 if self.guidance == 1.0 else 2
        n = len(self.labels)
        return torch.cat(images), gflops / n * rows_per_sample, float(np.mean(tokens))

    def _reference_samples(self, model: nn.Module) -> torch.Tensor:
        """The unreduced sampler's images (sampled once, by the plain model)."""
        if self._reference is None:
            self._reference = self._generate(model, 0, len(self.labels))
        return self._reference

    def _demo_vit(self) -> nn.Module:
        if self._classifier is None:
            from ... import assets

            self._classifier = assets.load("fmnist-vit")
        return self._classifier

    def _quality(self, images: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """PSNR and SSIM to ``reference``, FD to the real images, class consistency (%)."""
        vit = self._demo_vit()
        if self._real_features is None:
            self._real_features = dit_fmnist.classifier_outputs(vit, self.real_images)[0].numpy()
        features, predicted = dit_fmnist.classifier_outputs(vit, images)
        psnr, ssim = fidelity(images, reference)
        return {
            "psnr": psnr,
            "ssim": ssim,
            "fd": frechet_distance(features.numpy(), self._real_features),
            "consistency": 100.0 * float((predicted == self.labels).double().mean()),
        }

    # -- one configuration ---------------------------------------------------------------
    def run(self, model: nn.Module, config: str, baseline: Metrics | None, step: Steps) -> Metrics:
        is_baseline = config == BASELINE
        with reduced_model(model, config) as (reduced, handle):
            images, gflops, tokens = self._sample_all(reduced, handle, step)
            (t_base, t_red), attempts = until_steady(
                lambda: self._time(model, reduced, is_baseline), lambda t: t
            )
            step()
            # one sampling step of the timed batch; the baseline's on the plain model
            peak = peak_memory_mb(
                lambda: self._generate(model if is_baseline else reduced, 0, self.timed_batch, 1)
            )
            step()
            base_gflops = (
                handle.baseline_gflops() * self.sampling_steps * (1 if self.guidance == 1 else 2)
            )
        if is_baseline:
            self._reference = images
        self._last = (config, images[:PICTURE_SAMPLES])
        quality = self._quality(images, self._reference_samples(model))
        base_fd = quality["fd"] if baseline is None else baseline["fd"]
        base_consistency = quality["consistency"] if baseline is None else baseline["consistency"]
        return {
            **quality,
            "fd_increase": 100.0 * (quality["fd"] - base_fd) / base_fd if base_fd else None,
            "consistency_delta": quality["consistency"] - base_consistency,
            "samples": len(self.labels),
            **cost_metrics(
                gflops=gflops,
                base_gflops=base_gflops,
                mean_tokens=tokens,
                t_base=t_base,
                t_red=t_red,
                batch=self.timed_batch,
                peak=peak,
                baseline=baseline,
                attempts=attempts,
            ),
            "repeats": self.repeats,
            "warmup": self.warmup,
        }

    def _time(
        self, model: nn.Module, reduced: nn.Module, is_baseline: bool
    ) -> tuple[list[float], list[float]]:
        """Seconds of sampling the timed batch with the plain and the reduced denoiser, paired
        by index (the plain one's twice for the baseline)."""

        def plain() -> Any:
            return self._generate(model, 0, self.timed_batch)

        if is_baseline:
            for _ in range(self.warmup):
                plain()
            t_base = [time_call(plain) for _ in range(self.repeats)]
            return t_base, t_base
        return paired_times(
            plain, lambda: self._generate(reduced, 0, self.timed_batch), self.repeats, self.warmup
        )

    def pictures(self, model: nn.Module, config: str) -> dict[str, bytes]:
        """The first samples (one of each class): unreduced above, reduced below (the
        unreduced row alone for the baseline)."""
        count = min(PICTURE_SAMPLES, len(self.labels))
        unreduced = self._reference_samples(model)[:count]
        if config == BASELINE:
            return {"samples": side_by_side(unreduced, None)}
        if self._last is not None and self._last[0] == config:
            reduced_images = self._last[1][:count]
        else:
            with reduced_model(model, config) as (reduced, _):
                reduced_images = self._generate(reduced, 0, count)
        return {"samples": side_by_side(unreduced, reduced_images)}

    @classmethod
    def summary(cls, rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """The fastest configuration within the goal's FD increase, and whether the goal
        (>= 1.5x faster sampling at <= 5 % FD increase) is met."""
        from ..configs import label

        ok = [
            (c, m)
            for c, m in rows
            if c != BASELINE and (m.get("fd_increase") or 0.0) <= TARGET_FD_INCREASE
        ]
        if not ok:
            return [f"no configuration keeps the FD within +{TARGET_FD_INCREASE:.0f} %"]
        config, m = max(ok, key=lambda cm: cm[1]["speedup"])
        met = "met" if m["speedup"] >= TARGET_SPEEDUP else "missed"
        return [
            f"fastest within +{TARGET_FD_INCREASE:.0f} % FD: {label(config)}: {speedup_text(m)} "
            f"sampling, FD {m['fd']:.2f} ({m['fd_increase']:+.1f} %), SSIM {m['ssim']:.3f}, "
            f"class consistency {m['consistency']:.1f} %; goal of {TARGET_SPEEDUP}x {met}"
        ]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
