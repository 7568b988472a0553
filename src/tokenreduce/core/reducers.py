"""Reducers: pure functions that turn scores or similarities into a :class:`Reduction`.

Protected tokens are never dropped, never merged away and never absorb other tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .reduction import FoldPlan, Reduction
from .scorers import cosine_similarity


def _keep_indices(scores: Tensor, keep: int, protected: Tensor) -> Tensor:
    """Indices (B, P + keep) of the protected tokens plus the ``keep`` best others, ascending."""
    n_prot = int(protected.sum(1).max())  # same prefix in every sample
    ranked = scores.float().masked_fill(protected, float("inf"))
    idx = ranked.topk(n_prot + keep, dim=1, sorted=False).indices
    return idx.sort(dim=1).values


def topk_prune(scores: Tensor, keep: int, protected: Tensor) -> Reduction:
    """Keep the ``keep`` highest-scoring unprotected tokens (plus every protected one)."""
    return Reduction.select(_keep_indices(scores, keep, protected), scores.shape[1])


def topk_fuse(scores: Tensor, keep: int, protected: Tensor, size: Tensor) -> Reduction:
    """EViT: keep the top ``keep`` tokens and fuse all the others into one extra token.

    The fused token is the average of the inattentive tokens weighted by their score times
    their size, and is appended after the kept tokens. With nothing left to fuse this is a
    plain top-k prune.
    """
    b, n = scores.shape
    kept = _keep_indices(scores, keep, protected)
    m = kept.shape[1]
    if m == n:
        return Reduction.select(kept, n)
    assign = torch.full((b, n), m, dtype=torch.long, device=scores.device)
    assign.scatter_(1, kept, torch.arange(m, device=scores.device).expand(b, m))
    is_kept = assign < m
    weight = torch.where(is_kept, torch.ones_like(size), scores.to(size.dtype) * size)
    anchor = torch.cat([kept, kept.new_full((b, 1), -1)], dim=1)
    # The fused slot is led by its first member; the n - m - 1 others fold into it.
    fused = torch.sort(is_kept.to(torch.uint8), dim=1, stable=True).indices[:, : n - m]
    plan = FoldPlan(
        torch.cat([kept, fused[:, :1]], dim=1), fused[:, 1:], fused.new_full((b, n - m - 1), m)
    )
    return Reduction(assign, weight, anchor, plan=plan)


def bipartite_merge(metric: Tensor, r: int, protected: Tensor, size: Tensor) -> Reduction:
    """ToMe's bipartite soft matching (Bolya et al., ICLR 2023).

    Tokens alternate between set A (even indices) and set B (odd indices). Every A token
    proposes its most similar B token (cosine similarity of ``metric``); the ``r`` most
    similar proposals are merged into their B token by a size-weighted average. Protected
    tokens neither merge nor receive merges. As in the paper, ``r`` is clamped to half of
    the unprotected tokens, so at most 50% of them go per call.
    """
    b, n, _ = metric.shape
    n_prot = int(protected.sum(1).max())  # same prefix in every sample
    r = min(r, (n - n_prot) // 2)
    if r <= 0:
        return Reduction.select(torch.arange(n, device=metric.device).expand(b, n), n)
    scores = cosine_similarity(metric[:, ::2], metric[:, 1::2])
    # One in-place pass for both sides: protected A tokens propose nothing, protected B
    # tokens receive nothing.
    scores.masked_fill_(protected[:, ::2, None] | protected[:, None, 1::2], -torch.inf)
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)
    src = 2 * edge_idx[:, :r]  # A tokens that merge away (input indices)
    dst = 2 * node_idx.gather(1, edge_idx[:, :r]) + 1  # the B token each one joins

    group = torch.arange(n, device=metric.device).repeat(b, 1)
    group.scatter_(1, src, dst)
    owns_slot = torch.ones(b, n, dtype=torch.bool, device=metric.device)
    owns_slot.scatter_(1, src, False)
    # Every sample keeps n - r slots and folds r tokens: known counts, no host sync.
    return Reduction.from_groups(group, size, owns_slot, num_out=n - r, num_fold=r)


def grid_pool(
    position: Tensor, grid: tuple[int, int], kernel: int, protected: Tensor, size: Tensor,
    num_prefix: int,
) -> Reduction:
    """Average-pool patch tokens over ``kernel x kernel`` cells of the original patch grid.

    A token's cell comes from its original position, so pooling also works after earlier
    reductions. Each cell becomes one token, anchored at its first member; tokens without a
    grid position (synthetic) and protected tokens are kept as they are.
    """
    h, w = grid
    b, n = position.shape
    patch = (position - num_prefix).clamp_min(0)
    cell = (patch // w) // kernel * ((w + kernel - 1) // kernel) + (patch % w) // kernel
    on_grid = (position >= num_prefix) & ~protected
    # Group key: cell id for grid tokens, a unique id beyond every cell for the others.
    n_cells = ((h + kernel - 1) // kernel) * ((w + kernel - 1) // kernel)
    key = torch.where(on_grid, cell, n_cells + torch.arange(n, device=position.device))
    # The first token (lowest index) of each key owns the slot.
    first = torch.full((b, n_cells + n), n, dtype=torch.long, device=position.device)
    first.scatter_reduce_(1, key, torch.arange(n, device=position.device).expand(b, n), "amin")
    group = first.gather(1, key)
    owns_slot = group == torch.arange(n, device=position.device)
    return Reduction.from_groups(group, size, owns_slot)
