"""Adaptive budgets: each sample keeps its own number of tokens, the batch its mean.

A uniform budget keeps ``k = keep(site, n)`` of the ``n`` reducible tokens of every sample.
An adaptive budget decides per sample, from the sample itself, how hard it is, and gives each
sample a count proportional to that estimate, normalised so that the batch keeps exactly as
many tokens as the uniform budget would: adaptive and uniform compare at equal cost.

The estimate reads the tokens' scores ``s`` (the attention the class token gives each token,
:attr:`~tokenreduce.core.context.TokenContext.class_attention`), normalised over a sample's
reducible tokens to shares ``p`` (sum 1; ``n * p = 1`` for a token at the uniform share):

* ``threshold`` (parameter ``t``, default 1): the number of tokens whose normalised score
  ``n * p`` exceeds ``t``, i.e. that stand out against a uniform spread (at least 1);
* ``iqr`` (parameter ``k``, default 1.5): the number of outliers of an interquartile-range
  test, ``p > Q3 + k * (Q3 - Q1)`` (LLaVA-PruMerge's count, Shang et al., 2024,
  https://arxiv.org/abs/2403.15388; at least 1);
* ``entropy`` (no parameter): the perplexity ``exp(H(p))`` of the attention, the number of
  tokens it effectively spreads over. Flatter attention (a scene with many things in it)
  gets more tokens, peaked attention (one salient object) fewer.

Calibration (:func:`allocate`): the batch of ``B`` samples keeps ``B * k`` tokens in all;
sample ``b`` gets the share ``w_b / sum(w)`` of them, bounded to ``[1, n_b]`` (a share above
``n_b`` is capped and the excess spread over the others in proportion, likewise a share below
1), then rounded: floors first, and the tokens still missing go one each to the largest
fractional parts (ties to the earlier sample). The mean over the batch is therefore exactly
``k``, and so is the mean over a data set of several batches: the only deviation is a method
whose strategy cannot hit a count exactly (a grid's whole cells). A batch of one keeps ``k``:
the counts depend on which samples share a batch (documented, like the batch size).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .context import TokenContext
from .reduction import Reduction

#: the rules an adaptive budget may take, and the default of each rule's parameter
RULES: dict[str, float | None] = {"threshold": 1.0, "iqr": 1.5, "entropy": None}
#: what each rule's parameter means, for errors and docs
RULE_PARAMETER = {"threshold": "the threshold t on n * p", "iqr": "the IQR multiplier k"}


@dataclass(frozen=True)
class AdaptiveRule:
    """How a batch's samples share its tokens: ``rule`` (one of :data:`RULES`) and its
    parameter ``k`` (None: the rule's default). Raises ``ValueError`` for an unknown rule, a
    parameter for ``entropy``, or a negative parameter."""

    rule: str
    k: float | None = None

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(
                f"unknown adaptive rule {self.rule!r}; allowed: {', '.join(map(repr, RULES))}"
            )
        if self.k is not None and self.rule == "entropy":
            raise ValueError("the adaptive rule 'entropy' takes no parameter; got k="
                             f"{self.k!r} (k is {RULE_PARAMETER['threshold']} or "
                             f"{RULE_PARAMETER['iqr']})")  # fmt: skip
        if self.k is not None and not self.k >= 0:
            raise ValueError(f"the parameter of adaptive rule {self.rule!r} ("
                             f"{RULE_PARAMETER[self.rule]}) must be >= 0; got {self.k!r}")  # fmt: skip

    @property
    def parameter(self) -> float | None:
        return RULES[self.rule] if self.k is None else self.k

    def estimate(self, scores: Tensor) -> float:
        """The difficulty weight of one sample from its (n,) non-negative token scores."""
        p = scores.double().clamp_min(0)
        total = p.sum()
        p = p / total if total > 0 else torch.full_like(p, 1.0 / p.numel())
        if self.rule == "entropy":
            entropy = -(p * p.clamp_min(1e-300).log()).sum()
            return float(entropy.exp())
        if self.rule == "threshold":
            standing_out = (p * p.numel() > self.parameter).sum()
        else:
            q1, q3 = torch.quantile(p, torch.tensor([0.25, 0.75], dtype=p.dtype)).tolist()
            standing_out = (p > q3 + self.parameter * (q3 - q1)).sum()
        # at least one: a sample where nothing stands out still holds its most salient token
        return float(max(int(standing_out), 1))

    def counts(self, scores: Tensor, reducible: Tensor, keep: int) -> list[int]:
        """Tokens each sample keeps: (B, N) scores, (B, N) bool reducible tokens, ``keep`` the
        uniform count per sample; the counts sum to ``B * keep`` (:func:`allocate`)."""
        weights = [self.estimate(s[r]) for s, r in zip(scores, reducible, strict=True)]
        return allocate(weights, keep * len(weights), 1, [int(r.sum()) for r in reducible])


def allocate(weights: Sequence[float], total: int, low: int, high: Sequence[int]) -> list[int]:
    """Integers proportional to ``weights`` (>= 0), each in ``[low, high[b]]``, summing to
    ``total``: shares outside the bounds are clamped and the rest re-shared in proportion,
    then floors plus one for the largest fractional parts. Equal shares when every weight is
    0. Raises ``ValueError`` when the bounds cannot hold ``total``."""
    b = len(weights)
    if not b * low <= total <= sum(high):
        raise ValueError(f"cannot share {total} tokens among {b} samples holding {low} to "
                         f"{list(high)} each")  # fmt: skip
    w = [max(float(x), 0.0) for x in weights]
    if not any(w):
        w = [1.0] * b
    share = _bounded_shares(w, float(total), float(low), [float(h) for h in high])
    counts = [math.floor(s + 1e-9) for s in share]
    missing = total - sum(counts)
    order = sorted(range(b), key=lambda i: (-(share[i] - counts[i]), i))
    for i in order[:missing]:
        counts[i] += 1
    return counts


def _bounded_shares(w: list[float], total: float, low: float, high: list[float]) -> list[float]:
    """Proportional shares of ``total`` clamped to the bounds by water-filling: caps first
    (capping raises the others' shares), then floors (which only lower them)."""
    fixed: dict[int, float] = {}
    while True:
        free = [i for i in range(len(w)) if i not in fixed]
        if not free:
            return [fixed[i] for i in range(len(w))]
        rest, weight = total - sum(fixed.values()), sum(w[i] for i in free)
        ideal = {i: rest * w[i] / weight if weight > 0 else rest / len(free) for i in free}
        over = [i for i in free if ideal[i] > high[i]]
        under = [i for i in free if ideal[i] < low]
        if not over and not under:
            return [fixed.get(i, ideal.get(i, 0.0)) for i in range(len(w))]
        for i in over or under:
            fixed[i] = high[i] if over else low


#: a method's reduction of ``n_remove`` of a context's reducible tokens
Reducer = Callable[[TokenContext, int], Reduction]


def reduce_each(ctx: TokenContext, n_remove: int, rule: AdaptiveRule, reduce: Reducer) -> Reduction:
    """The reduction of a batch whose samples keep the counts ``rule`` gives them.

    Args:
        ctx: the batch's context at the site (no padding: ``ctx.state.valid`` None).
        n_remove: what the uniform budget removes per sample; the batch keeps
            ``B * (ctx.num_reducible - n_remove)`` reducible tokens in all.
        rule: how the samples share them.
        reduce: the method's reduction of one sample's context (a batch of one).

    Returns:
        A :meth:`Reduction.stack` of each sample reduced alone at its own count (shorter
        samples end in padding slots, ``valid`` False), so the batch equals its samples one
        by one at those counts.
    """
    keep = ctx.num_reducible - n_remove
    counts = rule.counts(ctx.class_attention, ~ctx.state.protected, keep)
    parts, index = [], []
    for b, count in enumerate(counts):
        idx = ctx.state.real_tokens(b)
        one = ctx.sample(b, idx)
        remove = one.num_reducible - count
        keep_all = Reduction.everything(1, idx.numel(), idx.device)
        parts.append(reduce(one, remove) if remove > 0 else keep_all)
        index.append(idx)
    return Reduction.stack(parts, index, ctx.state.num_tokens)
