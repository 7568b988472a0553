"""FastV: its own parameter checks (the shared prefill suite is
``tests/invariants/test_cache_methods.py``, the multi-site case ``test_lazyllm.py``)."""

from __future__ import annotations

import pytest

import tokenreduce
from tokenreduce import methods
from tokenreduce.methods.base import InvalidParameter

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def test_fastv_bad_input(llama):
    with pytest.raises(InvalidParameter, match=r"prune_ratio=1.0 is invalid.*\[0, 1\)"):
        methods.build("fastv:prune_ratio=1.0")
    with pytest.raises(InvalidParameter, match="layer=1 leaves no layer"):
        tokenreduce.patch(llama, "fastv:layer=1")
