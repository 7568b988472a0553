"""SnapKV: what is special to it (the shared suite is ``tests/invariants/test_cache_methods.py``)."""

from __future__ import annotations

import pytest

import tokenreduce
from tokenreduce.adapters.hf_decoder import output_cache

from ..lmutil import PROMPT, cache_lengths, make

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def test_ratio_budget_removes_the_ratio(llama, batch):
    ids = batch[0][:1]
    for ratio in (0.25, 0.5, 0.75):
        with tokenreduce.patch(llama, make("snapkv", compression_ratio=ratio)):
            cache = output_cache(llama(ids, use_cache=True))
        assert cache_lengths(cache) == [PROMPT - int(PROMPT * ratio)] * 2
