"""LazyLLM on tiny decoder LMs: several sites, revival of pruned tokens, batches, families.

The shared invariants (identity, exact budget, batched == per-sample on a 2-layer model) run
in ``tests/invariants/test_cache_methods.py``; this file covers what needs deeper models:
progressive sites, tokens coming back at a later site with the state they left with, and the
auxiliary cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import tokenreduce
from tokenreduce.adapters.hf_decoder import cache_kwargs, output_cache
from tokenreduce.methods import InvalidParameter, build
from tokenreduce.methods.lazyllm import LazyLLM

from ..lmutil import PROMPT as N
from ..lmutil import generate, prompt_keep, tiny_lm

pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def llama():
    return tiny_lm("llama", layers=4)


def _times(handle, cache, layer: int) -> set[int]:
    """Time steps of the real entries a layer's reduced cache holds (sample 0, KV head 0)."""
    ls = handle.trace.kv_state(cache)[layer]
    return set(ls.time[0, 0][ls.valid[0, 0]].tolist())


@dataclass
class Scripted(LazyLLM):
    """LazyLLM with a hand-set score: later tokens rank higher, and at layer ``boost_layer``
    token ``boost`` jumps to the top."""

    name = "lazyllm_scripted"
    boost: int = 1
    boost_layer: int = 1

    def scores(self, ctx):
        s = ctx.position.float()
        if ctx.layer == self.boost_layer:
            s = s.masked_fill(ctx.position == self.boost, 1e6)
        return s


# -- sites and budgets -------------------------------------------------------------------------
def test_default_sites_spread_over_depth():
    m = LazyLLM()
    assert m.sites(30) == (6, 14, 21)
    assert m.sites(4) == (0, 1, 2)
    assert m.sites(2) == (0,)  # a shallow model merges stages
    assert LazyLLM(num_stages=2).sites(12) == (5,)
    assert LazyLLM(layers=(3, 9)).sites(30) == (3, 9)
    # Later sites prune more; the last removes prune_ratio of the unprotected tokens.
    keep = [prompt_keep(m, 30, s, 101) for s in m.sites(30)]
    assert keep == [101 - 16, 101 - 33, 101 - 50] and prompt_keep(m, 30, m.sites(30)[-1], 101) == 51


def test_progressive_sites_shrink_the_layers(llama, batch):
    ids, mask = batch
    method = LazyLLM(prune_ratio=0.6)
    lengths = mask.sum(1).tolist()
    sites = method.sites(4)
    m = [max(prompt_keep(method, 4, s, n) for n in lengths) for s in sites]
    assert m[0] > m[1] > m[2]
    with tokenreduce.patch(llama, method) as handle:
        out = llama(ids, attention_mask=mask, use_cache=True)
        assert handle.trace.kv_entries == [None, *m]
        assert [k.shape[1] for k in handle.trace.prefill_kept] == m
        for row, n in enumerate(lengths):  # each sample keeps exactly its own budget
            counts = [int((k[row] >= 0).sum()) for k in handle.trace.prefill_kept]
            assert counts == [prompt_keep(method, 4, s, n) for s in sites]
    assert [layer.keys.shape[2] for layer in output_cache(out).layers] == [N, *m]
    assert out.logits.shape[1] == m[2] and bool(torch.isfinite(out.logits).all())


def test_nothing_removed_changes_nothing(llama, batch):
    """Every site runs (gathers, masks, auxiliary states) but keeps all tokens."""
    ids, mask = batch
    ref_tokens, ref_scores = generate(llama, ids, mask)
    with tokenreduce.patch(llama, LazyLLM(prune_ratio=0.02)) as handle:
        tokens, scores = generate(llama, ids, mask)
        assert handle.trace.kv_entries == [None, N, N, N]
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=1e-5)
    # A plain prefill then one token, without position ids, continues the positions.
    one, nxt = ids[:1], torch.tensor([[5]])
    ref = llama(nxt, **cache_kwargs(llama, output_cache(llama(one, use_cache=True)))).logits
    with tokenreduce.patch(llama, LazyLLM(prune_ratio=0.02)):
        out = llama(nxt, **cache_kwargs(llama, output_cache(llama(one, use_cache=True)))).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# -- batches and families ----------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
@pytest.mark.parametrize("revive", [True, False])
def test_batched_equals_per_sample(family, revive, batch):
    model = tiny_lm(family, layers=4)
    ids, mask = batch
    _, ref_scores = generate(model, ids, mask)
    method = LazyLLM(prune_ratio=0.75, revive=revive, keep_last=3)
    with tokenreduce.patch(model, method):
        tokens, scores = generate(model, ids, mask)
        for row in range(ids.shape[0]):
            t1, s1 = generate(model, ids[row : row + 1, mask[row] == 1])
            assert torch.equal(tokens[row : row + 1], t1), f"sample {row}"
            torch.testing.assert_close(scores[row : row + 1], s1, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(scores, ref_scores, atol=1e-3)


# -- revival -----------------------------------------------------------------------------------
def test_a_pruned_token_revives_with_the_state_it_left_with(llama, batch):
    """Token 1 is pruned after layer 0 and brought back after layer 1: layer 1 never ran it,
    layers 2 and 3 did, starting from its output of layer 0 (the auxiliary cache)."""
    ids = batch[0][:1, :20]
    method = Scripted(prune_ratio=0.5, layers=(0, 1))
    with tokenreduce.patch(llama, method) as handle:
        cache = output_cache(llama(ids, use_cache=True))
        kept = [k[0].tolist() for k in handle.trace.prefill_kept]
    # Site 0 removes floor(19 * 0.25) = 4 tokens (0..3); site 1 removes 9 of the 19.
    assert kept[0] == list(range(4, 20))
    assert kept[1] == [1, *range(10, 20)]
    assert 1 not in _times(handle, cache, 1)
    assert 1 in _times(handle, cache, 2) and 1 in _times(handle, cache, 3)
    # Its key at layer 2 comes from its residual state after layer 0, unchanged since.
    h0 = llama(ids, output_hidden_states=True).hidden_states[1][:, 1:2]  # output of layer 0
    layer = llama.model.layers[2]
    x = layer.input_layernorm(h0)
    k = layer.self_attn.k_proj(x).view(1, 1, 2, 16).transpose(1, 2)
    cos, sin = llama.model.rotary_emb(x, position_ids=torch.tensor([[1]]))
    k = k * cos[:, None] + torch.cat([-k[..., 8:], k[..., :8]], dim=-1) * sin[:, None]
    ls = handle.trace.kv_state(cache)[2]
    slot = int((ls.time[0, 0] == 1).nonzero())
    torch.testing.assert_close(cache.layers[2].keys[:, :, slot : slot + 1], k)


def test_without_revival_the_kept_sets_are_nested(llama, batch):
    ids = batch[0][:1, :20]
    method = Scripted(prune_ratio=0.5, layers=(0, 1), revive=False)
    with tokenreduce.patch(llama, method) as handle:
        cache = output_cache(llama(ids, use_cache=True))
        kept = [set(k[0].tolist()) for k in handle.trace.prefill_kept]
    assert 1 not in kept[1] and kept[1] <= kept[0]
    assert 1 not in _times(handle, cache, 2)


def test_keep_last_protects_the_end_of_the_prompt(llama, batch):
    ids = batch[0][:1, :20]

    @dataclass
    class PreferEarly(LazyLLM):
        name = "lazyllm_early"

        def scores(self, ctx):
            return -ctx.position.float()

    with tokenreduce.patch(llama, PreferEarly(prune_ratio=0.5, keep_last=4)) as handle:
        llama(ids)
        kept = handle.trace.prefill_kept[-1][0].tolist()
    # 16 unprotected tokens, 8 removed: the 8 earliest survive, plus the last 4.
    assert kept == [*range(8), 16, 17, 18, 19]


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, match",
    [
        ("lazyllm:prune_ratio=1.0", r"prune_ratio=1.0 is invalid.*\[0, 1\)"),
        ("lazyllm:num_stages=1", "num_stages=1 is invalid.*>= 2"),
        ("lazyllm:keep_last=0", "keep_last=0 is invalid.*>= 1"),
        ("lazyllm:layers=[3,1]", r"layers=\(3, 1\) is invalid.*ascending"),
        ("lazyllm:revive=1", "revive=1 is invalid"),
    ],
)
def test_bad_parameters(spec, match):
    with pytest.raises(InvalidParameter, match=match):
        build(spec)


def test_site_on_the_last_layer_is_refused(llama):
    with pytest.raises(InvalidParameter, match=r"layers contains 3.*allowed: 0..2"):
        tokenreduce.patch(llama, "lazyllm:layers=[1,3]")
