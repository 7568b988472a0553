from __future__ import annotations

from dataclasses import dataclass

from ..core.budgets import Budget, ConstantR, PerLayer, tome_schedule
from ..core.context import ModelInfo, TokenContext
from ..core.reducers import MERGE_ORDERS, bipartite_merge
from ..core.reduction import Reduction
from .base import InvalidParameter, Method, check, register


@register
@dataclass
class ToMe(Method):
    """Token Merging: merge similar tokens by bipartite soft matching.

    Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023.
    https://arxiv.org/abs/2210.09461

    In every block, after attention, tokens are split alternately into sets A and B; each A
    token is matched to its most similar B token by cosine similarity of the attention keys
    averaged over heads, and the ``r`` most similar pairs are merged by a size-weighted
    average. Protected tokens (class, distillation, registers) never merge and stay first.
    With proportional attention, log(size) is added to the attention logits so a merged token
    weighs as much as the tokens it stands for. With the defaults, a timm ViT's predictions
    are those of the authors' implementation (facebookresearch/ToMe, ``tome/merge.py``,
    ``tome/patch/timm.py``); ``benchmarks/tome_reference.py`` runs the two side by side.

    Parameters:
        r: tokens merged per block (>= 0). As in the paper, it is clamped to half of the
            unprotected tokens present at each block: larger values merge as much as
            bipartite matching allows.
        inflect: ToMe's schedule shape; 0 merges ``r`` in every block, > 0 merges fewer early
            and more late, < 0 the reverse (average stays about ``r``). Any number in [-1, 1].
        prop_attn: proportional attention (the paper's default, True).
        schedule: explicit tokens-merged-per-block list; overrides ``r`` and ``inflect``.
            Its length must not exceed the model's depth.
        order: token order after a merge, which decides the next block's alternating A/B
            split. ``"reference"`` (default): the authors' order, the unmerged A tokens
            first, then the B tokens with their merged A tokens folded in (prefix tokens stay
            first). ``"original"``: every token keeps its input order, so A and B stay
            interleaved in the image's raster order.
    """

    name = "tome"
    budget_param = "r"
    budget_identity = 0
    budget_sweep = (4, 8, 13, 16)
    paper = "Bolya et al., ICLR 2023 (arXiv:2210.09461)"
    r: int = 8
    inflect: float = 0.0
    prop_attn: bool = True
    schedule: tuple[int, ...] | None = None
    order: str = "reference"

    def __post_init__(self) -> None:
        check(self.name, "r", self.r,
              isinstance(self.r, int) and not isinstance(self.r, bool) and self.r >= 0,
              "an integer >= 0")
        check(self.name, "inflect", self.inflect,
              isinstance(self.inflect, (int, float)) and -1 <= self.inflect <= 1,
              "a number in [-1, 1]")
        check(self.name, "prop_attn", self.prop_attn, isinstance(self.prop_attn, bool),
              "true or false")
        if self.schedule is not None:
            self.schedule = tuple(self.schedule)
            check(self.name, "schedule", self.schedule,
                  all(isinstance(v, int) and v >= 0 for v in self.schedule),
                  "a list of integers >= 0, one per block")
        check(self.name, "order", self.order, self.order in MERGE_ORDERS,
              " or ".join(repr(o) for o in MERGE_ORDERS))

    def uses_proportional_attention(self) -> bool:
        return self.prop_attn

    def check_model(self, model: ModelInfo) -> None:
        super().check_model(model)
        if self.schedule is not None and len(self.schedule) > model.num_layers:
            raise InvalidParameter(
                f"tome: schedule has {len(self.schedule)} entries but the model has "
                f"{model.num_layers} blocks"
            )

    def budget(self, model: ModelInfo) -> Budget:
        if self.schedule is not None:
            return PerLayer(self.schedule)
        if self.inflect == 0:
            return ConstantR(self.r)
        return PerLayer(tome_schedule(model.num_layers, self.r, self.inflect))

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        state = ctx.state
        return bipartite_merge(
            ctx.key_mean, n_remove, state.protected, state.size, self.order, state.num_protected
        )
