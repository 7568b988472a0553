"""Decoder LMs across transformers releases and the ways users drive them: the cache is found
however it is passed, a reduction that does not take effect raises, sliding-window layers
reduce per sample inside a batch, and a compressed cache can be continued with ``generate``."""

from __future__ import annotations

import copy

import pytest
import torch

import tokenreduce
from tokenreduce import ReductionNotApplied, methods
from tokenreduce.adapters.hf_decoder import cache_kwargs, find_cache, output_cache

from ..lmutil import tiny_lm

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


def _prompt(n: int, seed: int = 3) -> torch.Tensor:
    return torch.randint(3, 101, (1, n), generator=torch.Generator().manual_seed(seed))


class _UnknownCache:
    """A cache handed over as an object of a type the adapter does not know (a renamed or
    wrapped argument in some future release): it still works for the model."""

    def __init__(self, cache) -> None:
        self._cache = cache

    def __getattr__(self, name):
        return getattr(self._cache, name)


def _hide_cache_from_attention(monkeypatch, layer_cls) -> None:
    """Decoder layers that hand their attention the cache inside an unknown wrapper."""
    original = layer_cls.forward

    def forward(self, hidden_states, *args, **kwargs):
        kwargs = {k: _UnknownCache(v) if find_cache(v) is not None else v
                  for k, v in kwargs.items()}  # fmt: skip
        return original(self, hidden_states, *args, **kwargs)

    monkeypatch.setattr(layer_cls, "forward", forward)


def _bypass_instance_forward(monkeypatch, module_cls) -> None:
    """Modules called through their class's ``forward``, never the instance attribute (a
    compiled or re-dispatched call path): patched sites never run."""
    monkeypatch.setattr(
        module_cls, "__call__", lambda self, *a, **k: type(self).forward(self, *a, **k)
    )


# -- never silent --------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["snapkv:window_size=4,compression_ratio=0.5", "knorm"])
def test_a_cache_the_adapter_cannot_see_raises(spec, llama, monkeypatch):
    _hide_cache_from_attention(monkeypatch, type(llama.model.layers[0]))
    ids = _prompt(20)
    with tokenreduce.patch(llama, spec), pytest.raises(ReductionNotApplied) as err:
        llama.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0)
    msg = str(err.value)
    assert "LlamaForCausalLM" in msg and spec.split(":")[0] in msg
    assert f"transformers {transformers.__version__}" in msg and "torch" in msg
    assert "never received" in msg


@pytest.mark.parametrize("spec", ["snapkv", "fastv:layer=0,prune_ratio=0.5"])
def test_sites_that_never_run_raise(spec, llama, monkeypatch):
    _bypass_instance_forward(monkeypatch, type(llama.model.layers[0].self_attn))
    with (
        tokenreduce.patch(llama, spec),
        pytest.raises(ReductionNotApplied, match="without reaching"),
    ):
        llama(_prompt(20), use_cache=True)


def test_kv_method_without_a_cache_raises(llama):
    with (
        tokenreduce.patch(llama, "snapkv:window_size=4"),
        pytest.raises(ReductionNotApplied, match="use_cache=True"),
    ):
        llama(_prompt(20), use_cache=False)


def test_an_inactive_method_passes_without_a_cache(llama):
    ids = _prompt(20)
    ref = llama(ids, use_cache=False).logits
    with tokenreduce.patch(llama, "snapkv:compression_ratio=0"):
        torch.testing.assert_close(llama(ids, use_cache=False).logits, ref, rtol=0, atol=0)


def test_the_issue_example_compresses(llama):
    """Tiny Llama, a 20-token prompt, snapkv at 0.5: the cache holds 10 entries per layer."""
    with tokenreduce.patch(llama, "snapkv:window_size=4,compression_ratio=0.5") as handle:
        out = llama.generate(_prompt(20), max_new_tokens=1, do_sample=False, pad_token_id=0,
                             return_dict_in_generate=True)  # fmt: skip
        assert handle.trace.kv_entries == [10, 10]
    assert [layer.keys.shape[-2] for layer in output_cache(out).layers] == [10, 10]


# -- sliding-window layers in a batch ------------------------------------------------------------
@pytest.mark.parametrize("name", ["snapkv", "streamingllm", "knorm"])
def test_sliding_layers_batched_equals_per_sample(name):
    """Gemma-3 with a 16-token sliding window and a global layer; prompts of 20 and 12 tokens
    left-padded to 20. The short prompt's sliding layer holds all of it and is reduced, the
    long one's has dropped part of it and is left alone: in the batch as alone."""
    model = tiny_lm("gemma3", layers=3)
    with torch.no_grad():  # Gemma's key norm starts at unit gain: every key would tie for knorm
        for layer in model.model.layers:
            layer.self_attn.k_norm.weight.normal_(
                0.0, 0.5, generator=torch.Generator().manual_seed(2)
            )
    spec = methods.get(name).for_tests(compression_ratio=0.5)  # windows sized by test_params
    long, short = _prompt(20, seed=5), _prompt(12, seed=6)
    ids = torch.cat([long, torch.cat([torch.zeros(1, 8, dtype=torch.long), short], 1)])
    mask = (torch.arange(20) >= torch.tensor([[0], [8]])).long()
    kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0,
              output_scores=True, return_dict_in_generate=True)  # fmt: skip
    with tokenreduce.patch(model, spec):
        both = model.generate(ids, attention_mask=mask, **kw)
        alone = [model.generate(p, **kw) for p in (long, short)]
    for row, one in enumerate(alone):
        scores = torch.stack(both.scores, 1)[row : row + 1]
        torch.testing.assert_close(scores, torch.stack(one.scores, 1), atol=1e-4, rtol=1e-4)


# -- continuing on a compressed cache ------------------------------------------------------------
def _compress(model, context):
    return output_cache(model(context, use_cache=True))


def test_generate_continues_a_compressed_cache(llama):
    """Compress a document once, then ask with ``generate(context + question, cache)``: the
    cache reports every token it has seen, so only the question is fed, at the right positions;
    several questions on copies of one compressed cache each match their own run."""
    spec = "snapkv:window_size=4,compression_ratio=0.5"
    context = _prompt(20)
    questions = [_prompt(6, seed=s) for s in (7, 8)]
    with tokenreduce.patch(llama, spec), torch.no_grad():
        cache = _compress(llama, context)
        assert [layer.keys.shape[-2] for layer in cache.layers] == [10, 10]
        assert cache.get_seq_length() == 20
        for q in questions:
            documented = llama(q, **cache_kwargs(llama, copy.deepcopy(cache))).logits[:, -1]
            out = llama.generate(
                torch.cat([context, q], 1), **cache_kwargs(llama, copy.deepcopy(cache)),
                max_new_tokens=1, do_sample=False, pad_token_id=0, output_scores=True,
                return_dict_in_generate=True,
            )  # fmt: skip
            torch.testing.assert_close(out.scores[0], documented, atol=1e-4, rtol=1e-4)
            # The same as compressing afresh and feeding the question.
            fresh = _compress(llama, context)
            again = llama(q, **cache_kwargs(llama, fresh)).logits[:, -1]
            torch.testing.assert_close(again, documented, atol=1e-5, rtol=1e-5)
    # The reduction changed the answer's logits (the test is not vacuous).
    full = llama(torch.cat([context, questions[-1]], 1)).logits[:, -1]
    assert not torch.allclose(full, documented, atol=1e-3)


def test_positions_continue_after_the_compressed_prompt(llama):
    """Without the reduction a question fed after the context sits at positions 20..25; the
    compressed cache must give it the same positions (a cache of 10 entries must not make
    them 10..15)."""
    context, q = _prompt(20), _prompt(6, seed=9)
    with tokenreduce.patch(llama, "snapkv:window_size=4,compression_ratio=0"):  # keeps all
        ref = llama(q, **cache_kwargs(llama, _compress(llama, context))).logits
    budget = methods.build("snapkv:window_size=4,cache_budget=20")  # keeps all, reduction path
    with tokenreduce.patch(llama, budget):
        cache = _compress(llama, context)
        out = llama(q, **cache_kwargs(llama, cache)).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
