from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..core.budgets import Budget
from ..core.context import ModelInfo
from ..core.kv import CacheBudget, KVContext, removed_count
from .base import InvalidParameter, Method, check, register
from .kv_base import _is_int


@register
@dataclass
class FastV(Method):
    """FastV for text: after layer K, drop the prompt tokens the last token attends to least.

    Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference
    Acceleration for Large Vision-Language Models", ECCV 2024. https://arxiv.org/abs/2403.06764

    During prefill, the attention of the prompt's last query at layer ``layer`` (one row,
    averaged over heads) ranks the prompt tokens; the lowest ``prune_ratio`` of them (the last
    token is always kept) leave the sequence, so every later layer computes on fewer tokens
    and caches fewer entries. Positions (RoPE) stay those of the original prompt, so
    ``generate`` continues correctly; a plain forward returns logits for the kept tokens only.

    Parameters:
        layer: 0-based index of the layer after which tokens are dropped (at least one layer
            must follow it).
        prune_ratio: fraction of the prompt tokens (all but the last) dropped, in [0, 1).
    """

    name = "fastv"
    paper = "Chen et al., ECCV 2024 (arXiv:2403.06764)"
    kind: ClassVar[str] = "prefill"
    budget_param: ClassVar[str] = "prune_ratio"
    budget_identity: ClassVar[object] = 0.0
    budget_sweep: ClassVar[tuple] = (0.25, 0.5, 0.75)
    #: prompt tokens at the end that always survive (the last one, whose attention ranks)
    keep_last: ClassVar[int] = 1
    #: a pruned token never comes back (one site only)
    revive: ClassVar[bool] = False

    layer: int = 2
    prune_ratio: float = 0.5

    def __post_init__(self) -> None:
        check(self.name, "layer", self.layer, _is_int(self.layer) and self.layer >= 0,
              "an integer >= 0")  # fmt: skip
        r = self.prune_ratio
        check(self.name, "prune_ratio", r,
              isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r < 1,
              "a number in [0, 1)")  # fmt: skip

    @property
    def active(self) -> bool:
        return self.prune_ratio > 0

    def check_model(self, model: ModelInfo) -> None:
        if self.layer >= model.num_layers - 1:
            raise InvalidParameter(
                f"{self.name}: layer={self.layer} leaves no layer to run on fewer tokens; "
                f"allowed: 0..{model.num_layers - 2} for this {model.num_layers}-layer model"
            )

    def budget(self, model: ModelInfo) -> Budget:
        return CacheBudget(float(self.prune_ratio))

    def sites(self, num_layers: int) -> tuple[int, ...]:
        """Layers after whose attention prompt tokens are selected."""
        return (self.layer,)

    def keep_count(self, n: int, stage: int = -1, num_sites: int = 1) -> int:
        """Tokens kept of a prompt of ``n`` real tokens (the last one always)."""
        return n - removed_count(n - 1, float(self.prune_ratio))

    def scores(self, ctx: KVContext) -> Tensor:
        """(B, N) attention from the last query, averaged over all heads."""
        return ctx.attention(1).mean(dim=1)

    def reduce(self, ctx, n_remove):
        raise TypeError(f"{self.name} prunes a decoder LM's prompt; patch a decoder language model")
