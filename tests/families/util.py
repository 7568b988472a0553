"""Helpers of the test-only family tests (``placed`` and ``identity`` are conftest's)."""

from __future__ import annotations

from tokenreduce.methods import available, get
from tokenreduce.methods.base import TokenMethod

#: the token methods the test-only families take (none gives the instruction ``needs_query``
#: methods read; those run on the real vision-language families)
TOKEN_METHODS = [
    n for n in available() if issubclass(get(n), TokenMethod) and not get(n).needs_query
]
