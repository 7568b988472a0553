"""PyramidDrop on a tiny 8-layer LLaVA: the image tokens left after each stage follow the
geometric schedule, ranked like FastV at the first site. The shared invariants (identity,
batched == per-sample on a text LM and on the vision-language model) run in
``tests/invariants/test_cache_methods.py``."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.adapters import HFLlavaAdapter
from tokenreduce.core.budgets import GeometricPrune
from tokenreduce.methods import FastV, PyramidDrop

from ..adapters.test_hf_llava import IMAGE, N, pixels, prompt
from ..lmutil import left_pad

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def llava():
    return HFLlavaAdapter.examples()["llava"](num_hidden_layers=8)


def image_counts(ids: torch.Tensor, kept: torch.Tensor) -> list[int]:
    """Image tokens among each sample's kept prompt tokens (-1: filler)."""
    return [int((ids[b, k[k >= 0]] == IMAGE).sum()) for b, k in enumerate(kept)]


def test_the_schedule_is_geometric():
    """The paper's LLaVA-1.5 setting: 4 stages, lambda = 0.5, of 576 image tokens."""
    method = PyramidDrop(prune_ratio=0.875)
    assert method.sites(32) == (7, 15, 23)
    budget = method.budget(tokenreduce.describe(HFLlavaAdapter.examples()["llava"]()))
    assert isinstance(budget, GeometricPrune)
    budget = GeometricPrune(0.875, (7, 15, 23))
    assert [budget.keep(s, 576) for s in (7, 15, 23)] == [288, 144, 72]
    assert budget.keep(8, 576) == 576  # no site
    assert GeometricPrune(0.0, (1, 2)).keep(2, 576) == 576


@torch.no_grad()
def test_each_stage_keeps_lambda_of_the_image_tokens(llava):
    rows = [prompt(1, 0), prompt(2, 1)]  # 16 and 32 image tokens
    ids, mask = left_pad(rows)
    method = PyramidDrop(prune_ratio=0.875, num_stages=4)  # lambda = 0.5
    assert method.sites(8) == (1, 3, 5)
    with tokenreduce.patch(llava, method) as handle:
        llava(input_ids=ids, attention_mask=mask, pixel_values=pixels(3), use_cache=True)
        kept = handle.trace.prefill_kept
        entries = handle.trace.kv_entries
    assert [image_counts(ids, k) for k in kept] == [[N // 2, N], [N // 4, N // 2], [N // 8, N // 4]]
    text = 6
    # the layers of a stage cache what its first layer received (the longest sample's count)
    m = [text + 2 * N // 2, text + 2 * N // 4, text + 2 * N // 8]
    assert entries == [None, None, m[0], m[0], m[1], m[1], m[2], m[2]]
    for b in range(2):  # each stage keeps a subset of the stage before
        stages = [set(k[b][k[b] >= 0].tolist()) for k in kept]
        assert stages[2] <= stages[1] <= stages[0]


@torch.no_grad()
def test_the_first_site_ranks_as_fastv(llava):
    """Both rank by the last token's attention: PyramidDrop's first site keeps what FastV
    keeps at the same layer and share."""
    ids = prompt(2, 1)
    sets = []
    for method in (PyramidDrop(prune_ratio=0.75, layers=(2, 4)), FastV(layer=2, prune_ratio=0.5)):
        with tokenreduce.patch(llava, method) as handle:
            llava(input_ids=ids, pixel_values=pixels(2), use_cache=True)
            sets.append(handle.trace.prefill_kept[0])
    assert torch.equal(sets[0], sets[1])
