"""Token reduction methods: one small dataclass per named method, registered by name.

>>> from tokenreduce import methods
>>> [n for n in methods.available() if methods.get(n).kind == "tokens"]
['evit', 'pool', 'prunemerge', 'random', 'tome', 'topk']
>>> methods.build("tome:r=13")
ToMe(r=13, inflect=0.0, prop_attn=True, schedule=None)
"""

from . import (  # noqa: F401  (registration)  # noqa: F401,I001
    evit,
    fastv,
    h2o,
    knorm,
    kv_random,
    lazyllm,
    pool,
    prunemerge,
    pyramidkv,
    random,
    snapkv,
    streamingllm,
    tome,
    topk,
    tova,
)
from .base import InvalidParameter, Method, available, build, describe, get, parse_spec, register

__all__ = [
    "InvalidParameter", "Method", "available", "build", "describe", "get", "parse_spec", "register",
]
