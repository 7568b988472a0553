from __future__ import annotations

from dataclasses import dataclass

from .base import param, register
from .prefill import PrefillMethod, prune_ratio_param


@register
@dataclass
class FastV(PrefillMethod):
    """FastV for text: after layer K, drop the prompt tokens the last token attends to least.

    Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference
    Acceleration for Large Vision-Language Models", ECCV 2024. https://arxiv.org/abs/2403.06764

    A prefill method with one site (see :mod:`tokenreduce.methods.prefill`): the lowest
    ``prune_ratio`` of the prompt tokens (the last one is always kept) leave after ``layer``.

    Parameters:
        layer: 0-based index of the layer after which tokens are dropped (at least one layer
            must follow it).
        prune_ratio: fraction of the prompt tokens (all but the last) dropped, in [0, 1).
    """

    name = "fastv"
    paper = "Chen et al., ECCV 2024 (arXiv:2403.06764)"
    layer: int = param(2, ge=0)
    prune_ratio: float = prune_ratio_param()

    def sites(self, num_layers: int) -> tuple[int, ...]:
        return (self.layer,)

    @classmethod
    def placement(cls, depth: int) -> dict:
        return {"layer": max(0, min(2, depth - 2))}  # the paper's layer 2 where it fits

    def site_words(self, site: int) -> str:
        return f"layer={site}"
