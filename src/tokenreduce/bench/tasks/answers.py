"""What the vision-language tasks that judge answers, not speed, share: ``vqa``'s questions,
prompts and batched greedy answers, without its timing and memory measurements
(``position-bias``, ``hallucination``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..measure import Steps, reduced_model
from . import Column, Plot
from .vqa import VisualQuestionAnswering

#: the mean image tokens the language model ran on (:attr:`Answers.visual_tokens`)
VISUAL_TOKENS = Column("visual_tokens", "visual tokens / image", ".1f", False)


def tokens_plot(y: str, y_label: str) -> Plot:
    """A Pareto plot of the metric ``y`` against the visual tokens per image (fewer is better)."""
    return Plot("visual_tokens", y, "visual tokens per image", y_label, x_higher_is_better=False)


@dataclass
class Answers:
    """Every question's one-word answer, the image tokens the language model ran on and the
    image's tokens (per question), and what a task read per batch (``extra``)."""

    words: list[str] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    per_image: list[int] = field(default_factory=list)
    extra: list[Any] = field(default_factory=list)

    @property
    def visual_tokens(self) -> float:
        """Mean image tokens the language model ran on, per question."""
        return sum(self.kept) / len(self.kept)

    @property
    def visual_share(self) -> float:
        """Their share of the image's tokens."""
        return sum(self.kept) / sum(self.per_image)


class UntimedQuestions(VisualQuestionAnswering):
    """A ``vqa`` task measuring answers only: one progress step per batch, no timed runs, a
    setting without the timing parameters. Subclasses set ``name`` and implement ``run``
    with :meth:`answer_all`."""

    @property
    def setting(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "threads": self.threads,
            "max_new_tokens": self.max_new_tokens,
        }

    def steps(self, config: str) -> int:
        return len(self._batches())

    def answer_all(
        self,
        model: nn.Module,
        config: str,
        step: Steps,
        read: Callable[[nn.Module, Any, list[int]], Any] | None = None,
    ) -> Answers:
        """Answer every question with ``model`` patched by ``config`` (restored after), in
        batches; ``read(reduced, handle, batch)``, called after each batch is answered,
        gathers what else the task wants of it into :attr:`Answers.extra`."""
        out = Answers()
        with reduced_model(model, config) as (reduced, handle):
            for batch in self._batches():
                answer = self._answer(reduced, handle, batch, watch=False)
                out.words += answer["words"]
                out.kept += answer["kept"]
                out.per_image += answer["per_image"]
                if read is not None:
                    out.extra.append(read(reduced, handle, batch))
                step()
        return out


__all__ = ["VISUAL_TOKENS", "Answers", "UntimedQuestions", "tokens_plot"]
