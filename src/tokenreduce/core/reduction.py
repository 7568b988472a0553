"""A reduction: how N tokens become M tokens.

Every strategy (prune, merge, fuse, pool) is described by the same three tensors:

* ``assign`` (B, N): the output slot each input token goes to, or -1 if it is dropped;
* ``weight`` (B, N): its weight when several tokens share a slot (weighted average);
* ``anchor`` (B, M): for each output slot, the input token that represents it (its position,
  its protected flag), or -1 for a synthetic slot such as EViT's fused token.

Slots are ordered by their anchor's index, synthetic slots last, so prefix tokens (class,
distillation, registers) stay at the front of the sequence. A reduction in which every slot
holds exactly one token is a *selection* and is applied with a single gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Reduction:
    assign: Tensor
    weight: Tensor
    anchor: Tensor
    is_selection: bool = False

    @property
    def num_in(self) -> int:
        return self.assign.shape[1]

    @property
    def num_out(self) -> int:
        return self.anchor.shape[1]

    # -- constructors -------------------------------------------------------------------
    @staticmethod
    def select(keep: Tensor, num_in: int) -> Reduction:
        """Keep the tokens at indices ``keep`` (B, M), sorted ascending; drop the rest."""
        b, m = keep.shape
        assign = torch.full((b, num_in), -1, dtype=torch.long, device=keep.device)
        slots = torch.arange(m, device=keep.device).expand(b, m)
        assign.scatter_(1, keep, slots)
        weight = torch.ones(b, num_in, device=keep.device)
        return Reduction(assign, weight, keep, is_selection=True)

    @staticmethod
    def from_groups(group: Tensor, weight: Tensor, anchor_mask: Tensor) -> Reduction:
        """Build a reduction from a per-token target token.

        ``group`` (B, N) holds, for every input token, the index of the *input* token whose slot
        it joins (itself for a kept token, -1 to drop it). ``anchor_mask`` (B, N) marks the
        tokens that own a slot; every sample must own the same number of slots.
        """
        counts = anchor_mask.sum(1)
        if not bool((counts == counts[0]).all()):
            raise ValueError("every sample of a batch must keep the same number of tokens")
        m = int(counts[0])
        slot_of = anchor_mask.long().cumsum(1) - 1  # slot index of each anchor, by input order
        dropped = group < 0
        assign = slot_of.gather(1, group.clamp_min(0)).masked_fill(dropped, -1)
        anchor = anchor_mask.nonzero()[:, 1].view(-1, m)
        return Reduction(assign, weight, anchor)

    # -- application --------------------------------------------------------------------
    def apply(self, x: Tensor, mode: str = "mean") -> Tensor:
        """Reduce a token-aligned tensor ``x`` (B, N, ...) to (B, M, ...).

        ``mode``: ``"mean"`` weighted average of the tokens sharing a slot (hidden states,
        keys); ``"sum"`` their sum (token sizes); ``"anchor"`` the anchor's value (positions,
        masks; synthetic slots get zero / False).
        """
        if self.is_selection or mode == "anchor":
            idx = self.anchor.clamp_min(0)
            out = x.gather(1, _expand(idx, x))
            synthetic = self.anchor < 0
            if mode == "anchor" and bool(synthetic.any()):
                out = out.masked_fill(_expand(synthetic, out), 0)
            return out
        b, m = self.anchor.shape
        # One extra trash slot receives the dropped tokens so the scatter needs no masking.
        idx = torch.where(self.assign < 0, m, self.assign)
        shape = (b, m + 1, *x.shape[2:])
        if mode == "sum":
            out = x.new_zeros(shape).scatter_add_(1, _expand(idx, x), x)
            return out[:, :m]
        if mode != "mean":
            raise ValueError(f"mode must be 'mean', 'sum' or 'anchor', got {mode!r}")
        w = self.weight.to(x.dtype)
        wx = x * _expand(w, x) if x.dim() > 2 else x * w
        num = x.new_zeros(shape).scatter_add_(1, _expand(idx, x), wx)
        den = w.new_zeros(b, m + 1).scatter_add_(1, idx, w)
        return num[:, :m] / _expand(den[:, :m], num[:, :m]).clamp_min(torch.finfo(x.dtype).tiny)

    def unmerge(self, y: Tensor, fill: float = 0.0) -> tuple[Tensor, Tensor]:
        """Undo the reduction for a dense output: (B, M, ...) -> (B, N, ...).

        A merged token's value is copied back to every token it absorbed. Dropped tokens get
        ``fill``; the returned mask (B, N) is True where a token was dropped.
        """
        return scatter_back(y, self.assign, fill)


def scatter_back(y: Tensor, index: Tensor, fill: float = 0.0) -> tuple[Tensor, Tensor]:
    """Read ``y`` (B, M, ...) at ``index`` (B, N); -1 entries become ``fill`` and are masked."""
    dropped = index < 0
    out = y.gather(1, _expand(index.clamp_min(0), y))
    return out.masked_fill(_expand(dropped, out), fill), dropped


def _expand(idx: Tensor, like: Tensor) -> Tensor:
    """View a (B, N) index or mask as (B, N, *like.shape[2:])."""
    extra = like.shape[2:]
    return idx.reshape(*idx.shape, *([1] * len(extra))).expand(*idx.shape, *extra)
