"""Shared contract of the prefill methods (``kind = "prefill"``): prompt tokens leave a decoder
language model's sequence during prefill.

At each site layer, the attention of the prompt's last query (one row, averaged over heads,
computed at that layer with RoPE) ranks the prompt tokens; the best go on to the next layers,
so every later layer computes on fewer tokens and caches fewer entries. Positions (RoPE) stay
those of the original prompt, so ``generate`` continues correctly; a plain forward returns
logits for the kept tokens only. A subclass writes :meth:`PrefillMethod.sites`; the share
removed grows linearly over the sites to ``prune_ratio`` at the last one (a subclass may
answer :meth:`PrefillMethod.budget` with another schedule).

On a vision-language model only image tokens are candidates; a method that makes sense only
there (``needs_images``) is refused on a text-only language model. A method may also recycle
tokens the budget drops into a few merged ones (:meth:`PrefillMethod.recycle`).
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


def stage_ends(num_layers: int, num_stages: int) -> tuple[int, ...]:
    """Sites that split ``num_layers`` layers into ``num_stages`` stages of equal depth: the
    last layer of each stage but the final one (ascending; a shallow model merges stages, and
    no site is deeper than the last layer but one)."""
    ends = (s * num_layers // num_stages - 1 for s in range(1, num_stages))
    return tuple(sorted({min(max(e, 0), num_layers - 2) for e in ends}))


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
    #: acts on a vision-language model's image tokens only (a text-only model is refused)
    needs_images: ClassVar[bool] = False

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
        if self.needs_images and model.kind == "language":
            raise InvalidParameter(
                f"{self.name} removes the image tokens of a vision-language model; "
                f"{model.family} is a text-only language model, which has none (use fastv or "
                "lazyllm to prune its prompt)"
            )
        sites = self.sites(model.num_layers)
        if not sites:  # a method that removes nothing at this budget
            return
        last = model.num_layers - 2
        if last < 0:
            raise InvalidParameter(
                f"{self.name}: a {model.num_layers}-layer model leaves no layer to run on fewer "
                "tokens; it needs at least 2 layers"
            )
        deepest = sites[-1]
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

    def recycle(self, ctx: KVContext, scores: Tensor, chosen: Tensor) -> Tensor | None:
        """Where each candidate goes at a site, once the budget has ``chosen`` (B, N) the best
        by ``scores`` (B, N; +inf for tokens that always stay, -inf for padding). None (the
        default): the chosen tokens go on, the others leave.

        Otherwise (B, N) integer slot owners: a chosen token owns itself, a dropped token is
        -1 (it leaves), or the index of the token whose slot it joins; a dropped token that
        owns itself comes back as a new slot. Each slot's state for the next layer is the
        mean of its members' states after this layer, at the owner's original position."""
        return None


__all__ = ["PrefillMethod", "prune_ratio_param", "stage_ends"]
