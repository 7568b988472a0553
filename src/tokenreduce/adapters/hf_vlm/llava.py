"""Adapter for Hugging Face LLaVA (``LlavaForConditionalGeneration``): see :mod:`.base` for
the sites. The image tokens are the projector's output, I images of N tokens each; methods
read the vision tower's queries and keys at the layer whose output is handed over (its class
token's attention, although only patch tokens are handed over with the ``"default"`` feature
strategy), caught from the tower's own query and key projections."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from .base import Images, VLMAdapter


class HFLlavaAdapter(VLMAdapter):
    family = "Hugging Face LLaVA (LlavaForConditionalGeneration)"
    short_name = "hf_llava"
    classes = {"transformers.models.llava.": "LlavaForConditionalGeneration"}

    @classmethod
    def image_grid(cls, model: nn.Module) -> tuple[int, int]:
        cfg = model.config.vision_config
        side = cfg.image_size // cfg.patch_size
        return (side, side)

    @classmethod
    def handed_class_token(cls, model: nn.Module) -> bool:
        strategy = model.config.vision_feature_select_strategy
        if strategy not in ("default", "full"):
            raise TypeError(
                f"this LLaVA selects its image features with strategy {strategy!r}; "
                "tokenreduce supports 'default' (patch tokens) and 'full' (class token first)"
            )
        return strategy == "full"

    @classmethod
    def tower_class_token(cls, model: nn.Module) -> bool:
        return _TowerAttention.layer_of(model) is not None

    @classmethod
    def examples(cls):
        """A 4-layer DINOv2 vision tower (28x28 images in 7x7 patches: 16 image tokens) and a
        2-layer Llama of width 64 (SDPA), image token id 5, vocabulary 101: with the patch
        tokens handed over (``llava``) and with the class token first (``llava_full``);
        keyword arguments override the language model's config."""
        return {"llava": partial(_tiny, "default"), "llava_full": partial(_tiny, "full")}

    @classmethod
    def example_batch(cls, model: nn.Module, seed: int = 0) -> dict:
        """Two prompts of 6 text tokens around one image's placeholders each, the second
        left-padded by 3, and their images."""
        g = torch.Generator().manual_seed(seed)
        cfg = model.config
        rows, cols = cls.image_grid(model)
        n = rows * cols + cls.handed_class_token(model)
        words = torch.randint(10, cfg.get_text_config().vocab_size, (2, 6), generator=g)
        image = torch.full((2, n), cfg.image_token_id)
        ids = torch.cat([words[:, :2], image, words[:, 2:]], 1)
        mask = torch.ones_like(ids)
        mask[1, :3] = 0
        size = cfg.vision_config.image_size
        pixels = torch.randn(2, 3, size, size, generator=g)
        return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}

    def image_module(self) -> nn.Module:
        return self.model.model.multi_modal_projector

    def patch(self) -> None:
        super().patch()
        self._tower = _TowerAttention.of(self.model) if self.reduces_images else None
        if self._tower is not None:
            self._vlm_hooks.extend(self._tower.hooks)

    def images(self, args: tuple, kwargs: dict, output) -> Images:
        if not torch.is_tensor(output) or output.dim() != 3:
            raise self.not_applied(
                f"the projector returned {type(output).__name__} "
                f"{tuple(getattr(output, 'shape', ()))}, not one row of tokens per image (I, N, C)"
            )
        n = output.shape[1]
        tower = self._tower.read(n) if self._tower is not None else None
        attention = None if tower is None else [_one(tower, i) for i in range(output.shape[0])]
        return Images(list(output), [self._grid_of(n)] * output.shape[0], attention)

    def _grid_of(self, n: int) -> tuple[int, int] | None:
        """The patch grid of ``n`` handed-over tokens: the tower may run at another image size
        than its config's (DINOv2 and others interpolate their position embeddings), so the
        grid is read from the tokens, a square of patches (after the class token, if handed
        over)."""
        patches = n - self.info.num_prefix
        grid = square_grid(patches)
        if grid is not None:
            return grid
        if self.method.needs_grid:
            raise self.not_applied(
                f"{self.method.name} needs the patch grid, but the {patches} image tokens "
                "handed over form no square grid"
            )
        return None


def square_grid(patches: int) -> tuple[int, int] | None:
    """``(side, side)`` when ``patches`` tokens form a square patch grid, else None."""
    side = math.isqrt(max(patches, 0))
    return (side, side) if side and side * side == patches else None


def _one(tower: tuple, i: int) -> tuple:
    q, k, scale, outside = tower
    cut = slice(i, i + 1)
    return q[cut], k[cut], scale, None if outside is None else (outside[0][cut], outside[1][cut])


class _TowerAttention:
    """The vision tower's queries and keys at the layer whose output is handed over, caught
    from its query and key projections as the tower computes them (nothing recomputed)."""

    def __init__(self, attn: nn.Module) -> None:
        self.attn, self.q, self.k = attn, None, None
        self.hooks = (
            attn.q_proj.register_forward_hook(lambda m, a, out: setattr(self, "q", out)),
            attn.k_proj.register_forward_hook(lambda m, a, out: setattr(self, "k", out)),
        )

    @staticmethod
    def layer_of(model: nn.Module) -> nn.Module | None:
        """The tower's feature layer's attention module, or None for a tower tokenreduce
        cannot read (not a supported Hugging Face vision transformer)."""
        from .. import blocks

        try:
            layers = blocks(model.model.vision_tower)
        except TypeError:
            return None
        index = model.config.vision_feature_layer
        index = index[-1] if isinstance(index, list | tuple) else index
        # hidden_states[i] is the output of layer i - 1 (hidden_states[0]: the embeddings)
        layer = layers[index if index < 0 else index - 1]
        return layer.attention if hasattr(layer, "attention") else layer.self_attn

    @classmethod
    def of(cls, model: nn.Module) -> _TowerAttention | None:
        attn = cls.layer_of(model)
        return None if attn is None else cls(attn)

    def read(self, n: int):
        """``(q, k, scale, outside)`` of the ``n`` handed-over tokens of the last forward: q
        and k (I, H, n, D), the class token's own (query, key) when it was not handed over."""
        if self.q is None:
            return None
        q, k = (self._heads(t) for t in (self.q, self.k))
        self.q = self.k = None
        scale = self.attn.scaling if hasattr(self.attn, "scaling") else self.attn.scale
        extra = q.shape[2] - n
        if extra == 0:
            return q, k, scale, None
        if extra == 1:  # the class token, first, not handed over
            return q[:, :, 1:], k[:, :, 1:], scale, (q[:, :, :1], k[:, :, :1])
        return None

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, -1, self.attn.head_dim).transpose(1, 2)


#: the image placeholder token of the example models
IMAGE_TOKEN = 5


def _tiny(strategy: str, seed: int = 0, **text_overrides) -> nn.Module:
    import transformers

    torch.manual_seed(seed)
    vision = transformers.Dinov2Config(
        image_size=28, patch_size=7, num_hidden_layers=4, hidden_size=32, num_attention_heads=2,
        mlp_ratio=2,
    )  # fmt: skip
    text = transformers.LlamaConfig(**{
        "vocab_size": 101, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "initializer_range": 0.3, **text_overrides,
    })  # fmt: skip
    cfg = transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN,
        vision_feature_layer=-1, vision_feature_select_strategy=strategy,
        projector_hidden_act="gelu",
    )  # fmt: skip
    cfg._attn_implementation = "sdpa"
    return transformers.LlavaForConditionalGeneration(cfg).eval()
