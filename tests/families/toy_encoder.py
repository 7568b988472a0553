"""A test-only text encoder (BERT's shape: [CLS] first, right padding) and its adapter: a
padded batch whose samples have different real lengths reduces per sample, through
``TokenState.valid``, with nothing in the adapter that knows any method."""

from __future__ import annotations

import types

import torch
from torch import nn

from tokenreduce.adapters import Adapter
from tokenreduce.adapters.base import Trace
from tokenreduce.core.context import ModelInfo
from tokenreduce.methods.base import TokenMethod

from .layers import Block, block_flops, padding_bias


class ToyEncoder(nn.Module):
    """Token ids (B, N) and an attention mask (B, N) -> hidden states (B, N, dim)."""

    def __init__(self, vocab: int = 40, dim: int = 32, heads: int = 2, depth: int = 4) -> None:
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, dim), nn.Embedding(64, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids) + self.pos(torch.arange(input_ids.shape[1]))
        for blk in self.blocks:
            x = blk(x, padding_bias(attention_mask.bool(), x.dtype))
        return self.norm(x)


class ToyEncoderAdapter(Adapter):
    family = "toy text encoder (tests only)"
    accepts = (TokenMethod,)
    kind = "language"
    sites = ("block:after_attention",)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, ToyEncoder)

    @classmethod
    def describe(cls, model: nn.Module) -> ModelInfo:
        return ModelInfo("toy_encoder", len(model.blocks), 1, True, None, cls.kind, cls.sites)

    def patch(self) -> None:
        self._mask: torch.Tensor | None = None
        self._mask_hook = self.model.register_forward_pre_hook(self._read_mask)
        for layer, blk in enumerate(self.model.blocks):
            blk.forward = types.MethodType(_block_forward(self, layer), blk)

    def unpatch(self) -> None:
        self._mask_hook.remove()
        for blk in self.model.blocks:
            del blk.forward

    def _read_mask(self, model, args) -> None:
        self._mask = args[1].bool()

    def gflops(self, trace: Trace | None = None) -> float:
        counts = trace.attn_tokens if trace and trace.attn_tokens else None
        dim = self.model.norm.normalized_shape[0]
        n = counts or [self.model.pos.num_embeddings] * len(self.model.blocks)
        return sum(block_flops(c, dim) for c in n) / 1e9


def _block_forward(adapter: ToyEncoderAdapter, layer: int):
    def forward(blk: Block, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        state = adapter.begin(layer, x, valid=adapter._mask)
        valid = state.valid if state.valid is not None else torch.ones(x.shape[:2], dtype=bool)
        q, k, v = blk.attn.qkv_heads(blk.norm1(x))
        bias = padding_bias(valid, x.dtype)
        size = adapter.size_bias(state, x.dtype)
        if size is not None:
            bias = bias + size.masked_fill(~valid[:, None, None, :], 0)
        x = x + blk.attn.attend(q, k, v, bias)
        x = adapter.reduce(layer, x, q, k, blk.attn.scale, bias)
        return x + blk.mlp(blk.norm2(x))

    return forward
