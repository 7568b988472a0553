"""Helpers of the test-only family tests (``placed`` and ``identity`` are conftest's)."""

from __future__ import annotations

from tokenreduce.methods import available, get
from tokenreduce.methods.base import TokenMethod

TOKEN_METHODS = [n for n in available() if issubclass(get(n), TokenMethod)]
