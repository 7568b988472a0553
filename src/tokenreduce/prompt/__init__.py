"""Prompt compression: shorten a prompt's text before the model reads it.

>>> from tokenreduce import prompt
>>> scorer = prompt.load_scorer()                                    # doctest: +SKIP
>>> out = prompt.compress(docs, "longllmlingua:rate=0.25", question=q, scorer=scorer)
... # doctest: +SKIP
>>> out.text, out.rate, out.seconds                                  # doctest: +SKIP

A prompt is an optional instruction, a context of one or more documents, and an optional
question; only the context is compressed. The methods (``selective_context``,
``llmlingua``, ``longllmlingua``; kind ``"prompt"``, the same registry and spec strings as
every method) keep whole words: no word and no multi-byte character is ever split. Any
Hugging Face causal LM is the scorer (:class:`~tokenreduce.prompt.scorer.Scorer`); SmolLM2
offline by default. Several prompts given together are scored in shared padded batches
(:func:`compress_batch`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..methods.base import InvalidParameter, Method, build, describe, kinds_text
from ..methods.prompt_base import Plan, PromptMethod, Read
from . import units
from .scorer import Scorer, Text, check_causal_lm

#: the achieved rate may miss the requested one by this much before :attr:`Compressed.note`
#: says why
TOLERANCE = 0.02


@dataclass(frozen=True)
class Prompt:
    """A prompt to compress: ``context`` (one document or a sequence of them), an optional
    ``question`` (placed after the context) and ``instruction`` (placed before it)."""

    context: str | Sequence[str]
    question: str = ""
    instruction: str = ""

    @property
    def docs(self) -> list[str]:
        return [self.context] if isinstance(self.context, str) else list(self.context)


@dataclass(frozen=True)
class Compressed:
    """One compressed prompt.

    ``text``: instruction, compressed context and question joined by blank lines, what the
    model reads; ``context``: the compressed documents in their new order; ``order``: the
    index of each in the original context (dropped documents are absent). ``tokens`` and
    ``original_tokens`` count the context (each document tokenised on its own by the
    scorer's tokenizer, so the sum over documents); ``requested`` is the share of context
    tokens asked for (None under a threshold); ``seconds`` the wall time of the call that
    compressed it (shared by a batch); ``note`` says why :attr:`rate` misses ``requested`` by
    more than :data:`TOLERANCE`, and is empty otherwise.
    """

    text: str
    context: list[str]
    order: list[int]
    method: str
    original_tokens: int
    tokens: int
    requested: float | None
    seconds: float
    note: str = ""

    @property
    def rate(self) -> float:
        """The share of context tokens kept (LLMLingua's rate): tokens / original_tokens."""
        return self.tokens / self.original_tokens

    @property
    def ratio(self) -> float:
        """The compression ratio, original_tokens / tokens ("4x")."""
        return self.original_tokens / max(self.tokens, 1)


def load_scorer(name: str = "smollm2", batch_size: int = 8, **kwargs) -> Scorer:
    """The offline causal LM ``name`` (a :mod:`tokenreduce.assets` language model) as a
    scorer; any other is ``Scorer(AutoModelForCausalLM.from_pretrained(...), tokenizer)``."""
    from .. import assets

    model, tokenizer = assets.load(name, **kwargs)
    return Scorer(model, tokenizer, batch_size=batch_size)


def compress(
    context: str | Sequence[str],
    method: Method | str = "llmlingua",
    *,
    question: str = "",
    instruction: str = "",
    scorer: Scorer | None = None,
) -> Compressed:
    """Compress one prompt's ``context`` with ``method`` (a spec such as
    ``"llmlingua:rate=0.25"`` or a method instance); see :func:`compress_batch`."""
    (out,) = compress_batch([Prompt(context, question, instruction)], method, scorer=scorer)
    return out


def compress_batch(
    prompts: Sequence[Prompt], method: Method | str = "llmlingua", *, scorer: Scorer | None = None
) -> list[Compressed]:
    """Compress several prompts, scored together in padded batches.

    Args:
        prompts: the prompts.
        method: a prompt-compression method or its spec.
        scorer: the causal LM that scores tokens; None loads SmolLM2 (:func:`load_scorer`).

    Returns:
        One :class:`Compressed` per prompt, in order.

    Raises:
        InvalidParameter: ``method`` is not a prompt-compression method, or its budget is
            out of range.
        ValueError: a prompt has no context or an empty document, or ``target_token`` is more
            than a context's tokens.
        TypeError: ``scorer`` is not a :class:`Scorer`.
    """
    method = _prompt_method(method)
    if scorer is None:
        scorer = load_scorer()
    if not isinstance(scorer, Scorer):
        raise TypeError(f"scorer must be a tokenreduce.prompt.Scorer; got {type(scorer).__name__}")
    start = time.perf_counter()
    reads = [_read(p, i, method, scorer) for i, p in enumerate(prompts)]
    if method.unchanged():
        plans = [Plan(list(range(len(r.docs))), [None] * len(r.docs)) for r in reads]
    else:
        plans = method.plan(reads, scorer)
    texts = [_render(r, plan) for r, plan in zip(reads, plans, strict=True)]
    seconds = time.perf_counter() - start
    spec = describe(method)
    return [
        _result(p, r, plan, docs, spec, seconds, scorer)
        for p, r, plan, docs in zip(prompts, reads, plans, texts, strict=True)
    ]


def _prompt_method(method: Method | str) -> PromptMethod:
    method = build(method)
    if not isinstance(method, PromptMethod):
        raise InvalidParameter(
            f"{method.name} is a {method.kind_words} method (kind {method.kind!r}); prompt "
            f"compression takes {kinds_text((PromptMethod,))}"
        )
    return method


def _read(prompt: Prompt, index: int, method: PromptMethod, scorer: Scorer) -> Read:
    docs = prompt.docs
    if not docs:
        raise ValueError(f"prompt {index} has no context to compress")
    texts: list[Text] = []
    for d, doc in enumerate(docs):
        text = scorer.tokenize(doc)
        if not len(text):
            raise ValueError(f"prompt {index}: document {d} of its context is empty")
        texts.append(text)
    total = sum(len(t) for t in texts)
    return Read(
        texts,
        scorer.tokenize(prompt.question) if prompt.question.strip() else None,
        scorer.tokenize(prompt.instruction) if prompt.instruction.strip() else None,
        method.target(total),
    )


def _render(read: Read, plan: Plan) -> list[str]:
    """The compressed documents of ``plan``, in its order."""
    return [
        read.docs[d].text
        if keep is None
        else units.render(read.docs[d].text, read.docs[d].groups, keep)
        for d, keep in zip(plan.order, plan.keep, strict=True)
    ]


def _result(
    prompt: Prompt, read: Read, plan: Plan, docs: list[str], spec: str, seconds: float, scorer
) -> Compressed:
    original = int(read.sizes.sum())
    tokens = sum(scorer.count(d) for d in docs)
    requested = None if read.target is None else read.target / original
    parts = [prompt.instruction.strip(), *docs, prompt.question.strip()]
    note = ""
    if requested is not None and abs(tokens / original - requested) > TOLERANCE:
        note = (
            f"the context has {original} tokens; keeping whole words (and, for coarser units, "
            f"whole phrases or sentences) the nearest reachable count was {tokens}, not "
            f"{read.target}"
        )
    text = "\n\n".join(p for p in parts if p)
    return Compressed(text, docs, plan.order, spec, original, tokens, requested, seconds, note)


__all__ = [
    "Compressed", "Prompt", "Scorer", "check_causal_lm", "compress", "compress_batch",
    "load_scorer",
]  # fmt: skip
