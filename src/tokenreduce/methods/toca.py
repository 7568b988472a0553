from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.budgets import removed_count
from ..core.context import ModelInfo
from ..core.reduction import Reduction, take
from .base import param, register
from .local_base import (
    UNCHANGED,
    LocalMethod,
    LocalPlan,
    LocalRun,
    LocalSite,
    Sublayer,
    chosen_parts,
    level_param,
)  # fmt: skip


@register
@dataclass
class ToCa(LocalMethod):
    """Token-wise feature caching: reuse each sub-layer's output of an earlier denoising step
    for the tokens whose input barely changed, recompute only the others.

    Zou et al., "Accelerating Diffusion Transformers with Token-wise Feature Caching",
    ICLR 2025. https://arxiv.org/abs/2410.05317

    Every ``interval`` steps of a sampling run (ToCa's ``fresh_threshold``) every chosen
    sub-layer runs on all N tokens and its output (B, N, C') is cached with its input. On the
    steps between, each sub-layer recomputes only the ``N - floor(ratio * N)`` tokens of
    highest score and serves the others from the cache; the recomputed tokens attend to each
    other (self-attention runs on them alone, which is where time is saved). A token's score
    is the relative change of its sub-layer input since its output was last computed,
    ``|x - x_cached| / |x_cached|``, plus ``staleness`` times the steps since then divided by
    ``interval`` (ToCa's cache-frequency score: the longer cached, the sooner recomputed).
    ToCa's attention-map scores need the full attention weights; this score keeps SDPA on.
    Scores are per sample, so a batch equals its samples one by one.

    A forward is one step. A forward whose timestep exceeds the previous forward's, or whose
    batch size differs, starts a new sampling run: the caches are emptied and the step counts
    from 0 (a full computation). Equal timesteps continue the run (second-order samplers).

    Parameters:
        ratio: share of a sub-layer's tokens served from the cache between refreshes, in
            [0, 1) (ToCa's ``1 - fresh_ratio``); 0 computes everything (the identity).
        interval: steps between full computations (an integer >= 1; 1 never reuses).
        staleness: weight of a token's time in the cache in its score (>= 0).
        max_downsample: coarsest resolution level cached (1, 2, 4 or 8; default 8: every
            block, as ToCa caches every layer).
        cache_attn, cache_crossattn, cache_mlp: which sub-layers are cached (all, as ToCa).
    """

    name = "toca"
    paper = "Zou et al., ICLR 2025 (arXiv:2410.05317)"
    ratio: float = param(0.7, ge=0, lt=1)
    interval: int = param(3, ge=1)
    staleness: float = param(0.5, ge=0)
    max_downsample: int = level_param(8)
    cache_attn: bool = param(True)
    cache_crossattn: bool = param(True)
    cache_mlp: bool = param(True)

    def parts(self) -> frozenset[str]:
        return chosen_parts(self.cache_attn, self.cache_crossattn, self.cache_mlp)

    def start(self, model: ModelInfo) -> LocalRun:
        return CacheRun(self, model)

    def fresh_tokens(self, x: Tensor, cached: CachedOutput) -> Tensor:
        """Indices (B, K) of the tokens of ``x`` (B, N, C) to recompute, ascending."""
        n = x.shape[1]
        drift = (x - cached.inputs).float().norm(dim=-1)
        drift = drift / cached.inputs.float().norm(dim=-1).clamp_min(1e-6)
        score = drift + self.staleness * cached.age / self.interval
        keep = n - removed_count(n, self.ratio)
        return score.topk(keep, dim=1, sorted=False).indices.sort(dim=1).values


@dataclass
class CachedOutput:
    """A sub-layer's last outputs (B, N, C'), the inputs they were computed from (B, N, C)
    and each token's age (B, N): steps since its output was computed."""

    outputs: Tensor
    inputs: Tensor
    age: Tensor

    def update(self, fresh: Tensor, x: Tensor, y_fresh: Tensor) -> CachedOutput:
        """The cache after recomputing tokens ``fresh`` (B, K) of ``x`` into ``y_fresh``."""
        return CachedOutput(
            _put(self.outputs, fresh, y_fresh),
            _put(self.inputs, fresh, take(x, fresh)),
            (self.age + 1).scatter_(1, fresh, 0),
        )


def _put(into: Tensor, index: Tensor, rows: Tensor) -> Tensor:
    """A copy of ``into`` (B, N, C) with rows ``index`` (B, K) replaced by ``rows`` (B, K, C)."""
    expanded = index[..., None].expand(-1, -1, into.shape[-1])
    return into.scatter(1, expanded, rows.to(into.dtype))


class CacheRun(LocalRun):
    """ToCa's state in one patched model: the cached outputs of every (site, sub-layer) and
    the position in the current sampling run."""

    def __init__(self, method: ToCa, model: ModelInfo) -> None:
        super().__init__(method, model)
        self.caches: dict[tuple[int, str], CachedOutput] = {}
        self.step = 0
        self.last: Tensor | None = None

    def start_call(self, timestep: Tensor) -> None:
        last, self.last = self.last, timestep.clone()
        if last is None or last.shape != timestep.shape or bool((timestep > last).any()):
            self.caches.clear()
            self.step = 0
        else:
            self.step += 1

    def plan(self, site: LocalSite) -> LocalPlan:
        method = self.method
        if method.ratio == 0 or not method.reaches(site.level):
            return UNCHANGED
        return CachePlan(self, site.site, self.step % method.interval == 0)


@dataclass(frozen=True)
class CachePlan(LocalPlan):
    """One block in one step: refresh (compute all, cache) or reuse (compute the fresh
    tokens, take the others from the cache)."""

    run_state: CacheRun
    site: int
    refresh: bool

    def run(self, part: str, x: Tensor, sublayer: Sublayer) -> Tensor:
        method = self.run_state.method
        if part not in method.parts():
            return sublayer(x)
        key = (self.site, part)
        cached = self.run_state.caches.get(key)
        if self.refresh or cached is None or cached.inputs.shape != x.shape:
            y = sublayer(x)
            age = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)
            self.run_state.caches[key] = CachedOutput(y, x, age)
            return y
        fresh = method.fresh_tokens(x, cached)
        y_fresh = sublayer(Reduction.select(fresh, x.shape[1]).apply(x))
        cached = cached.update(fresh, x, y_fresh)
        self.run_state.caches[key] = cached
        return cached.outputs
