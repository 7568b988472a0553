from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from ..core.budgets import Budget
from ..core.context import ModelInfo, TokenContext
from ..core.reducers import topk_prune
from ..core.reduction import Reduction
from ..core.scorers import attention_received
from .base import TokenMethod, as_tuple, check_per_layer, param, register


@dataclass(frozen=True)
class Retention(Budget):
    """PoWER-BERT's retention configuration as a budget: ``shares[l]`` of a sequence's
    original reducible tokens remain after layer ``l`` (non-increasing; layers past the end
    keep everything). A layer keeps ``ceil(n * shares[l] / shares[l - 1])`` of the ``n``
    reducible tokens it receives, so each sample of a padded batch follows the schedule on
    its own length."""

    shares: tuple[float, ...]

    def keep(self, site: int, n: int) -> int:
        if site >= len(self.shares):
            return n
        before = self.shares[site - 1] if site > 0 else 1.0
        return min(n, math.ceil(n * self.shares[site] / before - 1e-9))


def linear_retention(num_layers: int, keep_ratio: float) -> tuple[float, ...]:
    """Shares falling linearly from 1 before the first layer to ``keep_ratio`` after the last."""
    return tuple(1 - (1 - keep_ratio) * (i + 1) / num_layers for i in range(num_layers))


def received_attention(ctx: TokenContext) -> Tensor:
    """(B, N) attention each token receives, averaged over heads and every query of the site
    (the full attention map of its tokens, computed here): PoWER-BERT's and LTP's score."""
    return attention_received(ctx.q, ctx.k, None, ctx.scale, ctx.attn_bias)


def _non_increasing_shares(value) -> bool:
    ok = isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value)
    ok = ok and all(0 < v <= 1 for v in value)
    return ok and all(a >= b for a, b in zip(value, value[1:], strict=False))


@register
@dataclass
class PoWERBERT(TokenMethod):
    """PoWER-BERT: progressive word-vector elimination ranked by the attention received.

    Goyal et al., "PoWER-BERT: Accelerating BERT Inference via Progressive Word-vector
    Elimination", ICML 2020. https://arxiv.org/abs/2001.08950

    After each encoder layer's attention, a token's significance is the attention it
    receives, summed over every head and every query of that layer (the full attention map
    of the layer's real tokens, computed at the site); the least significant tokens are
    eliminated so that the retention configuration holds: ``retention[l]`` of each input's
    tokens (its [CLS] and [SEP], protected, not counted) remain after layer ``l``. The paper
    learns the configuration with soft-extract layers and fine-tunes the model; here it is
    given, without fine-tuning. Eliminated tokens are dropped, never merged.

    Parameters:
        keep_ratio: share of the reducible tokens left after the last layer, in (0, 1], with
            a linear schedule from 1 (1.0 removes nothing).
        retention: explicit per-layer shares in (0, 1], non-increasing, at most one per
            layer (layers past its end keep all); overrides ``keep_ratio``.
    """

    name = "power_bert"
    paper = "Goyal et al., ICML 2020 (arXiv:2001.08950)"
    budget_param = "keep_ratio"
    budget_identity = 1.0
    budget_sweep = (0.7, 0.5, 0.3)
    test_params = {"keep_ratio": 0.5}
    keep_ratio: float = param(0.5, gt=0, le=1)
    retention: tuple[float, ...] | None = param(
        None, type=tuple, optional=True, convert=as_tuple, valid=_non_increasing_shares,
        allowed="a non-increasing list of shares in (0, 1], one per layer",
    )  # fmt: skip

    def check_model(self, model: ModelInfo) -> None:
        super().check_model(model)
        check_per_layer(self.name, "retention", self.retention, model)

    def budget(self, model: ModelInfo) -> Budget:
        if self.retention is not None:
            return Retention(tuple(float(v) for v in self.retention))
        return Retention(linear_retention(model.num_layers, float(self.keep_ratio)))

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        # The mean over heads and queries ranks tokens as the paper's sum does.
        return topk_prune(
            received_attention(ctx), ctx.num_reducible - n_remove, ctx.state.protected
        )
