"""Reducing a padded batch sample by sample.

Samples of a padded batch have different real lengths, so a budget keeps a different number
of tokens in each (``keep(site, n)`` of each sample's own ``n``), and padding must never be
kept in place of a real token nor merged into one. Here every sample is reduced alone, on its
real tokens only, by the same method call a batch of one would get; the per-sample reductions
are then stacked into one batch reduction whose shorter samples end in padding slots. A batch
therefore gives exactly its samples' results one by one, for every method, whatever its
strategy (prune, merge, fuse, pool).
"""

from __future__ import annotations

from collections.abc import Callable

from .context import TokenContext
from .reduction import Reduction

#: a method's reduction of ``n_remove`` of a context's reducible tokens
Reducer = Callable[[TokenContext, int], Reduction]


def reduce_per_sample(
    ctx: TokenContext, keep: Callable[[int], int], reduce: Reducer
) -> Reduction | None:
    """The reduction of a ragged batch (``ctx.state.valid`` set), one sample at a time.

    Args:
        ctx: the batch's context at the site; ``ctx.state.valid`` (B, N) marks real tokens.
        keep: how many of a sample's ``n`` reducible real tokens survive (the budget).
        reduce: the method's reduction of one sample's context (a batch of one).

    Returns:
        A :meth:`Reduction.stack` over the batch (padding dropped, shorter samples padded at
        the end), or None when no sample loses a token (the batch then stays as it is).
    """
    parts, index, changed = [], [], False
    for b in range(ctx.hidden.shape[0]):
        idx = ctx.state.real_tokens(b)
        one = ctx.sample(b, idx)
        n_remove = one.num_reducible - keep(one.num_reducible)
        changed |= n_remove > 0
        keep_all = Reduction.everything(1, idx.numel(), idx.device)
        parts.append(reduce(one, n_remove) if n_remove > 0 else keep_all)
        index.append(idx)
    return Reduction.stack(parts, index, ctx.state.num_tokens) if changed else None

