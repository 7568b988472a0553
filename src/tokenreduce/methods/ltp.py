from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.budgets import Budget
from ..core.context import ModelInfo, TokenContext
from ..core.reduction import Reduction
from .base import PerInputTokenMethod, as_tuple, check_per_layer, param, register
from .power_bert import received_attention


@dataclass(frozen=True)
class ThresholdCap(Budget):
    """The most a threshold may remove: at a layer with a threshold above 0, at least
    ``ceil(min_keep * n)`` of the ``n`` reducible tokens stay; elsewhere all of them. How many
    actually go is the method's to decide from the scores (each input its own count)."""

    thresholds: tuple[float, ...]
    min_keep: float

    def keep(self, site: int, n: int) -> int:
        if site >= len(self.thresholds) or self.thresholds[site] <= 0:
            return n
        return math.ceil(self.min_keep * n - 1e-9)


def _thresholds(value) -> bool:
    return isinstance(value, tuple) and all(
        isinstance(v, (int, float)) and 0 <= v <= 1 for v in value
    )


@register
@dataclass
class LTP(PerInputTokenMethod):
    """Learned Token Pruning: drop the tokens whose received attention is below a threshold.

    Kim et al., "Learned Token Pruning for Transformers", KDD 2022.
    https://arxiv.org/abs/2107.00910

    After each layer's attention, a token's importance is the attention it receives averaged
    over heads and queries (the full attention map of the layer's real tokens, computed at the
    site; the scores of a sequence sum to 1). Every unprotected token scoring below the
    layer's threshold is pruned, so each input keeps its own number of tokens: a batch
    becomes ragged (per-sample counts, padding slots at the end); hence its own kind
    (:class:`PerInputTokenMethod`), taken by the text-encoder adapter, refused by vision
    models (their layers do not hide padding slots). The paper learns one threshold per
    layer with a soft mask and fine-tunes; here the thresholds are given.

    Parameters:
        threshold: the last layer's threshold, in [0, 1]; layer ``l`` of ``L`` uses
            ``threshold * (l + 1) / L`` (a linear ramp, pruning more in deeper layers). 0
            removes nothing. Scores average ``1 / n`` over ``n`` tokens, so a threshold near
            ``1 / n`` prunes about half of a uniform layer.
        thresholds: explicit per-layer thresholds in [0, 1], at most one per layer (layers
            past its end prune nothing); overrides ``threshold``.
        min_keep: least share of a layer's reducible tokens kept whatever the scores, in
            [0, 1] (0: a layer may prune every unprotected token). When more tokens fall below
            the threshold, the highest-scoring of them stay.
    """

    name = "ltp"
    paper = "Kim et al., KDD 2022 (arXiv:2107.00910)"
    budget_param = "threshold"
    budget_identity = 0.0
    budget_sweep = (0.005, 0.01, 0.02)
    test_params = {"threshold": 0.08}
    threshold: float = param(0.01, ge=0, le=1)
    thresholds: tuple[float, ...] | None = param(
        None, type=tuple, optional=True, convert=as_tuple, valid=_thresholds,
        allowed="a list of thresholds in [0, 1], one per layer",
    )  # fmt: skip
    min_keep: float = param(0.0, ge=0, le=1)

    def check_model(self, model: ModelInfo) -> None:
        super().check_model(model)
        check_per_layer(self.name, "thresholds", self.thresholds, model)

    def layer_thresholds(self, num_layers: int) -> tuple[float, ...]:
        """The threshold of each layer of a model ``num_layers`` deep."""
        if self.thresholds is not None:
            return tuple(float(v) for v in self.thresholds)
        return tuple(float(self.threshold) * (i + 1) / num_layers for i in range(num_layers))

    def budget(self, model: ModelInfo) -> Budget:
        return ThresholdCap(self.layer_thresholds(model.num_layers), float(self.min_keep))

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        """Prune, in each sample alone, its tokens below this layer's threshold (at most
        ``n_remove`` of them: the lowest); a batch gets per-sample counts."""
        received = received_attention(ctx)
        theta = self.layer_thresholds(ctx.model.num_layers)[ctx.layer]
        protected = ctx.state.protected
        below = (received < theta) & ~protected
        # Of the tokens below, only the n_remove lowest go.
        rank = received.masked_fill(~below, float("inf")).argsort(dim=1, stable=True).argsort(dim=1)
        drop = below & (rank < n_remove)
        n = received.shape[1]
        ar = torch.arange(n, device=received.device)
        parts = [Reduction.select((~d).nonzero().squeeze(1)[None], n) for d in drop]
        return Reduction.stack(parts, [ar] * len(parts), n)
