"""The local-site kind: methods that reduce the tokens entering one sub-layer of a block and
undo the reduction on its output (merge, run the sub-layer, unmerge), so the rest of the
network sees every token. Diffusion models are its home: their denoisers run once per
sampling step, and a method of this kind may keep state from one step to the next.

Who does what:

* the adapter finds the blocks, knows each block's grid and resolution level, and calls the
  method's :class:`LocalRun` once per forward (:meth:`LocalRun.start_call`: a denoising step)
  and once per block (:meth:`LocalRun.plan`);
* the :class:`LocalPlan` a block gets runs each of its sub-layers (``"attn1"`` self-attention,
  ``"attn2"`` cross-attention, ``"ff"`` feed-forward) through :meth:`LocalPlan.run`.

A merging method writes :meth:`LocalMethod.reduce` (a :class:`~tokenreduce.core.reduction.
Reduction` per block, used for every sub-layer it names); a caching method writes its own
:class:`LocalRun`, which owns the state it keeps across steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..core.budgets import Budget, removed_count
from ..core.context import ModelInfo
from ..core.reduction import Reduction
from .base import Method, param

#: the sub-layers of a transformer block a local site can surround
PARTS = ("attn1", "attn2", "ff")
#: tomesd's resolution levels: the downsampling factor of a block's grid
LEVELS = (1, 2, 4, 8)

Sublayer = Callable[[Tensor], Tensor]


def level_param(default: int = 1):
    """A ``max_downsample`` field: the coarsest resolution level a method acts at."""
    return param(default, valid=lambda v: v in LEVELS, allowed="1, 2, 4 or 8")


@dataclass(frozen=True)
class LocalSite:
    """What a local method sees at one block in one forward.

    ``site``: the block's index among the model's sites, in execution order. ``level``: the
    downsampling factor of the block's grid relative to the model's input latents (1 = the
    highest resolution, then 2, 4, 8). ``hidden`` (B, N, C): the block's input tokens in
    raster order of ``grid`` (H, W), H * W == N. ``timestep`` (B,) float: each sample's
    denoising timestep in this forward (the seed of its random draws). ``num_sites``: how
    many sites the model has (the site's place in the depth).
    """

    site: int
    level: int
    hidden: Tensor
    grid: tuple[int, int]
    timestep: Tensor
    num_sites: int = 1

    @property
    def num_tokens(self) -> int:
        return self.hidden.shape[1]


class LocalPlan:
    """What a method does to the sub-layers of one block in one forward: the identity."""

    def run(self, part: str, x: Tensor, sublayer: Sublayer) -> Tensor:
        """Sub-layer ``part`` (one of :data:`PARTS`) on tokens ``x`` (B, N, C): returns its
        output for all N tokens (B, N, C')."""
        return sublayer(x)


UNCHANGED = LocalPlan()


@dataclass(frozen=True)
class MergePlan(LocalPlan):
    """Merge, run the sub-layer on the M remaining tokens, unmerge (tomesd's pattern): the
    same reduction for every sub-layer in ``parts``; the others see all N tokens."""

    reduction: Reduction
    parts: frozenset[str]

    def combine(self, x: Tensor) -> Tensor:
        """The merged tokens (B, M, C): the weighted mean of each slot's members."""
        return self.reduction.apply(x)

    def run(self, part: str, x: Tensor, sublayer: Sublayer) -> Tensor:
        if part not in self.parts:
            return sublayer(x)
        if x.shape[1] != self.reduction.num_in:
            raise ValueError(
                f"sub-layer {part} received {x.shape[1]} tokens but its block's reduction was "
                f"computed for {self.reduction.num_in}"
            )
        return self.reduction.unmerge(sublayer(self.combine(x)))[0]


class LocalRun:
    """A method's state while patched into one model (one per patch). The default keeps
    none: each block's plan is :meth:`LocalMethod.plan` of the site."""

    def __init__(self, method: LocalMethod, model: ModelInfo) -> None:
        self.method = method
        self.model = model

    def start_call(self, timestep: Tensor) -> None:
        """A forward (one denoising step) begins, with each sample's ``timestep`` (B,)."""

    def plan(self, site: LocalSite) -> LocalPlan:
        return self.method.plan(site)


@dataclass(frozen=True)
class LocalRatio(Budget):
    """Remove ``floor(ratio * n)`` of the ``n`` tokens at every site."""

    ratio: float

    def keep(self, site: int, n: int) -> int:
        return n - removed_count(n, self.ratio)


class LocalMethod(Method):
    """A method of local sites (kind ``"local"``): reduce around one sub-layer, undo after.

    Subclasses are dataclasses with a ``ratio`` field (the share of a site's tokens the
    sub-layers do not compute, in [0, 1); 0 is the identity) and a ``max_downsample`` field
    (the coarsest resolution level they act at). A merging method writes :meth:`reduce`
    and :meth:`parts`; a method with state across steps writes :meth:`start`.
    """

    kind: ClassVar[str] = "local"
    kind_words: ClassVar[str] = "local-site (diffusion)"
    budget_param: ClassVar[str] = "ratio"
    budget_identity: ClassVar[object] = 0.0
    budget_sweep: ClassVar[tuple] = (0.3, 0.5, 0.7)
    test_params: ClassVar[dict[str, Any]] = {"ratio": 0.5}
    ratio: float
    max_downsample: int

    def budget(self, model: ModelInfo) -> Budget:
        return LocalRatio(self.ratio)

    def reaches(self, level: int) -> bool:
        """Whether the method acts at blocks of resolution ``level``."""
        return level <= self.max_downsample

    def parts(self) -> frozenset[str]:
        """The sub-layers (of :data:`PARTS`) that run on the reduced tokens."""
        raise NotImplementedError

    def start(self, model: ModelInfo) -> LocalRun:
        """The state object of one patch into ``model``."""
        return LocalRun(self, model)

    def plan(self, site: LocalSite) -> LocalPlan:
        """:class:`MergePlan` of :meth:`reduce` where the budget removes tokens at a level the
        method reaches; :data:`UNCHANGED` elsewhere."""
        n_remove = site.num_tokens - LocalRatio(self.ratio).keep(site.site, site.num_tokens)
        if n_remove <= 0 or not self.reaches(site.level) or not self.parts():
            return UNCHANGED
        return MergePlan(self.reduce(site, n_remove), self.parts())

    def reduce(self, site: LocalSite, n_remove: int) -> Reduction:
        """The reduction of the block's N tokens to N - ``n_remove`` (or fewer removed where
        the strategy caps it)."""
        raise NotImplementedError


def chosen_parts(attn: bool, crossattn: bool, mlp: bool) -> frozenset[str]:
    """tomesd's ``merge_attn``, ``merge_crossattn`` and ``merge_mlp`` as a set of parts."""
    return frozenset(p for p, on in zip(PARTS, (attn, crossattn, mlp), strict=True) if on)


def cells(method: str, site: LocalSite, sx: int, sy: int) -> tuple[int, int]:
    """The (rows, cols) of ``sy`` x ``sx`` cells tiling ``site``'s grid; ValueError naming the
    grid and the cell size when they do not tile it."""
    h, w = site.grid
    if h % sy or w % sx:
        raise ValueError(
            f"{method}: the {h}x{w} token grid of site {site.site} (level {site.level}) is not "
            f"divisible into {sy}x{sx} cells (sy={sy}, sx={sx}); use a latent size whose grid "
            "at every reduced level is a multiple of the cell size"
        )
    return h // sy, w // sx


def per_timestep(site: LocalSite, seed: int, draw: Callable[[torch.Generator], Tensor]) -> Tensor:
    """``draw(generator)`` for every sample of ``site``, stacked (B, ...): one CPU generator per
    distinct timestep, seeded by ``seed``, the site and the timestep, so a sample's draw does
    not depend on the batch it is in, and a seeded sampling run is reproducible."""
    out: list[Tensor | None] = [None] * site.timestep.shape[0]
    for t in torch.unique(site.timestep).tolist():
        mix = (seed * 1_000_003 + site.site * 10_007 + round(t * 1000)) % (2**63 - 1)
        value = draw(torch.Generator().manual_seed(mix))
        for b in (site.timestep == t).nonzero().flatten().tolist():
            out[b] = value
    return torch.stack(out).to(site.hidden.device)

