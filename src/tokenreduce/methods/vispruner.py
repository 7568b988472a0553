from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.context import TokenContext
from ..core.reducers import take_rows
from ..core.reduction import Reduction
from .base import param, register
from .pruning import KeepRatioMethod

#: tokens removed per round of the duplicate removal (the authors' code removes 8)
DUPLICATES_PER_ROUND = 8


@register
@dataclass
class VisPruner(KeepRatioMethod):
    """VisPruner: important tokens by visual attention, then diverse ones by removing
    duplicates among the rest.

    Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token
    Pruning in VLMs", ICCV 2025. https://arxiv.org/abs/2412.01818

    Of the ``keep`` tokens kept, ``floor(important_share * keep)`` are *important*: those the
    vision encoder's class token attends to most (mean over heads; on a vision-language model,
    at the vision tower's layer whose output is handed over, its class token included although
    not handed over; without a class token, the mean over all queries). The rest are
    *diverse*: the other tokens, in order of attention, lose their duplicates in rounds until
    ``keep`` are left. Each round splits them alternately into A and B, gives every A token its
    highest cosine similarity to a B token, and drops the (at most 8) A tokens with the
    highest. Features are the tokens as the site holds them (on a vision-language model, as
    handed to the language model; the paper compares the vision encoder's output before the
    projector). Everything kept is kept as it is (pruning, no merge).

    Parameters:
        keep_ratio: fraction of unprotected tokens kept, important plus diverse, in (0, 1].
        layers: 0-based indices of the sites that prune (a vision-language model's handoff
            is site 0).
        important_share: share of the kept tokens chosen by attention, in [0, 1]; 0 keeps
            only diverse tokens, 1 is plain attention top-k (the paper sweeps it).
    """

    name = "vispruner"
    paper = "Zhang et al., ICCV 2025 (arXiv:2412.01818)"
    important_share: float = param(0.5, ge=0, le=1)

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        keep = ctx.num_reducible - n_remove
        important = math.floor(self.important_share * keep)
        kept = important_and_diverse(ctx.class_attention, ctx.hidden, keep, important,
                                     ctx.state.protected)  # fmt: skip
        return Reduction.select(kept, ctx.state.num_tokens)


def important_and_diverse(
    scores: Tensor, features: Tensor, keep: int, important: int, protected: Tensor
) -> Tensor:
    """Indices (B, P + keep), ascending, of the protected tokens, the ``important``
    highest-scoring others, and ``keep - important`` of the rest left by duplicate removal
    (:func:`remove_duplicates`).

    Args:
        scores: (B, N) attention received (higher = important).
        features: (B, N, C) token features compared by cosine similarity.
        keep: unprotected tokens kept (at most those there are).
        important: how many of them are chosen by ``scores`` (at most ``keep``).
        protected: (B, N) bool, the same number in every sample.
    """
    n_prot = int(protected.sum(1).max())
    # protected first, then by attention (stable: ties keep input order in batch and alone)
    ranked = scores.float().masked_fill(protected, math.inf)
    order = ranked.argsort(dim=1, descending=True, stable=True)
    lead = order[:, : n_prot + important]
    diverse = remove_duplicates(F.normalize(features.float(), dim=-1), order[:, n_prot + important :],
                                keep - important)  # fmt: skip
    return torch.cat([lead, diverse], dim=1).sort(dim=1).values


def remove_duplicates(unit: Tensor, candidates: Tensor, keep: int) -> Tensor:
    """The ``keep`` of ``candidates`` (B, R) left after rounds of duplicate removal: split the
    remaining ones alternately into A (even places) and B (odd places), score each A token by
    its highest similarity to a B token (``unit`` (B, N, C): unit-norm features), drop the
    :data:`DUPLICATES_PER_ROUND` highest-scoring A tokens (fewer in the last round), and
    repeat. Returns (B, keep): the surviving A tokens, most distinct first, then the B ones."""
    while candidates.shape[1] > keep:
        r = min(DUPLICATES_PER_ROUND, candidates.shape[1] - keep)
        a, b = candidates[:, ::2], candidates[:, 1::2]
        if b.shape[1] == 0:  # a single candidate and nothing to compare it with
            return candidates[:, :keep]
        sim = take_rows(unit, a) @ take_rows(unit, b).transpose(1, 2)
        score = sim.amax(dim=2)
        distinct = score.argsort(dim=1, descending=True, stable=True)[:, r:]
        candidates = torch.cat([a.gather(1, distinct), b], dim=1)
    return candidates
