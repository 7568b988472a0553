"""The shared KV-cache base (``methods/kv_base.py``): protected windows and sinks against
the budget and the prompt, and a ``cache_budget`` held while decoding."""

from __future__ import annotations

import pytest

import tokenreduce
from tokenreduce import methods
from tokenreduce.adapters.hf_decoder import output_cache
from tokenreduce.methods.base import InvalidParameter

from ..lmutil import cache_lengths, make

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def test_budget_smaller_than_protected_tokens(llama, batch):
    with pytest.raises(InvalidParameter, match="cache_budget=4 is smaller than the 6"):
        methods.build("snapkv:window_size=6,cache_budget=4")
    with pytest.raises(InvalidParameter, match="cache_budget=1 is smaller"):
        methods.build("streamingllm:n_sink=4,cache_budget=1")
    # A ratio that leaves fewer entries than the window fails when the prompt is known.
    spec = "snapkv:window_size=30,compression_ratio=0.5"
    with tokenreduce.patch(llama, spec), pytest.raises(InvalidParameter, match="fewer than the 30"):
        llama(batch[0][:1], use_cache=True)


def test_window_larger_than_prompt(llama, batch):
    short = batch[0][:1, :5]
    for spec in ("snapkv:window_size=8,compression_ratio=0.2", "streamingllm:n_sink=8"):
        with (
            tokenreduce.patch(llama, spec),
            pytest.raises(InvalidParameter, match="prompt has 5 tokens"),
        ):
            llama(short, use_cache=True)


def test_decode_every_cache_budget_lets_a_short_prompt_grow_to_it(llama, batch):
    ids = batch[0][:1, :20]
    with tokenreduce.patch(llama, make("snapkv", cache_budget=24, decode_every=1)):
        out = llama.generate(
            ids, max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0,
            return_dict_in_generate=True,
        )  # fmt: skip
    # 20 prompt entries, 9 decoding forwards: grows to 24, then held there (24 + 1 appended
    # by the forward that produced the last token, reduced at once).
    assert cache_lengths(output_cache(out)) == [24, 24]
