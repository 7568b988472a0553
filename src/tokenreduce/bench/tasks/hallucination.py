"""Object hallucination under visual-token reduction: ``hallucination``.

Does removing visual tokens make a vision-language model see objects that are not there, or
fewer? POPE (Li et al., *Evaluating Object Hallucination in Large Vision-Language Models*,
EMNLP 2023) asks yes/no presence questions ("is there a red circle?") about objects an image
shows and about absent ones, chosen three ways (:func:`tokenreduce.data.vqa.pope_vqa`, on the
held-out test scenes): ``random`` (any absent object), ``popular`` (the absent objects most
frequent in the data set; the scenes draw objects uniformly, so this split differs from
``random`` only by chance) and ``adversarial`` (absent objects like a present one: the same
shape in another colour, then the same colour in another shape). Each split is the positives
plus its own negatives, balanced per image.

For every configuration and split: **accuracy**, **precision**, **recall** (the positives are
shared, so recall is one figure), **F1**, the **yes-rate** and the **false-yes rate** (the
share of absent objects answered "yes": the hallucination rate); an answer other than yes or
no counts as "no", as in POPE, and their share is recorded. Changes are against the full
model, whose own figures are the reference: a model weak at presence questions (llava-shapes'
model card) starts near chance, and a reduction can lower its false-yes rate simply by
answering "no" more often, which the yes-rate and recall show.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..configs import BASELINE, label
from ..measure import Steps, check_ints
from . import Column, Metrics, Options, register
from .answers import VISUAL_TOKENS, UntimedQuestions, tokens_plot
from .vqa import _digest

#: POPE's three ways to choose absent objects (:data:`tokenreduce.data.vqa.NEGATIVE_SAMPLING`)
SAMPLINGS = ("random", "popular", "adversarial")
#: scenes asked about by default and with ``--quick``
DEFAULT_IMAGES, QUICK_IMAGES = 40, 4
#: present objects asked about per image (and as many absent ones per split)
PER_IMAGE = 2


def yes_no_metrics(said: list[str], truth: list[str]) -> dict[str, float | None]:
    """POPE's figures (%) of answers ``said`` against ``truth`` (``"yes"`` / ``"no"``):
    ``accuracy``, ``precision``, ``recall``, ``f1``, ``yes_rate`` (share answered yes),
    ``false_yes`` (share of the "no" questions answered yes) and ``unclear`` (share answered
    neither, counted as no). A figure with nothing to divide by is None (precision when no
    question was answered yes; F1 is then 0 if there were present objects). Raises ``ValueError`` for lists of different lengths, an empty
    list, or a truth other than yes / no."""
    if len(said) != len(truth) or not said:
        raise ValueError(f"need one truth per answer, at least one; got {len(said)}, {len(truth)}")
    if set(truth) - {"yes", "no"}:
        raise ValueError(f"truth must be 'yes' or 'no'; got {sorted(set(truth) - {'yes', 'no'})}")
    pairs = list(zip((s == "yes" for s in said), (t == "yes" for t in truth), strict=True))
    tp = sum(s and t for s, t in pairs)
    fp = sum(s and not t for s, t in pairs)
    fn = sum(t and not s for s, t in pairs)
    tn = len(pairs) - tp - fp - fn

    def pct(part: int, whole: int) -> float | None:
        return 100.0 * part / whole if whole else None

    return {
        "accuracy": pct(tp + tn, len(pairs)),
        "precision": pct(tp, tp + fp),
        "recall": pct(tp, tp + fn),
        "f1": pct(2 * tp, 2 * tp + fp + fn),  # the harmonic mean of the two, 0 when tp is
        "yes_rate": pct(tp + fp, len(pairs)),
        "false_yes": pct(fp, fp + tn),
        "unclear": pct(sum(s not in ("yes", "no") for s in said), len(said)),
    }


def split_metrics(words: list[str], answers: tuple, qtypes: tuple) -> dict[str, dict]:
    """:func:`yes_no_metrics` of each split of :data:`SAMPLINGS`: the ``positive`` questions
    and that split's negatives (``qtypes`` names each question's)."""
    out = {}
    for split in SAMPLINGS:
        chosen = [i for i, t in enumerate(qtypes) if t in ("positive", split)]
        out[split] = yes_no_metrics([words[i] for i in chosen], [answers[i] for i in chosen])
    return out


def _split_columns() -> tuple[Column, ...]:
    figures = (
        ("false_yes", "false-yes %", False),
        ("f1", "F1", True),
        ("precision", "precision %", True),
        ("accuracy", "accuracy %", True),
        ("yes_rate", "yes %", None),
    )
    return tuple(
        Column(f"{split}_{key}", f"{split} {header}", ".1f", better)
        for split in SAMPLINGS
        for key, header, better in figures
    )


@register
class Hallucination(UntimedQuestions):
    """POPE-style hallucination figures of a vision-language model, per negative sampling
    (module docstring).

    Args:
        processor: the model's processor (images and chat prompts; its tokenizer pads left).
        questions: a :class:`tokenreduce.data.vqa.VQASplit` from
            :func:`~tokenreduce.data.vqa.pope_vqa`: answers yes / no, question types
            ``positive`` and the samplings of :data:`SAMPLINGS`.
        batch_size, threads, max_new_tokens: as :class:`~.vqa.VisualQuestionAnswering`.

    Raises ``ValueError`` when a question type or answer is not POPE's.
    """

    name = "hallucination"
    description = (
        "object hallucination: POPE-style yes/no presence questions with random, popular and "
        "adversarial absent objects: false-yes rate, precision, recall and F1 "
        "(vision-language models)"
    )
    splits = ()
    columns = (
        Column("recall", "recall % (shared)", ".1f", True),
        *_split_columns(),
        Column("unclear", "neither yes nor no %", ".1f", False),
        VISUAL_TOKENS,
    )
    plots = (
        tokens_plot("adversarial_f1", "F1 on the adversarial split (%)"),
        tokens_plot("random_f1", "F1 on the random split (%)"),
    )

    def __init__(
        self,
        processor: Any,
        questions: Any,
        *,
        batch_size: int = 8,
        threads: int = 1,
        max_new_tokens: int = 4,
    ) -> None:
        odd_types = set(questions.qtypes) - {"positive", *SAMPLINGS}
        odd_answers = set(questions.answers) - {"yes", "no"}
        if odd_types or odd_answers:
            raise ValueError(
                f"task 'hallucination' needs POPE questions (types positive, "
                f"{', '.join(SAMPLINGS)}; answers yes, no); got types {sorted(odd_types)} and "
                f"answers {sorted(odd_answers)} besides"
            )
        super().__init__(
            processor, questions, batch_size=batch_size, threads=threads,
            max_new_tokens=max_new_tokens,
        )  # fmt: skip
        self._data_id = f"hallucination:{questions.name}:n={len(questions)}#{_digest(questions)}"

    @classmethod
    def from_options(cls, loaded, options: Options) -> Hallucination:
        """POPE questions about the first ``options.limit`` test scenes (default 40, about
        290 questions; ``quick``: 4), at most 2 present objects per image and as many absent
        ones per sampling; batches of 8 (``options.batch_size``)."""
        from ...data.vqa import pope_vqa

        images = options.limit or (QUICK_IMAGES if options.quick else DEFAULT_IMAGES)
        check_ints(("limit", images, 1))
        task = cls(
            loaded.processor, pope_vqa(images, per_image=PER_IMAGE),
            batch_size=options.batch_size or 8, threads=options.threads,
        )  # fmt: skip
        task.check_model(loaded.model)
        return task

    def run(self, model: nn.Module, config: str, baseline: Metrics | None, step: Steps) -> Metrics:
        answers = self.answer_all(model, config, step)
        q = self.questions
        per_split = split_metrics(answers.words, q.answers, q.qtypes)
        flat = {f"{s}_{k}": v for s, figures in per_split.items() for k, v in figures.items()}
        base = baseline or flat  # the baseline is its own reference
        changes = {
            f"{s}_false_yes_delta": _delta(flat[f"{s}_false_yes"], base.get(f"{s}_false_yes"))
            for s in SAMPLINGS
        }
        everything = yes_no_metrics(answers.words, list(q.answers))
        return {
            **flat,
            **changes,
            "recall": per_split[SAMPLINGS[0]]["recall"],
            "unclear": everything["unclear"],
            "accuracy": everything["accuracy"],
            "pope": per_split,
            "visual_tokens": answers.visual_tokens,
            "visual_share": answers.visual_share,
            "questions": len(answers.words),
            "outputs": answers.words,
        }

    @classmethod
    def summary(cls, rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """The full model's own figures per split, and per split how many configurations
        raise or lower its false-yes rate (with their recall, since answering "no" more often
        lowers both)."""
        base = dict(rows).get(BASELINE)
        if base is None:
            return []
        own = "; ".join(
            f"{s}: accuracy {_pct(base, s, 'accuracy')}, F1 {_pct(base, s, 'f1')}, "
            f"false-yes {_pct(base, s, 'false_yes')}"
            for s in SAMPLINGS
        )
        lines = [f"full model (chance: 50% accuracy): recall {_fmt(base.get('recall'))}; {own}"]
        reduced = [(c, m) for c, m in rows if c != BASELINE and "recall" in m]
        for split in SAMPLINGS if reduced else ():
            lines.append(_direction(reduced, base, split))
        return lines


def _delta(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else value - reference


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _pct(metrics: dict[str, Any], split: str, key: str) -> str:
    return _fmt(metrics.get(f"{split}_{key}"))


def _direction(reduced: list[tuple[str, dict[str, Any]]], base: dict[str, Any], split: str) -> str:
    """One line: how many of the ``reduced`` rows raise / lower ``split``'s false-yes rate
    against ``base``, and the lowest one (of those, the highest recall) with its recall."""
    key = f"{split}_false_yes"
    rated = [(c, m) for c, m in reduced if m.get(key) is not None]
    if not rated or base.get(key) is None:
        return f"{split}: no false-yes rate to compare"
    up = sum(m[key] > base[key] for _, m in rated)
    down = sum(m[key] < base[key] for _, m in rated)
    # among equal rates, the one that still finds the most present objects
    c, m = min(rated, key=lambda cm: (cm[1][key], -(cm[1].get("recall") or 0.0)))
    return (
        f"{split}: {up} of {len(rated)} configurations raise the false-yes rate "
        f"({base[key]:.1f}% unreduced), {down} lower it; lowest: {label(c)}, {m[key]:.1f}% "
        f"with recall {_fmt(m.get('recall'))} (unreduced {_fmt(base.get('recall'))})"
    )


__all__ = ["SAMPLINGS", "Hallucination", "split_metrics", "yes_no_metrics"]
