from __future__ import annotations

from dataclasses import dataclass

from ..core.budgets import Budget, KeepRatio, layers_at
from ..core.context import ModelInfo, TokenContext
from ..core.reducers import grid_pool
from ..core.reduction import Reduction
from .base import TokenMethod, layer_tuple, param, register


@register
@dataclass
class Pool(TokenMethod):
    """Average pooling over the patch grid: the structure-only baseline.

    Patch tokens are averaged over ``kernel x kernel`` cells of the input's original patch
    grid (size-weighted), ignoring content; an input of another size than the model's
    configured one is pooled on its own grid. At the i-th listed layer the cell side is
    ``kernel ** (i + 1)`` original patches, so pooling at several layers compounds.
    Protected tokens are untouched.

    Parameters:
        kernel: cell side in patches (an integer >= 1; 1 is the identity).
        layers: 0-based indices of the blocks that pool (after attention).
    """

    name = "pool"
    budget_param = "kernel"
    budget_identity = 1
    budget_sweep = (2, 3)
    paper = "baseline"
    test_params = {"kernel": 3, "layers": (1, 2)}
    needs_grid = True
    kernel: int = param(2, ge=1)
    layers: tuple[int, ...] = layer_tuple((4,))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.layers = tuple(sorted(set(self.layers)))

    @classmethod
    def placement(cls, depth: int) -> dict:
        """One pooling layer, a third of the way through the model."""
        return {"layers": tuple(layers_at(depth, (1 / 3,)))}

    @classmethod
    def default_sweep(cls, depth: int, quick: bool = False) -> list[TokenMethod]:
        """2 x 2 cells at a third of the depth, then (unless ``quick``) at a sixth."""
        at = (1 / 3,) if quick else (1 / 3, 1 / 6)
        return [cls(kernel=2, layers=tuple(layers_at(depth, (f,)))) for f in at]

    @classmethod
    def matched_sweep(cls, fractions, depth, n_patches, quick=False):
        """2 x 2 cells at the first matched block (75 % removed), whatever the budget."""
        return [cls(kernel=2, layers=(layers_at(depth)[0],))]

    def _kernel_at(self, layer: int) -> int:
        return self.kernel ** (self.layers.index(layer) + 1)

    def budget(self, model: ModelInfo) -> Budget:
        # Nominal keep ratio on an untouched grid; the reducer decides the exact count.
        return KeepRatio(1.0 / self.kernel**2, self.layers if self.kernel > 1 else ())

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        return grid_pool(ctx.state.position, ctx.grid, self._kernel_at(ctx.layer),
                         ctx.state.protected, ctx.state.size, ctx.model.num_prefix)
