from __future__ import annotations

from dataclasses import dataclass

from ..core.budgets import Budget, KeepRatio
from ..core.context import ModelInfo, TokenContext
from ..core.reducers import grid_pool
from ..core.reduction import Reduction
from .base import Method, check, check_layers, register


@register
@dataclass
class Pool(Method):
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
    needs_grid = True
    kernel: int = 2
    layers: tuple[int, ...] = (4,)

    def __post_init__(self) -> None:
        check(self.name, "kernel", self.kernel,
              isinstance(self.kernel, int) and not isinstance(self.kernel, bool)
              and self.kernel >= 1, "an integer >= 1")
        self.layers = check_layers(self.name, self.layers)

    def _kernel_at(self, layer: int) -> int:
        return self.kernel ** (self.layers.index(layer) + 1)

    def budget(self, model: ModelInfo) -> Budget:
        # Nominal keep ratio on an untouched grid; the reducer decides the exact count.
        return KeepRatio(1.0 / self.kernel**2, self.layers if self.kernel > 1 else ())

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        return grid_pool(ctx.state.position, ctx.grid, self._kernel_at(ctx.layer),
                         ctx.state.protected, ctx.state.size, ctx.model.num_prefix)
