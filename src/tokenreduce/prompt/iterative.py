"""Iterative token-level compression (LLMLingua's ITPC, Jiang et al., EMNLP 2023, sec. 3.3).

The kept documents are read in segments of about ``segment_size`` tokens (cut between word
groups). Each segment is scored given the compressed text before it (the reader's KV cache
holds only the kept tokens' entries), its best word groups are kept and the others' entries
dropped, so a word made predictable only by text that was removed is scored as surprising.

Targets carry over: a segment keeps what brings its document's running count to the share of
the document's target reached by the end of the segment, so rounding errors do not add up.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from . import select
from .scorer import Scorer, Stream, Text


class Reader(Protocol):
    """What the loop reads segments with: ``score`` a segment's ids (n,) into (n,) scores
    (higher: more worth keeping), then ``keep`` the tokens chosen from it ((n,) bool)."""

    def score(self, ids: torch.Tensor) -> torch.Tensor: ...

    def keep(self, chosen: torch.Tensor) -> None: ...


class Contrast:
    """LongLLMLingua's contrastive score (Jiang et al., ACL 2024, sec. 4.2): how much the
    question lowers a token's self-information, ``info(x_t | kept) - info(x_t | question,
    kept)``, read by two streams in step."""

    def __init__(self, scorer: Scorer, prefix: torch.Tensor | None, question: torch.Tensor):
        head = prefix if prefix is not None else torch.zeros(0, dtype=torch.long)
        self.plain = Stream(scorer, prefix)
        self.conditioned = Stream(scorer, torch.cat([head, question]))

    def score(self, ids: torch.Tensor) -> torch.Tensor:
        return self.plain.score(ids) - self.conditioned.score(ids)

    def keep(self, chosen: torch.Tensor) -> None:
        self.plain.keep(chosen)
        self.conditioned.keep(chosen)


def segments_of(doc: Text, segment_size: int) -> np.ndarray:
    """The segment of each word group of ``doc``, (G,) int64: a group belongs to the segment
    in which its first token falls."""
    starts = np.cumsum(doc.groups.sizes) - doc.groups.sizes
    return starts // segment_size


def compress_docs(
    docs: list[Text],
    reader: Reader,
    segment_size: int,
    targets: np.ndarray | None = None,
    floor: float | None = None,
) -> list[np.ndarray]:
    """Keep masks over the word groups of ``docs``, read in this order by ``reader``.

    Args:
        docs: the documents, in the order the compressed prompt will have them.
        reader: scores segments given what has been kept (:class:`Stream`, :class:`Contrast`).
        segment_size: tokens per segment (whole groups, so a segment may be a little longer).
        targets: tokens to keep per document, (D,); or None with ``floor``.
        floor: keep the groups whose mean score is above it (a threshold budget).
    """
    if (targets is None) == (floor is None):
        raise ValueError("compress_docs needs exactly one of targets and floor")
    masks = []
    for d, doc in enumerate(docs):
        target = None if targets is None else int(targets[d])
        masks.append(_compress_doc(doc, reader, segment_size, target, floor))
    return masks


def _compress_doc(
    doc: Text, reader: Reader, segment_size: int, target: int | None, floor: float | None
) -> np.ndarray:
    grouped = doc.groups
    keep = np.zeros(len(grouped), dtype=bool)
    if not len(grouped):
        return keep
    segment = segments_of(doc, segment_size)
    bounds = np.flatnonzero(np.diff(segment, prepend=-1, append=segment[-1] + 1))
    token_end = np.cumsum(grouped.sizes)
    kept = 0
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        first_token = int(token_end[lo] - grouped.sizes[lo])
        ids = doc.ids[first_token : int(token_end[hi - 1])]
        local = grouped.of_token[first_token : int(token_end[hi - 1])] - lo
        scores = select.unit_means(reader.score(ids), local)
        sizes = grouped.sizes[lo:hi]
        if target is None:
            chosen = select.above(scores, floor)
        else:
            # the running share of the target reached at this segment's end
            due = round(target * int(token_end[hi - 1]) / len(doc))
            chosen = select.keep_best(scores, sizes, due - kept)
        keep[lo:hi] = chosen
        kept += int(sizes[chosen].sum())
        reader.keep(torch.from_numpy(np.repeat(chosen, sizes)))
    return keep
