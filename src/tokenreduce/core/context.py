"""The token context a method sees at a site, and the facts about the model it runs in."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from .scorers import attention_received
from .state import TokenState

#: the kinds of model an adapter describes ("language": decoders; "text": bidirectional encoders;
#: "diffusion": denoisers run once per sampling step)
KINDS = ("vision", "language", "vision-language", "text", "diffusion")


@dataclass(frozen=True)
class ModelInfo:
    """What a method may know about the model it is patched into.

    ``grid`` is the patch grid (rows, cols) the model is configured for, None for sequences.
    A vision model that takes other image sizes has a grid per input: the adapter records it
    in its trace (``handle.trace.grid``) and gives each site a context whose ``model.grid``
    (:attr:`TokenContext.grid`) is the input's.
    """

    family: str
    num_layers: int  # the model's depth: blocks (vision) or decoder layers (language)
    num_prefix: int  # leading protected tokens: class, distillation, registers
    has_class_token: bool
    grid: tuple[int, int] | None  # patch grid (rows, cols); see the class docstring
    #: one of :data:`KINDS`; None infers it from ``grid`` (a patch grid means vision)
    kind: str | None = None
    #: where the family's adapter reduces, e.g. ``("block:after_attention",)``
    sites: tuple[str, ...] = ()
    #: no configured grid (``grid`` None), but every input has a patch grid of its own, given
    #: to the method at each site (images of any size in a vision-language model)
    grid_per_input: bool = False
    #: the sites give the instruction's token embeddings (:attr:`TokenContext.query`): a
    #: vision-language model's handoff, where the prompt's text is known
    gives_query: bool = False

    def __post_init__(self) -> None:
        if self.kind is None:
            object.__setattr__(self, "kind", "vision" if self.grid is not None else "language")
        if self.kind not in KINDS:
            raise ValueError(f"ModelInfo.kind must be one of {KINDS}, got {self.kind!r}")


@dataclass
class TokenContext:
    """Everything a scorer may use at one site, computed lazily so a method pays only for
    what it reads. ``q`` and ``k`` are (B, H, N, D) after any q/k norm; ``attn_bias`` is the
    additive logit bias the layer used (log token sizes under proportional attention).
    ``model`` describes the model as of this input: its ``grid`` is the input's."""

    layer: int
    hidden: Tensor
    q: Tensor
    k: Tensor
    state: TokenState
    model: ModelInfo
    scale: float
    attn_bias: Tensor | None = None
    #: (B, H, 1, D) query and key of a class token outside the sequence (a vision-language
    #: model's vision tower computes one but hands over only the patch tokens), or None
    class_query: Tensor | None = None
    class_key: Tensor | None = None
    #: (B, T, C) the instruction's token embeddings in the space of ``hidden`` (on a
    #: vision-language model, the language model's input embeddings of the prompt's text
    #: tokens, for each image those of the prompt that holds it), with ``query_mask`` (B, T)
    #: True at real text tokens; None where the model gives none (``ModelInfo.gives_query``)
    query: Tensor | None = None
    query_mask: Tensor | None = None

    def sample(self, sample: int, index: Tensor) -> TokenContext:
        """The context of one sample restricted to its tokens at ``index`` (n,), as a batch of
        one (a ragged batch is reduced sample by sample)."""
        bias = self.attn_bias
        if bias is not None:
            bias = bias[sample : sample + 1, ..., index]
        one = slice(sample, sample + 1)
        per_sample = (self.class_query, self.class_key, self.query, self.query_mask)
        return TokenContext(
            self.layer,
            self.hidden[sample, index][None],
            self.q[sample, :, index][None],
            self.k[sample, :, index][None],
            self.state.sample(sample, index),
            self.model,
            self.scale,
            bias,
            *(None if t is None else t[one] for t in per_sample),
        )

    @property
    def num_reducible(self) -> int:
        """Tokens a reduction may touch: all but the protected ones."""
        return self.state.num_tokens - self.state.num_protected

    @property
    def grid(self) -> tuple[int, int] | None:
        """The patch grid (rows, cols) of the current input; None when it has none."""
        return self.model.grid

    @cached_property
    def key_mean(self) -> Tensor:
        """Keys averaged over heads (B, N, D): ToMe's similarity metric."""
        return self.k.mean(dim=1)

    @cached_property
    def class_attention(self) -> Tensor:
        """(B, N) attention received from the class token, one attention row per head (over
        the class token's own key too when it is outside the sequence); for a model without a
        class token, the mean over all queries (the full map, computed here)."""
        if self.class_query is not None:
            keys = torch.cat([self.class_key, self.k], dim=2)
            return attention_received(self.class_query, keys, None, self.scale)[:, 1:]
        rows = slice(0, 1) if self.model.has_class_token else None
        return attention_received(self.q, self.k, rows, self.scale, self.attn_bias)
