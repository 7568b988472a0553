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
    ``protected`` (B, N): tokens no reduction may drop or merge (class, distillation, registers).
    ``merged``: True once any token stands for more than one original token; until then size-
    dependent terms (proportional attention) are skipped so an unreduced model stays bitwise exact.
    """

    size: Tensor
    source: Tensor
    position: Tensor
    protected: Tensor
    merged: bool = False
    #: the count behind :attr:`num_protected`, read from ``protected`` once and carried on
    _num_protected: int | None = field(default=None, repr=False, compare=False)

    @classmethod
    def initial(
        cls, batch: int, num_tokens: int, num_protected: int = 0, device=None, dtype=torch.float32
    ) -> TokenState:
        pos = torch.arange(num_tokens, device=device).expand(batch, num_tokens)
        protected = (pos < num_protected).clone()
        return cls(
            size=torch.ones(batch, num_tokens, device=device, dtype=dtype),
            source=pos.clone(),
            position=pos.clone(),
            protected=protected,
            _num_protected=min(num_protected, num_tokens),
        )

    @property
    def num_tokens(self) -> int:
        return self.size.shape[1]

    @property
    def num_protected(self) -> int:
        """Protected tokens per sample (a prefix of the same length in every sample)."""
        if self._num_protected is None:
            self._num_protected = int(self.protected.sum(1).max())
        return self._num_protected

    @property
    def num_original(self) -> int:
        return self.source.shape[1]

    def apply(self, red: Reduction) -> TokenState:
        """The state after ``red``: sizes summed, source map composed, anchors carried."""
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
            _num_protected=self._num_protected,  # reductions keep every protected token
        )

    def unmerge(self, y: Tensor, fill: float = 0.0) -> tuple[Tensor, Tensor]:
        """Map current tokens (B, N, ...) back to the N0 original tokens.

        Returns the values (B, N0, ...) and a mask (B, N0) that is True where the original
        token was dropped (its value is then ``fill``).
        """
        return scatter_back(y, self.source, fill)
