"""The ``transfer`` task: one budget moved between families (same share of tokens left, the
family's own placement, a KV-cache twin on a decoder LM), accuracy kept per family, and
``n/a`` with the library's refusal where a method cannot act; a tiny ViT and a tiny Llama
stand in for the bundled families. Also the report's per-task picture captions."""

from __future__ import annotations

import io

import pytest
from PIL import Image

import tokenreduce
from tokenreduce import methods
from tokenreduce.bench import report
from tokenreduce.bench.configs import BASELINE
from tokenreduce.bench.models import load
from tokenreduce.bench.store import Key, Store
from tokenreduce.bench.tasks import Options, Task, get
from tokenreduce.bench.tasks.transfer import (
    NA,
    Family,
    Transfer,
    kept_share,
    placed,
    tokens_left,
)

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

RANDOM = "random:keep_ratio=0.5,layers=(0,)"  # one step leaving half the tokens
TOME = "tome:r=2"


@pytest.fixture
def families(monkeypatch, tiny_ckpt, idx_dir, tiny_lm, prose):
    """(families, load): the tiny ViT on the tiny IDX set, the tiny Llama on ``prose``."""
    monkeypatch.setenv("TOKENREDUCE_DATA", str(idx_dir))
    monkeypatch.setenv("TOKENREDUCE_JARGON", str(prose))
    paths = {"tiny-vit": str(tiny_ckpt), "tiny-llama": str(tiny_lm)}
    fams = (
        Family("tiny-vit", "classification", "top1"),
        Family("tiny-llama", "niah", "accuracy", context=(128,)),
    )
    return fams, lambda name: load(paths[name])


def test_kept_share_is_reduced_over_full_and_undefined_without_a_full_score():
    assert kept_share(30.0, 60.0) == pytest.approx(50.0)
    assert kept_share(0.5, 0.4) == pytest.approx(125.0)
    assert kept_share(0.0, 0.0) is None


def test_a_budget_keeps_its_share_of_tokens_at_each_familys_placement(tiny_ckpt, tiny_lm):
    vit, lm = load(str(tiny_ckpt)), load(str(tiny_lm))
    spec = placed(RANDOM, vit.model, vit.kind)
    moved = methods.build(spec)
    depth = tokenreduce.describe(vit.model, type(moved)).num_layers
    assert moved.layers == type(moved).placement(depth)["layers"]
    assert tokens_left(moved) == pytest.approx(0.5, abs=2e-3)  # per-step ratio rounded
    seeded = methods.build(placed(RANDOM.replace("(0,)", "(0,),seed=3"), vit.model, vit.kind))
    assert seeded.seed == 3 and seeded.layers == moved.layers  # its other parameters kept
    twin = methods.build(placed(RANDOM, lm.model, lm.kind))
    assert type(twin).name == "kv_random" and twin.compression_ratio == pytest.approx(0.5)
    with pytest.raises(ValueError, match="LlamaForCausalLM does not take"):
        placed(TOME, lm.model, lm.kind)  # no KV-cache twin: the library's refusal


def test_rows_per_family_with_kept_accuracy_and_refusals(families):
    fams, loader = families
    task = Transfer(fams, Options(threads=1, limit=2), load=loader)
    assert task.steps(RANDOM) == 2
    base = task.measure(None, BASELINE, None)
    assert base["families"] == ["tiny-vit", "tiny-llama"] and base["tokens_left"] == 100.0
    row = task.measure(None, RANDOM, base)
    assert row["tokens_left"] == pytest.approx(50.0)
    for fam in fams:
        a, full = fam.asset, base[f"acc:{fam.asset}"]
        expected = None if full <= 0 else 100.0 * row[f"acc:{a}"] / full
        assert row[f"kept:{a}"] == (pytest.approx(expected) if expected is not None else None)
        assert base[f"kept:{a}"] == (None if full <= 0 else 100.0)
    assert row["spec:tiny-llama"].startswith("kv_random:compression_ratio=0.5")
    merged = task.measure(None, TOME, base)
    assert merged["kept:tiny-llama"] == NA and merged["acc:tiny-llama"] is None
    assert "LlamaForCausalLM does not take" in merged["why:tiny-llama"]
    assert merged["spec:tiny-vit"].startswith("tome:r=2")
    lines = Transfer.summary([(BASELINE, base), (RANDOM, row), (TOME, merged)])
    assert any(line.startswith("  tiny-llama: n/a: tome is a token-sequence") for line in lines)


def test_transfer_is_registered_and_sweeps_its_default_methods(tiny_ckpt):
    cls = get("transfer")
    vit = load(str(tiny_ckpt))
    sweep = cls.default_sweep(vit)
    assert sweep("tome", 12, False) == []  # only when named
    specs = sweep("topk", 12, False)
    assert [round(tokens_left(methods.build(s)), 2) for s in specs] == [0.5, 0.25]
    with pytest.raises(ValueError, match="no --data"):
        cls.from_options(vit, Options(data=tiny_ckpt))


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("task", ["position-bias", "classification"])
def test_pictures_carry_their_tasks_caption(tmp_path, task):
    heading, caption = get(task).picture_caption
    with Store.open(tmp_path / "r.db") as store:
        run = store.start_run("bench", {}, {"threads": 1})
        key = Key(task, "m@0", "d", "{}", BASELINE)
        store.add_result(run, key, BASELINE, {}, {"kept-positions": _png()})
        store.finish_run(run, "finished")
        html = report.render(store)
    assert heading in html
    assert caption.split(":")[0] in html
    if task == "position-bias":
        assert heading != Task.picture_caption[0]
        assert Task.picture_caption[0] not in html  # not the token-map caption
