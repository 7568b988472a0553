"""Sweep configurations (methods, budgets, default sweeps) and the measurement helpers."""

from __future__ import annotations

import pytest
import torch

from tokenreduce import methods
from tokenreduce.bench import configs as cfg
from tokenreduce.bench.metrics import paired_times, peak_memory_mb


def test_default_sweep_covers_every_vision_method():
    configs = cfg.resolve(None)
    assert configs[0] == cfg.BASELINE
    names = {cfg.method_of(c) for c in configs[1:]}
    # every token method but those needing weights trained for the model
    untrained = {n for n in cfg.token_methods() if not methods.get(n).in_default_sweep}
    assert untrained == {"dynamicvit"}
    assert names == set(cfg.token_methods()) - untrained
    assert all(methods.get(n).kind == "tokens" for n in names)
    assert len(configs) == len(set(configs))
    quick = cfg.resolve(None, quick=True)
    assert sorted(cfg.method_of(c) for c in quick[1:]) == sorted(names)


def test_image_only_methods_are_left_out_for_a_text_model():
    """A language-model task sweeps fastv and pyramiddrop on any model, vtw and sparsevlm
    only on a vision-language one; named explicitly, they are the user's choice."""
    kinds = ("kv_cache", "prefill")
    text = {cfg.method_of(c) for c in cfg.resolve(None, depth=4, kind=kinds, model_kind="lm")}
    vlm = {cfg.method_of(c) for c in cfg.resolve(None, depth=4, kind=kinds, model_kind="vlm")}
    assert {"fastv", "pyramiddrop"} <= text and not {"vtw", "sparsevlm"} & text
    assert vlm - text == {"vtw", "sparsevlm"}
    assert cfg.method_of(cfg.resolve("vtw", depth=4, kind=kinds, model_kind="lm")[1]) == "vtw"


def test_default_layers_follow_depth():
    for depth, layers in [(12, (3, 6, 9)), (4, (1, 2, 3)), (24, (6, 12, 18))]:
        (evit,) = cfg.resolve("evit", depth=depth, quick=True)[1:]
        assert methods.build(evit).layers == layers


def test_explicit_budgets_are_canonical_and_deduplicated():
    configs = cfg.resolve(
        None,
        [
            "tome:r=8 tome:r=8,inflect=0.0;evit:keep_ratio=0.5",
            "evit:keep_ratio=0.5,layers=[3, 6, 9]",
        ],
    )
    assert configs == [
        cfg.BASELINE,
        methods.describe(methods.build("tome:r=8")),
        methods.describe(methods.build("evit:keep_ratio=0.5")),
    ]
    # a method named in --methods but not in --budgets keeps its default sweep
    mixed = cfg.resolve("tome,pool", ["tome:r=4"])
    assert mixed[1] == methods.describe(methods.build("tome:r=4"))
    assert [cfg.method_of(c) for c in mixed[2:]] == ["pool", "pool"]


def test_split_specs_respects_brackets():
    assert cfg.split_specs(["a:x=[1, 2] b:y=3;c", " d "]) == ["a:x=[1, 2]", "b:y=3", "c", "d"]


@pytest.mark.parametrize(
    ("methods_arg", "budgets", "message"),
    [
        ("tome,nosuch", [], "unknown method 'nosuch'"),
        (None, ["tome:r=x"], "invalid budget 'tome:r=x'"),
        (None, ["evit:keep_ratio=0"], "keep_ratio=0 is invalid"),
        (",", [], "--methods is empty"),
        ("pool", ["tome:r=2"], "does not include"),
    ],
)
def test_bad_configurations(methods_arg, budgets, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.resolve(methods_arg, budgets)


def test_labels():
    assert cfg.label("tome:r=8,inflect=0.0,prop_attn=True,schedule=None") == "tome:r=8"
    assert cfg.label("tome:r=8,inflect=0.5,prop_attn=True,schedule=None") == "tome:r=8,inflect=0.5"
    assert cfg.label("evit:keep_ratio=0.7,layers=(3,6,9),fuse=True") == "evit:keep_ratio=0.7"
    assert cfg.budget_label("evit:keep_ratio=0.5,layers=(1,2),fuse=False") == "evit:keep_ratio=0.5"
    assert cfg.label("not a spec") == "not a spec"


def test_paired_times_alternates_and_counts():
    calls = []
    tb, to = paired_times(lambda: calls.append("a"), lambda: calls.append("b"), 4, 1)
    assert len(tb) == len(to) == 4
    assert "".join(calls) == "ab" + "ab" + "ba" + "ab" + "ba"  # warm-up, then A B / B A
    with pytest.raises(ValueError):
        paired_times(lambda: None, lambda: None, 0, 0)


def test_peak_memory_counts_live_activations():
    x = torch.zeros(256, 1024)  # 1 MiB, allocated before: not counted

    def two_live():
        a = x + 1  # 1 MiB
        b = a * 2  # 2 MiB live at once
        return b.sum()

    def one_at_a_time():
        for _ in range(3):
            (x + 1).sum()  # each temporary dies before the next

    assert peak_memory_mb(two_live) == pytest.approx(2.0, abs=0.01)
    assert peak_memory_mb(one_at_a_time) == pytest.approx(1.0, abs=0.01)
