"""A test-only diffusion transformer block stack (DiT's shape, no conditioning) and its
adapter: local sites that merge tokens, run self-attention on the fewer tokens and unmerge
its output back to the full grid (``Adapter.around``), as token merging for diffusion does."""

from __future__ import annotations

import types

import torch
from torch import nn

from tokenreduce.adapters import Adapter
from tokenreduce.adapters.base import Trace
from tokenreduce.core.context import ModelInfo
from tokenreduce.methods.base import TokenMethod

from .layers import Block, block_flops

GRID = (8, 8)


class ToyDiT(nn.Module):
    """Latents (B, 64, 4), one per cell of an 8x8 grid -> outputs (B, 64, 4)."""

    def __init__(self, dim: int = 32, heads: int = 2, depth: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.pos = nn.Parameter(torch.randn(1, GRID[0] * GRID[1], dim) * 0.1)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.out = nn.Linear(dim, 4)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.embed(latents) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.out(x)


class ToyDiTAdapter(Adapter):
    family = "toy diffusion transformer (tests only)"
    accepts = (TokenMethod,)
    kind = "vision"
    sites = ("block:around_self_attention",)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, ToyDiT)

    @classmethod
    def describe(cls, model: nn.Module) -> ModelInfo:
        return ModelInfo("toy_dit", len(model.blocks), 0, False, GRID, cls.kind, cls.sites)

    def patch(self) -> None:
        for layer, blk in enumerate(self.model.blocks):
            blk.forward = types.MethodType(_block_forward(self, layer), blk)

    def unpatch(self) -> None:
        for blk in self.model.blocks:
            del blk.forward

    def gflops(self, trace: Trace | None = None) -> float:
        dim = self.model.embed.out_features
        return len(self.model.blocks) * block_flops(GRID[0] * GRID[1], dim) / 1e9


def _block_forward(adapter: ToyDiTAdapter, layer: int):
    def forward(blk: Block, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        adapter.begin(layer, x)
        y = blk.norm1(x)
        x = x + adapter.around(layer, y, blk.attn, metric=y)
        return x + blk.mlp(blk.norm2(x))

    return forward
