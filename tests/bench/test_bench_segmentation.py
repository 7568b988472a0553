"""The ``segmentation`` task: synthetic shapes, the linear head, rows on a tiny DINOv2, the
CLI end to end, and clear errors for models without a patch grid."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from benchutil import stored_rows, write_tiny_dinov2
from typer.testing import CliRunner

from tokenreduce.bench.configs import BASELINE
from tokenreduce.bench.models import LoadedModel, load
from tokenreduce.bench.tasks import Options, get
from tokenreduce.bench.tasks.segmentation import train_linear_head
from tokenreduce.cli import app
from tokenreduce.data.shapes import CLASSES, miou, patch_labels, shapes

FAST = Options(threads=1, limit=4, quick=True, repeats=1, warmup=0)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


# -- data and head ---------------------------------------------------------------------------
def test_shapes_are_seeded_and_masks_exact():
    images, masks = shapes(6, seed=3, size=(48, 40))
    again, masks2 = shapes(6, seed=3, size=(48, 40))
    other, _ = shapes(6, seed=4, size=(48, 40))
    assert images.shape == (6, 48, 40, 3) and masks.shape == (6, 48, 40)
    assert np.array_equal(images, again) and np.array_equal(masks, masks2)
    assert not np.array_equal(images, other)
    assert images.min() >= 0 and images.max() <= 1
    assert set(np.unique(masks)) - {0} and set(np.unique(masks)) <= set(range(len(CLASSES)))
    # every pixel a shape covers takes its colour: shapes differ from the background
    fg = masks > 0
    assert np.abs(images[fg].mean(0) - images[~fg].mean(0)).max() > 0


def test_patch_labels_and_miou():
    masks = np.zeros((1, 4, 4), dtype=np.int64)
    masks[0, :2, :2] = 1  # one whole 2x2 patch of class 1
    masks[0, 2:, 2:3] = 2  # half of the last patch: class 2 and background tie
    labels = patch_labels(masks, (2, 2))
    assert labels.tolist() == [[1, 0, 0, 0]]  # ties go to the lower class
    # background: 10 true pixels inside 12 predicted; class 2 (2 pixels) is never predicted
    assert miou(labels, masks, (2, 2)) == pytest.approx((10 / 12 + 1 + 0 + 1) / 4)
    exact = np.zeros((1, 4, 4), dtype=np.int64)
    exact[0, :2, 2:] = 3
    assert miou(patch_labels(exact, (2, 2)), exact, (2, 2)) == 1.0
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patch_labels(np.zeros((1, 5, 4), dtype=np.int64), (2, 2))


def test_linear_head_learns_separable_features():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (6, 16), generator=gen)
    centres = torch.randn(4, 8, generator=gen) * 3
    feats = centres[labels] + 0.1 * torch.randn(6, 16, 8, generator=gen) + 5.0  # offset
    head = train_linear_head(feats, labels, 4, steps=100)
    assert torch.equal(head(feats).argmax(-1), labels)
    again = train_linear_head(feats, labels, 4, steps=100)  # no randomness: the same head
    assert torch.equal(again.weight, head.weight) and torch.equal(again.bias, head.bias)


# -- the task --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory) -> Path:
    return write_tiny_dinov2(tmp_path_factory.mktemp("hf") / "tiny-dinov2")


def test_rows_on_a_tiny_backbone(dinov2_dir):
    loaded = load(str(dinov2_dir))
    task = get("segmentation").from_options(loaded, FAST)
    assert task.inputs.shape == (4, 3, 32, 32) and len(task.train_inputs) == 16
    assert task.head is None and task.steps(BASELINE) == 4 + 1 + 1 + 2  # head, batch, timing
    base = task.measure(loaded.model, BASELINE, None)
    assert task.head is not None and task.steps(BASELINE) == 1 + 2
    assert base["miou_delta"] == 0 and 0 < base["miou"] <= 1 and 0 < base["ceiling_miou"] <= 1
    assert base["speedup"] == 1.0 and base["flop_ratio"] == 1.0
    row = task.measure(loaded.model, "topk:keep_ratio=0.5,layers=[1,2]", base)
    assert row["miou_delta"] == pytest.approx(row["miou"] - base["miou"])
    assert row["flop_ratio"] > 1 and row["pruned_share"] > 0
    assert row["ceiling_miou"] == base["ceiling_miou"]
    # the same data and head in a new task (a resumed sweep in another process)
    fresh = get("segmentation").from_options(loaded, FAST)
    assert fresh.data_id == task.data_id and fresh.setting == task.setting
    assert fresh.measure(loaded.model, BASELINE, None)["miou"] == base["miou"]


def test_language_models_are_refused(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    lm = LoadedModel(transformers.LlamaForCausalLM(config).eval(), "tiny-lm", "hf", kind="lm")
    with pytest.raises(ValueError, match="needs a vision transformer with a patch grid"):
        get("segmentation").from_options(lm, FAST)
    # through the command line: refused before anything is measured
    monkeypatch.setattr("tokenreduce.bench.models.load", lambda spec: lm)
    result = CliRunner().invoke(
        app,
        ["bench", "--model", "tiny-lm", "--task", "segmentation", "--db", str(tmp_path / "r.db")],
    )
    assert result.exit_code == 2
    assert "task 'segmentation' needs a vision model" in result.output
    assert "is a language model" in result.output
    assert not (tmp_path / "r.db").exists() or not stored_rows(tmp_path / "r.db")


def test_a_model_without_patch_features_is_refused(dinov2_dir):
    task = get("segmentation").from_options(load(str(dinov2_dir)), FAST)
    with pytest.raises(ValueError, match="needs a patched vision transformer with a patch grid"):
        task.check_model(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2)))


def test_quick_cli_end_to_end(tmp_path, dinov2_dir):
    db, out = tmp_path / "r.db", tmp_path / "r.html"
    args = [
        "bench", "--model", str(dinov2_dir), "--task", "segmentation", "--quick",
        "--methods", "topk,tome,prunemerge", "--limit", "2", "--repeats", "1",
        "--threads", "1", "--db", str(db), "--out", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = stored_rows(db)
    assert [c.partition(":")[0] for _, c, _ in rows] == [BASELINE, "topk", "tome", "prunemerge"]
    assert all(t == "segmentation" for t, _, _ in rows)
    # matched: the three methods remove the same tokens at the same blocks
    (tokens,) = {m["mean_tokens"] for _, c, m in rows[1:]}
    assert tokens < rows[0][2]["mean_tokens"]
    assert "patch-grid ceiling" in result.output
    html = out.read_text()
    assert "mIoU" in html and "patch-grid ceiling" in html
    assert "mIoU (synthetic shapes) against GFLOPs per image" in html
    # two plots, and token maps of the (two) test images
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 2 + 2
