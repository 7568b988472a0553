"""Key-value cache helpers for language models, whatever the transformers release names
its caches and outputs (used by the benchmark tasks, and by anyone measuring a cache).

* :func:`output_cache` — the cache object a forward or ``generate`` returned (None if none);
* :func:`cache_bytes` — bytes held by a cache's key and value tensors (int);
* :func:`cache_kwargs` — the keyword arguments that pass a cache into a forward;
* :func:`find_cache` — the cache among a forward's arguments.

>>> out = model(ids, use_cache=True)
>>> tokenreduce.lm.cache_bytes(tokenreduce.lm.output_cache(out))
"""

from __future__ import annotations

from .adapters import cache_bytes, cache_kwargs, find_cache, output_cache

__all__ = ["cache_bytes", "cache_kwargs", "find_cache", "output_cache"]
