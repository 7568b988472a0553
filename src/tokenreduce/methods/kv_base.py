"""Shared parameters and contract of the key-value cache methods (``kind = "kv_cache"``).

A cache method scores every cached entry of a layer, per KV head, once the prompt has been
read (end of prefill); the adapter keeps the best-scoring entries and physically shrinks the
cache tensors. Every KV head of a layer keeps the same number of entries, so the cache stays
dense. The prompt's own outputs are unchanged: only the tokens generated afterwards attend to
the reduced cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..core.budgets import Budget
from ..core.context import ModelInfo
from ..core.kv import CacheBudget, KVContext
from .base import InvalidParameter, Method, param


@dataclass
class KVCacheMethod(Method):
    """Base of the cache methods.

    Parameters (shared):
        compression_ratio: fraction of each prompt's cache entries removed, in [0, 1);
            0 leaves the cache untouched. Ignored when ``cache_budget`` is set.
        cache_budget: keep at most this many entries per sample and layer (an integer >= 1),
            whatever the prompt length; None to use ``compression_ratio``.
        decode_every: while generating, every this many new tokens reduce each layer's cache
            back to its budget (an integer >= 0; 0 reduces at the end of prefill only): the
            budget the layer had after the prompt for ``compression_ratio``, ``cache_budget``
            entries (the layer's share of it) for ``cache_budget``, so a short prompt's cache
            may grow up to it. Each method re-scores with what it reads during decoding (its
            :meth:`decode_queries` most recent queries, or the attention accumulated since the
            prompt). Only for methods with ``decodes = True``.
    """

    kind: ClassVar[str] = "kv_cache"
    kind_words: ClassVar[str] = "KV-cache"
    #: window-like parameters sized for the tests' prompts of a few dozen tokens
    test_params: ClassVar[dict[str, Any]] = {"window_size": 6, "n_sink": 2}
    budget_param: ClassVar[str] = "compression_ratio"
    budget_identity: ClassVar[object] = 0.0
    budget_sweep: ClassVar[tuple] = (0.25, 0.5, 0.75)

    #: the score can be recomputed while generating, so the budget can be held there
    #: (``decode_every``)
    decodes: ClassVar[bool] = False
    #: the score reads ``KVContext.accumulated`` while decoding: the adapter then adds every
    #: generated query's attention to each cached entry's running total (H2O)
    accumulates: ClassVar[bool] = False

    compression_ratio: float = param(0.5, ge=0, lt=1)
    cache_budget: int | None = param(None, type=int, ge=1, optional=True)
    decode_every: int = param(0, ge=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        d = self.decode_every
        if d and not self.decodes:
            raise InvalidParameter(
                f"{self.name}: decode_every={d} is not supported (its score cannot be "
                "recomputed while decoding); allowed: decode_every=0"
            )
        b = self.cache_budget
        if b is not None and b < self.num_protected():
            raise InvalidParameter(
                f"{self.name}: cache_budget={b} is smaller than the {self.num_protected()} "
                f"entries this method always keeps ({self.protected_description()}); "
                f"allowed: cache_budget >= {self.num_protected()}"
            )

    # -- what the adapter asks ------------------------------------------------------------
    @property
    def active(self) -> bool:
        """False when the method can never remove anything (the model then runs untouched)."""
        return self.cache_budget is not None or self.compression_ratio > 0

    def budget(self, model: ModelInfo) -> Budget:
        """Entries each layer keeps of a prompt of ``n`` real tokens: ``keep(layer, n)``
        (uniform over layers here; a subclass may shape it by depth)."""
        return self.layer_budget(model.num_layers)

    def layer_budget(self, num_layers: int) -> Budget:
        """:meth:`budget` for a model of ``num_layers`` layers (all it reads of the model)."""
        return CacheBudget(float(self.compression_ratio), self.cache_budget)

    def decode_keep(self, layer: int, num_layers: int, n: int) -> int:
        """Entries a layer holds while decoding (``decode_every``) for a prompt of ``n`` real
        tokens: its prompt budget for a ratio; for ``cache_budget`` the layer's share of it
        even when the prompt was shorter."""
        if self.cache_budget is not None:
            n = max(n, self.cache_budget)
        return self.layer_budget(num_layers).keep(layer, n)

    def decode_queries(self) -> int:
        """How many of the most recent queries the score reads while decoding; the adapter
        keeps that many (RoPE applied) per layer. 0: none, or only the current step's."""
        return 0

    def num_protected(self) -> int:
        """Entries always kept (sinks, observation window); they count toward the budget."""
        return 0

    def protected_description(self) -> str:
        return "none"

    def min_prompt(self) -> int:
        """Shortest prompt the method accepts (e.g. its observation window)."""
        return 1

    def check_prompt(self, n: int) -> None:
        """Fail clearly when a prompt of ``n`` real tokens cannot be reduced by this method."""
        if n < self.min_prompt():
            raise InvalidParameter(
                f"{self.name}: the prompt has {n} tokens, fewer than the {self.min_prompt()} this "
                f"method needs ({self.protected_description()}); use a longer prompt or smaller "
                "window parameters"
            )

    def scores(self, ctx: KVContext, keep: Tensor) -> Tensor:
        """(B, Hkv, N) score of every entry, higher = keep; ``+inf`` forces an entry in.
        ``keep`` (B,) is how many entries each sample will keep (for budget-relative rules).
        Padding entries are masked by the adapter. The cache's last entries are always the
        most recent ones (at the end of prefill and while decoding)."""
        raise NotImplementedError

    # -- helpers for subclasses -----------------------------------------------------------
    @staticmethod
    def recent(ctx: KVContext, count: Tensor | int) -> Tensor:
        """(B, N) True for the last ``count`` (per sample) entries of the prompt."""
        n = ctx.num_entries
        count = torch.as_tensor(count, device=ctx.keys.device).reshape(-1, 1)
        return torch.arange(n, device=ctx.keys.device)[None, :] >= n - count

    @staticmethod
    def per_head(scores: Tensor, ctx: KVContext) -> Tensor:
        """Broadcast (B, N) scores to every KV head: (B, Hkv, N); per-head scores pass."""
        if scores.dim() == 3:
            return scores
        return scores[:, None, :].expand(-1, ctx.keys.shape[1], -1)


__all__ = ["KVCacheMethod"]
