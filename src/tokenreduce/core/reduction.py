"""A reduction: how N tokens become M tokens.

Every strategy (prune, merge, fuse, pool) is described by the same three tensors:

* ``assign`` (B, N): the output slot each input token goes to, or -1 if it is dropped;
* ``weight`` (B, N): its weight when several tokens share a slot (weighted average);
* ``anchor`` (B, M): for each output slot, the input token that represents it (its position,
  its protected flag), or -1 for a synthetic slot such as EViT's fused token.

A batch whose samples keep different numbers of tokens (a padded batch, an adaptive budget)
is one reduction too: ``valid`` (B, M) marks the slots that hold real tokens, and each
sample's padding slots are empty synthetic slots (:meth:`Reduction.stack`).

The reducer chooses the slot order. Most keep their anchors' input order, synthetic slots
last; ToMe's reference order puts its unmerged A tokens before its B tokens. Every reducer
keeps the prefix tokens (class, distillation, registers) at the front of the sequence, in
their input order. The token state's source map follows any order. A reduction in which every
slot holds exactly one token is a *selection* and is applied with a single gather.

Applying a merge is a gather plus a small scatter: each slot starts from its *lead* and the
other members, the *folded* tokens, are added one by one. It touches only the R folded rows
(ToMe: r per block) instead of all N. :meth:`Reduction.from_groups` leads with the lowest-index
member and folds in ascending input order: the same arithmetic, in the same order, as a
scatter-add of every token into zeroed slots. :meth:`Reduction.from_plan` takes the lead and
the folding order from its caller (ToMe: a B token, then its A tokens by descending
similarity, the order of the reference implementation's ``scatter_reduce``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import torch
from torch import Tensor


class FoldPlan(NamedTuple):
    """How a merge is applied: ``lead`` (B, M) the member each slot starts from; ``fold``
    (B, R) every other member, in the order they are added; ``fold_slot`` (B, R) the slot
    each one joins."""

    lead: Tensor
    fold: Tensor
    fold_slot: Tensor


class _Rows(NamedTuple):
    """A :class:`FoldPlan` as row indices of ``x`` (B, N, ...) viewed as (B*N, ...) (``lead``,
    ``fold``) and of the output viewed as (B*M, ...) (``fold_slot``): every gather is one
    ``index_select`` and the fold one ``index_add_``, with no per-call index arithmetic."""

    lead: Tensor
    fold: Tensor
    fold_slot: Tensor
    batch: int

    def take(self, x: Tensor, index: Tensor) -> Tensor:
        """Rows ``index`` (one of this plan's) of ``x`` (B, N, ...): (B, K, ...)."""
        out = x.reshape(-1, *x.shape[2:]).index_select(0, index)
        return out.view(self.batch, index.numel() // self.batch, *x.shape[2:])

    def add(self, out: Tensor, rows: Tensor) -> Tensor:
        """``out`` (B, M, ...) plus each folded row (B, R, ...) in its slot, in plan order.

        Half-precision sums are accumulated in float32 and rounded once, as ``scatter_add_``
        does on CPU, so the result does not depend on which of the two paths applied it.
        """
        if rows.shape[1] == 0:
            return out
        acc = out.float() if out.dtype in (torch.float16, torch.bfloat16) else out
        acc.view(-1, *out.shape[2:]).index_add_(
            0, self.fold_slot, rows.reshape(-1, *rows.shape[2:]).to(acc.dtype)
        )
        return acc.to(out.dtype)


@dataclass(frozen=True)
class Reduction:
    assign: Tensor
    weight: Tensor
    anchor: Tensor
    is_selection: bool = False
    #: optional precomputed :class:`FoldPlan` (reducers that know R pass it to avoid a sync)
    plan: FoldPlan | None = None
    #: (B, M) False at padding slots (empty, anchor -1) when samples keep different counts;
    #: None when every slot holds real tokens
    valid: Tensor | None = None

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
    def from_groups(
        group: Tensor,
        weight: Tensor,
        anchor_mask: Tensor,
        num_out: int | None = None,
        num_fold: int | None = None,
    ) -> Reduction:
        """Build a reduction from a per-token target token.

        ``group`` (B, N) holds, for every input token, the index of the *input* token whose slot
        it joins (itself for a kept token, -1 to drop it). ``anchor_mask`` (B, N) marks the
        tokens that own a slot; every sample must own the same number of slots.

        A caller that knows the counts statically passes ``num_out`` (slots per sample) and
        ``num_fold`` (members per sample beyond one per slot); nothing is then read back
        from the tensors (no host sync), and the counts are trusted.
        """
        b, n = group.shape
        if num_out is None:
            counts = anchor_mask.sum(1)
            if not bool((counts == counts[0]).all()):
                raise ValueError("every sample of a batch must keep the same number of tokens")
            num_out = int(counts[0])
        m = num_out
        slot_of = anchor_mask.long().cumsum(1) - 1  # slot index of each anchor, by input order
        dropped = group < 0
        assign = slot_of.gather(1, group.clamp_min(0)).masked_fill(dropped, -1)
        # Anchors in input order, without reading the mask back: owners scatter their index
        # to their slot, everyone else to a spare column that is cut off.
        ar = torch.arange(n, device=group.device)
        anchor = torch.empty(b, m + 1, dtype=torch.long, device=group.device)
        anchor.scatter_(1, torch.where(anchor_mask, slot_of, m), ar.expand(b, n))
        anchor = anchor[:, :m]
        plan = _fold_plan(assign, m, num_fold) if num_fold is not None else None
        return Reduction(assign, weight, anchor, plan=plan)

    @staticmethod
    def from_plan(plan: FoldPlan, weight: Tensor) -> Reduction:
        """A merge that drops nothing, given as a :class:`FoldPlan`.

        Slot ``j`` starts from input token ``plan.lead[:, j]``, which is also its anchor; each
        ``plan.fold[:, i]`` joins slot ``plan.fold_slot[:, i]``, in that order. Every one of
        the N = M + R input tokens (N from ``weight`` (B, N)) must appear exactly once in
        ``lead`` or ``fold``; this is trusted, not checked (no host sync).
        """
        b, m = plan.lead.shape
        assign = torch.empty(weight.shape, dtype=torch.long, device=weight.device)
        assign.scatter_(1, plan.lead, torch.arange(m, device=weight.device).expand(b, m))
        assign.scatter_(1, plan.fold, plan.fold_slot)
        return Reduction(assign, weight, plan.lead, plan=plan)

    @staticmethod
    def everything(batch: int, n: int, device=None) -> Reduction:
        """The selection that keeps all ``n`` tokens of each of ``batch`` samples."""
        return Reduction.select(torch.arange(n, device=device).expand(batch, n), n)

    @staticmethod
    def stack(parts: list[Reduction], index: list[Tensor], num_in: int) -> Reduction:
        """One reduction of a batch from one per sample, each over a subset of its tokens.

        ``parts[b]`` (a batch of one) reduces the tokens ``index[b]`` (n_b,) of sample ``b``
        of a batch of ``num_in`` tokens per sample; tokens outside ``index[b]`` (padding) are
        dropped. Sample ``b``'s M_b slots come first, in ``parts[b]``'s order, followed by
        M - M_b padding slots (``valid`` False), M the largest M_b.
        """
        device = index[0].device
        b, m = len(parts), max(p.num_out for p in parts)
        assign = torch.full((b, num_in), -1, dtype=torch.long, device=device)
        weight = torch.ones(b, num_in, device=device)
        anchor = torch.full((b, m), -1, dtype=torch.long, device=device)
        valid = torch.zeros(b, m, dtype=torch.bool, device=device)
        for i, (part, idx) in enumerate(zip(parts, index, strict=True)):
            assign[i, idx] = part.assign[0]
            weight[i, idx] = part.weight[0].to(weight.dtype)
            own = part.anchor[0]
            anchor[i, : part.num_out] = torch.where(own >= 0, idx[own.clamp_min(0)], -1)
            valid[i, : part.num_out] = True if part.valid is None else part.valid[0]
        return Reduction(assign, weight, anchor, valid=valid)

    # -- application --------------------------------------------------------------------
    @cached_property
    def _plan(self) -> FoldPlan | None:
        """The fold plan, computed once per reduction (it serves x, keys and sizes alike).
        None when samples differ in their number of folded tokens or a slot is empty; the
        reduction is then applied with a scatter over all tokens."""
        if self.plan is not None:
            return self.plan
        b, m = self.anchor.shape
        members = (self.assign >= 0).sum(1)
        if not bool((members == members[0]).all()):
            return None
        plan = _fold_plan(self.assign, m, int(members[0]) - m)
        if plan.lead.numel() and int(plan.lead.max()) >= self.num_in:  # a slot without members
            return None
        return plan

    @cached_property
    def _rows(self) -> _Rows | None:
        """The fold plan as row indices of the flattened tensors, computed once per reduction;
        None when there is no plan."""
        plan = self._plan
        if plan is None:
            return None
        b, n = self.assign.shape
        offset = torch.arange(b, device=self.assign.device)[:, None]
        return _Rows(
            (plan.lead + offset * n).reshape(-1),
            (plan.fold + offset * n).reshape(-1),
            (plan.fold_slot + offset * self.num_out).reshape(-1),
            b,
        )

    @cached_property
    def synthetic(self) -> Tensor | None:
        """(B, M) True at the slots without an input anchor (EViT's fused token); None when
        there are none by construction (a selection, or every anchor leads its slot)."""
        if self.is_selection or (self.plan is not None and self.plan.lead is self.anchor):
            return None
        return self.anchor < 0

    @cached_property
    def _anchor_index(self) -> Tensor:
        return self.anchor.clamp_min(0)

    def apply(self, x: Tensor, mode: str = "mean") -> Tensor:
        """Reduce a token-aligned tensor ``x`` (B, N, ...) to (B, M, ...).

        ``mode``: ``"mean"`` weighted average of the tokens sharing a slot (hidden states,
        keys); ``"sum"`` their sum (token sizes); ``"anchor"`` the anchor's value (positions,
        masks; synthetic slots get zero / False).
        """
        if mode not in ("mean", "sum", "anchor"):
            raise ValueError(f"mode must be 'mean', 'sum' or 'anchor', got {mode!r}")
        if self.is_selection:
            return take(x, self.anchor)
        if mode == "anchor":
            if self.synthetic is None:
                return take(x, self.anchor)
            out = take(x, self._anchor_index)
            return out.masked_fill(_expand(self.synthetic, out), 0)
        rows = self._rows
        if rows is None:
            return self._apply_scatter(x, mode)
        if mode == "sum":
            if x is self.weight:  # token sizes: already summed for the weighted mean
                return self._weights(x.dtype)[2]
            return rows.add(rows.take(x, rows.lead), rows.take(x, rows.fold))
        # Weighted mean: sum of w * x over each slot, divided by the sum of w.
        w_lead, w_fold, den = self._weights(x.dtype)
        out = rows.take(x, rows.lead).mul_(_expand(w_lead, x))
        out = rows.add(out, rows.take(x, rows.fold).mul_(_expand(w_fold, x)))
        return out.div_(_expand(den.clamp_min(torch.finfo(x.dtype).tiny), out))

    def _weights(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """The weights in ``dtype`` of the leads (B, M) and of the folded tokens (B, R), and
        each slot's total (B, M): the denominator of every weighted mean, and the new sizes
        when the weights are sizes. Computed once per dtype and shared: never modified."""
        cache = self.__dict__.setdefault("_weight_cache", {})  # a frozen dataclass's cache
        if dtype not in cache:
            rows, w = self._rows, self.weight.to(dtype)
            lead, fold = rows.take(w, rows.lead), rows.take(w, rows.fold)
            cache[dtype] = (lead, fold, rows.add(lead.clone(), fold))
        return cache[dtype]

    def _apply_scatter(self, x: Tensor, mode: str) -> Tensor:
        """The general path: scatter every token into its slot (one spare slot for drops)."""
        b, m = self.anchor.shape
        idx = torch.where(self.assign < 0, m, self.assign)
        shape = (b, m + 1, *x.shape[2:])
        if mode == "sum":
            out = x.new_zeros(shape).scatter_add_(1, _expand(idx, x), x)
            return out[:, :m]
        w = self.weight.to(x.dtype)
        wx = x * _expand(w, x)
        num = x.new_zeros(shape).scatter_add_(1, _expand(idx, x), wx)
        den = w.new_zeros(b, m + 1).scatter_add_(1, idx, w)
        return num[:, :m] / _expand(den[:, :m], num[:, :m]).clamp_min(torch.finfo(x.dtype).tiny)

    def unmerge(self, y: Tensor, fill: float = 0.0) -> tuple[Tensor, Tensor]:
        """Undo the reduction for a dense output: (B, M, ...) -> (B, N, ...).

        A merged token's value is copied back to every token it absorbed. Dropped tokens get
        ``fill``; the returned mask (B, N) is True where a token was dropped.
        """
        return scatter_back(y, self.assign, fill)


def _fold_plan(assign: Tensor, m: int, r: int) -> FoldPlan:
    """Lead and folded members of each slot, given R folded tokens per sample (no sync)."""
    b, n = assign.shape
    ar = torch.arange(n, device=assign.device).expand(b, n)
    slot = torch.where(assign < 0, m, assign)
    # Lowest member index per slot; an empty slot keeps the sentinel n.
    lead = torch.full((b, m + 1), n, dtype=torch.long, device=assign.device)
    lead = lead.scatter_reduce_(1, slot, ar, "amin")[:, :m]
    # Folded = members that do not lead: sort puts them (key 0) first, in ascending order.
    is_lead = torch.zeros(b, n + 1, dtype=torch.bool, device=assign.device)
    is_lead.scatter_(1, lead, True)
    not_fold = is_lead[:, :n] | (assign < 0)
    fold = torch.sort(not_fold.to(torch.uint8), dim=1, stable=True).indices[:, :r]
    return FoldPlan(lead, fold, assign.gather(1, fold))


def take(x: Tensor, index: Tensor) -> Tensor:
    """``x`` (B, N, ...) read at ``index`` (B, M) along dim 1: (B, M, ...).

    Rows of (B*N, C) are copied with one ``index_select``, several times faster on CPU than
    ``gather`` with an expanded index (which walks the feature dimension element by element).
    """
    b, n = x.shape[:2]
    if x.dim() == 2 or n == 0:
        return x.gather(1, _expand(index, x))
    flat = (index + torch.arange(b, device=index.device)[:, None] * n).reshape(-1)
    out = x.reshape(b * n, *x.shape[2:]).index_select(0, flat)
    return out.view(b, index.shape[1], *x.shape[2:])


def scatter_back(y: Tensor, index: Tensor, fill: float = 0.0) -> tuple[Tensor, Tensor]:
    """Read ``y`` (B, M, ...) at ``index`` (B, N); -1 entries become ``fill`` and are masked."""
    dropped = index < 0
    out = take(y, index.clamp_min(0))
    return out.masked_fill(_expand(dropped, out), fill), dropped


def _expand(idx: Tensor, like: Tensor) -> Tensor:
    """View a (B, N) index or mask as (B, N, *like.shape[2:])."""
    extra = like.shape[2:]
    return idx.reshape(*idx.shape, *([1] * len(extra))).expand(*idx.shape, *extra)
