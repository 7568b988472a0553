"""diffusers' ``UNet2DConditionModel`` (Stable Diffusion 1.x, 2.x and SDXL layouts): its
attention lives in ``Transformer2DModel``s of ``BasicTransformerBlock``s inside the down, mid
and up blocks. Each block is a site at the resolution level of its stage (1 at the input
resolution, doubling after every downsampler, halving after every upsampler), which is how
tomesd chooses where to merge (``max_downsample``)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from .base import BLOCK_CLASS, DiffusionAdapter, Site

#: the tiny SD-layout example: 16x16 latents, two stages (levels 1 and 2), width 16 and 32
EXAMPLE = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4, "block_out_channels": (16, 32),
    "layers_per_block": 1, "norm_num_groups": 8, "cross_attention_dim": 16,
    "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
}  # fmt: skip


class DiffusersUNetAdapter(DiffusionAdapter):
    family = "diffusers UNet (UNet2DConditionModel: SD 1.x/2.x, SDXL)"
    classes = ("UNet2DConditionModel",)

    @classmethod
    def site_list(cls, model: nn.Module) -> list[Site]:
        sites: list[Site] = []
        level = 1
        for stage in model.down_blocks:
            sites += _stage_sites(model, stage, level)
            level *= 2 if getattr(stage, "downsamplers", None) else 1
        if model.mid_block is not None:
            sites += _stage_sites(model, model.mid_block, level)
        for stage in model.up_blocks:
            sites += _stage_sites(model, stage, level)
            level //= 2 if getattr(stage, "upsamplers", None) else 1
        return sites

    @classmethod
    def latent_grid(cls, model: nn.Module) -> tuple[int, int]:
        size = model.config.sample_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @classmethod
    def examples(cls) -> dict[str, Callable[..., nn.Module]]:
        """A tiny SD 1.x-layout UNet (cross-attention at the highest resolution)."""
        return {"diffusers_unet": partial(tiny_unet, **EXAMPLE)}

    @classmethod
    def example_batch(cls, model: nn.Module, batch: int = 2, seed: int = 0) -> dict:
        g = torch.Generator().manual_seed(seed)
        cfg = model.config
        h, w = cls.latent_grid(model)
        return {
            "sample": torch.randn(batch, cfg.in_channels, h, w, generator=g),
            "timestep": torch.randint(0, 1000, (batch,), generator=g),
            "encoder_hidden_states": torch.randn(batch, 5, cfg.cross_attention_dim, generator=g),
        }


def _stage_sites(model: nn.Module, stage: nn.Module, level: int) -> list[Site]:
    """The blocks of a down, mid or up stage; TypeError for attention tokenreduce does not
    support (a stage whose attention is not ``Transformer2DModel``s of ``BasicTransformerBlock``)."""
    sites = []
    for attention in getattr(stage, "attentions", None) or ():
        kind = type(attention).__name__
        if kind != "Transformer2DModel":
            raise TypeError(
                f"the {type(stage).__name__} of this {type(model).__name__} holds a {kind}; "
                f"tokenreduce's diffusers adapter supports Transformer2DModel attention of "
                f"{BLOCK_CLASS}s (CrossAttnDownBlock2D, UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D)"
            )
        for block in attention.transformer_blocks:
            if type(block).__name__ != BLOCK_CLASS:
                raise TypeError(
                    f"a Transformer2DModel of this {type(model).__name__} holds a "
                    f"{type(block).__name__}; tokenreduce supports {BLOCK_CLASS} blocks only"
                )
            sites.append(Site(block, level, attention, 1))
    return sites


def tiny_unet(seed: int = 0, **config) -> nn.Module:
    """A randomly initialised ``UNet2DConditionModel`` of ``config`` (in eval mode)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**config).eval()
