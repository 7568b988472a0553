"""The offline diffusion model ``dit-fmnist``: loading, seeded sampling, bad input, resumable
training and the evaluation command."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tokenreduce import assets
from tokenreduce.assets import dit_fmnist
from tokenreduce.data import fashion_mnist

pytest.importorskip("diffusers")

#: a small model of the asset's layout (same grid and classes), sampled in milliseconds
TINY = {"num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 2}


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    file = tmp_path_factory.mktemp("dit") / "tiny.safetensors"
    dit_fmnist.save(dit_fmnist.build(TINY, seed=3), file, {"step": 0})
    return file


@pytest.fixture(scope="module")
def tiny(tiny_file) -> dit_fmnist.DiTFashionMNIST:
    return dit_fmnist.load(tiny_file)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_bundled_checkpoint_loads_with_its_card():
    assert dit_fmnist.BUNDLED.stat().st_size < 25 * 2**20
    assert dit_fmnist.BUNDLED.with_suffix(".md").is_file()
    dit = assets.load("dit-fmnist")
    model = dit.transformer
    assert type(model).__name__ == "DiTTransformer2DModel" and not model.training
    assert model.config.sample_size == 28 and model.config.patch_size == 2
    assert model.config.num_embeds_ada_norm == 10
    assert dit.info["step"] > 0 and dit.info["ema"] is True
    assert type(dit.scheduler).__name__ == "DPMSolverMultistepScheduler"


def test_generate_returns_fashion_mnist_shaped_images(tiny):
    images = tiny.generate([0, 5, 9], steps=2, generator=seeded(0))
    assert images.shape == (3, 28, 28) and images.dtype == torch.uint8
    real = fashion_mnist("test", download=False)[0][:2]
    assert real.shape[1:] == images.shape[1:] and real.dtype == images.dtype


def test_seeded_generation_is_reproducible_and_per_sample(tiny):
    first = tiny.generate([1, 2, 3], steps=3, generator=[seeded(i) for i in range(3)])
    again = tiny.generate([1, 2, 3], steps=3, generator=[seeded(i) for i in range(3)])
    assert torch.equal(first, again)
    # one generator per sample: a sample does not depend on the rest of its batch
    alone = tiny.generate([2], steps=3, generator=[seeded(1)])
    assert torch.equal(alone[0], first[1])
    other = tiny.generate([1, 2, 3], steps=3, generator=[seeded(i + 7) for i in range(3)])
    assert not torch.equal(first, other)


def test_guidance_changes_the_samples_and_one_means_unguided(tiny):
    guided = tiny.generate([4, 4], steps=2, guidance=3.0, generator=seeded(0))
    plain = tiny.generate([4, 4], steps=2, guidance=1.0, generator=seeded(0))
    assert not torch.equal(guided, plain)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": [3, 10]}, r"labels \[10\] are not Fashion-MNIST classes; allowed: 0..9"),
        ({"labels": [-1]}, r"labels \[-1\] are not Fashion-MNIST classes"),
        ({"labels": []}, "labels is empty"),
        ({"labels": [1], "steps": 0}, "steps=0: give an integer >= 1"),
        ({"labels": [1], "guidance": -1.0}, "guidance=-1.0: give a scale >= 0"),
        ({"labels": [1, 2], "generator": [torch.Generator()]}, "1 generators for 2 labels"),
    ],
)
def test_bad_input_names_what_is_allowed(tiny, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny.generate(**kwargs)


def test_missing_or_foreign_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dit-fmnist train"):
        dit_fmnist.load(tmp_path / "absent.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(foreign))
    with pytest.raises(ValueError, match="not a dit-fmnist checkpoint"):
        dit_fmnist.load(foreign)


def test_image_conversions_round_trip():
    images = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)
    x = dit_fmnist.to_model_space(images)
    assert x.shape == (2, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(dit_fmnist.to_uint8(x), images)
    with pytest.raises(ValueError, match="expected uint8 images"):
        dit_fmnist.to_model_space(images.float())


def test_sample_grid_tiles_row_by_row():
    images = torch.arange(3).view(3, 1, 1).expand(3, 2, 2).to(torch.uint8).numpy()
    grid = dit_fmnist.sample_grid(images, 2)
    assert grid.shape == (4, 4)
    assert grid[0, 0] == 0 and grid[0, 2] == 1 and grid[2, 0] == 2 and grid[2, 2] == 0


def train_to(out, steps: int, **overrides) -> dict:
    opts = dit_fmnist.TrainOptions(
        out, steps, seed=0, batch_size=2, warmup=2, save_every=1, log_every=100, **overrides
    )
    return dit_fmnist.train(opts, log=lambda _: None)


def test_training_batches_depend_on_seed_and_step_only():
    images = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8)
    labels = torch.arange(50) % 10
    a = dit_fmnist.training_batch(images, labels, 7, 0, 16, 1000)
    b = dit_fmnist.training_batch(images, labels, 7, 0, 16, 1000)
    c = dit_fmnist.training_batch(images, labels, 8, 0, 16, 1000)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[3], c[3])
    assert a[0].shape == (16, 1, 28, 28) and a[2].max() < 1000
    assert set(a[1].tolist()) <= set(range(11))  # 10: the null class of guidance


def test_resumed_training_equals_uninterrupted_and_evaluates(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_to(straight, 3)["step"] == 3
    train_to(resumed, 1)
    assert train_to(resumed, 3)["step"] == 3
    for name in (dit_fmnist.WEIGHTS_FILE, dit_fmnist.EMA_FILE):
        a, b = load_file(str(straight / name)), load_file(str(resumed / name))
        assert all(torch.equal(a[k], b[k]) for k in a)
    state = json.loads((resumed / "state.json").read_text())
    assert state["step"] == 3 and state["run"]["batch_size"] == 2
    with pytest.raises(ValueError, match="holds a run with"):
        train_to(resumed, 4, lr=1e-3)
    dit_fmnist.main(["eval", "--checkpoint", str(resumed), "--per-class", "1", "--steps", "1"])
    result = json.loads((resumed / "eval.json").read_text())
    assert result["n"] == 10 and 0.0 <= result["accuracy"] <= 1.0
    assert result["checkpoint"]["step"] == 3
    assert (resumed / "samples-step3.png").is_file()
    card = (resumed / "MODEL_CARD.md").read_text()
    assert "steps: 3, batch 2" in card and "| Ankle boot |" in card
