"""The Hugging Face decoder adapter: plain forwards, the other families (Qwen3, Gemma-3 with
sliding layers), and the models and inputs it refuses."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.adapters.hf_decoder import cache_kwargs, output_cache
from tokenreduce.methods.base import InvalidParameter

from ..lmutil import PROMPT, generate, make, tiny_lm

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.mark.parametrize("name", ["snapkv", "streamingllm"])
def test_plain_forward_continues_positions(name, llama, batch):
    """Prefill then one more token by plain forwards, without position ids."""
    ids = batch[0][:1]
    nxt = torch.tensor([[5]])
    ref = llama(nxt, **cache_kwargs(llama, output_cache(llama(ids, use_cache=True)))).logits
    with tokenreduce.patch(llama, make(name, cache_budget=PROMPT)):
        cache = output_cache(llama(ids, use_cache=True))
        out = llama(nxt, **cache_kwargs(llama, cache)).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
@pytest.mark.parametrize("name", ["snapkv", "h2o"])
def test_other_families_batched_and_budget(family, name, batch):
    model = tiny_lm(family, layers=3 if family == "gemma3" else 2)
    ids, mask = batch
    ref_tokens, _ = generate(model, ids, mask)
    with tokenreduce.patch(model, make(name, cache_budget=PROMPT)):
        tokens, _ = generate(model, ids, mask)
    assert torch.equal(tokens, ref_tokens)
    with tokenreduce.patch(model, make(name, compression_ratio=0.5)) as handle:
        tokens, scores = generate(model, ids, mask)
        t1, s1 = generate(model, ids[1:2, mask[1] == 1])
    assert torch.equal(tokens[1:2], t1)
    torch.testing.assert_close(scores[1:2], s1, atol=1e-4, rtol=1e-4)
    # Gemma's sliding layers (window 16 < prompt) keep their own bounded cache.
    n_reduced = sum(e is not None for e in handle.trace.kv_entries)
    assert n_reduced == (1 if family == "gemma3" else 2)


def test_unsupported_architecture_names_supported_ones():
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)
    model = transformers.GPT2LMHeadModel(cfg)
    with pytest.raises(TypeError, match=r"GPT2LMHeadModel.*LlamaForCausalLM.*Qwen3ForCausalLM"):
        tokenreduce.patch(model, "snapkv")


def test_token_method_on_lm_is_refused(llama):
    with pytest.raises(InvalidParameter, match="KV-cache or prefill method: .*fastv.*snapkv"):
        tokenreduce.patch(llama, "topk")


def test_right_padding_is_refused(llama, batch):
    ids, mask = batch
    with tokenreduce.patch(llama, "knorm"), pytest.raises(ValueError, match="left padding"):
        llama(ids, attention_mask=mask.flip(1), use_cache=True)
