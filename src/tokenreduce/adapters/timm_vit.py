"""Adapter for timm's ``VisionTransformer`` (ViT, DeiT, DeiT distilled, register tokens,
class-token-free ViTs with average pooling).

Each block's ``forward`` is replaced on the instance (never on the class) by one that runs
the same operations as timm's, keeps the fused attention path (SDPA), and reduces tokens
after attention, before the MLP: the site ToMe and EViT use. Prefix tokens (class,
distillation, registers) are protected. ``unpatch`` deletes the instance attributes, so the
model is exactly what it was.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from ..core.context import ModelInfo
from .base import Adapter, Trace


def _timm_vit_class():
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer


class TimmViTAdapter(Adapter):
    family = "timm VisionTransformer (ViT, DeiT, DeiT distilled, register tokens, avg-pool ViTs)"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        if not type(model).__module__.startswith("timm."):
            return False
        return isinstance(model, _timm_vit_class())

    @classmethod
    def describe(cls, model: nn.Module) -> ModelInfo:
        from timm.layers import Attention
        from timm.models.vision_transformer import Block

        for i, blk in enumerate(model.blocks):
            if type(blk) is not Block or type(blk.attn) is not Attention:
                raise TypeError(
                    f"block {i} of this {type(model).__name__} is a {type(blk).__name__} with "
                    f"{type(blk.attn).__name__}; tokenreduce supports timm's Block with the "
                    "standard Attention"
                )
        return ModelInfo(
            family="timm_vit",
            num_layers=len(model.blocks),
            num_prefix=model.num_prefix_tokens,
            has_class_token=bool(getattr(model, "has_class_token", model.cls_token is not None)),
            grid=tuple(model.patch_embed.grid_size),
        )

    # -- patching ---------------------------------------------------------------------------
    def patch(self) -> None:
        for layer, blk in enumerate(self.model.blocks):
            blk.forward = types.MethodType(_make_block_forward(self, layer), blk)
        self.model.pool = types.MethodType(_make_pool(self), self.model)

    def unpatch(self) -> None:
        for blk in self.model.blocks:
            del blk.forward
        del self.model.pool

    # -- analytic cost ----------------------------------------------------------------------
    def gflops(self, trace: Trace | None = None) -> float:
        m = self.model
        n_patches = m.patch_embed.num_patches
        n0 = n_patches + self.info.num_prefix
        trace = trace if trace is not None and trace.attn_tokens else None
        attn = trace.attn_tokens if trace else [n0] * self.info.num_layers
        mlp = trace.mlp_tokens if trace else [n0] * self.info.num_layers
        c = m.embed_dim
        flops = n_patches * m.patch_embed.proj.weight[0].numel() * c  # patch embedding
        for blk, n1, n2 in zip(m.blocks, attn, mlp, strict=True):
            d = blk.attn.attn_dim
            hidden = blk.mlp.fc1.out_features
            flops += n1 * c * 3 * d + 2 * n1 * n1 * d + n1 * d * c  # qkv, QK^T and AV, proj
            flops += 2 * n2 * c * hidden  # fc1, fc2
        head = getattr(m, "head", None)
        if isinstance(head, nn.Linear):
            flops += head.in_features * head.out_features
        return flops / 1e9


def _make_block_forward(adapter: TimmViTAdapter, layer: int):
    def forward(blk, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError(
                "tokenreduce: attn_mask / is_causal are not supported on a patched ViT"
            )
        state = adapter.begin(layer, x)
        b, n, _ = x.shape
        attn = blk.attn
        # Attention exactly as timm's Attention.forward, plus proportional attention's bias.
        y = blk.norm1(x)
        gate = attn.gate(y).sigmoid() if attn.gate is not None else None
        qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        del qkv, y  # locals live until return: free what the MLP does not need (peak memory)
        q, k = attn.q_norm(q), attn.k_norm(k)
        bias = adapter.size_bias(state, q.dtype)
        if attn.fused_attn:
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=attn.attn_drop.p if attn.training else 0.0
            )
        else:
            a = (q * attn.scale) @ k.transpose(-2, -1)
            if bias is not None:
                a = a + bias
            o = attn.attn_drop(a.softmax(dim=-1)) @ v
        del v
        o = attn.norm(o.transpose(1, 2).reshape(b, n, attn.attn_dim))
        if gate is not None:
            o = o * gate
        x = x + blk.drop_path1(blk.ls1(attn.proj_drop(attn.proj(o))))
        del o, gate
        x = adapter.reduce(layer, x, q, k, attn.scale, bias)
        del q, k, bias
        return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))

    return forward


def _make_pool(adapter: TimmViTAdapter):
    from timm.models.vision_transformer import VisionTransformer

    original = VisionTransformer.pool

    def pool(model, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        pool_type = model.global_pool if pool_type is None else pool_type
        state = adapter.trace.state
        if model.attn_pool is not None or pool_type not in ("avg", "avgmax") or not state.merged:
            return original(model, x, pool_type)
        # Merged tokens stand for several patches: average weighted by size.
        start = 0 if model.pool_include_prefix else model.num_prefix_tokens
        w = state.size[:, start:, None].to(x.dtype)
        mean = (x[:, start:] * w).sum(1) / w.sum(1)
        return mean if pool_type == "avg" else 0.5 * (x[:, start:].amax(1) + mean)

    return pool
