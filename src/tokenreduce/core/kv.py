"""Key-value cache reduction: pure tensor functions and the context a cache method sees.

Shapes: keys and values are (B, Hkv, N, D) as a decoder caches them (RoPE already applied
to keys); queries are (B, Hq, Q, D) with Hq = G * Hkv (grouped-query attention: query head
h reads KV head h // G). A cache reduction keeps, for every sample and every KV head, the
same number M of entries, so the cache stays a dense tensor; a sample that keeps fewer
entries than M (a shorter prompt in a left-padded batch) fills the rest with masked slots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .budgets import Budget, removed_count


def grouped_attention_received(
    q: Tensor,
    k: Tensor,
    q_index: Tensor,
    valid: Tensor,
    scale: float,
    chunk: int = 256,
    q_valid: Tensor | None = None,
    k_index: Tensor | None = None,
    window: int | None = None,
) -> Tensor:
    """Attention each key receives from a set of causal queries, summed over the queries and
    averaged over the query heads that share a KV head.

    Only the given query rows are computed, ``chunk`` rows at a time, so the memory is
    O(chunk * N) per head however many rows are asked for.

    Args:
        q: (B, Hq, Q, D) queries (after any q norm and RoPE) of the rows to score from.
        k: (B, Hkv, N, D) keys of the same layer.
        q_index: (Q,) index of each query row in the key sequence (a query sees keys <= it).
        valid: (B, N) False for padding (padded keys get 0), or (B, Hkv, N) per KV head (a
            cache already reduced per head).
        scale: attention logit scale.
        q_valid: (B, Q) False for query rows that add nothing; by default ``valid`` at the
            query rows for a (B, N) mask, all rows otherwise.
        k_index: (B, Hkv, N) time step of every key, for a cache whose order is no longer the
            sequence order (then ``q_index`` holds the queries' time steps); None: key j is at
            index j.
        window: a query sees only keys less than ``window`` steps old (sliding-window
            layers); None: no limit.

    Returns:
        (B, Hkv, N) float32 scores.
    """
    b, hq, nq, d = q.shape
    hkv, n = k.shape[1], k.shape[2]
    g = hq // hkv
    kf = k.float()
    # masks broadcast over (B, Hkv, G, rows, keys): a query head's rows are grouped under the
    # KV head it shares, so the keys are never copied per query head
    if k_index is None:
        keys = torch.arange(n, device=k.device)[None, None, None, None, :]
    else:
        keys = k_index[:, :, None, None, :]
    if valid.dim() == 3:
        key_ok = valid[:, :, None, None, :]
        q_valid = (
            torch.ones(b, nq, dtype=torch.bool, device=k.device) if q_valid is None else q_valid
        )
    else:
        key_ok = valid[:, None, None, None, :]
        q_valid = valid[:, q_index] if q_valid is None else q_valid
    out = torch.zeros(b, hkv, g, n, device=k.device)
    for start in range(0, nq, chunk):
        rows = q_index[start : start + chunk]
        c = rows.shape[0]
        lo, hi = 0, n
        if k_index is None:  # keys in sequence order: skip those no row of the chunk can see
            hi = int(rows.max()) + 1
            if window is not None:
                lo = max(0, int(rows.min()) - window + 1)
        qc = (q[:, :, start : start + chunk].float() * scale).reshape(b, hkv, g * c, d)
        logits = (qc @ kf[:, :, lo:hi].transpose(-2, -1)).view(b, hkv, g, c, hi - lo)
        seen = keys[..., lo:hi]
        r = rows[:, None]
        allowed = key_ok[..., lo:hi] & (seen <= r) & q_valid[:, None, None, start : start + c, None]
        if window is not None:
            allowed = allowed & (seen > r - window)
        # an additive bias is cheaper than masked_fill on a broadcast mask
        probs = logits.add_(torch.where(allowed, 0.0, float("-inf"))).softmax(dim=-1)
        out[..., lo:hi] += probs.nan_to_num_(0.0).sum(dim=3)  # rows with no key: NaN -> 0
    return out.mean(dim=2)


def pool_scores(scores: Tensor, kernel: int, mode: str = "avg") -> Tensor:
    """Pool scores along the sequence (SnapKV's clustering of neighbouring tokens): ``"avg"``
    smooths them, ``"max"`` gives every entry the best score within ``kernel // 2`` of it, so
    the whole neighbourhood of a strongly attended token survives with it.
    scores: (B, H, N); an odd ``kernel`` keeps N; 1 is the identity."""
    if kernel <= 1:
        return scores
    b, h, n = scores.shape
    pool = {"avg": F.avg_pool1d, "max": F.max_pool1d}[mode]
    pooled = pool(scores.reshape(b * h, 1, n), kernel, stride=1, padding=kernel // 2)
    return pooled[..., :n].reshape(b, h, n)


def keep_per_head(scores: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Select the ``keep[b]`` highest-scoring entries of every KV head of sample b.

    Args:
        scores: (B, H, N); ``-inf`` for entries that must never be kept (padding), ``+inf``
            for entries that must be (sinks, recent window). Ties go to the earlier entry.
        keep: (B,) entries to keep per sample (at most its number of finite-or-+inf scores).

    Returns:
        ``index`` (B, H, M) entry indices with M = max(keep), and ``valid`` (B, H, M): False
        for the ``M - keep[b]`` filler slots of a sample that keeps fewer. The filler slots
        come first, then the kept entries in ascending order, so a reduced cache looks like a
        left-padded one: its last slots are the most recent entries of every sample, and
        sequence neighbours stay neighbours (what pooling and recency rules read).
    """
    b, h, n = scores.shape
    m = int(keep.max())
    order = scores.float().argsort(dim=-1, descending=True, stable=True)[..., :m]
    rank = torch.arange(m, device=scores.device).expand(b, h, m)
    valid = rank < keep.to(scores.device)[:, None, None]
    _, perm = (order + valid.long() * n).sort(dim=-1)
    return order.gather(-1, perm), valid.gather(-1, perm)


def gather_entries(x: Tensor, index: Tensor) -> Tensor:
    """(B, H, N, ...) entries at ``index`` (B, H, M) -> (B, H, M, ...)."""
    idx = index.reshape(*index.shape, *([1] * (x.dim() - 3))).expand(*index.shape, *x.shape[3:])
    return x.gather(2, idx)


@dataclass(frozen=True)
class CacheBudget(Budget):
    """Entries a layer's cache keeps out of ``n``: ``n - floor(n * ratio)``, or at most
    ``max_entries`` when it is set."""

    ratio: float = 0.0
    max_entries: int | None = None

    def keep(self, layer: int, n: int) -> int:
        if self.max_entries is not None:
            return min(n, self.max_entries)
        return n - removed_count(n, self.ratio)


@dataclass
class KVContext:
    """What a cache method may read at one layer when the cache is reduced.

    ``keys``/``values`` (B, Hkv, N, D) are the layer's cached entries; ``valid`` (B, N) is
    False for padding; ``position`` (B, N) is each entry's position in its own prompt (0 for
    the first real token, -1 for padding), so scores that depend on position agree between
    a padded batch and its samples one by one. During decoding the cache has already been
    reduced per KV head: ``valid`` and ``position`` are then (B, Hkv, N). ``queries(rows)``
    returns the last ``rows`` queries (None: all of them) with RoPE applied, computed on
    demand for those rows only.

    While decoding, the cache order is no longer the sequence order of the queries: ``time``
    (B, Hkv, N) gives every entry's time step and ``query_time`` (R,) those of the queries
    ``queries`` can return (the R most recent), so attention stays causal by time.
    ``accumulated`` (B, Hkv, N), when the method asks for it (``accumulates``), is the
    attention every entry has received from every query so far, prompt and generated tokens.

    At a prefill method's site, ``text`` (B, N) marks the entries that are text on a
    vision-language model (the others are image tokens, the candidates), for methods that
    read the split (SparseVLM's text raters); None when the model has no such split.
    """

    layer: int
    num_layers: int
    keys: Tensor
    values: Tensor
    valid: Tensor
    position: Tensor
    scale: float
    queries: Callable[[int | None], Tensor]
    time: Tensor | None = None
    query_time: Tensor | None = None
    accumulated: Tensor | None = None
    window: int | None = None
    text: Tensor | None = None
    _attn: dict = field(default_factory=dict, repr=False)

    @property
    def num_entries(self) -> int:
        return self.keys.shape[2]

    @property
    def per_head(self) -> bool:
        """True when ``valid``/``position`` are given per KV head (decoding)."""
        return self.valid.dim() == 3

    def attention(self, rows: int | None) -> Tensor:
        """(B, Hkv, N) attention received from the last ``rows`` queries (None: all), summed
        over those queries and averaged over each KV head's query heads. Cached per ``rows``."""
        if rows not in self._attn:
            n = self.num_entries
            q = self.queries(rows)
            if self.time is None:
                q_index = torch.arange(n - q.shape[2], n, device=self.keys.device)
            else:
                q_index = self.query_time[-q.shape[2] :]
            self._attn[rows] = grouped_attention_received(
                q, self.keys, q_index, self.valid, self.scale, k_index=self.time,
                window=self.window,
            )  # fmt: skip
        return self._attn[rows]


__all__ = [
    "CacheBudget",
    "KVContext",
    "gather_entries",
    "grouped_attention_received",
    "keep_per_head",
    "pool_scores",
    "removed_count",
]
