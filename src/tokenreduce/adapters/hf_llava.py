"""Adapter for Hugging Face LLaVA (``LlavaForConditionalGeneration``): visual-token reduction
at the handoff from the vision side to the language model, and the language model's KV-cache
methods.

*Handoff* (token methods: ``tome``, ``evit``, ``topk``, ``random``, ``pool``, ``prunemerge``,
...). The projector's output, I images of N tokens each, is the site (site 0, the only one:
a token method's ``layers`` is ``(0,)``): the method reduces each image's tokens as it would a
vision transformer's, comparing them by their projected features. The reduction is lifted to
the prompt (:func:`tokenreduce.core.handoff.handoff`) and given to the language model's first
layer, which runs, like every layer after it, on the kept slots: text tokens and the kept
(or merged) image tokens, at their original positions (RoPE by original index), with the
prompt's own padding dropped and shorter samples padded on the left. Each layer's cache holds
those entries only, so ``generate`` continues on the shorter cache exactly as after a prefill
method (:mod:`.hf_decoder`). Samples with different numbers of images keep different counts.

*KV cache* (``snapkv``, ``h2o``, ...): the language model's cache, as on a plain decoder.

The model keeps SDPA; no attention map is materialised. The vision tower itself is not
patched: its output reaches the projector whole.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import torch
from torch import nn

from ..core.context import ModelInfo
from ..core.handoff import handoff
from ..core.state import TokenState
from ..methods.base import Method, TokenMethod
from ..methods.kv_base import KVCacheMethod
from ..methods.prefill import PrefillMethod
from .hf_decoder import HFDecoderAdapter

HANDOFF = "handoff:projector->language_model"


class HFLlavaAdapter(HFDecoderAdapter):
    family = "Hugging Face LLaVA (LlavaForConditionalGeneration)"
    accepts = (TokenMethod, PrefillMethod, KVCacheMethod)
    kind = "vision-language"
    sites = (HANDOFF, "prefill:layer", "kv_cache:prefill", "kv_cache:decode")

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        kind = type(model)
        return kind.__module__.startswith("transformers.models.llava.") and kind.__name__ in (
            "LlavaForConditionalGeneration",
        )

    @classmethod
    def describe(cls, model: nn.Module) -> ModelInfo:
        """The language model's facts (depth, family), with the image tokens' patch grid."""
        info = super().describe(model)
        family = info.family.replace("hf_decoder:", "hf_llava:")
        return dataclasses.replace(info, family=family, grid=_grid(model))

    @classmethod
    def describe_for(cls, model: nn.Module, kind: type[Method]) -> ModelInfo:
        """A token method sees the handoff alone: one site (0) over each image's tokens,
        with the class token first when the model hands it over (strategy ``"full"``)."""
        info = cls.describe(model)
        if not issubclass(kind, TokenMethod):
            return info
        cls_token = _hands_over_class_token(model)
        return dataclasses.replace(info, num_layers=1, num_prefix=int(cls_token),
                                   has_class_token=cls_token, sites=(HANDOFF,))  # fmt: skip

    @classmethod
    def decoder(cls, model: nn.Module) -> nn.Module:
        return model.model.language_model

    @classmethod
    def examples(cls):
        """A 4-layer DINOv2 vision tower (28x28 images in 7x7 patches: 16 image tokens) and a
        2-layer Llama of width 64 (SDPA), image token id 5, vocabulary 101: with the patch
        tokens handed over (``llava``) and with the class token first (``llava_full``);
        keyword arguments override the language model's config."""
        return {"llava": partial(_tiny, "default"), "llava_full": partial(_tiny, "full")}

    def __init__(self, model: nn.Module, method: Method) -> None:
        super().__init__(model, method)
        self.reduces_images = isinstance(method, TokenMethod)
        if self.reduces_images:
            self.prunes_prompt, self.first_pruned = True, 0
        self._images = None  # the image reduction of the forward in progress
        self._placeholders: torch.Tensor | None = None

    @property
    def active(self) -> bool:
        return True if self.reduces_images else self.method.active

    # -- patching ---------------------------------------------------------------------------
    def patch(self) -> None:
        super().patch()
        self._image_hooks = [
            self.model.register_forward_pre_hook(self._read_prompt, with_kwargs=True)
        ]
        if self.reduces_images:
            projector = self.model.model.multi_modal_projector
            self._image_hooks.append(projector.register_forward_hook(self._reduce_images))

    def unpatch(self) -> None:
        for hook in getattr(self, "_image_hooks", ()):
            hook.remove()
        self._image_hooks = ()
        super().unpatch()

    def _read_prompt(self, model, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._placeholders = None if ids is None else ids == model.config.image_token_id

    def _reduce_images(self, projector, args, features: torch.Tensor) -> None:
        """The handoff site: reduce each image's projected tokens (I, N, C). The projector may
        run before the model's forward (``generate`` encodes the images first), so the
        reduction waits for the language model's next prefill."""
        self.site_fired()
        if features.dim() != 3:
            raise self.not_applied(
                f"the projector returned features of shape {tuple(features.shape)}, not one "
                "row of tokens per image (I, N, C)"
            )
        i, n = features.shape[:2]
        self.trace.state = TokenState.initial(i, n, self.info.num_prefix, features.device)
        head = features[:, None]
        red = self.reduction(0, features, head, head, features.shape[-1] ** -0.5, None)
        self._images = (red,)  # None inside: the budget removed nothing

    def _before_forward(self, module, args, kwargs):
        args, kwargs = super()._before_forward(module, args, kwargs)
        fwd, placeholders = self.current, self._placeholders
        if not fwd.prefill:
            return args, kwargs
        if self.prunes_prompt and not self.reduces_images and placeholders is not None:
            fwd.protected = ~placeholders  # a prefill method's candidates: image tokens only
        if not self.reduces_images:
            return args, kwargs
        images, self._images = self._images, None
        if placeholders is None or not bool(placeholders.any()):
            if images is not None:
                raise self.not_applied(
                    "image features were computed, but the prompt has no image placeholder "
                    "tokens in input_ids to put the kept ones in (call the model with input_ids, "
                    "not inputs_embeds)"
                )
            return args, kwargs
        if images is None:
            raise self.not_applied(
                "the prompt holds image tokens, but the image features reached the language "
                "model without passing through the projector's forward, where they are reduced"
            )
        if images[0] is not None:
            valid = None if fwd.mask2d is None else fwd.mask2d.bool()
            fwd.handoff = handoff(images[0], placeholders, "left", valid)
            self._handed = True
        return args, kwargs

    # -- never silent -------------------------------------------------------------------------
    def verify(self, output) -> None:
        if not self.reduces_images:
            return super().verify(output)
        handed, self._handed = getattr(self, "_handed", False), False
        if handed and (self.current.handoff is not None or self.current.pruned is None):
            raise self.not_applied(
                "the image tokens were reduced, but the language model's layers never ran on "
                "the shorter prompt"
            )


def _grid(model: nn.Module) -> tuple[int, int]:
    cfg = model.config.vision_config
    side = cfg.image_size // cfg.patch_size
    return (side, side)


def _hands_over_class_token(model: nn.Module) -> bool:
    strategy = model.config.vision_feature_select_strategy
    if strategy not in ("default", "full"):
        raise TypeError(
            f"this LLaVA selects its image features with strategy {strategy!r}; tokenreduce "
            "supports 'default' (patch tokens) and 'full' (class token first)"
        )
    return strategy == "full"


#: the image placeholder token of the example models
IMAGE_TOKEN = 5


def _tiny(strategy: str, seed: int = 0, **text_overrides) -> nn.Module:
    import transformers

    torch.manual_seed(seed)
    vision = transformers.Dinov2Config(image_size=28, patch_size=7, num_hidden_layers=4,
                                       hidden_size=32, num_attention_heads=2, mlp_ratio=2)  # fmt: skip
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
