"""Shared parameters and contract of the prompt-compression methods (``kind = "prompt"``).

A prompt method shortens the *text* of a prompt before any model reads it: it keeps whole
words (never part of one) of the context documents, scored by a small causal language model
(:class:`tokenreduce.prompt.scorer.Scorer`). The instruction and the question are never
compressed. Run one with :func:`tokenreduce.prompt.compress`; it patches no model.

The budget is one of three (LLMLingua's names):

* ``rate``: the share of the context's tokens kept, in (0, 1] (1 keeps the text unchanged);
* ``target_token``: the context's tokens kept;
* ``threshold``: a probability in (0, 1): a unit the scorer predicts with at least this
  probability (the geometric mean over its tokens) is removed; how much goes depends on the
  text.

With none given, ``rate=0.5``; giving two is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..core.budgets import Budget
from ..core.context import ModelInfo
from .base import InvalidParameter, Method, param

if TYPE_CHECKING:
    from ..prompt.scorer import Scorer, Text

#: the rate a method compresses at when no budget is given
DEFAULT_RATE = 0.5


@dataclass(frozen=True)
class Read:
    """A prompt as a method sees it: the context ``docs`` tokenised, the ``question`` and
    ``instruction`` (None when absent), and ``target``, the context tokens to keep (None
    under a threshold budget)."""

    docs: list[Text]
    question: Text | None
    instruction: Text | None
    target: int | None

    @property
    def sizes(self) -> np.ndarray:
        """Tokens per document, (D,)."""
        return np.array([len(d) for d in self.docs], dtype=np.int64)


@dataclass(frozen=True)
class Plan:
    """What a method keeps of one prompt: the documents in output ``order`` (indices into
    :attr:`Read.docs`; dropped documents are absent) and, for each, a (G,) bool mask over
    its word groups."""

    order: list[int]
    keep: list[np.ndarray]


@dataclass(frozen=True)
class PromptBudget(Budget):
    """``keep(site, n)`` of a prompt method: the prompt is its one site, ``n`` its context
    tokens. Under a threshold the count is known only once the text is scored: all ``n``
    may stay."""

    rate: float | None
    target_token: int | None

    def keep(self, site: int, n: int) -> int:
        if self.target_token is not None:
            return min(self.target_token, n)
        if self.rate is not None:
            return min(n, round(self.rate * n))
        return n


@dataclass
class PromptMethod(Method):
    """Base of the prompt-compression methods; a subclass writes :meth:`plan`."""

    kind: ClassVar[str] = "prompt"
    kind_words: ClassVar[str] = "prompt-compression"
    runs_without_patch: ClassVar[str] = (
        "a prompt-compression method rewrites the text before any model reads it: run it with "
        "tokenreduce.prompt.compress(context, method, question=...)"
    )
    budget_param: ClassVar[str] = "rate"
    budget_identity: ClassVar[object] = 1.0
    budget_sweep: ClassVar[tuple] = (0.5, 0.25, 0.1)  # 2x, 4x and 10x compression
    test_params: ClassVar[dict[str, Any]] = {"rate": 0.5}

    rate: float | None = param(None, type=float, gt=0.0, le=1.0, optional=True)
    target_token: int | None = param(None, type=int, ge=1, optional=True)
    threshold: float | None = param(None, type=float, gt=0.0, lt=1.0, optional=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        given = [n for n in ("rate", "target_token", "threshold") if getattr(self, n) is not None]
        if len(given) > 1:
            raise InvalidParameter(
                f"{self.name}: give one budget, rate, target_token or threshold; got "
                f"{' and '.join(given)}"
            )

    @property
    def effective_rate(self) -> float | None:
        """The kept share asked for (``DEFAULT_RATE`` when no budget is given), or None."""
        if self.target_token is None and self.threshold is None:
            return DEFAULT_RATE if self.rate is None else self.rate
        return None

    def budget(self, model: ModelInfo) -> Budget:
        return PromptBudget(self.effective_rate, self.target_token)

    def target(self, n: int) -> int | None:
        """Context tokens to keep of ``n``; None under a threshold.

        Raises ValueError when ``target_token`` exceeds ``n`` (nothing to compress)."""
        if self.target_token is not None and self.target_token > n:
            raise ValueError(
                f"{self.name}: target_token={self.target_token} is more than the context's "
                f"{n} tokens; ask for at most {n}, or rate=1 to keep the text"
            )
        return None if self.threshold is not None else self.budget(None).keep(0, n)

    @property
    def floor(self) -> float:
        """The threshold budget as a self-information in nats: units with a mean below it
        (predicted with probability >= ``threshold``) are removed."""
        return -math.log(self.threshold)

    def unchanged(self) -> bool:
        """True when the budget keeps every token (``rate=1``)."""
        return self.effective_rate == 1.0

    def plan(self, prompts: list[Read], scorer: Scorer) -> list[Plan]:
        """What to keep of each prompt; all prompts are scored together in batches."""
        raise NotImplementedError
