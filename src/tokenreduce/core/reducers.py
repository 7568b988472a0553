"""Reducers: pure functions that turn scores or similarities into a :class:`Reduction`.

Protected tokens are never dropped, never merged away and never absorb other tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .reduction import FoldPlan, Reduction


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


#: token orders :func:`bipartite_merge` can produce
MERGE_ORDERS = ("reference", "original")


def bipartite_merge(
    metric: Tensor,
    r: int,
    protected: Tensor,
    size: Tensor,
    order: str = "reference",
    num_protected: int | None = None,
    prefix: bool = True,
) -> Reduction:
    """ToMe's bipartite soft matching (Bolya et al., ICLR 2023).

    Tokens alternate between set A (even indices) and set B (odd indices). Every A token
    proposes its most similar B token (cosine similarity of ``metric``); the ``r`` most
    similar proposals (``argsort`` descending, as in the paper's code) are merged into their
    B token by a size-weighted average. Protected tokens neither merge nor receive merges. As
    in the paper, ``r`` is clamped to half of the unprotected tokens, so at most 50% of them go
    per call.

    Args:
        metric: (B, N, C) similarity features, ToMe's keys averaged over heads.
        r: tokens to remove (>= 0).
        protected: (B, N) bool, the same prefix of tokens in every sample (class,
            distillation, register tokens).
        size: (B, N) token sizes, the merge weights.
        order: token order of the output (N - r tokens).
            ``"reference"``: that of facebookresearch/ToMe's ``merge.py``: the protected prefix,
            then the unmerged A tokens, then the B tokens (with their merged A tokens folded
            in). The A tokens are in input order when a protected token exists (the
            reference sorts them when there is a class token), else in descending similarity.
            The order matters because the next layer splits A and B by alternating index.
            ``"original"``: every token keeps its input order.
        num_protected: the length of the protected prefix when the caller knows it
            (``TokenState.num_protected``); read from ``protected`` otherwise.
        prefix: whether ``protected`` is a common prefix (``TokenState.protected_prefix``).
            False handles protected tokens anywhere (the same number per sample): they
            propose and receive nothing, ``r`` is clamped to the unprotected A tokens, and
            the ``"reference"`` order keeps every unmerged A token in input order, then the B
            tokens.

    Returns:
        The :class:`Reduction` from N to N - r tokens.

    Raises:
        ValueError: ``order`` is not one of :data:`MERGE_ORDERS`.
    """
    if order not in MERGE_ORDERS:
        raise ValueError(f"bipartite_merge: order must be one of {MERGE_ORDERS}, got {order!r}")
    b, n, _ = metric.shape
    n_prot = int(protected.sum(1).max()) if num_protected is None else num_protected
    if not prefix:
        return _bipartite_merge_masked(metric, r, protected, size, order)
    r = min(r, (n - n_prot) // 2)
    if r <= 0:
        return Reduction.select(torch.arange(n, device=metric.device).expand(b, n), n)
    # The protected prefix is the first (n_prot + 1) // 2 tokens of A and n_prot // 2 of B:
    # they propose nothing and receive nothing.
    prot_a, prot_b = (n_prot + 1) // 2, n_prot // 2
    metric = F.normalize(metric, dim=-1)  # once for both sets, as the reference does
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(-2, -1)  # cosine similarity (B, A, B)
    if n_prot:
        scores[:, :prot_a].fill_(-torch.inf)
        scores[:, :, :prot_b].fill_(-torch.inf)
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)
    src = edge_idx[:, :r]  # A indices that merge away, most similar first
    dst = node_idx.gather(1, src)  # the B index each one joins
    if order == "original":
        return _merge_in_input_order(2 * src, 2 * dst + 1, size)
    # The reference sorts the unmerged A tokens by index when there is a class token; the
    # protected ones (score -inf, never merged) then lead.
    unmerged = _complement_ascending(src, edge_idx.shape[1]) if n_prot else edge_idx[:, r:]
    ar = torch.arange(n, device=metric.device)
    n_unm = unmerged.shape[1] - prot_a  # unprotected A tokens that stay
    lead = torch.cat(
        [ar[:n_prot].expand(b, -1), 2 * unmerged[:, prot_a:], ar[2 * prot_b + 1 :: 2].expand(b, -1)],
        dim=1,
    )
    # B index j >= prot_b sits in slot n_prot + n_unm + (j - prot_b).
    plan = FoldPlan(lead, 2 * src, dst + (n_prot + n_unm - prot_b))
    return Reduction.from_plan(plan, size)


def _bipartite_merge_masked(
    metric: Tensor, r: int, protected: Tensor, size: Tensor, order: str
) -> Reduction:
    """:func:`bipartite_merge` for protected tokens at any positions (see its ``prefix``)."""
    b, n, _ = metric.shape
    prot_a, prot_b = protected[:, ::2], protected[:, 1::2]
    free_a = int((~prot_a).sum(1).min())
    r = min(r, (n - int(protected.sum(1).max())) // 2, free_a)
    if r <= 0 or bool(prot_b.all(1).any()):  # no A token to move, or no B token to take it
        return Reduction.select(torch.arange(n, device=metric.device).expand(b, n), n)
    metric = F.normalize(metric, dim=-1)
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(-2, -1)
    scores.masked_fill_(prot_a[:, :, None] | prot_b[:, None, :], -torch.inf)
    node_max, node_idx = scores.max(dim=-1)
    node_max.masked_fill_(prot_a, -torch.inf)  # a protected A token is never a source
    src = node_max.argsort(dim=-1, descending=True, stable=True)[:, :r]
    dst = node_idx.gather(1, src)
    if order == "original":
        return _merge_in_input_order(2 * src, 2 * dst + 1, size)
    unmerged = _complement_ascending(src, prot_a.shape[1])
    n_unm = unmerged.shape[1]
    lead = torch.cat([2 * unmerged, torch.arange(1, n, 2, device=metric.device).expand(b, -1)], 1)
    return Reduction.from_plan(FoldPlan(lead, 2 * src, dst + n_unm), size)


def _complement_ascending(idx: Tensor, n: int) -> Tensor:
    """The indices in ``range(n)`` missing from each row of ``idx`` (B, R), ascending (B, n - R).

    What sorting the rest of an argsort gives, without a sort: each kept index is written to
    its rank among the kept ones, the others to a spare column that is cut off.
    """
    b, r = idx.shape
    keep = torch.ones(b, n, dtype=torch.bool, device=idx.device).scatter_(1, idx, False)
    rank = torch.where(keep, keep.cumsum(1) - 1, n - r)
    out = torch.empty(b, n - r + 1, dtype=torch.long, device=idx.device)
    return out.scatter_(1, rank, torch.arange(n, device=idx.device).expand(b, n))[:, : n - r]


def _merge_in_input_order(src: Tensor, dst: Tensor, size: Tensor) -> Reduction:
    """Merge input tokens ``src`` (B, R) into ``dst`` (B, R); every slot keeps input order."""
    b, n = size.shape
    r = src.shape[1]
    group = torch.arange(n, device=src.device).repeat(b, 1)
    group.scatter_(1, src, dst)
    owns_slot = torch.ones(b, n, dtype=torch.bool, device=src.device)
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
    cells = (-(-h // kernel), -(-w // kernel))
    return _pool_cells(position, grid, cells, lambda r, c: (r // kernel, c // kernel),
                       protected, size, num_prefix)  # fmt: skip


def grid_downsample(
    position: Tensor, grid: tuple[int, int], out: tuple[int, int], protected: Tensor,
    size: Tensor, num_prefix: int,
) -> Reduction:
    """Average-pool the patch grid (h, w) down to ``out`` (h', w') cells: row ``i`` joins
    cell row ``i * h' // h`` (likewise for columns), a partition of the grid into cells of
    near-equal size (adaptive pooling without overlapping cells). As :func:`grid_pool`
    otherwise."""
    h, w = grid
    return _pool_cells(position, grid, out, lambda r, c: (r * out[0] // h, c * out[1] // w),
                       protected, size, num_prefix)  # fmt: skip


def _pool_cells(position, grid, cells, cell_of, protected, size, num_prefix) -> Reduction:
    """Average the grid tokens of each cell; ``cell_of(row, col)`` names a token's cell in a
    ``cells`` = (rows, cols) grid of cells."""
    w = grid[1]
    b, n = position.shape
    patch = (position - num_prefix).clamp_min(0)
    row, col = cell_of(patch // w, patch % w)
    cell = row * cells[1] + col
    on_grid = (position >= num_prefix) & ~protected
    # Group key: cell id for grid tokens, a unique id beyond every cell for the others.
    n_cells = cells[0] * cells[1]
    key = torch.where(on_grid, cell, n_cells + torch.arange(n, device=position.device))
    # The first token (lowest index) of each key owns the slot.
    first = torch.full((b, n_cells + n), n, dtype=torch.long, device=position.device)
    first.scatter_reduce_(1, key, torch.arange(n, device=position.device).expand(b, n), "amin")
    group = first.gather(1, key)
    owns_slot = group == torch.arange(n, device=position.device)
    return Reduction.from_groups(group, size, owns_slot)


def max_min_diverse(features: Tensor, keep: int, protected: Tensor) -> Reduction:
    """Keep the ``keep`` unprotected tokens that best cover the features: the greedy answer to
    the max-min diversity problem (DivPrune, Alvar et al., CVPR 2025), in cosine distance.

    The first token kept is the one farthest from its nearest neighbour; each next one is the
    token whose nearest kept token is farthest. Protected tokens are kept and take no part.

    Args:
        features: (B, N, C) token features.
        keep: unprotected tokens to keep.
        protected: (B, N) bool, the same number in every sample.
    """
    x = F.normalize(features.float(), dim=-1)
    distance = 1.0 - x @ x.transpose(1, 2)  # (B, N, N)
    b, n = protected.shape
    free = ~protected
    distance = distance.masked_fill(~(free[:, :, None] & free[:, None, :]), float("inf"))
    eye = torch.eye(n, dtype=torch.bool, device=features.device)
    nearest = distance.masked_fill(eye, float("inf")).amin(2)  # to any other free token
    chosen = torch.zeros(b, n, dtype=torch.bool, device=features.device)
    to_chosen = torch.full((b, n), float("inf"), device=features.device)
    rows = torch.arange(b, device=features.device)
    for step in range(keep):
        score = nearest if step == 0 else to_chosen
        pick = score.masked_fill(chosen | protected, float("-inf")).argmax(1)
        chosen[rows, pick] = True
        to_chosen = torch.minimum(to_chosen, distance[rows, pick])
    kept = (chosen | protected).nonzero()[:, 1].view(b, -1)
    return Reduction.select(kept, n)


def dominant_and_contextual(
    scores: Tensor, metric: Tensor, keep: int, contextual: int, protected: Tensor, size: Tensor
) -> Reduction:
    """VisionZip (Yang et al., CVPR 2025): the ``keep - contextual`` highest-scoring
    unprotected tokens are kept as they are (dominant); the others are merged into
    ``contextual`` tokens: evenly spaced ones among them (in input order) are the targets,
    and each of the rest joins the target its ``metric`` is most similar to (dot product of
    normalised features), averaged with it by size.

    Args:
        scores: (B, N) attention received (higher = dominant).
        metric: (B, N, C) features compared for the merge (the keys).
        keep: unprotected tokens kept, dominant plus contextual.
        contextual: merged tokens among them (at most ``keep``).
        protected: (B, N) bool, the same number in every sample; kept and never merged.
        size: (B, N) token sizes, the merge weights.
    """
    b, n = scores.shape
    dominant = _keep_indices(scores, keep - contextual, protected)  # protected included
    rest = torch.ones(b, n, dtype=torch.bool, device=scores.device)
    rest.scatter_(1, dominant, False)
    n_rest = n - dominant.shape[1]
    if contextual == 0 or n_rest == 0:
        return Reduction.select(dominant, n)
    others = rest.nonzero()[:, 1].view(b, n_rest)  # ascending
    step = n_rest / contextual
    pick = (torch.arange(contextual, device=scores.device) * step).long()
    targets = others[:, pick]  # (B, contextual)
    x = F.normalize(metric.float(), dim=-1)
    sim = take_rows(x, others) @ take_rows(x, targets).transpose(1, 2)  # (B, n_rest, ctx)
    join = targets.gather(1, sim.argmax(-1))
    group = torch.arange(n, device=scores.device).expand(b, n).clone()
    group.scatter_(1, others, join)
    group.scatter_(1, targets, targets)  # a target stays its own (ties in similarity)
    owns = group == torch.arange(n, device=scores.device)
    m = dominant.shape[1] + contextual
    return Reduction.from_groups(group, size, owns, num_out=m, num_fold=n - m)


def take_rows(x: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` (B, K) of ``x`` (B, N, C): (B, K, C)."""
    return x.gather(1, index[:, :, None].expand(-1, -1, x.shape[-1]))
