from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..core.budgets import Budget, StagedPrune
from ..core.context import ModelInfo
from ..core.kv import KVContext
from .base import param, register
from .prefill import PrefillMethod


@register
@dataclass
class VTW(PrefillMethod):
    """VTW (Visual Tokens Withdrawal): every image token leaves the language model after
    layer K; the layers after it, and decoding, see the text alone.

    Lin et al., "Boosting Multimodal Large Language Models with Visual Tokens Withdrawal for
    Rapid Inference", AAAI 2025. https://arxiv.org/abs/2405.05803

    A prefill method (see :mod:`tokenreduce.methods.prefill`) with one site, ``layer``, that
    keeps none of the image tokens: nothing is scored. The layers after it run on the text
    tokens (at their original positions) and cache only them, so every decoding step reads
    the text's cache only. By then, the paper finds, the image's information has migrated
    into the text tokens; it picks K per model as the first layer where the output's KL
    divergence to the full model's falls under a threshold (layer 16 of LLaVA-1.5-7B's 32).
    Image tokens exist only in a vision-language model: a text-only language model, or a
    prompt whose image placeholders are unknown (``inputs_embeds``), is refused.

    Parameters:
        layer: 0-based index of the layer K after which the image tokens are withdrawn (at
            least one layer must follow it); None withdraws nothing (the unreduced model).
    """

    name = "vtw"
    paper = "Lin et al., AAAI 2025 (arXiv:2405.05803)"
    budget_param: ClassVar[str] = "layer"
    budget_identity: ClassVar[object] = None
    needs_images: ClassVar[bool] = True
    test_params: ClassVar[dict[str, Any]] = {"layer": 0}  # the 2-layer test models
    #: shares of the language model's depth the image tokens run in the default sweep, heavy
    #: last (the shares of visual tokens the ``vqa`` task keeps: 50, 25 and 11%)
    depth_shares: ClassVar[tuple[float, ...]] = (0.5, 0.25, 0.11)

    layer: int | None = param(16, ge=0, optional=True)

    @property
    def active(self) -> bool:
        return self.layer is not None

    def sites(self, num_layers: int) -> tuple[int, ...]:
        return () if self.layer is None else (self.layer,)

    def site_words(self, site: int) -> str:
        return f"layer={site}"

    def budget(self, model: ModelInfo) -> Budget:
        """None of the image tokens survive ``layer``; no other layer removes any."""
        return StagedPrune(1.0, self.sites(model.num_layers))

    def scores(self, ctx: KVContext) -> Tensor:
        """Every image token leaves, so none is ranked."""
        return torch.zeros(ctx.valid.shape, device=ctx.keys.device)

    @classmethod
    def default_sweep(cls, depth: int, quick: bool = False) -> list[PrefillMethod]:
        """K such that the image tokens run in about :attr:`depth_shares` of the ``depth``
        layers (at least one layer, and one layer after K); ``quick``: the middle share."""
        shares = cls.depth_shares[1:2] if quick else cls.depth_shares
        layers = [min(max(round(s * depth) - 1, 0), max(depth - 2, 0)) for s in shares]
        return [cls(layer=k) for k in dict.fromkeys(layers)]
