from __future__ import annotations

from dataclasses import dataclass

from .base import check, register
from .snapkv import SnapKV


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
    beta: float = 20.0

    def __post_init__(self) -> None:
        check(
            self.name,
            "beta",
            self.beta,
            isinstance(self.beta, (int, float))
            and not isinstance(self.beta, bool)
            and self.beta >= 1,
            "a number >= 1",
        )
        super().__post_init__()

    def layer_keep(self, layer: int, num_layers: int, n: int) -> int:
        k = super().layer_keep(layer, num_layers, n)
        w = min(self.window_size, n)
        avg = k - w
        lo = avg / self.beta
        hi = 2 * avg - lo
        if k >= n or num_layers == 1 or avg <= 0 or w + hi > n:
            return k
        return w + round(hi - layer * (hi - lo) / (num_layers - 1))
