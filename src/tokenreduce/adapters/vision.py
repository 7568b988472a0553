"""What the vision-transformer adapters share: the patch grid of each input, and the token
sizes a pooling head must weigh.

The grid a model is configured for (``ModelInfo.grid``, ``handle.info.grid``) is only a
default: a timm ViT with ``dynamic_img_size`` or a Hugging Face model called with
``interpolate_pos_encoding=True`` takes other image sizes, and each input then has its own
grid. The family's adapter reports the grid its patch embedding produced
(:meth:`VisionAdapter.embedded`); the first block checks it against the tokens it receives and
records it in the trace (``handle.trace.grid``), and every site of that forward gives the
method a context whose grid is the input's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from ..core.context import ModelInfo
from ..core.state import TokenState
from ..methods.base import Method, TokenMethod
from .base import Adapter, Trace


@dataclass
class VisionTrace(Trace):
    """A vision forward's trace, plus ``grid``: the patch grid (rows, cols) of its input, or
    None when the tokens entering the first block do not form the patch embedding's grid
    (e.g. patch dropout while training, or blocks called without the patch embedding)."""

    grid: tuple[int, int] | None = None


class VisionAdapter(Adapter):
    """An adapter for a vision transformer whose input size, and so patch grid, may vary."""

    accepts = (TokenMethod,)
    kind = "vision"
    sites = ("block:after_attention",)

    @classmethod
    def blocks(cls, model: nn.Module) -> list[nn.Module]:
        """The transformer blocks in order; each family's adapter writes it."""
        raise NotImplementedError

    @classmethod
    def final_norm(cls, model: nn.Module) -> nn.Module:
        """The norm that makes the last block's output the model's final features; each
        family's adapter writes it."""
        raise NotImplementedError

    def __init__(self, model: nn.Module, method: Method) -> None:
        super().__init__(model, method)
        self.trace: VisionTrace = VisionTrace()
        self._embedded: tuple[int, int] | None = None  # grid of the forward under way
        self._input_info: ModelInfo = self.info

    def embedded(self, grid: tuple[int, int]) -> None:
        """Called by the family's patch embedding in every forward, before the first block."""
        self._embedded = (int(grid[0]), int(grid[1]))

    def begin(self, layer: int, x: torch.Tensor) -> TokenState:
        state = super().begin(layer, x)
        if layer == 0:
            self._place_grid(x)
        return state

    def _place_grid(self, x: torch.Tensor) -> None:
        # Consumed once: a forward that bypasses the patch embedding has no grid, not the
        # previous input's.
        embedded, self._embedded = self._embedded, None
        patches = x.shape[1] - self.info.num_prefix
        fits = embedded is not None and embedded[0] * embedded[1] == patches
        self.trace.grid = embedded if fits else None
        if not fits and self.method.needs_grid:
            made = (
                "no patch embedding ran"
                if embedded is None
                else f"the patch embedding made {embedded[0]}x{embedded[1]}"
            )
            raise ValueError(
                f"{self.method.name} needs the patch grid of each input, but the {patches} patch "
                f"tokens entering block 0 of this {type(self.model).__name__} form no grid "
                f"({made}); run the whole model on whole images, in eval mode (no patch dropout)"
            )
        self._input_info = dataclasses.replace(self.info, grid=self.trace.grid)

    def reduce(self, layer, x, q, k, scale, bias) -> torch.Tensor:
        # The base builds the token context from self.info: during a site it is the info of
        # this input (its grid), so methods see the grid they reduce; handle.info stays the
        # configured default.
        configured, self.info = self.info, self._input_info
        try:
            return super().reduce(layer, x, q, k, scale, bias)
        finally:
            self.info = configured

    def token_counts(self, trace: Trace | None) -> tuple[int, list[int], list[int]]:
        """``(patches, attention tokens per block, MLP tokens per block)`` of a traced forward;
        for ``trace=None``, of the unreduced model on the last input (on the configured grid
        before any forward). The FLOP counts of the family adapters build on it."""
        if trace is not None and trace.attn_tokens:
            return trace.attn_tokens[0] - self.info.num_prefix, trace.attn_tokens, trace.mlp_tokens
        if self.trace.attn_tokens:
            n0 = self.trace.attn_tokens[0]
        else:
            rows, cols = self.info.grid
            n0 = rows * cols + self.info.num_prefix
        return n0 - self.info.num_prefix, [n0] * self.info.num_layers, [n0] * self.info.num_layers

    def pool_sizes(self) -> torch.Tensor | None:
        """Token sizes (B, N) a pooling head must weigh by, or None while no token stands for
        several patches (the head then runs unchanged, bitwise)."""
        state = self.trace.state
        return state.size if state is not None and state.merged else None
