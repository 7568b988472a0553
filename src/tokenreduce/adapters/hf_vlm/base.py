"""What the vision-language adapters share: the handoff site, prefill methods that prune image
tokens only, and the checks that the reduction reached the language model.

*Handoff* (token methods: ``visionzip``, ``divprune``, ``downsample``, ``tome``, ``topk``, ...).
The image tokens, as the vision side hands them over, are the site (site 0, the only one: a
token method's ``layers`` is ``(0,)``; ``tokenreduce.describe(model, TokenMethod)``): the
method reduces each image's tokens as it would a vision transformer's. The reduction is lifted
to the prompt (:func:`tokenreduce.core.handoff.handoff`) and applied at the language model's
first layer, which runs, like every layer after it, on the kept slots: text tokens and the kept
(or merged) image tokens, at their original positions (RoPE by original index), with the
prompt's own padding dropped and shorter samples padded on the left. Each layer's cache holds
those entries only, so ``generate`` continues on the shorter cache exactly as after a prefill
method (:mod:`..hf_decoder`). Samples with different numbers of images, or images of different
sizes, keep different counts, and so do the images of a per-input method (``prumerge``: each
image its own count; the handoff pads the shorter prompts). A plain forward returns logits for the kept tokens only.

*Prefill* (``fastv``, ``lazyllm``): inside the language model, only image tokens are
candidates; every text token survives.

*KV cache* (``snapkv``, ``h2o``, ...): the language model's cache, as on a plain decoder.

The model keeps its attention implementation (SDPA); no attention map is materialised. The
vision tower itself is not patched.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from ...core.context import ModelInfo
from ...core.handoff import handoff
from ...core.reduction import Reduction
from ...core.state import TokenState
from ...methods.base import Method, PerInputTokenMethod, SequenceMethod, TokenMethod
from ...methods.kv_base import KVCacheMethod
from ...methods.prefill import PrefillMethod
from ..hf_decoder import HFDecoderAdapter

#: the site of a token method on a vision-language model
HANDOFF = "handoff:vision->language_model"


@dataclasses.dataclass
class Images:
    """The image tokens of one forward as the vision side hands them over: ``features``, one
    (N_i, C) tensor per image in prompt order, and each image's patch ``grid`` (rows, cols)."""

    features: list[torch.Tensor]
    grids: list[tuple[int, int]]
    #: per image, (q, k, scale, outside) of the vision tower's attention over its tokens, when
    #: the family can read them (:meth:`VLMAdapter.reduce_images` compares tokens by their
    #: features otherwise)
    attention: list[tuple] | None = None


class VLMAdapter(HFDecoderAdapter):
    """Base of the Hugging Face vision-language adapters. A family declares ``classes``,
    :meth:`image_module` (the module whose forward output is the image tokens),
    :meth:`images` (those tokens, per image) and its ``examples``."""

    accepts = (TokenMethod, PerInputTokenMethod, PrefillMethod, KVCacheMethod)
    kind = "vision-language"
    sites = (HANDOFF, "prefill:layer", "kv_cache:prefill", "kv_cache:decode")
    #: ``ModelInfo.family`` prefix, e.g. ``"hf_llava"``
    short_name: ClassVar[str]
    #: the model classes of the family: transformers module prefix -> class name
    classes: ClassVar[dict[str, str]]

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        kind = type(model)
        return any(kind.__module__.startswith(module) and kind.__name__ == name
                   for module, name in cls.classes.items())  # fmt: skip

    @classmethod
    def describe(cls, model: nn.Module) -> ModelInfo:
        """The language model's facts (depth, family), with the image tokens' patch grid."""
        info = super().describe(model)
        family = info.family.replace("hf_decoder:", f"{cls.short_name}:")
        return dataclasses.replace(info, family=family, grid=cls.image_grid(model))

    @classmethod
    def describe_for(cls, model: nn.Module, kind: type[Method]) -> ModelInfo:
        """A token method (per-input ones too) sees the handoff alone: one site (0) over each
        image's tokens."""
        info = cls.describe(model)
        if not issubclass(kind, SequenceMethod):
            return info
        prefix = cls.handed_class_token(model)
        return dataclasses.replace(info, num_layers=1, num_prefix=int(prefix),
                                   has_class_token=prefix or cls.tower_class_token(model),
                                   sites=(HANDOFF,), gives_query=True)  # fmt: skip

    @classmethod
    def decoder(cls, model: nn.Module) -> nn.Module:
        return model.model.language_model

    # -- what a family answers ----------------------------------------------------------------
    @classmethod
    def image_grid(cls, model: nn.Module) -> tuple[int, int] | None:
        """The configured patch grid of the image tokens; None when images vary in size."""
        return None

    @classmethod
    def handed_class_token(cls, model: nn.Module) -> bool:
        """The vision side hands its class token over, first, with each image's tokens."""
        return False

    @classmethod
    def tower_class_token(cls, model: nn.Module) -> bool:
        """The vision tower has a class token (its attention ranks tokens, handed or not)."""
        return False

    @classmethod
    def example_batch(cls, model: nn.Module, seed: int = 0) -> dict:
        """Keyword arguments of an example model's forward (or ``generate``): two left-padded
        prompts with one image each, as the family's processor would give them."""
        raise NotImplementedError

    def image_module(self) -> nn.Module:
        raise NotImplementedError

    def images(self, args: tuple, kwargs: dict, output) -> Images:
        raise NotImplementedError

    # -- patching -----------------------------------------------------------------------------
    def __init__(self, model: nn.Module, method: Method) -> None:
        super().__init__(model, method)
        self.reduces_images = isinstance(method, SequenceMethod)
        if self.reduces_images:
            self.prunes_prompt, self.first_pruned = True, 0
        self._images: tuple[Reduction | None, torch.Tensor] | None = None
        # a method that reads the instruction reduces the images once the prompt is known
        self._pending: Images | None = None
        self._prompt: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._placeholders: torch.Tensor | None = None
        self._handed = False
        self._image_state: TokenState | None = None

    @property
    def active(self) -> bool:
        return True if self.reduces_images else self.method.active

    def patch(self) -> None:
        super().patch()
        self._vlm_hooks = [
            self.model.register_forward_pre_hook(self._read_prompt, with_kwargs=True)
        ]
        if self.reduces_images:
            self._vlm_hooks.append(
                self.image_module().register_forward_hook(self._reduce_images, with_kwargs=True)
            )

    def unpatch(self) -> None:
        for hook in getattr(self, "_vlm_hooks", ()):
            hook.remove()
        self._vlm_hooks = []
        super().unpatch()

    def _read_prompt(self, model, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._placeholders = None if ids is None else ids == model.config.image_token_id
        self._prompt = None if ids is None else (ids, kwargs.get("attention_mask"))

    # -- the handoff site -----------------------------------------------------------------------
    def _reduce_images(self, module, args, kwargs, output) -> None:
        """Reduce each image's tokens. The vision side may run before the model's forward
        (``generate`` encodes the images first), so the reduction waits for the language
        model's next prefill."""
        self.site_fired()
        images = self.images(args, kwargs, output)
        if self.method.needs_query:  # ``generate`` encodes images before reading the prompt
            self._images, self._pending = None, images
        else:
            self._images = self.reduce_images(images)

    def reduce_images(
        self, images: Images, query: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[Reduction | None, torch.Tensor]:
        """The reduction of the images' tokens (I, N_max) and each image's token count (I,):
        one batched call when the images are alike, one per image otherwise. ``query``: each
        image's instruction embeddings (I, T, C) and mask (I, T) (:meth:`_query`)."""
        sizes = [f.shape[0] for f in images.features]
        lengths = torch.tensor(sizes, device=images.features[0].device)
        alike = len(set(sizes)) == 1 and len(set(images.grids)) == 1
        groups = [list(range(len(sizes)))] if alike else [[i] for i in range(len(sizes))]
        parts = [self._reduce_group(images, g, query) for g in groups]
        real = torch.arange(max(sizes), device=lengths.device)[None, :] < lengths[:, None]
        start = TokenState.initial(len(sizes), max(sizes), self.info.num_prefix,
                                   lengths.device, valid=real)  # fmt: skip
        if all(p is None for p in parts):
            self._image_state = start
            return None, lengths
        if alike:
            red = parts[0]
        else:
            index = [torch.arange(n, device=lengths.device) for n in sizes]
            whole = [p if p is not None else Reduction.everything(1, n, lengths.device)
                     for p, n in zip(parts, sizes, strict=True)]  # fmt: skip
            red = Reduction.stack(whole, index, max(sizes))
        self._image_state = start.apply(red)
        return red, lengths

    def _reduce_group(self, images: Images, group: list[int], query=None) -> Reduction | None:
        """One site call over the images ``group``, all of one size and grid."""
        x = torch.stack([images.features[i] for i in group])
        info = dataclasses.replace(self.info, grid=images.grids[group[0]])
        self.trace.state = TokenState.initial(x.shape[0], x.shape[1], info.num_prefix, x.device)
        if images.attention is not None:
            q, k, scale, outside = _stack([images.attention[i] for i in group])
        else:  # compare tokens by their features, as one head
            q = k = x[:, None]
            scale, outside = x.shape[-1] ** -0.5, None
        if query is not None:
            query = tuple(t[group] for t in query)
        return self.reduction(0, x, q, k, scale, None, outside, info=info, query=query)

    def _query(self, images: Images, placeholders: torch.Tensor) -> tuple:
        """Each image's instruction: the language model's input embeddings of the text tokens
        (neither image placeholders nor padding) of the prompt that holds the image, (I, L, C),
        with their mask (I, L). Image i fills the placeholders after those of images < i."""
        ids, mask = self._prompt
        text = ~placeholders if mask is None else ~placeholders & mask.bool()
        embeds = self.model.get_input_embeddings()(ids)
        lengths = torch.tensor([f.shape[0] for f in images.features], device=ids.device)
        flat = placeholders.reshape(-1).nonzero().squeeze(1)
        if flat.numel() != int(lengths.sum()):
            raise self.not_applied(
                f"the prompt has {flat.numel()} image placeholder tokens for images of "
                f"{lengths.tolist()} tokens, so the images' prompts are unknown"
            )
        owner = flat[lengths.cumsum(0) - lengths] // ids.shape[1]
        return embeds[owner], text[owner]

    def _before_forward(self, module, args, kwargs):
        args, kwargs = super()._before_forward(module, args, kwargs)
        fwd, placeholders = self.current, self._placeholders
        if not fwd.prefill:  # decoding after a prefill: its images' state still holds
            self.trace.state = self._image_state
            return args, kwargs
        if self.prunes_prompt and not self.reduces_images and placeholders is not None:
            fwd.protected = ~placeholders  # a prefill method's candidates: image tokens only
        if self.reduces_images:
            self._hand_over(fwd, placeholders)
        return args, kwargs

    def _hand_over(self, fwd, placeholders: torch.Tensor | None) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and placeholders is not None and bool(placeholders.any()):
            self._images = self.reduce_images(pending, self._query(pending, placeholders))
        elif pending is not None:  # refused below like any images without placeholders
            self._images = (None, None)
        images, self._images = self._images, None
        # the images' token state (I, N): ``handle.state`` after a forward that had images
        if images is None:
            self._image_state = None
        self.trace.state = self._image_state
        if placeholders is None or not bool(placeholders.any()):
            if images is not None:
                raise self.not_applied(
                    "image features were computed, but the prompt has no image placeholder "
                    "tokens in input_ids to put the kept ones in (call the model with "
                    "input_ids, not inputs_embeds)"
                )
            return
        if images is None:
            raise self.not_applied(
                "the prompt holds image tokens, but the image features reached the language "
                "model without passing through the vision side's forward, where they are "
                "reduced"
            )
        red, lengths = images
        if red is not None:
            valid = None if fwd.mask2d is None else fwd.mask2d.bool()
            fwd.handoff = handoff(red, placeholders, "left", valid, lengths)
            self._handed = True

    # -- never silent ---------------------------------------------------------------------------
    def verify(self, output) -> None:
        if not self.reduces_images:
            return super().verify(output)
        handed, self._handed = self._handed, False
        if handed and (self.current.handoff is not None or self.current.pruned is None):
            raise self.not_applied(
                "the image tokens were reduced, but the language model's layers never ran on "
                "the shorter prompt"
            )


def _stack(parts: list[tuple]) -> tuple:
    """Per-image (q, k, scale, outside) stacked over images."""
    q = torch.cat([p[0] for p in parts])
    k = torch.cat([p[1] for p in parts])
    outside = None
    if parts[0][3] is not None:
        outside = (torch.cat([p[3][0] for p in parts]), torch.cat([p[3][1] for p in parts]))
    return q, k, parts[0][2], outside

