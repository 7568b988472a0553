"""Adapter for Hugging Face decoder language models (Llama, Mistral, Qwen2, Qwen3, Gemma-3):
key-value cache reduction at the end of prefill and while decoding, and prompt pruning
during prefill.

Each attention module's ``forward`` is wrapped on the instance (never on the class) by an
:class:`~.attention.AttentionSite`, which calls the model's own forward once, so the fast
attention path (SDPA) stays on. When a layer's cache is filled by a prompt (prefill), the site
scores the cached entries with the method, keeps the best ``M`` per KV head and replaces the
cache layer's ``keys``/``values`` by the smaller tensors. Attention rows a method asks for (an
observation window, the last query) are computed there, for those rows only, from the layer's
input with RoPE applied.

After a reduction the cache no longer lines up with the token sequence, so each reduced
transformers cache layer carries a :class:`~.cache_layer.ReducedLayer` that owns its
bookkeeping: each entry's time step (its index in the fed sequence, padding included) and a
validity flag (False for padding and for the filler slots of a shorter prompt in a batch). It
builds that layer's attention mask: causal by time step, and limited to the window on
sliding-window layers. Position ids keep counting from the original prompt length:
``generate`` tracks them itself, and a plain forward without ``position_ids`` gets them from
the cache's ``get_seq_length``. Batches must be left-padded. ``handle.trace.kv_state(cache)``
reads the bookkeeping.

Prefill methods (:class:`~tokenreduce.methods.prefill.PrefillMethod`) select prompt tokens
after the attention of their site layers; the decoder layers from the first site on are
wrapped too (:mod:`.prefill`), and run on the selected tokens with their original positions
and a mask over them. Each layer's cache holds the tokens that ran it.

Modules: ``adapter`` (the adapter), ``attention`` (the attention wrapper's phases),
``cache_layer`` (the reduced cache layer), ``prefill`` (prefill methods' layers and
selection), ``family`` (what differs between model families), ``calls`` (transformers'
calls, caches and outputs found whatever a release names them), ``trace`` (what is recorded).
"""

from __future__ import annotations

from .adapter import HFDecoderAdapter
from .cache_layer import ReducedLayer
from .calls import cache_bytes, cache_kwargs, find_cache, output_cache
from .trace import KVTrace

__all__ = [
    "HFDecoderAdapter",
    "KVTrace",
    "ReducedLayer",
    "cache_bytes",
    "cache_kwargs",
    "find_cache",
    "output_cache",
]
