"""Adaptive budgets (``tokenreduce.core.adaptive`` and the ``adaptive`` parameter of token
methods): per-sample counts at the uniform budget's mean, the rules' estimates, the batch
against its samples one by one on a tiny LLaVA, and the errors."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce import methods
from tokenreduce.core.adaptive import AdaptiveRule, allocate, reduce_each
from tokenreduce.core.context import ModelInfo, TokenContext
from tokenreduce.core.reduction import Reduction
from tokenreduce.core.state import TokenState
from tokenreduce.methods import InvalidParameter, TokenMethod

from ..conftest import make_vit, placed
from ..lmutil import left_pad

IMAGE, N = 5, 16  # the tiny LLaVA examples' image token and tokens per image (a 4x4 grid)
#: every token method whose budget is a keep ratio, but downsample: it keeps whole grid cells,
#: so a sample alone cannot be asked for the count it kept in the batch
KEEP_RATIO_METHODS = [n for n in methods.available()
                      if issubclass(methods.get(n), TokenMethod) and n != "downsample"
                      and methods.get(n).budget_param == "keep_ratio"]  # fmt: skip


# -- calibration ---------------------------------------------------------------------------------
def test_allocate_is_proportional_and_sums_to_the_total():
    assert allocate([1, 1, 2], 8, 1, [16] * 3) == [2, 2, 4]
    assert allocate([1, 2], 7, 1, [16, 16]) == [2, 5]  # 2.33 / 4.67: the larger remainder
    assert allocate([0, 0, 0], 6, 1, [16] * 3) == [2, 2, 2]  # no estimate: equal shares


def test_allocate_caps_and_floors_and_reshares_the_rest():
    # 30 of 32 tokens would go to the first sample; it holds 16, the rest is re-shared
    assert allocate([30, 1, 1], 24, 1, [16] * 3) == [16, 4, 4]
    assert allocate([1000, 1, 0], 12, 1, [16] * 3) == [10, 1, 1]  # floored at 1 token each
    counts = allocate([5.0, 0.3, 2.2, 9.0, 0.01], 5 * 7, 1, [16] * 5)
    assert sum(counts) == 35 and all(1 <= c <= 16 for c in counts)


def test_allocate_refuses_a_total_the_bounds_cannot_hold():
    with pytest.raises(ValueError, match="cannot share 40 tokens among 2 samples"):
        allocate([1, 1], 40, 1, [16, 16])


def test_mean_over_a_data_set_of_batches_equals_the_uniform_count():
    gen = torch.Generator().manual_seed(0)
    rule, keep, counts = AdaptiveRule("entropy"), 4, []
    for size in (8, 8, 5, 3, 1):  # batches of a data set, the last ones short
        scores = torch.rand(size, N, generator=gen) ** 6  # peaked to flat attention
        counts += rule.counts(scores, torch.ones(size, N, dtype=torch.bool), keep)
    assert len(counts) == 25 and sum(counts) == 25 * keep and len(set(counts)) > 1


# -- the rules' estimates --------------------------------------------------------------------------
def peaked_and_flat() -> torch.Tensor:
    """(2, 16) class-attention rows: one token takes most attention, then a uniform spread."""
    peaked = torch.full((N,), 0.01)
    peaked[3] = 1.0
    return torch.stack([peaked, torch.ones(N)])


def test_flatter_attention_gets_more_tokens_under_the_entropy_rule():
    rule = AdaptiveRule("entropy")
    assert rule.estimate(torch.ones(N)) == pytest.approx(N)  # perplexity of a uniform row
    counts = rule.counts(peaked_and_flat(), torch.ones(2, N, dtype=torch.bool), keep=4)
    assert sum(counts) == 8 and counts[1] > counts[0]


def test_threshold_and_iqr_count_the_tokens_that_stand_out():
    scores = torch.tensor([8.0, 4.0, 1, 1, 1, 1, 1, 1])  # shares 8/21, 4/21, 1/21 ...
    assert AdaptiveRule("threshold").estimate(scores) == 2  # n * p above 1: the first two
    assert AdaptiveRule("threshold", 3.0).estimate(scores) == 1  # only 8 * 8 / 21 > 3
    assert AdaptiveRule("iqr").estimate(scores) == 2  # IQR 0: both exceed Q3
    assert AdaptiveRule("iqr").estimate(torch.ones(8)) == 1  # none stands out: at least one
    counts = AdaptiveRule("iqr").counts(peaked_and_flat(), torch.ones(2, N, dtype=torch.bool), 4)
    assert counts == [4, 4]  # one outlier in the peaked row, none (at least one) in the flat


def test_only_reducible_tokens_are_read_and_counted():
    scores = torch.ones(2, N)
    scores[0, 0] = 100.0  # a protected token's score must not make the row look peaked
    reducible = torch.ones(2, N, dtype=torch.bool)
    reducible[:, 0] = False
    assert AdaptiveRule("entropy").counts(scores, reducible, keep=15) == [15, 15]


def test_reduce_each_stacks_samples_reduced_alone_at_their_counts():
    b, dim = 3, 8
    x = torch.randn(b, N, dim, generator=torch.Generator().manual_seed(0))
    info = ModelInfo("test", 1, 0, False, (4, 4), "vision-language")
    ctx = TokenContext(0, x, x[:, None], x[:, None], TokenState.initial(b, N), info, dim**-0.5)
    ctx.class_attention = torch.cat([peaked_and_flat(), torch.full((1, N), 0.5)])
    calls = []

    def first_tokens(one: TokenContext, n_remove: int) -> Reduction:
        calls.append(n_remove)
        keep = torch.arange(one.num_reducible - n_remove)[None]
        return Reduction.select(keep, one.state.num_tokens)

    red = reduce_each(ctx, N - 4, AdaptiveRule("entropy"), first_tokens)
    kept = red.valid.sum(1).tolist()
    assert sum(kept) == 3 * 4 and kept[1] > kept[0] and calls == [N - k for k in kept]
    assert torch.equal(red.apply(x)[1, : kept[1]], x[1, : kept[1]])


# -- on a tiny LLaVA: the batch against its samples one by one ---------------------------------------
@pytest.fixture(scope="module")
def llava():
    from tokenreduce.adapters import HFLlavaAdapter

    return HFLlavaAdapter.examples()["llava"]()


def prompt(seed: int) -> torch.Tensor:
    words = torch.randint(10, 100, (6,), generator=torch.Generator().manual_seed(seed))
    return torch.cat([words[:2], torch.full((N,), IMAGE), words[2:]])[None]


def kept_images(handle, rows: int) -> list[int]:
    kept = handle.trace.prefill_kept[-1]
    return ((kept >= 0).sum(1) - 6).tolist()[:rows]  # minus each prompt's 6 text tokens


@pytest.mark.parametrize("name", KEEP_RATIO_METHODS)
@pytest.mark.parametrize("rule", ["entropy", "threshold", "iqr"])
@torch.no_grad()
def test_batch_equals_samples_alone_at_their_counts(llava, name, rule):
    rows = [prompt(s) for s in range(4)]
    ids, mask = left_pad(rows)
    px = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with tokenreduce.patch(llava, placed(name, llava, keep_ratio=0.25)) as handle:
        llava(input_ids=ids, attention_mask=mask, pixel_values=px)
        uniform = kept_images(handle, 4)
    adaptive = placed(name, llava, keep_ratio=0.25, adaptive=rule)
    with tokenreduce.patch(llava, adaptive) as handle:
        batched = llava(input_ids=ids, attention_mask=mask, pixel_values=px).logits[:, -1]
        counts = kept_images(handle, 4)
    assert sum(counts) == sum(uniform)  # the same visual tokens in all: equal cost
    extra = uniform[0] - 4  # what the method keeps beyond the 4 of 16 asked (EViT's fused)
    for b, count in enumerate(counts):
        # alone, a sample keeps the uniform count: a keep ratio that gives it its batch count
        alone = placed(name, llava, keep_ratio=(count - extra - 0.5) / N)
        with tokenreduce.patch(llava, alone) as handle:
            one = llava(input_ids=rows[b], pixel_values=px[b : b + 1]).logits[:, -1]
            assert kept_images(handle, 1) == [count]
        torch.testing.assert_close(batched[b : b + 1], one, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_a_batch_of_one_keeps_the_uniform_count(llava):
    spec = "visionzip:keep_ratio=0.25,layers=0,adaptive=entropy"
    with tokenreduce.patch(llava, spec) as handle:
        llava(input_ids=prompt(0), pixel_values=torch.randn(1, 3, 28, 28))
        assert kept_images(handle, 1) == [4]


# -- the spec and its errors ------------------------------------------------------------------------
def test_spec_round_trip_and_unset_fields_stay_out_of_specs():
    spec = "visionzip:keep_ratio=0.25,layers=0,adaptive=iqr,adaptive_k=2.0"
    method = methods.build(spec)
    assert method.adaptive_rule == AdaptiveRule("iqr", 2.0)
    assert methods.build(methods.describe(method)) == method
    plain = methods.describe(methods.build("visionzip:keep_ratio=0.25"))
    assert "adaptive" not in plain
    assert methods.build("visionzip:adaptive=none").adaptive_rule is None


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("visionzip:adaptive=median", "adaptive='median' is invalid; allowed: None or 'threshold'"),
        ("visionzip:adaptive=entropy,adaptive_k=1", "'entropy' takes no parameter"),
        ("visionzip:adaptive=iqr,adaptive_k=-1", "adaptive_k=-1 is invalid"),
        ("visionzip:adaptive_k=2", "None unless adaptive names a rule"),
        ("tome:r=2,adaptive=entropy", "tome's budget is r, which sets no per-sample count"),
        ("pool:kernel=2,adaptive=iqr", "pool's budget is kernel"),
    ],
)
def test_bad_adaptive_parameters_fail_at_construction(spec, words):
    with pytest.raises(InvalidParameter, match=words.replace("(", r"\(")):
        methods.build(spec)


def test_a_model_whose_sites_run_one_length_refuses_adaptive_budgets():
    vit = make_vit()
    with pytest.raises(InvalidParameter, match="needs sites that take a token count per sample"):
        tokenreduce.patch(vit, "random:keep_ratio=0.5,layers=1,adaptive=entropy")


# -- the benchmark: adaptive rows against their uniform twins ---------------------------------------
def test_pareto_curves_and_the_vqa_summary_set_adaptive_against_uniform():
    from tokenreduce.bench.configs import curve_of
    from tokenreduce.bench.tasks.vqa import adaptive_vs_uniform, uniform_twin

    adaptive = methods.describe(methods.build("random:keep_ratio=0.25,layers=0,adaptive=iqr"))
    uniform = methods.describe(methods.build("random:keep_ratio=0.25,layers=0"))
    assert curve_of(adaptive) == "random adaptive=iqr" and curve_of(uniform) == "random"
    assert uniform_twin(adaptive) == uniform and uniform_twin(uniform) is None
    rows = [
        ("baseline", {"accuracy": 90.0, "visual_tokens": 64.0}),
        (uniform, {"accuracy": 50.0, "visual_tokens": 16.0, "visual_tokens_sd": 0.0}),
        (adaptive, {"accuracy": 55.0, "visual_tokens": 16.0, "visual_tokens_sd": 4.5}),
    ]
    (line,) = adaptive_vs_uniform(rows)
    assert "55.0% against 50.0% uniform (+5.0)" in line and "sd 4.5 against 0.0" in line
    assert adaptive_vs_uniform(rows[:1] + rows[2:]) == []  # no uniform twin measured
