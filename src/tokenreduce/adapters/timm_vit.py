"""Adapter for timm's ``VisionTransformer`` (ViT, DeiT, DeiT distilled, register tokens,
class-token-free ViTs with average, max or attention pooling).

Each block's ``forward`` is replaced on the instance (never on the class) by one that runs
the same operations as timm's, keeps the fused attention path (SDPA), and reduces tokens
after attention, before the MLP: the site ToMe and EViT use. Prefix tokens (class,
distillation, registers) are protected. ``unpatch`` deletes the instance attributes and the
forward hook, so the model is exactly what it was.

Pooling. Once tokens are merged, the model's ``pool`` weighs a token standing for ``s``
patches as ``s`` patches: ``global_pool="avg"`` averages weighted by size, ``"map"`` (the
attention-pooling head of SigLIP-style models) adds ``log(size)`` to its attention logits,
``"avgmax"`` takes half the weighted mean plus half the max. ``"max"`` needs no weights (a
token repeated ``s`` times has the same max as once), and ``"token"`` reads the class token,
which is never merged. Any other head (timm's ``"prr"``, an attention pool with its own
position embedding, or ``"map"`` on timm < 1.0.16, whose attention pool takes no mask) is
refused at patch time.

Image size. With ``dynamic_img_size=True`` every input has its own patch grid, read from the
patch embedding's output in each forward (``handle.trace.grid``); ``handle.info.grid`` is the
configured one.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..core.context import ModelInfo
from .base import Trace
from .vision import VisionAdapter

#: ``global_pool`` values whose head weighs merged tokens by size ('' returns every token)
POOLS = ("", "token", "avg", "avgmax", "max", "map")


def _timm_vit_class():
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer


class TimmViTAdapter(VisionAdapter):
    family = (
        "timm VisionTransformer (ViT, DeiT, DeiT distilled, register tokens, class-token-free "
        "ViTs with avg, max or attention pooling)"
    )

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        if not type(model).__module__.startswith("timm."):
            return False
        return isinstance(model, _timm_vit_class())

    @classmethod
    def describe(cls, model: nn.Module) -> ModelInfo:
        # Attention moved to timm.layers after 1.0.9; vision_transformer imports it in both.
        from timm.models.vision_transformer import Attention, Block

        for i, blk in enumerate(model.blocks):
            if type(blk) is not Block or type(blk.attn) is not Attention:
                raise TypeError(
                    f"block {i} of this {type(model).__name__} is a {type(blk).__name__} with "
                    f"{type(blk.attn).__name__}; tokenreduce supports timm's Block with the "
                    "standard Attention"
                )
        _check_pool(model)
        return ModelInfo(
            family="timm_vit",
            num_layers=len(model.blocks),
            num_prefix=model.num_prefix_tokens,
            has_class_token=bool(getattr(model, "has_class_token", model.cls_token is not None)),
            grid=tuple(model.patch_embed.grid_size),  # the configured size; inputs may differ
            kind=cls.kind,
            sites=cls.sites,
        )

    @classmethod
    def examples(cls) -> dict[str, Callable[..., nn.Module]]:
        """32x32 images in 4x4 patches (an 8x8 grid), 4 blocks of width 48, 10 classes: with a
        class token, with a distillation token, with 4 register tokens, and average pooling
        without a class token."""
        return {name: partial(_tiny_vit, arch, extra) for name, (arch, extra) in _TINY.items()}

    @classmethod
    def blocks(cls, model: nn.Module) -> list[nn.Module]:
        return list(model.blocks)

    @classmethod
    def final_norm(cls, model: nn.Module) -> nn.Module:
        return model.norm

    # -- patching ---------------------------------------------------------------------------
    def patch(self) -> None:
        for layer, blk in enumerate(self.model.blocks):
            blk.forward = types.MethodType(_make_block_forward(self, layer), blk)
        self.model.pool = types.MethodType(_make_pool(self), self.model)
        self._grid_hook = self.model.patch_embed.register_forward_hook(self._record_grid)

    def unpatch(self) -> None:
        for blk in self.model.blocks:
            del blk.forward
        del self.model.pool
        self._grid_hook.remove()

    def _record_grid(self, embed: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if out.dim() == 4:  # (B, rows, cols, C): dynamic_img_size keeps the grid's shape
            self.embedded(out.shape[1:3])
        elif args:  # (B, rows * cols, C): the grid of the image size, as timm computes it
            feat_size = getattr(embed, "dynamic_feat_size", None)
            size = tuple(args[0].shape[-2:])
            self.embedded(feat_size(size) if feat_size is not None else embed.grid_size)

    # -- analytic cost ----------------------------------------------------------------------
    def gflops(self, trace: Trace | None = None) -> float:
        m = self.model
        n_patches, attn, mlp = self.token_counts(trace)
        c = m.embed_dim
        flops = n_patches * m.patch_embed.proj.weight[0].numel() * c  # patch embedding
        for blk, n1, n2 in zip(m.blocks, attn, mlp, strict=True):
            d = blk.attn.num_heads * blk.attn.head_dim
            hidden = blk.mlp.fc1.out_features
            flops += n1 * c * 3 * d + 2 * n1 * n1 * d + n1 * d * c  # qkv, QK^T and AV, proj
            flops += 2 * n2 * c * hidden  # fc1, fc2
        head = getattr(m, "head", None)
        if isinstance(head, nn.Linear):
            flops += head.in_features * head.out_features
        return flops / 1e9


#: :meth:`TimmViTAdapter.examples`: name -> timm architecture and its layout's arguments
_TINY = {
    "cls": ("vit_tiny_patch16_224", {}),
    "distilled": ("deit_tiny_distilled_patch16_224", {}),
    "registers": ("vit_tiny_patch16_224", {"reg_tokens": 4}),
    "avgpool": ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg"}),
}
EXAMPLE_SIZE = {"img_size": 32, "patch_size": 4, "depth": 4, "embed_dim": 48, "num_heads": 3,
              "num_classes": 10}  # fmt: skip


def _tiny_vit(arch: str, layout: dict, seed: int = 0, **overrides) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model(arch, **{**EXAMPLE_SIZE, **layout, **overrides}).eval()


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
        # timm 1.0.9's Attention has no gate and no output norm (added later, default off).
        gate_fc, out_norm = getattr(attn, "gate", None), getattr(attn, "norm", None)
        gate = gate_fc(y).sigmoid() if gate_fc is not None else None
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
        o = o.transpose(1, 2).reshape(b, n, attn.num_heads * attn.head_dim)
        if out_norm is not None:
            o = out_norm(o)
        if gate is not None:
            o = o * gate
        x = x + blk.drop_path1(blk.ls1(attn.proj_drop(attn.proj(o))))
        del o, gate
        x = adapter.reduce(layer, x, q, k, attn.scale, bias)
        del q, k, bias
        return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))

    return forward


def _check_pool(model: nn.Module) -> None:
    """Refuse a pooling head that cannot weigh a merged token by its size."""
    name = type(model).__name__
    if model.global_pool not in POOLS:
        raise TypeError(
            f"this {name} pools with global_pool={model.global_pool!r}, a head that cannot weigh "
            f"a merged token by its size; tokenreduce supports global_pool in {POOLS}"
        )
    head = model.attn_pool
    if head is None:
        return
    if type(head).__name__ != "AttentionPoolLatent" or getattr(head, "pos_embed", None) is not None:
        raise TypeError(
            f"this {name}'s attention pool ({type(head).__name__}, position embedding: "
            f"{getattr(head, 'pos_embed', None) is not None}) cannot weigh a merged token by its "
            "size; tokenreduce supports timm's AttentionPoolLatent without position embedding"
        )
    if "attn_mask" not in inspect.signature(head.forward).parameters:
        import timm

        raise TypeError(
            f"the AttentionPoolLatent of timm {timm.__version__} takes no attention mask, so this "
            f"{name}'s global_pool='map' cannot weigh a merged token by its size; upgrade timm "
            "to 1.0.16 or later"
        )


def _make_pool(adapter: TimmViTAdapter):
    from timm.models.vision_transformer import VisionTransformer

    original = VisionTransformer.pool

    def pool(model, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        pool_type = model.global_pool if pool_type is None else pool_type
        sizes = adapter.pool_sizes()
        # Heads that need no weights: the class token is never merged, and a token repeated
        # s times has the same max as once.
        if sizes is None or (model.attn_pool is None and pool_type in ("", "token", "max")):
            return original(model, x, pool_type)
        start = 0 if getattr(model, "pool_include_prefix", False) else model.num_prefix_tokens
        x, w = x[:, start:], sizes[:, start:].to(x.dtype)
        if model.attn_pool is not None:  # attention weight times size, as for s patches
            return model.attn_pool(x, attn_mask=w.log()[:, None, None, :])
        mean = (x * w[..., None]).sum(1) / w.sum(1, keepdim=True)
        if pool_type == "avg":
            return mean
        if pool_type == "avgmax":
            return 0.5 * (x.amax(1) + mean)
        raise ValueError(f"pool_type={pool_type!r} is not one of timm's pools {POOLS}")

    return pool
