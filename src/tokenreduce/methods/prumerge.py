from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.budgets import Budget, KeepRatio, layers_at
from ..core.context import ModelInfo, TokenContext
from ..core.reduction import Reduction
from .base import PerInputTokenMethod, layer_tuple, param, register


@register
@dataclass
class PruMerge(PerInputTokenMethod):
    """LLaVA-PruMerge: an adaptive number of tokens by an outlier test on class attention,
    the pruned tokens merged into the kept ones.

    Shang et al., "LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large Multimodal
    Models", 2024. https://arxiv.org/abs/2403.15388

    Each input keeps the tokens whose class attention ``a`` (mean over heads; on a
    vision-language model, at the vision tower's layer whose output is handed over, its class
    token included although not handed over) is an outlier by the interquartile-range test,
    ``a > Q3 + iqr_k * (Q3 - Q1)`` over the input's unprotected tokens (quartiles linearly
    interpolated, as numpy's ``percentile``): its own count, at least one token and at least
    the budget's ``ceil(min_keep * n)`` (then the highest-scoring). Every kept token then
    takes its ``neighbours`` nearest pruned tokens by key cosine similarity (keys averaged
    over heads), and each of their features joins, weighted by its attention times its size,
    the kept token's own, weighted by its size: the paper's update ``x + sum_j a_j x_j``
    normalised by ``1 + sum_j a_j``. A pruned token among several kept tokens' neighbours
    joins the most similar one (a token stands in one place, so sizes and the source map stay
    exact; the paper lets it join all of them and lets kept tokens absorb one another); a
    pruned token in no one's neighbourhood is dropped.

    Each input keeps its own count, so this is a per-input method
    (:class:`~tokenreduce.methods.base.PerInputTokenMethod`): a vision-language model's
    handoff and the text encoders take it, whose later layers hide the padding slots of the
    shorter inputs; a vision transformer refuses it.

    Parameters:
        min_keep: least share of an input's unprotected tokens kept whatever the test, in
            [0, 1]; 0 (default) is the paper's, 1 keeps every token.
        layers: 0-based indices of the sites that reduce (a vision-language model's handoff
            is site 0).
        iqr_k: the outlier test's multiplier of the interquartile range, >= 0 (1.5, Tukey's
            fences, in the paper).
        neighbours: pruned tokens each kept token gathers, an integer >= 1 (32 in the paper,
            for 576 image tokens).
    """

    name = "prumerge"
    paper = "Shang et al., 2024 (arXiv:2403.15388)"
    budget_param: ClassVar[str] = "min_keep"
    budget_identity: ClassVar[object] = 1.0
    budget_sweep: ClassVar[tuple] = (0.0,)
    test_params: ClassVar[dict[str, Any]] = {"layers": (1, 2), "neighbours": 4}
    min_keep: float = param(0.0, ge=0, le=1)
    layers: tuple[int, ...] = layer_tuple((0,))
    iqr_k: float = param(1.5, ge=0)
    neighbours: int = param(32, ge=1)

    def budget(self, model: ModelInfo) -> Budget:
        return KeepRatio(float(self.min_keep), tuple(self.layers))

    @classmethod
    def placement(cls, depth: int) -> dict[str, Any]:
        return {"layers": (0,) if depth == 1 else tuple(layers_at(depth))}

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        """Each input keeps its outliers (at least ``n - n_remove``, at least one) and merges
        its neighbours into them; inputs of a batch keep different counts."""
        scores, keys = ctx.class_attention.float(), ctx.key_mean.float()
        n = scores.shape[1]
        least = max(ctx.num_reducible - n_remove, 1)
        parts = []
        for b in range(scores.shape[0]):
            free = (~ctx.state.protected[b]).nonzero().squeeze(1)
            kept = free[self.select(scores[b, free], least)]
            parts.append(merge_into_kept(kept, scores[b], keys[b], ctx.state.size[b],
                                         ctx.state.protected[b], self.neighbours))  # fmt: skip
        return Reduction.stack(parts, [torch.arange(n, device=scores.device)] * len(parts), n)

    def select(self, scores: Tensor, least: int) -> Tensor:
        """Indices into ``scores`` (n,) of one input's unprotected tokens that stay."""
        count = max(outlier_count(scores, self.iqr_k), least)
        return scores.topk(min(count, scores.numel())).indices


@register
@dataclass
class PruMergePlus(PruMerge):
    """LLaVA-PruMerge+: PruMerge's outliers plus spatially uniform tokens, then the merge.

    Shang et al., "LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large Multimodal
    Models", 2024 (PruMerge+). https://arxiv.org/abs/2403.15388

    To the ``m`` outliers of :class:`PruMerge` (at least one) it adds ``u = min(n,
    uniform_factor * m)`` tokens evenly spaced over the ``n`` unprotected tokens in raster
    order (places ``floor(i * n / u)``) that are not kept already: about ``uniform_factor``
    times as many uniform tokens as outliers. The authors' code steps by ``int(int(n / m) /
    3)``, the same spacing at LLaVA-1.5's scale (576 tokens, about 32 outliers: every 6th
    token, a quarter of the tokens kept in all), but every token once ``n / m`` falls below
    6 (64 tokens with 12 outliers); the count here keeps the proportion at any scale. The
    budget's ``ceil(min_keep * n)`` is then reached with the highest-scoring of the rest. The pruned tokens are merged into all of them as in
    :class:`PruMerge`.

    Parameters:
        min_keep, layers, iqr_k, neighbours: as :class:`PruMerge`'s.
        uniform_factor: uniform tokens per outlier, roughly, an integer >= 1 (3 in the paper).
    """

    name = "prumerge_plus"
    uniform_factor: int = param(3, ge=1)

    def select(self, scores: Tensor, least: int) -> Tensor:
        n = scores.numel()
        outliers = scores.topk(min(max(outlier_count(scores, self.iqr_k), 1), n)).indices
        count = min(n, self.uniform_factor * outliers.numel())
        chosen = torch.zeros(n, dtype=torch.bool, device=scores.device)
        chosen[outliers] = True
        chosen[torch.arange(count, device=scores.device) * n // count] = True
        missing = least - int(chosen.sum())
        if missing > 0:  # the budget's floor: the best of the rest
            chosen[scores.masked_fill(chosen, -torch.inf).topk(missing).indices] = True
        return chosen.nonzero().squeeze(1)


def outlier_count(scores: Tensor, k: float) -> int:
    """How many of ``scores`` (n,) lie above ``Q3 + k * (Q3 - Q1)``, the quartiles linearly
    interpolated (numpy's ``percentile`` default)."""
    q1, q3 = torch.quantile(scores.float(), torch.tensor([0.25, 0.75], device=scores.device))
    return int((scores > q3 + k * (q3 - q1)).sum())


def merge_into_kept(
    kept: Tensor, scores: Tensor, keys: Tensor, size: Tensor, protected: Tensor, neighbours: int
) -> Reduction:
    """One input's reduction (a batch of one): tokens ``kept`` and ``protected`` stay, each
    kept token gathers its ``neighbours`` most similar pruned tokens (cosine of ``keys``
    (n, C)); a pruned token several gather joins the most similar; the rest are dropped.
    Weights: a kept token's ``size``, a joining token's ``scores * size``."""
    n = scores.shape[0]
    stays = protected.clone()
    stays[kept] = True
    pruned = (~stays).nonzero().squeeze(1)
    group = torch.where(stays, torch.arange(n, device=scores.device), -1)
    weight = torch.where(stays, size, scores.to(size.dtype) * size)
    if pruned.numel() and kept.numel():
        unit = F.normalize(keys, dim=-1)
        sim = unit[kept] @ unit[pruned].T  # (K, P)
        near = sim.topk(min(neighbours, pruned.numel()), dim=1).indices
        gathered = torch.zeros_like(sim, dtype=torch.bool).scatter_(1, near, True)
        best = sim.masked_fill(~gathered, -torch.inf).argmax(0)  # (P,) its most similar taker
        joins = gathered.any(0)
        group[pruned[joins]] = kept[best[joins]]
    return Reduction.from_groups(group[None], weight[None], stays[None])
