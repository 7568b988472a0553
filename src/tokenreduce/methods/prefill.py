"""Shared contract of the prefill methods (``kind = "prefill"``): prompt tokens leave a decoder
language model's sequence during prefill.

At each site layer, the attention of the prompt's last query (one row, averaged over heads,
computed at that layer with RoPE) ranks the prompt tokens; the best go on to the next layers,
so every later layer computes on fewer tokens and caches fewer entries. Positions (RoPE) stay
those of the original prompt, so ``generate`` continues correctly; a plain forward returns
logits for the kept tokens only. A subclass writes :meth:`PrefillMethod.sites`; the share
removed grows linearly over the sites to ``prune_ratio`` at the last one.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from ..core.budgets import Budget, StagedPrune
from ..core.context import ModelInfo
from ..core.kv import KVContext
from .base import InvalidParameter, Method, param


def prune_ratio_param():
    """The ``prune_ratio`` field: share of the prompt tokens (all but the protected last ones)
    gone after the last site, in [0, 1)."""
    return param(0.5, ge=0, lt=1)


class PrefillMethod(Method):
    """Base of the prefill methods. Subclasses are dataclasses that declare a ``prune_ratio``
    field (:func:`prune_ratio_param`) and write :meth:`sites`. (No fields here, so each
    subclass keeps its own field order, and so its spec strings.)"""

    kind: ClassVar[str] = "prefill"
    kind_words: ClassVar[str] = "prefill"
    budget_param: ClassVar[str] = "prune_ratio"
    budget_identity: ClassVar[object] = 0.0
    budget_sweep: ClassVar[tuple] = (0.25, 0.5, 0.75)
    test_params: ClassVar[dict[str, Any]] = {"layer": 0}  # the 2-layer test models
    #: prompt tokens at the end that always survive (the last one, whose attention ranks)
    keep_last: ClassVar[int] = 1
    #: a site may bring back tokens pruned at an earlier one
    revive: ClassVar[bool] = False

    @property
    def active(self) -> bool:
        return self.prune_ratio > 0

    def sites(self, num_layers: int) -> tuple[int, ...]:
        """Ascending layers after whose attention prompt tokens are selected."""
        raise NotImplementedError

    def site_words(self, site: int) -> str:
        """How an error names a site that is too deep."""
        return f"layers contains {site}, which"

    def check_model(self, model: ModelInfo) -> None:
        last = model.num_layers - 2
        if last < 0:
            raise InvalidParameter(
                f"{self.name}: a {model.num_layers}-layer model leaves no layer to run on fewer "
                "tokens; it needs at least 2 layers"
            )
        deepest = self.sites(model.num_layers)[-1]
        if deepest > last:
            raise InvalidParameter(
                f"{self.name}: {self.site_words(deepest)} leaves no layer to run on fewer "
                f"tokens; allowed: 0..{last} for this {model.num_layers}-layer model"
            )

    def budget(self, model: ModelInfo) -> Budget:
        """Reducible prompt tokens kept after each site: ``keep(site_layer, n)`` of the ``n``
        that are neither among the ``keep_last`` nor protected by the model family."""
        return StagedPrune(float(self.prune_ratio), self.sites(model.num_layers))

    def scores(self, ctx: KVContext) -> Tensor:
        """(B, N) attention from the last query, averaged over all heads."""
        return ctx.attention(1).mean(dim=1)


__all__ = ["PrefillMethod", "prune_ratio_param"]
