"""Token state: what a reduced sequence carries besides its hidden states."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .reduction import Reduction, scatter_back


@dataclass
class TokenState:
    """Bookkeeping for a sequence of B x N current tokens that came from N0 original tokens.

    ``size`` (B, N): how many original tokens each current token stands for (sums to N0).
    ``source`` (B, N0): for each original token, the index of the current token that holds it,
    or -1 if it was dropped. An O(N0) index map, never an N x N matrix.
    ``position`` (B, N): original index of each current token (its anchor), -1 for a synthetic
    token such as EViT's fused token.
    ``protected`` (B, N): tokens no reduction may drop or merge (class, distillation, registers,
    a text encoder's [SEP]); the same number in every sample.
    ``protected_prefix``: True when ``protected`` is the same leading prefix in every sample
    (what reducers that keep protected tokens first, such as ToMe's reference order, rely on);
    False for a mask with protected tokens elsewhere (a [SEP] at each sample's end).
    ``merged``: True once any token stands for more than one original token; until then size-
    dependent terms (proportional attention) are skipped so an unreduced model stays bitwise exact.
    ``valid`` (B, N): True at real tokens, False at padding, for a padded batch whose samples
    have different real lengths; None when every token is real. Padding stands for no original
    token (size 0), and a reduction then acts on each sample's real tokens with its own budget
    (:func:`tokenreduce.core.ragged.reduce_per_sample`).
    """

    size: Tensor
    source: Tensor
    position: Tensor
    protected: Tensor
    merged: bool = False
    valid: Tensor | None = None
    protected_prefix: bool = True
    #: the count behind :attr:`num_protected`, read from ``protected`` once and carried on
    _num_protected: int | None = field(default=None, repr=False, compare=False)

    @classmethod
    def initial(
        cls,
        batch: int,
        num_tokens: int,
        num_protected: int = 0,
        device=None,
        dtype=torch.float32,
        valid: Tensor | None = None,
        protected: Tensor | None = None,
    ) -> TokenState:
        """The state of an unreduced sequence. ``valid`` (B, N) marks the real tokens of a
        padded batch; a mask with no padding is dropped (the batch is then not ragged).
        ``protected`` (B, N) bool, the same number of True in every sample, replaces the
        prefix of ``num_protected`` tokens by any set (a text encoder's [CLS] and [SEP]);
        ValueError if its shape or counts are wrong or it protects padding."""
        pos = torch.arange(num_tokens, device=device).expand(batch, num_tokens)
        prefix = True
        if protected is None:
            protected = (pos < num_protected).clone()
        else:
            protected, prefix = _checked_protected(protected, valid, batch, num_tokens, device)
            num_protected = int(protected[0].sum())
        if valid is not None:
            if valid.shape != (batch, num_tokens):
                raise ValueError(
                    f"valid must be ({batch}, {num_tokens}), one flag per token; got "
                    f"{tuple(valid.shape)}"
                )
            valid = None if bool(valid.all()) else valid.to(device=device, dtype=torch.bool)
        size = torch.ones(batch, num_tokens, device=device, dtype=dtype)
        return cls(
            size=size if valid is None else valid.to(dtype),
            source=pos.clone(),
            position=pos.clone(),
            protected=protected & valid if valid is not None else protected,
            valid=valid,
            protected_prefix=prefix,
            _num_protected=min(num_protected, num_tokens) if valid is None else None,
        )

    @property
    def num_tokens(self) -> int:
        return self.size.shape[1]

    @property
    def num_protected(self) -> int:
        """Protected tokens per sample (the same number in every sample; a prefix of that
        length when :attr:`protected_prefix`)."""
        if self._num_protected is None:
            self._num_protected = int(self.protected.sum(1).max())
        return self._num_protected

    @property
    def num_original(self) -> int:
        return self.source.shape[1]

    @property
    def ragged(self) -> bool:
        """True when some tokens are padding: reductions then act per sample."""
        return self.valid is not None

    def real_tokens(self, sample: int) -> Tensor:
        """Indices (n,) of the real tokens of ``sample``, ascending (all of them when the
        batch has no padding)."""
        if self.valid is None:
            return torch.arange(self.num_tokens, device=self.size.device)
        return self.valid[sample].nonzero().squeeze(1)

    def sample(self, sample: int, index: Tensor) -> TokenState:
        """The state of one sample restricted to its tokens at ``index`` (n,), as a batch of
        one: what a method sees when a ragged batch is reduced sample by sample. Original
        tokens held by a token outside ``index`` (padding) map to -1."""
        local = torch.full((self.num_tokens,), -1, dtype=torch.long, device=index.device)
        local[index] = torch.arange(index.numel(), device=index.device)
        source = self.source[sample]
        source = local[source.clamp_min(0)].masked_fill(source < 0, -1)
        protected = self.protected[sample, index][None]
        return TokenState(
            size=self.size[sample, index][None],
            source=source[None],
            position=self.position[sample, index][None],
            protected=protected,
            merged=self.merged,
            protected_prefix=self.protected_prefix,
        )

    def apply(self, red: Reduction) -> TokenState:
        """The state after ``red``: sizes summed, source map composed, anchors carried.
        A reduction with padding slots (``red.valid``) leaves a ragged state."""
        kept = self.source >= 0
        source = red.assign.gather(1, self.source.clamp_min(0)).masked_fill(~kept, -1)
        position = red.apply(self.position, "anchor")
        if red.synthetic is not None:
            position = position.masked_fill(red.synthetic, -1)
        return TokenState(
            size=red.apply(self.size, "sum"),
            source=source,
            position=position,
            protected=red.apply(self.protected, "anchor"),
            merged=self.merged or not red.is_selection,
            valid=red.valid if red.valid is not None else self._valid_after(red),
            # a reducer may move a protected token that is not in the prefix; a prefix stays
            protected_prefix=self.protected_prefix,
            _num_protected=self._num_protected,  # reductions keep every protected token
        )

    def _valid_after(self, red: Reduction) -> Tensor | None:
        """Real slots after a reduction without padding slots of its own: those whose anchor
        was real; a synthetic slot (a fused token) holds real tokens."""
        if self.valid is None:
            return None
        valid = red.apply(self.valid, "anchor")
        return valid if red.synthetic is None else valid | red.synthetic

    def unmerge(self, y: Tensor, fill: float = 0.0) -> tuple[Tensor, Tensor]:
        """Map current tokens (B, N, ...) back to the N0 original tokens.

        Returns the values (B, N0, ...) and a mask (B, N0) that is True where the original
        token was dropped (its value is then ``fill``).
        """
        return scatter_back(y, self.source, fill)


def _checked_protected(
    protected: Tensor, valid: Tensor | None, batch: int, num_tokens: int, device
) -> tuple[Tensor, bool]:
    """``protected`` as a bool tensor on ``device``, and whether it is a common prefix."""
    if protected.shape != (batch, num_tokens):
        raise ValueError(
            f"protected must be ({batch}, {num_tokens}), one flag per token; got "
            f"{tuple(protected.shape)}"
        )
    protected = protected.to(device=device, dtype=torch.bool)
    counts = protected.sum(1)
    if bool((counts != counts[0]).any()):
        raise ValueError(
            f"protected must mark the same number of tokens in every sample; got "
            f"{counts.tolist()}"
        )
    if valid is not None and bool((protected & ~valid.to(device=device, dtype=torch.bool)).any()):
        raise ValueError("protected marks padding (valid is False there); protect real tokens")
    n = int(counts[0]) if batch else 0
    prefix = bool(protected[:, :n].all())
    return protected, prefix
