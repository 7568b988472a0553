"""Layers shared by the test-only model families: a pre-norm transformer block whose
attention exposes q and k, written so an adapter can run it with a site inside."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def attend(self, q, k, v, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask``: an additive (B, 1, N or 1, N) bias or None."""
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(o.transpose(1, 2).flatten(2))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.attend(*self.qkv_heads(x), mask)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


def padding_bias(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, 1, N) additive bias that hides padding keys (``valid`` (B, N) False)."""
    bias = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
    return bias.masked_fill(~valid, torch.finfo(dtype).min)[:, None, None, :]


def block_flops(n: int, dim: int) -> float:
    """Multiply-adds of one block on ``n`` tokens."""
    return n * dim * 4 * dim + 2 * n * n * dim + 2 * n * dim * 2 * dim
