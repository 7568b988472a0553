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
  gets more tokens, peaked attention (one salient object) fewer;
* ``policy`` (no parameter; a weights file instead): the keep ratio a learned
  :class:`LevelPolicy` picks for the sample from :func:`budget_features` of its scores (trained
  by reward in :mod:`tokenreduce.train.budget_policy`). The batch still keeps the uniform
  total: the chosen ratios are the weights it is shared by.

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

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .context import TokenContext
from .reduction import Reduction

#: the rules an adaptive budget may take, and the default of each rule's parameter
RULES: dict[str, float | None] = {"threshold": 1.0, "iqr": 1.5, "entropy": None, "policy": None}
#: what each rule's parameter means, for errors and docs
RULE_PARAMETER = {"threshold": "the threshold t on n * p", "iqr": "the IQR multiplier k"}


@dataclass(frozen=True)
class AdaptiveRule:
    """How a batch's samples share its tokens: ``rule`` (one of :data:`RULES`) and its
    parameter ``k`` (None: the rule's default); ``policy`` is the weights file of the rule
    ``policy`` (:meth:`LevelPolicy.save`). Raises ``ValueError`` for an unknown rule, a
    parameter for ``entropy`` or ``policy``, a negative parameter, or a policy file given to
    another rule or missing for ``policy``."""

    rule: str
    k: float | None = None
    policy: str | None = None

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(
                f"unknown adaptive rule {self.rule!r}; allowed: {', '.join(map(repr, RULES))}"
            )
        if (self.policy is not None) != (self.rule == "policy"):
            raise ValueError(f"a policy weights file goes with the adaptive rule 'policy' and "
                             f"only with it; got rule={self.rule!r}, policy={self.policy!r}")  # fmt: skip
        if self.k is not None and self.rule in ("entropy", "policy"):
            raise ValueError(f"the adaptive rule {self.rule!r} takes no parameter; got k="
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
        if self.rule == "policy":
            policy = LevelPolicy.load(self.policy)
            return policy.levels[int(policy.choose(budget_features(scores)[None])[0])]
        p = shares(scores)
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


def shares(scores: Tensor) -> Tensor:
    """(n,) non-negative scores as float64 shares summing to 1 (uniform when all are 0)."""
    p = scores.double().clamp_min(0)
    total = p.sum()
    return p / total if total > 0 else torch.full_like(p, 1.0 / p.numel())


#: what :func:`budget_features` returns, in order
BUDGET_FEATURES = ("entropy", "peak", "standing_out", "outliers")


def budget_features(scores: Tensor) -> Tensor:
    """Four cheap difficulty features of one sample from its (n,) token scores, each in [0, 1]
    whatever n (float32, shape (4,), in the order of :data:`BUDGET_FEATURES`): the entropy of
    the shares over log n, log(n * the largest share) over log n, and the fractions of tokens
    the rules ``threshold`` and ``iqr`` (default parameters) count. Raises ``ValueError`` for
    fewer than 2 tokens (no spread to read)."""
    if scores.dim() != 1 or scores.numel() < 2:
        raise ValueError(f"budget_features reads a (n,) score vector with n >= 2; got shape "
                         f"{tuple(scores.shape)}")  # fmt: skip
    n, p = scores.numel(), shares(scores)
    log_n = math.log(n)
    entropy = float(-(p * p.clamp_min(1e-300).log()).sum()) / log_n
    peak = math.log(n * float(p.max())) / log_n
    counts = [AdaptiveRule(rule).estimate(scores) / n for rule in ("threshold", "iqr")]
    return torch.tensor([entropy, peak, *counts], dtype=torch.float32).clamp(0, 1)


@dataclass(frozen=True)
class LevelPolicy:
    """A budget policy: a linear value per keep-ratio level over :func:`budget_features`.

    ``levels`` (L,) keep ratios in (0, 1], increasing; ``weights`` (L, F + 1): each level's
    value is ``weights[l] @ [features, 1]`` (an estimate of the reward of choosing it);
    ``price`` (reward per unit of keep ratio; negative: a subsidy) is subtracted per level at
    the choice, so
    that one number moves the mean budget (:func:`~tokenreduce.train.budget_policy.calibrate`).
    """

    levels: tuple[float, ...]
    weights: Tensor
    price: float = 0.0

    def __post_init__(self) -> None:
        if (
            not self.levels
            or list(self.levels) != sorted(set(self.levels))
            or not all(0 < x <= 1 for x in self.levels)
        ):
            raise ValueError(f"levels must be distinct increasing keep ratios in (0, 1]; got "
                             f"{self.levels!r}")  # fmt: skip
        want = (len(self.levels), len(BUDGET_FEATURES) + 1)
        if tuple(self.weights.shape) != want:
            raise ValueError(f"weights must have shape {want} (levels x features + bias); got "
                             f"{tuple(self.weights.shape)}")  # fmt: skip
        if not math.isfinite(self.price):
            raise ValueError(f"price must be a finite number; got {self.price!r}")

    def values(self, features: Tensor) -> Tensor:
        """(B, L) estimated reward of each level for (B, F) features."""
        x = torch.cat([features.float(), features.new_ones(features.shape[0], 1)], dim=1)
        return x @ self.weights.float().T

    def choose(self, features: Tensor) -> Tensor:
        """(B,) index of the level each of (B, F) features gets (ties to the lower level)."""
        levels = torch.tensor(self.levels, dtype=torch.float32)
        return (self.values(features) - self.price * levels).argmax(dim=1)

    def save(self, path: str | Path) -> None:
        """Write the policy as JSON (levels, feature names, weights, price)."""
        data = {"levels": list(self.levels), "features": list(BUDGET_FEATURES),
                "weights": self.weights.tolist(), "price": self.price}  # fmt: skip
        Path(path).write_text(json.dumps(data, indent=1) + "\n")

    @staticmethod
    def load(path: str | Path) -> LevelPolicy:
        """Read :meth:`save`'s file (cached per path and modification time). Raises
        ``ValueError`` naming the file when it is missing or not a policy of these features."""
        file = Path(path)
        if not file.is_file():
            raise ValueError(f"budget policy file {str(file)!r} does not exist")
        return _load_policy(str(file.resolve()), file.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _load_policy(path: str, mtime: int) -> LevelPolicy:
    try:
        data = json.loads(Path(path).read_text())
        if data["features"] != list(BUDGET_FEATURES):
            raise ValueError(f"features {data['features']} are not {list(BUDGET_FEATURES)}")
        weights = torch.tensor(data["weights"], dtype=torch.float32)
        return LevelPolicy(tuple(data["levels"]), weights, float(data["price"]))
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a budget policy file: {err}") from None


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
