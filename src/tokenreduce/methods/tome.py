from __future__ import annotations

from dataclasses import dataclass

from ..core.budgets import Budget, ConstantR, PerLayer, layers_at, matched_removed, tome_schedule
from ..core.context import ModelInfo, TokenContext
from ..core.reducers import MERGE_ORDERS, bipartite_merge
from ..core.reduction import Reduction
from .base import InvalidParameter, TokenMethod, as_tuple, param, register


@register
@dataclass
class ToMe(TokenMethod):
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
    budget_sweep = (8, 12, 16)
    test_params = {"r": 13}
    paper = "Bolya et al., ICLR 2023 (arXiv:2210.09461)"
    r: int = param(8, ge=0)
    inflect: float = param(0.0, ge=-1, le=1)
    prop_attn: bool = param(True)
    schedule: tuple[int, ...] | None = param(
        None, type=tuple, optional=True, convert=as_tuple,
        valid=lambda s: isinstance(s, tuple) and all(isinstance(v, int) and v >= 0 for v in s),
        allowed="a list of integers >= 0, one per block",
    )  # fmt: skip
    order: str = param("reference", choices=MERGE_ORDERS)

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

    @classmethod
    def matched_sweep(cls, fractions, depth, n_patches, quick=False):
        """The keep-ratio methods' removed counts at their blocks as an explicit ``schedule``;
        unless ``quick``, also ToMe as published: ``r = round(f * n_patches / depth)`` in every
        block (about the same final count, reached gradually)."""
        layers = layers_at(depth)
        found = []
        for f in fractions:
            schedule = [0] * depth
            counts = matched_removed(f, n_patches, len(layers))
            for layer, count in zip(layers, counts, strict=True):
                schedule[layer] = count
            found.append(cls(schedule=tuple(schedule)))
        if not quick:
            found += [cls(r=max(1, round(f * n_patches / depth))) for f in fractions]
        return found

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        state = ctx.state
        return bipartite_merge(
            ctx.key_mean, n_remove, state.protected, state.size, self.order,
            state.num_protected, state.protected_prefix,
        )  # fmt: skip
