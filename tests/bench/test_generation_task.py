"""The generation task: fidelity, Frechet distance, class consistency and cost of sampling
with a reduced denoiser, on a tiny model of the dit-fmnist layout."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("skimage")

from tokenreduce.assets import dit_fmnist  # noqa: E402
from tokenreduce.bench import models, tasks  # noqa: E402
from tokenreduce.bench.tasks import Options  # noqa: E402
from tokenreduce.bench.tasks.generation import (  # noqa: E402
    PSNR_CAP,
    Generation,
    fidelity,
    frechet_distance,
    side_by_side,
)
from tokenreduce.data import fashion_mnist  # noqa: E402

TINY = {"num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 2}
CONFIG = "tomesd:ratio=0.5"


@pytest.fixture(scope="module")
def denoiser() -> torch.nn.Module:
    return dit_fmnist.build(TINY, seed=1)


@pytest.fixture(scope="module")
def task() -> Generation:
    real = fashion_mnist("test", download=False)[0][:100]
    return Generation(
        dit_fmnist.sampling_scheduler(),
        real,
        "fashion-mnist:test",
        samples=10,
        steps=2,
        batch_size=5,
        timed_batch=2,
        repeats=2,
        warmup=0,
    )


@pytest.fixture(scope="module")
def rows(task, denoiser) -> dict:
    base = task.measure(denoiser, "baseline", None)
    return {"baseline": base, CONFIG: task.measure(denoiser, CONFIG, base)}


def test_task_is_registered_for_diffusion_models():
    assert tasks.get("generation") is Generation
    assert Generation.model_kind == "diffusion" and Generation.method_kinds == ("local",)
    assert models.DEFAULT_TASKS["diffusion"] == "generation"


def test_baseline_is_its_own_reference(rows):
    base = rows["baseline"]
    assert base["psnr"] == PSNR_CAP and base["ssim"] == 1.0
    assert base["fd_increase"] == 0.0 and base["consistency_delta"] == 0.0
    assert base["flop_ratio"] == 1.0 and base["mean_tokens"] == dit_fmnist.TOKENS
    assert base["fd"] > 0 and 0 <= base["consistency"] <= 100 and base["samples"] == 10


def test_reduced_sampler_costs_less_and_differs(rows):
    base, red = rows["baseline"], rows[CONFIG]
    assert red["mean_tokens"] == dit_fmnist.TOKENS / 2  # half the tokens into self-attention
    assert red["gflops"] < base["gflops"] and red["flop_ratio"] > 1.0
    assert red["baseline_gflops"] == base["gflops"]
    assert red["psnr"] < PSNR_CAP and red["ssim"] < 1.0
    assert red["fd_increase"] == pytest.approx(100 * (red["fd"] / base["fd"] - 1))
    assert red["speedup"] > 0 and red["peak_mem_mb"] > 0


def test_pictures_put_reduced_samples_below_unreduced(task, denoiser, rows):
    from PIL import Image

    base = Image.open(io.BytesIO(task.pictures(denoiser, "baseline")["samples"]))
    both = Image.open(io.BytesIO(task.pictures(denoiser, CONFIG)["samples"]))
    assert base.size == (10 * 28 * 3, 28 * 3)
    assert both.size == (10 * 28 * 3, 2 * 28 * 3)
    top = np.asarray(both)[: 28 * 3]
    assert np.array_equal(top, np.asarray(base))


def test_summary_names_the_fastest_within_the_fd_goal(rows):
    lines = Generation.summary(list(rows.items()))
    assert len(lines) == 1
    assert "goal of 1.5x" in lines[0] or "no configuration keeps the FD" in lines[0]


def test_frechet_distance_against_known_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # the same spread moved by 1 in every dimension: only the mean term remains
    assert frechet_distance(a, a + 1.0) == pytest.approx(6.0, rel=1e-6)
    b = rng.normal(size=(400, 6)) * 2.0
    from scipy.linalg import sqrtm

    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * sqrtm(ca @ cb).real)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="features must be"):
        frechet_distance(a[:1], b)


def test_fidelity_of_identical_and_different_images():
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    assert fidelity(images, images) == (PSNR_CAP, 1.0)
    psnr, ssim = fidelity(255 - images, images)
    assert psnr < 20 and ssim < 0.5
    png = side_by_side(images, None, scale=1)
    assert png.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"samples": 1}, "samples must be an integer >= 2"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"guidance": -2.0}, "guidance must be >= 0"),
        ({"real_images": torch.zeros(4, 28, 28)}, "real_images must be at least 2 uint8"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs, message):
    args = {"real_images": torch.zeros(4, 28, 28, dtype=torch.uint8), **kwargs}
    real = args.pop("real_images")
    with pytest.raises(ValueError, match=message):
        Generation(dit_fmnist.sampling_scheduler(), real, "x", **args)


def test_a_model_of_another_layout_is_refused(task):
    rgb = dit_fmnist.build({**TINY, "in_channels": 3, "out_channels": 3})
    with pytest.raises(ValueError, match="cannot denoise 1-channel 28x28 images"):
        task.check_model(rgb)
    learned_sigma = dit_fmnist.build({**TINY, "out_channels": 2})
    with pytest.raises(ValueError, match="learned-variance"):
        task.check_model(learned_sigma)


def test_bench_loads_the_asset_as_a_denoiser_with_its_sampler():
    loaded = models.load("dit-fmnist")
    assert loaded.kind == "diffusion" and loaded.default_task == "generation"
    assert type(loaded.model).__name__ == "DiTTransformer2DModel"
    built = Generation.from_options(loaded, Options(quick=True, limit=4))
    assert len(built.labels) == 4 and built.sampling_steps == 8
    assert built.data_id.startswith("fashion-mnist:test[500]#")
