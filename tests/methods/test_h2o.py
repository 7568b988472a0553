"""H2O: the attention it accumulates while decoding, against eager attention."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.adapters.hf_decoder import output_cache

from ..lmutil import make, tiny_lm

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def test_h2o_accumulates_attention_while_decoding(llama, batch):
    """With nothing evicted, each entry's running total equals the attention it received from
    every query of the whole sequence (prompt and generated), computed by eager attention."""
    ids = batch[0][:1, :24]
    with tokenreduce.patch(llama, make("h2o", cache_budget=64, decode_every=3)) as handle:
        out = llama.generate(
            ids, max_new_tokens=7, min_new_tokens=7, do_sample=False, pad_token_id=0,
            return_dict_in_generate=True,
        )  # fmt: skip
    state = handle.trace.kv_state(output_cache(out))
    seq = out.sequences[:, :-1]  # the last token was never fed
    eager = tiny_lm("llama", layers=2)
    eager.config._attn_implementation = "eager"
    for layer in eager.model.layers:
        layer.self_attn.config._attn_implementation = "eager"
    attn = eager(seq, output_attentions=True).attentions
    for i, probs in enumerate(attn):
        want = probs.sum(2).view(1, 2, 2, seq.shape[1]).mean(2)  # (B, Hkv, T)
        ls = state[i]
        assert ls.time.shape[-1] == seq.shape[1]
        got = torch.zeros_like(want).scatter(-1, ls.time, ls.accumulated)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
