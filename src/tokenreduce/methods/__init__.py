"""Token reduction methods: one small dataclass per named method, registered by name.

Each method class is importable from here under its own name (``tokenreduce.methods.ToMe``,
``EViT``, ``SnapKV``, ...), and by its registered name through :func:`get` / :func:`build`.

>>> from tokenreduce import methods
>>> [n for n in methods.available() if issubclass(methods.get(n), methods.TokenMethod)]
... # doctest: +NORMALIZE_WHITESPACE
['cdpruner', 'divprune', 'downsample', 'dynamicvit', 'evit', 'pool', 'power_bert', 'prunemerge',
 'random', 'tome', 'topk', 'uniform', 'visionzip', 'vispruner']
>>> methods.build("tome:r=13")
ToMe(r=13, inflect=0.0, prop_attn=True, schedule=None)
>>> methods.ToMe(r=13) == methods.build("tome:r=13")
True
"""

from .base import (
    InvalidParameter,
    Method,
    PerInputTokenMethod,
    TokenMethod,
    available,
    build,
    describe,
    get,
    param,
    parse_spec,
    register,
)  # fmt: skip
from .cdpruner import CDPruner
from .divprune import DivPrune
from .downsample import Downsample
from .dynamicvit import DynamicViT
from .evit import EViT
from .fastv import FastV
from .h2o import H2O
from .knorm import KNorm
from .kv_base import KVCacheMethod
from .kv_random import KVRandom
from .lazyllm import LazyLLM
from .llmlingua import LLMLingua
from .local_base import LocalMethod
from .longllmlingua import LongLLMLingua
from .ltp import LTP
from .pool import Pool
from .power_bert import PoWERBERT
from .prefill import PrefillMethod
from .prompt_base import PromptMethod
from .prumerge import PruMerge, PruMergePlus
from .prunemerge import PruneMerge
from .pruning import KeepRatioMethod
from .pyramiddrop import PyramidDrop
from .pyramidkv import PyramidKV
from .random import RandomPrune
from .random_merge import RandomMerge
from .selective_context import SelectiveContext
from .snapkv import SnapKV
from .sparsevlm import SparseVLM
from .streamingllm import StreamingLLM
from .toca import ToCa
from .tofu import ToFu
from .tome import ToMe
from .tomesd import ToMeSD
from .topk import TopK
from .tova import TOVA
from .uniform import Uniform
from .visionzip import VisionZip
from .vispruner import VisPruner
from .vtw import VTW

__all__ = [
    "CDPruner", "DivPrune", "Downsample", "DynamicViT", "EViT", "FastV", "H2O", "InvalidParameter", "KNorm",
    "KVCacheMethod", "KVRandom", "KeepRatioMethod", "LLMLingua", "LTP", "LazyLLM", "LocalMethod", "LongLLMLingua",
    "Method", "PoWERBERT", "Pool", "PerInputTokenMethod", "PrefillMethod", "PromptMethod",
    "PruMerge", "PruMergePlus", "PruneMerge", "PyramidDrop", "PyramidKV", "RandomMerge", "RandomPrune", "SelectiveContext", "SnapKV", "SparseVLM", "StreamingLLM", "TOVA",
    "ToCa", "ToFu", "ToMe", "ToMeSD", "TokenMethod", "TopK", "Uniform", "VTW", "VisPruner", "VisionZip", "available", "build",
    "describe", "get", "param", "parse_spec", "register",
]  # fmt: skip
