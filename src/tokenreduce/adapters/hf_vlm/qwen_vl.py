"""Adapter for Hugging Face Qwen2.5-VL and Qwen2-VL (``Qwen2_5_VLForConditionalGeneration``,
``Qwen2VLForConditionalGeneration``): see :mod:`.base` for the sites.

The image tokens are the vision tower's merged output, one token per 2 x 2 patches, in raster
order; images of different sizes have grids and token counts of their own, and each is reduced
on its own grid. Their positions are Qwen's 3-D M-RoPE (time, row, column), which the model
computes from the whole prompt before the language model runs: the layers that run on the kept
tokens read the rotary embedding of each kept token's own position, all three components. The
tower has no class token, so methods compare image tokens by their features. Videos are not
reduced (a forward with ``pixel_values_videos`` is refused).
"""

from __future__ import annotations

import dataclasses
import inspect
from functools import partial

import torch
from torch import nn

from .base import Images, VLMAdapter


class HFQwenVLAdapter(VLMAdapter):
    family = "Hugging Face Qwen2.5-VL and Qwen2-VL"
    short_name = "hf_qwen_vl"
    classes = {
        "transformers.models.qwen2_5_vl.": "Qwen2_5_VLForConditionalGeneration",
        "transformers.models.qwen2_vl.": "Qwen2VLForConditionalGeneration",
    }

    @classmethod
    def describe(cls, model: nn.Module):
        """The language model's facts; images have grids of their own (``grid_per_input``)."""
        return dataclasses.replace(super().describe(model), grid_per_input=True)

    @classmethod
    def examples(cls):
        """A 2-block vision tower (4-pixel patches, merged 2 x 2) and a 2-layer Qwen2.5-VL
        language model of width 64 with M-RoPE sections (2, 3, 3), SDPA; image token 151,
        vocabulary 160."""
        return {"qwen2_5_vl": partial(_tiny)}

    @classmethod
    def example_batch(cls, model: nn.Module, seed: int = 0) -> dict:
        """Two left-padded prompts with one image each, of 8 x 8 and 8 x 16 pixels (4 and 8
        image tokens), as the model's processor would give them."""
        g = torch.Generator().manual_seed(seed)
        cfg = model.config
        merge = cfg.vision_config.spatial_merge_size
        grids = torch.tensor([[1, 2, 2], [1, 2, 4]]) * torch.tensor([1, merge, merge])
        rows = []
        for t, h, w in grids.tolist():
            n = t * h * w // merge**2
            words = torch.randint(10, 100, (5,), generator=g)
            image = [cfg.vision_start_token_id, *[cfg.image_token_id] * n, cfg.vision_end_token_id]
            rows.append(torch.cat([words[:2], torch.tensor(image), words[2:]]))
        length = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, r in enumerate(rows):
            ids[b, length - len(r) :], mask[b, length - len(r) :] = r, 1
        vc = cfg.vision_config
        size = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        pixels = torch.randn(int(grids.prod(-1).sum()), size, generator=g)
        batch = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels,
                 "image_grid_thw": grids}  # fmt: skip
        if "mm_token_type_ids" in inspect.signature(type(model).forward).parameters:
            batch["mm_token_type_ids"] = (ids == cfg.image_token_id).int()
        return batch

    def image_module(self) -> nn.Module:
        return self.model.model.visual

    def _read_prompt(self, model, args, kwargs) -> None:
        if kwargs.get("pixel_values_videos") is not None and self.reduces_images:
            raise self.not_applied("videos are not reduced; call the model with images only")
        super()._read_prompt(model, args, kwargs)

    def images(self, args: tuple, kwargs: dict, output) -> Images:
        grid_thw = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        merged = getattr(output, "pooler_output", None)
        if grid_thw is None or not torch.is_tensor(merged) or merged.dim() != 2:
            raise self.not_applied(
                "the vision tower's output has no merged image tokens (pooler_output) with "
                "their grids (grid_thw)"
            )
        m = self.model.config.vision_config.spatial_merge_size
        grids = [(int(t) * int(h) // m, int(w) // m) for t, h, w in grid_thw.tolist()]
        sizes = [r * c for r, c in grids]
        return Images(list(merged.split(sizes)), grids)


def _tiny(seed: int = 0, **text_overrides) -> nn.Module:
    import transformers

    torch.manual_seed(seed)
    text = {
        "vocab_size": 160, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3],
                            "rope_theta": 10000.0}, **text_overrides,
    }  # fmt: skip
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
              "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2,
              "out_hidden_size": 64, "window_size": 16, "fullatt_block_indexes": [1]}  # fmt: skip
    cfg = transformers.Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=151, video_token_id=152,
        vision_start_token_id=153, vision_end_token_id=154,
    )  # fmt: skip
    cfg._attn_implementation = "sdpa"
    return transformers.Qwen2_5_VLForConditionalGeneration(cfg).eval()
