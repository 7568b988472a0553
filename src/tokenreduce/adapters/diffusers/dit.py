"""Diffusion transformers of diffusers: ``DiTTransformer2DModel`` (class-conditional, adaLN-Zero)
and ``PixArtTransformer2DModel`` (text-conditional, adaLN-single): a patch embedding, then a
stack of ``BasicTransformerBlock`` on one token grid (latent size / patch size), then an
unpatchify. Every block is a site, at resolution level 1."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from .base import BLOCK_CLASS, DiffusionAdapter, Site

#: the tiny example models: 16x16 latents in 2x2 patches (an 8x8 grid), 2 blocks of width 16
EXAMPLE = {"sample_size": 16, "patch_size": 2, "in_channels": 4, "num_layers": 2,
           "num_attention_heads": 2, "attention_head_dim": 8}  # fmt: skip


class DiffusersDiTAdapter(DiffusionAdapter):
    family = "diffusers DiT (DiTTransformer2DModel, PixArtTransformer2DModel)"
    classes = ("DiTTransformer2DModel", "PixArtTransformer2DModel")

    @classmethod
    def site_list(cls, model: nn.Module) -> list[Site]:
        blocks = list(model.transformer_blocks)
        for i, block in enumerate(blocks):
            if type(block).__name__ != BLOCK_CLASS:
                raise TypeError(
                    f"block {i} of this {type(model).__name__} is a {type(block).__name__}; "
                    f"tokenreduce's diffusers adapter supports {BLOCK_CLASS} blocks only"
                )
        return [Site(block, 1, model, model.config.patch_size) for block in blocks]

    @classmethod
    def latent_grid(cls, model: nn.Module) -> tuple[int, int]:
        side = model.config.sample_size // model.config.patch_size
        return side, side

    @classmethod
    def examples(cls) -> dict[str, Callable[..., nn.Module]]:
        """A class-conditional DiT and a text-conditional PixArt, random weights."""
        return {"diffusers_dit": partial(_tiny, "dit"), "diffusers_pixart": partial(_tiny, "pixart")}

    @classmethod
    def example_batch(cls, model: nn.Module, batch: int = 2, seed: int = 0) -> dict:
        g = torch.Generator().manual_seed(seed)
        cfg = model.config
        side = cfg.sample_size
        inputs = {
            "hidden_states": torch.randn(batch, cfg.in_channels, side, side, generator=g),
            "timestep": torch.randint(0, 1000, (batch,), generator=g),
        }
        if type(model).__name__ == "DiTTransformer2DModel":
            return {**inputs, "class_labels": torch.randint(0, cfg.num_embeds_ada_norm, (batch,),
                                                            generator=g)}  # fmt: skip
        text = torch.randn(batch, 5, cfg.caption_channels, generator=g)
        conditions = {"resolution": None, "aspect_ratio": None}
        return {**inputs, "encoder_hidden_states": text, "added_cond_kwargs": conditions}


def _tiny(kind: str, seed: int = 0, **overrides) -> nn.Module:
    from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel

    torch.manual_seed(seed)
    if kind == "dit":
        model = DiTTransformer2DModel(**{**EXAMPLE, "num_embeds_ada_norm": 10, **overrides})
    else:
        config = {**EXAMPLE, "cross_attention_dim": 16, "caption_channels": 12}
        model = PixArtTransformer2DModel(**{**config, **overrides})
    return model.eval()
