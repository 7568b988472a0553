"""SparseVLM: text raters on a hand-built case, the density-peak clustering, recycling into
merged tokens on a tiny LLaVA, and the recycling contract the prefill machinery enforces.
The shared invariants (identity, batched == per-sample on the vision-language model, refusal
on a text-only model) run in ``tests/invariants/test_cache_methods.py``."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import tokenreduce
from tokenreduce.adapters import HFLlavaAdapter
from tokenreduce.core.kv import KVContext, keep_per_head
from tokenreduce.methods import InvalidParameter, SparseVLM
from tokenreduce.methods.sparsevlm import dpc_knn, relevant_text

from ..adapters.test_hf_llava import IMAGE, N, pixels, prompt

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def llava():
    return HFLlavaAdapter.examples()["llava"](num_hidden_layers=4)


def hand_built() -> KVContext:
    """Tokens [text, img1, img2, img3, text4, text5], one head of width 4. Image token i has
    key ``8 * e_i``; text4 asks for img1 and img3 (img1 a little more), text5 for img2."""
    keys = torch.zeros(1, 1, 6, 4)
    keys[0, 0, 1, 0] = keys[0, 0, 2, 1] = keys[0, 0, 3, 2] = 8.0
    q = torch.zeros(1, 1, 6, 4)
    q[0, 0, 4, 0], q[0, 0, 4, 2] = 1.1, 1.0  # text4
    q[0, 0, 5, 1] = 1.0  # text5
    valid = torch.ones(1, 6, dtype=torch.bool)
    text = torch.tensor([[True, False, False, False, True, True]])
    return KVContext(0, 2, keys, keys, valid, torch.arange(6)[None], 1.0,
                     lambda rows: q if rows is None else q[:, :, -rows:], text=text)  # fmt: skip


def test_raters_are_the_text_tokens_relevant_to_the_image():
    ctx = hand_built()
    logits = (ctx.queries(None) @ ctx.keys.transpose(-2, -1))[:, 0]
    raters = relevant_text(logits, ctx.text, ~ctx.text)
    # text0 sees no image token; text4 wins two image tokens of three, text5 one
    assert raters[0].tolist() == [False, False, False, False, True, False]


def test_the_kept_image_tokens_are_those_the_raters_attend_to_most():
    ctx = hand_built()
    scores = SparseVLM().scores(ctx)
    expected = torch.softmax(ctx.queries(None)[0, 0, 4] @ ctx.keys[0, 0, :5].T, -1)
    torch.testing.assert_close(scores[0, :5], expected)  # text4's attention, its own row
    image = scores.masked_fill(ctx.text, float("-inf"))
    index, _ = keep_per_head(image[:, None], torch.tensor([2]))
    assert index[0, 0].tolist() == [1, 3]  # img2, asked for by a non-rater only, goes


def test_density_peaks_find_the_clusters():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 8, generator=g) * 0.1
    b = torch.randn(5, 8, generator=g) * 0.1 + 5.0
    owner = dpc_knn(torch.cat([a, b]), 2)
    assert len(set(owner[:6].tolist())) == 1 and len(set(owner[6:].tolist())) == 1
    assert owner[0] != owner[6]
    assert all(owner[c] == c for c in owner.tolist())  # a centre is its own
    assert dpc_knn(a[:1], 3).tolist() == [0]  # one row: its own cluster


@torch.no_grad()
def test_recycled_tokens_add_merged_slots_at_dropped_positions(llava):
    """16 image tokens, half dropped at layer 0; half of those recycled into 2 merged tokens,
    each at the position of a dropped token."""
    ids = prompt(1, 0)
    kept = {}
    for recycle in (0.0, 0.5):
        method = SparseVLM(prune_ratio=0.5, layers=(0,), recycle_ratio=recycle, merge_ratio=0.5)
        with tokenreduce.patch(llava, method) as handle:
            llava(input_ids=ids, pixel_values=pixels(1), use_cache=True)
            kept[recycle] = set(handle.trace.prefill_kept[0][0].tolist())
    plain, recycled = kept[0.0], kept[0.5]
    assert int((ids[0, sorted(plain)] == IMAGE).sum()) == N // 2
    assert plain < recycled and len(recycled - plain) == 2
    assert all(ids[0, i] == IMAGE for i in recycled - plain)


@dataclass
class Pooled(SparseVLM):
    """SparseVLM whose dropped image tokens all join the first dropped one."""

    name = "sparsevlm_pooled"
    own_dropped: bool = True

    def recycle(self, ctx, scores, chosen):
        n = chosen.shape[1]
        owner = torch.where(chosen, torch.arange(n), -1)
        dropped = (ctx.valid & ~chosen)[0].nonzero().squeeze(1)
        owner[0, dropped] = dropped[0] if self.own_dropped else int(chosen[0].nonzero()[0])
        if not self.own_dropped:
            owner[0, int(chosen[0].nonzero()[0])] = -1  # a chosen token told to leave
        return owner


@torch.no_grad()
def test_a_merged_slot_holds_the_mean_of_its_members(llava):
    """Layer 1's input: the chosen tokens' states from layer 0 as they were, and one slot at
    the first dropped token holding the mean of every dropped token's state."""
    ids = prompt(1, 0)
    seen = []
    hook = llava.model.language_model.layers[1].register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw.get("hidden_states", a[0] if a else None)[0]),
        with_kwargs=True,
    )
    kept = []
    try:
        llava(input_ids=ids, pixel_values=pixels(1))  # the full model's layer-0 output
        for method in (SparseVLM(layers=(0,), recycle_ratio=0.0), Pooled(layers=(0,))):
            with tokenreduce.patch(llava, method) as handle:
                llava(input_ids=ids, pixel_values=pixels(1), use_cache=True)
                kept.append(handle.trace.prefill_kept[0][0].tolist())
    finally:
        hook.remove()
    full, pooled = seen[0], seen[2]
    chosen = kept[0]
    dropped = sorted(set((ids[0] == IMAGE).nonzero().squeeze(1).tolist()) - set(chosen))
    assert kept[1] == sorted([*chosen, dropped[0]])
    slot = kept[1].index(dropped[0])
    torch.testing.assert_close(pooled[slot], full[dropped].mean(0))
    others = [i for i in range(len(kept[1])) if i != slot]
    torch.testing.assert_close(pooled[others], full[chosen], atol=0, rtol=0)


def test_bad_recycling_and_parameters_are_refused(llava, llama):
    with pytest.raises(InvalidParameter, match=r"merge_ratio=0 is invalid"):
        SparseVLM(merge_ratio=0)
    with pytest.raises(InvalidParameter, match=r"recycle_ratio=1.5 is invalid"):
        SparseVLM(recycle_ratio=1.5)
    with pytest.raises(InvalidParameter, match="sparsevlm removes the image tokens.*text-only"):
        tokenreduce.patch(llama, SparseVLM())
    with (
        torch.no_grad(),
        tokenreduce.patch(llava, Pooled(layers=(0,), own_dropped=False)),
        pytest.raises(ValueError, match="sparsevlm_pooled.recycle: every chosen token"),
    ):
        llava(input_ids=prompt(1, 0), pixel_values=pixels(1), use_cache=True)


def test_default_sites_follow_the_papers_layers():
    assert SparseVLM().sites(32) == (2, 6, 15)
    assert SparseVLM().sites(16) == (1, 3, 7)
    assert SparseVLM().sites(2) == (0,)
