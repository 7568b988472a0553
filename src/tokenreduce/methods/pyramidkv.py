from __future__ import annotations

from dataclasses import dataclass

from ..core.budgets import Budget
from .base import param, register
from .snapkv import SnapKV


@dataclass(frozen=True)
class PyramidBudget(Budget):
    """``base``'s entries per layer, reshaped into a pyramid over ``num_layers`` layers: beyond
    the ``window`` entries, budgets fall arithmetically from ``2a - a/beta`` (first layer) to
    ``a/beta`` (last), ``a`` being ``base``'s, so the total over layers is unchanged. A prompt
    too short for the first layer's share keeps ``base`` everywhere."""

    base: Budget
    num_layers: int
    window: int
    beta: float

    def keep(self, site: int, n: int) -> int:
        k = self.base.keep(site, n)
        w = min(self.window, n)
        avg = k - w
        lo = avg / self.beta
        hi = 2 * avg - lo
        if k >= n or self.num_layers == 1 or avg <= 0 or w + hi > n:
            return k
        return w + round(hi - site * (hi - lo) / (self.num_layers - 1))


@register
@dataclass
class PyramidKV(SnapKV):
    """PyramidKV: SnapKV scores with budgets that shrink from the lower layers to the upper.

    Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information
    Funneling", 2024. https://arxiv.org/abs/2406.02069

    Lower layers spread their attention widely and get more entries; upper layers focus and
    get fewer. Beyond the observation window, layer budgets fall arithmetically from
    ``2a - a/beta`` (first layer) to ``a/beta`` (last layer), where ``a`` is the uniform
    budget, so the total over layers is the same as SnapKV's at the same ratio. When the
    prompt is too short for the first layer's share, every layer keeps the uniform budget.
    With ``decode_every`` each layer holds its own budget while generating, re-scored like
    SnapKV's from the most recent tokens' queries.

    Parameters:
        beta: ratio of the mean to the smallest layer budget (a number >= 1; the paper uses 20).
        window_size, kernel_size, pooling: see :class:`SnapKV`.
        compression_ratio, cache_budget, decode_every: see :class:`KVCacheMethod`.
    """

    name = "pyramidkv"
    paper = "Cai et al., 2024 (arXiv:2406.02069)"
    beta: float = param(20.0, ge=1)

    def layer_budget(self, num_layers: int) -> Budget:
        return PyramidBudget(super().layer_budget(num_layers), num_layers, self.window_size,
                             self.beta)  # fmt: skip
