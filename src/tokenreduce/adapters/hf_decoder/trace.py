"""What the decoder adapter records: :class:`KVTrace`, the public record of the last prefill,
and :class:`Forward`, the facts of the forward in progress that every patched layer reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ...core.reduction import Reduction
from ..base import Trace
from .cache_layer import ReducedLayer

if TYPE_CHECKING:
    from .prefill import Pruned


@dataclass
class KVTrace(Trace):
    """What the last prefill did to the cache: entries kept per layer (``kv_entries``, None for
    a layer left alone), the prompt length ``prompt_tokens`` (padding included) and the real
    prompt lengths ``prompt_lengths`` per sample. A prefill method also records, per site,
    the prompt tokens it kept: ``prefill_kept[i]`` (B, M) token indices, -1 for filler slots
    of a sample that keeps fewer.

    :meth:`kv_state` reads the bookkeeping a reduced cache carries (each entry's time step and
    validity, the running attention of accumulating methods)."""

    kv_entries: list[int | None] = field(default_factory=list)
    prompt_tokens: int = 0
    prompt_lengths: list[int] = field(default_factory=list)
    prefill_kept: list[Tensor] = field(default_factory=list)

    def kv_state(self, cache) -> list[ReducedLayer | None]:
        """Per layer of ``cache`` (one this adapter reduced, or a ``copy.deepcopy`` of one),
        its :class:`~tokenreduce.adapters.hf_decoder.cache_layer.ReducedLayer`: ``valid`` and
        ``time`` (B, Hkv, L) for the L entries the layer holds, ``accumulated`` and the other
        fields it documents; None for a layer no reduction touched. Readable after unpatch."""
        return [ReducedLayer.of(layer) for layer in cache.layers]


@dataclass
class Forward:
    """The forward in progress, as the model's pre-hook found it and the layers filled it in."""

    start: int = 0  # time step of this forward's first token
    mask2d: Tensor | None = None  # (B, start + s) padding mask of the whole sequence, or None
    prefill: bool = False  # the cache was empty (or absent) when this forward began
    cache: object = None  # the cache of this forward, once the model or a layer has one
    attention_saw_cache: bool = False  # an attention layer received the cache
    reduced: set[int] = field(default_factory=set)  # layers whose cache a prefill reduced
    left_alone: set[int] = field(default_factory=set)  # sliding layers that had dropped the prompt
    pruned: Pruned | None = None  # a prefill method's latest selection, for the layers after it
    #: a reduction of the prompt handed over from another model (a vision-language model's
    #: image tokens), applied by the first layer: ``core.handoff.handoff``'s lifted reduction
    handoff: Reduction | None = None
    #: (B, n) prompt tokens a prefill method may not remove, besides its ``keep_last``: a
    #: vision-language model's text tokens (only image tokens are candidates); None for none
    protected: Tensor | None = None

    def saw(self, cache) -> None:
        """An attention layer received ``cache`` (None: it ran without one)."""
        if cache is not None:
            self.cache, self.attention_saw_cache = cache, True

    def fed(self, b: int, s: int, device) -> Tensor:
        """(B, s) False for the padding among this forward's last ``s`` tokens."""
        if self.mask2d is None:
            return torch.ones(b, s, dtype=torch.bool, device=device)
        return self.mask2d[:, -s:].to(device=device, dtype=torch.bool)
