from __future__ import annotations

from dataclasses import dataclass

from ..core.budgets import Budget, GeometricPrune
from ..core.context import ModelInfo
from .base import layer_tuple, param, register
from .prefill import PrefillMethod, prune_ratio_param, stage_ends


@register
@dataclass
class PyramidDrop(PrefillMethod):
    """PyramidDrop: the language model's layers split into stages, each ending with a drop of
    the image tokens the last instruction token attends to least.

    Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid
    Visual Redundancy Reduction", CVPR 2025. https://arxiv.org/abs/2410.17247

    A prefill method (see :mod:`tokenreduce.methods.prefill`) with a site at the end of every
    stage but the last. At a site, the attention of the prompt's last token (one query row,
    averaged over heads, computed at that layer with RoPE) ranks the image tokens still
    running; each site keeps the same share lambda of the image tokens that reached it, so
    the counts form a pyramid over the depth. Text tokens always go on; on a text-only
    language model the prompt tokens are the candidates, as with FastV.

    The budget is said, as for every prefill method, by the share removed after the last site:
    K sites with the paper's lambda remove ``1 - lambda ** K``, so
    ``prune_ratio = 1 - lambda ** K`` and ``lambda = (1 - prune_ratio) ** (1 / K)`` (the
    paper's LLaVA-1.5 setting, 4 stages and lambda = 0.5, is ``prune_ratio=0.875``).

    Parameters:
        prune_ratio: share of the image tokens (of the prompt tokens but the ``keep_last``
            last, on a text-only model) gone after the last site, in [0, 1).
        num_stages: the layers are split into this many stages of equal depth (an integer
            >= 2); a site ends each stage but the last. Ignored when ``layers`` is set.
        layers: 0-based layers ending the stages, ascending (each below the last layer); None
            to use ``num_stages``.
    """

    name = "pyramiddrop"
    paper = "Xing et al., CVPR 2025 (arXiv:2410.17247)"

    prune_ratio: float = prune_ratio_param()
    num_stages: int = param(4, ge=2)
    layers: tuple[int, ...] | None = layer_tuple(None, optional=True, ascending=True)

    def sites(self, num_layers: int) -> tuple[int, ...]:
        if self.layers is not None:
            return self.layers
        return stage_ends(num_layers, self.num_stages)

    def budget(self, model: ModelInfo) -> Budget:
        """After site i of K, ``(1 - prune_ratio) ** ((i + 1) / K)`` of the reducible tokens
        remain (:class:`~tokenreduce.core.budgets.GeometricPrune`)."""
        return GeometricPrune(float(self.prune_ratio), self.sites(model.num_layers))
