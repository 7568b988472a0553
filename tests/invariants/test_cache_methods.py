"""Invariants of every registered KV-cache method on Hugging Face decoder LMs.

Parametrised over ``tokenreduce.methods.available()`` filtered to the ``KVCacheMethod`` and
``PrefillMethod`` classes, built with their own ``test_params``, so a
newly registered cache method is tested here without editing this file. The model is a tiny,
randomly initialised Llama with grouped KV heads (``lmutil.tiny_lm``); the other families are
in ``tests/adapters/test_hf_decoder.py``, what is special to one method in
``tests/methods/test_<method>.py``.
"""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce import methods
from tokenreduce.adapters.hf_decoder import cache_bytes, output_cache
from tokenreduce.methods.base import InvalidParameter

from ..lmutil import PROMPT, cache_lengths, generate, info, make, prompt_keep

transformers = pytest.importorskip("transformers")

KV_METHODS = [n for n in methods.available() if issubclass(methods.get(n), methods.KVCacheMethod)]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


# -- identity ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", KV_METHODS)
def test_zero_compression_is_identity(name, llama, batch):
    ids, mask = batch
    ref_logits = llama(ids, attention_mask=mask).logits
    ref_tokens, ref_scores = generate(llama, ids, mask)
    with tokenreduce.patch(llama, make(name, compression_ratio=0.0)):
        logits = llama(ids, attention_mask=mask).logits
        tokens, scores = generate(llama, ids, mask)
    assert torch.equal(logits, ref_logits)
    assert torch.equal(tokens, ref_tokens)
    assert torch.equal(scores, ref_scores)


@pytest.mark.parametrize("name", KV_METHODS)
def test_budget_of_full_length_changes_nothing(name, llama, batch):
    """The reduction path runs (cache rebuilt, masks and positions handled by the adapter)
    but keeps every entry: generation must continue exactly as without it."""
    ids, mask = batch
    ref_tokens, ref_scores = generate(llama, ids, mask)
    with tokenreduce.patch(llama, make(name, cache_budget=PROMPT)) as handle:
        tokens, scores = generate(llama, ids, mask)
        assert handle.trace.kv_entries == [PROMPT, PROMPT]
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=1e-5)


# -- the cache really shrinks ------------------------------------------------------------------
@pytest.mark.parametrize("name", KV_METHODS)
@pytest.mark.parametrize("budget", [{"compression_ratio": 0.5}, {"cache_budget": 13}])
def test_cache_holds_exactly_the_budget(name, budget, llama, batch):
    ids, mask = batch
    method = make(name, **budget)
    lengths = mask.sum(1).tolist()
    full = cache_bytes(output_cache(llama(ids, attention_mask=mask, use_cache=True)))
    with tokenreduce.patch(llama, method) as handle:
        out = llama(ids, attention_mask=mask, use_cache=True)
    cache = output_cache(out)
    for layer, cl in enumerate(cache.layers):
        want = [method.budget(info(2)).keep(layer, n) for n in lengths]
        assert cl.keys.shape == (3, 2, max(want), 16)
        assert cl.values.shape == cl.keys.shape
        assert handle.trace.kv_entries[layer] == max(want)
        valid = handle.trace.kv_state(cache)[layer].valid  # (B, Hkv, M)
        assert valid.sum(-1).tolist() == [[w, w] for w in want]
    expected = sum(max(method.budget(info(2)).keep(i, n) for n in lengths) for i in range(2))
    bytes_ = cache_bytes(cache)
    assert bytes_ == full * expected // (2 * PROMPT)
    assert handle.gflops() < handle.baseline_gflops()


# -- batches -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", KV_METHODS)
def test_batched_equals_per_sample(name, llama, batch):
    ids, mask = batch
    method = make(name, compression_ratio=0.5)
    with tokenreduce.patch(llama, method):
        tokens, scores = generate(llama, ids, mask)
        for row in range(ids.shape[0]):
            real = ids[row : row + 1, mask[row] == 1]
            t1, s1 = generate(llama, real)
            assert torch.equal(tokens[row : row + 1], t1), f"sample {row}"
            torch.testing.assert_close(scores[row : row + 1], s1, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", KV_METHODS)
def test_reduction_changes_generation_and_unpatch_restores(name, llama, batch):
    ids, mask = batch
    ref_tokens, ref_scores = generate(llama, ids, mask)
    with tokenreduce.patch(llama, make(name, compression_ratio=0.75)):
        _, scores = generate(llama, ids, mask)
    assert not torch.allclose(scores, ref_scores, atol=1e-3)
    assert "forward" not in vars(llama.model.layers[0].self_attn)
    tokens, scores2 = generate(llama, ids, mask)
    assert torch.equal(tokens, ref_tokens) and torch.equal(scores2, ref_scores)


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", KV_METHODS)
@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, True, "half"])
def test_ratio_outside_range(name, ratio):
    with pytest.raises(InvalidParameter, match=r"compression_ratio.*\[0, 1\)"):
        make(name, compression_ratio=ratio)


@pytest.mark.parametrize("name", KV_METHODS)
def test_bad_cache_budget(name):
    with pytest.raises(InvalidParameter, match="cache_budget"):
        make(name, cache_budget=0)


# -- holding the budget while decoding -------------------------------------------------------
DECODING = [n for n in KV_METHODS if methods.get(n).decodes]


@pytest.mark.parametrize("name", DECODING)
@pytest.mark.parametrize("budget", [{"cache_budget": 12}, {"compression_ratio": 0.5}])
def test_decode_every_holds_the_budget(name, budget, llama, batch):
    """Every layer holds its own budget (PyramidKV: its per-layer one) per sample."""
    ids, mask = batch
    method = make(name, decode_every=4, **budget)
    with tokenreduce.patch(llama, method) as handle:
        out = llama.generate(
            ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False,
            pad_token_id=0, return_dict_in_generate=True,
        )  # fmt: skip
    # 11 decoding forwards: reduced back to the budget after the 4th and 8th, then 3 appended.
    lengths = mask.sum(1).tolist()
    cache = output_cache(out)
    for layer in range(2):
        hold = [method.decode_keep(layer, 2, n) for n in lengths]
        assert hold == [method.budget(info(2)).keep(layer, n) for n in lengths]  # prompts >= budget
        assert cache_lengths(cache)[layer] == max(hold) + 3
        valid = handle.trace.kv_state(cache)[layer].valid
        assert valid.sum(-1).tolist() == [[h + 3, h + 3] for h in hold]


@pytest.mark.parametrize("name", DECODING)
def test_decode_every_with_budget_of_full_length_changes_nothing(name, llama, batch):
    """A budget above prompt plus generated tokens: every reduction while decoding runs (the
    cache is re-gathered, masks rebuilt) but keeps all entries."""
    ids, mask = batch
    ref_tokens, ref_scores = generate(llama, ids, mask, steps=8)
    with tokenreduce.patch(llama, make(name, cache_budget=PROMPT + 8, decode_every=2)):
        tokens, scores = generate(llama, ids, mask, steps=8)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", DECODING)
def test_decode_every_batched_equals_per_sample(name, llama, batch):
    ids, mask = batch
    method = make(name, compression_ratio=0.5, decode_every=3)
    with tokenreduce.patch(llama, method):
        tokens, scores = generate(llama, ids, mask, steps=10)
        for row in range(ids.shape[0]):
            t1, s1 = generate(llama, ids[row : row + 1, mask[row] == 1], steps=10)
            assert torch.equal(tokens[row : row + 1], t1), f"sample {row}"
            torch.testing.assert_close(scores[row : row + 1], s1, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", DECODING)
def test_decode_every_changes_generation(name, llama, batch):
    ids, mask = batch
    with tokenreduce.patch(llama, make(name, cache_budget=30)):
        _, once = generate(llama, ids, mask, steps=12)
    with tokenreduce.patch(llama, make(name, cache_budget=30, decode_every=2)):
        _, held = generate(llama, ids, mask, steps=12)
    assert not torch.allclose(once, held, atol=1e-4)


def test_decode_every_refused_where_the_score_needs_prompt_queries():
    for name in set(KV_METHODS) - set(DECODING):
        with pytest.raises(InvalidParameter, match="decode_every=2 is not supported"):
            make(name, decode_every=2)
    with pytest.raises(InvalidParameter, match="decode_every=-1"):
        make("tova", decode_every=-1)


# -- prefill pruning ---------------------------------------------------------------------------
ALL_PREFILL = [n for n in methods.available() if issubclass(methods.get(n), methods.PrefillMethod)]
#: those that also prune a text-only model's prompt (the others act on image tokens only)
PREFILL = [n for n in ALL_PREFILL if not methods.get(n).needs_images]


def make_prefill(name: str, ratio: float) -> methods.Method:
    cls = methods.get(name)
    return cls.for_tests(**{cls.budget_param: ratio})


@pytest.mark.parametrize("name", PREFILL)
def test_prefill_zero_is_identity_and_nothing_removed_changes_nothing(name, llama, batch):
    ids, mask = batch
    ref_logits = llama(ids, attention_mask=mask).logits
    ref_tokens, ref_scores = generate(llama, ids, mask)
    with tokenreduce.patch(llama, make_prefill(name, 0.0)):
        assert torch.equal(llama(ids, attention_mask=mask).logits, ref_logits)
        tokens, scores = generate(llama, ids, mask)
    assert torch.equal(tokens, ref_tokens) and torch.equal(scores, ref_scores)
    # A ratio too small to remove a token still runs the pruned path (gathers, own masks).
    with tokenreduce.patch(llama, make_prefill(name, 0.01)) as handle:
        tokens, scores = generate(llama, ids, mask)
        assert handle.trace.kv_entries == [None, PROMPT]
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", PREFILL)
def test_prefill_pruning_shrinks_later_layers(name, llama, batch):
    ids, mask = batch
    method = make_prefill(name, 0.5)
    lengths = mask.sum(1).tolist()
    last = method.sites(2)[-1]
    m = max(prompt_keep(method, 2, last, n) for n in lengths)
    with tokenreduce.patch(llama, method) as handle:
        out = llama(ids, attention_mask=mask, use_cache=True)
        assert handle.trace.kv_entries == [None, m]
    assert cache_lengths(output_cache(out)) == [PROMPT, m]
    assert out.logits.shape[1] == m  # logits of the kept tokens, the last one included
    assert bool(torch.isfinite(out.logits).all())  # filler slots never poison a row


@pytest.mark.parametrize("name", PREFILL)
def test_prefill_batched_equals_per_sample(name, llama, batch):
    ids, mask = batch
    ref_tokens, _ = generate(llama, ids, mask)
    with tokenreduce.patch(llama, make_prefill(name, 0.5)):
        tokens, scores = generate(llama, ids, mask)
        for row in range(ids.shape[0]):
            t1, s1 = generate(llama, ids[row : row + 1, mask[row] == 1])
            assert torch.equal(tokens[row : row + 1], t1), f"sample {row}"
            torch.testing.assert_close(scores[row : row + 1], s1, atol=1e-4, rtol=1e-4)
    assert not torch.equal(tokens, ref_tokens)


# -- prefill pruning of a vision-language model's image tokens ---------------------------------
@pytest.fixture(scope="module")
def llava():
    from tokenreduce.adapters import HFLlavaAdapter

    return HFLlavaAdapter.examples()["llava"]()


@pytest.mark.parametrize("name", ALL_PREFILL)
@torch.no_grad()
def test_prefill_on_images_batched_equals_per_sample(name, llava):
    """Prompts with one and two images, left-padded, generate as each alone; every text token
    stays, and image tokens go."""
    from ..adapters.test_hf_llava import IMAGE, batched_equals_alone

    ids, mask, kept = batched_equals_alone(llava, methods.get(name).for_tests())  # heavy
    for b in range(2):
        real = mask[b] == 1
        text = ((ids[b] != IMAGE) & real).nonzero().squeeze(1).tolist()
        kept_b = kept[b][kept[b] >= 0]
        assert set(text) <= set(kept_b.tolist())
        assert int((ids[b, kept_b] == IMAGE).sum()) < int((ids[b] == IMAGE).sum())


@pytest.mark.parametrize("name", [n for n in ALL_PREFILL if n not in PREFILL])
def test_an_image_only_method_refuses_a_text_only_model(name, llama):
    with pytest.raises(InvalidParameter, match=f"{name} removes the image tokens.*text-only"):
        tokenreduce.patch(llama, methods.get(name).for_tests())
