"""The bookkeeping of one reduced transformers cache layer, in an object that owns it.

After a reduction a cache layer's entries no longer line up with the token sequence: each
sample keeps its own entries per KV head, filler slots first. A :class:`ReducedLayer` keeps,
next to the transformers layer it describes (its ``host``), what the adapter needs to go on
using it: each entry's validity and time step, the sample's budget and padding, and what a
decoding method reads (recent queries, accumulated attention). Like transformers' own cache
layers it answers its own questions: the mask for ``s`` new entries (:meth:`extend`,
:meth:`mask`), the selection of kept entries (:meth:`select`), the crop a sliding window
made (:meth:`follow_crop`), and how many tokens it has seen (:meth:`seen_length`).

It lives as one attribute of its host, so ``copy.deepcopy(cache)`` copies it with the
entries it describes, and transformers' code, which never reads that attribute, uses the
cache as before (``generate``, sliding layers cropping their oldest entries).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...core.kv import gather_entries

_ATTR = "tokenreduce_reduced"


def held(host) -> int:
    """Entries a transformers cache layer holds (a sliding layer's ``get_seq_length`` counts
    every token it saw, and a reduced layer's too)."""
    keys = getattr(host, "keys", None)
    return 0 if keys is None or keys.numel() == 0 else keys.shape[-2]


class ReducedLayer:
    """One reduced cache layer's bookkeeping. Shapes: B samples, Hkv KV heads, L entries held.

    Attributes:
        valid: (B, Hkv, L) bool, the entry is a real token (False for padding and filler).
        time: (B, Hkv, L) long, the entry's index in the fed sequence, padding included.
        keep: (B,) entries each sample kept at the prefill (its budget).
        pad: (B,) left padding per sample (``time - pad`` is the position in its prompt).
        hold: (B,) entries held while decoding (``decode_every``), or None.
        accumulated: (B, Hkv, L) float32 attention each entry received so far, or None.
        queries: (B, Hq, R, D) the R most recent queries with RoPE applied, or None.
        query_time: (R,) their time steps, or None.
        since: entries appended since the last reduction.
        dropped: entries removed so far (0 on a sliding layer, which counts them itself).
    """

    def __init__(self, host, valid: Tensor, time: Tensor, keep: Tensor, pad: Tensor) -> None:
        stored = held(host)  # a sliding layer may hold only the last entries
        self.host = host
        self.valid, self.time = valid[..., -stored:], time[..., -stored:]
        self.keep, self.pad = keep, pad
        self.hold: Tensor | None = None
        self.accumulated: Tensor | None = None
        self.queries: Tensor | None = None
        self.query_time: Tensor | None = None
        self.since = 0
        self.dropped = 0

    @classmethod
    def attach(cls, host, valid: Tensor, time: Tensor, keep: Tensor, pad: Tensor) -> ReducedLayer:
        """Start the bookkeeping of ``host``'s entries (``valid``/``time`` (B, Hkv, N), of
        which it holds the last ones), replacing any earlier one."""
        layer = cls(host, valid, time, keep, pad)
        setattr(host, _ATTR, layer)
        if not getattr(host, "is_sliding", False):
            # An instance attribute, so a deepcopy of the cache binds it to the copy's layer.
            host.get_seq_length = layer.seen_length
        return layer

    @staticmethod
    def of(host) -> ReducedLayer | None:
        """The bookkeeping attached to a transformers cache layer, or None (never reduced)."""
        return getattr(host, _ATTR, None)

    # -- what the model asks ------------------------------------------------------------------
    def seen_length(self) -> int:
        """Every token the layer has seen: the entries it holds plus those reductions removed.
        The model derives the next positions from it and ``generate`` the tokens still to feed
        (a compressed cache passed with the whole conversation so far feeds only the new turn)."""
        stored = held(self.host)
        return 0 if stored == 0 else stored + self.dropped  # 0: reset, or never filled

    def position(self) -> Tensor:
        """(B, Hkv, L) each entry's position in its own prompt, -1 for padding and filler."""
        return (self.time - self.pad[:, None, None]).masked_fill(~self.valid, -1)

    # -- s new entries --------------------------------------------------------------------------
    def extend(self, start: int, fed: Tensor) -> Tensor:
        """Record the ``s`` entries a forward is about to append: ``fed`` (B, s) False for
        padding, the first at time step ``start``. Returns their time steps (s,)."""
        b, s = fed.shape
        hkv = self.valid.shape[1]
        t = torch.arange(start, start + s, device=fed.device)
        self.valid = torch.cat([self.valid, fed[:, None, :].expand(b, hkv, s)], dim=-1)
        self.time = torch.cat([self.time, t.expand(b, hkv, s)], dim=-1)
        if self.accumulated is not None:
            self.accumulated = torch.cat(
                [self.accumulated, self.accumulated.new_zeros(b, hkv, s)], -1
            )
        return t

    def mask(self, t: Tensor, window: int | None) -> Tensor | None:
        """(B, Hkv, s, L) which entries the queries at time steps ``t`` (s,) may attend to:
        real ones, causal by time step, within ``window`` steps on a sliding layer. None when a
        single query sees every entry (no mask needed)."""
        time = self.time[:, :, None, :]
        allowed = self.valid[:, :, None, :] & (time <= t[None, None, :, None])
        if window is not None:
            allowed &= time > t[None, None, :, None] - window
        if t.shape[0] == 1 and bool(allowed.all()):
            return None
        return allowed

    def follow_crop(self) -> None:
        """Drop the bookkeeping of the oldest entries a sliding cache layer cropped."""
        stored = held(self.host)
        if stored < self.valid.shape[-1]:
            self.valid, self.time = self.valid[..., -stored:], self.time[..., -stored:]
            if self.accumulated is not None:
                self.accumulated = self.accumulated[..., -stored:]

    def remember_queries(self, q: Tensor, t: Tensor, rows: int) -> None:
        """Keep the ``rows`` most recent queries: ``q`` (B, Hq, s, D) at time steps ``t``."""
        self.queries = q if self.queries is None else torch.cat([self.queries, q], dim=2)
        self.query_time = t if self.query_time is None else torch.cat([self.query_time, t])
        self.queries, self.query_time = self.queries[:, :, -rows:], self.query_time[-rows:]

    # -- a reduction ----------------------------------------------------------------------------
    def select(self, index: Tensor, kept: Tensor) -> None:
        """Keep the entries ``index`` (B, Hkv, M), ``kept`` False for filler slots: the host's
        key and value tensors shrink to them, and so does this bookkeeping."""
        host = self.host
        removed = held(host) - index.shape[-1]
        host.keys = gather_entries(host.keys, index)
        host.values = gather_entries(host.values, index)
        if not getattr(host, "is_sliding", False):
            self.dropped += removed
        self.valid, self.time, self.since = kept, self.time.gather(-1, index), 0
        if self.accumulated is not None:
            self.accumulated = self.accumulated.gather(-1, index).masked_fill(~kept, 0.0)

    def removed(self, n: int) -> None:
        """Count ``n`` tokens the layer never received (pruned before it ran)."""
        if not getattr(self.host, "is_sliding", False):
            self.dropped += n
