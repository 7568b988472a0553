"""Long-context tasks for language models, generated offline from a seed.

The haystack is English prose from the Jargon File (Debian package ``jargon-text``) or any
text given; the tasks follow RULER (Hsieh et al., 2024, https://arxiv.org/abs/2404.06654):

* ``niah``: one needle ("The secret number is 4817.") at a chosen depth; recall the number.
* ``multikey``: several needles with different keys ("The special number for apple is ...");
  recall the number of one key, the others are distractors.
* ``vt`` (variable tracking): a value is assigned to a variable and passed along a chain of
  assignments scattered through the text; name the value of the last variable.
* ``docqa`` (question answering over documents): the prose cut into documents, three of
  which hold the biography of a made-up person; name the city where one of them was born,
  the other two are distractors (the multi-document setting of LongLLMLingua's evaluation).

Every sample is a chat prompt (user turn, then the start of the answer) and the expected
answer string; a generation is correct when its first line contains the answer. The context
is kept as documents as well (``Sample.documents``: ``docqa``'s own, or runs of
:data:`DOC_SENTENCES` sentences of the prose), so that a prompt compressor can rank and
rebuild it (:meth:`Sample.with_documents`).
"""

from __future__ import annotations

import gzip
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

JARGON = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
#: names the Jargon File to read instead of the Debian location (``./run`` sets it, to the
#: package extracted into the checkout's ``.cache`` when it is not installed)
JARGON_ENV = "TOKENREDUCE_JARGON"
TASKS = ("niah", "multikey", "vt", "docqa")
_KEYS = ("apple", "river", "violin", "copper", "falcon", "meadow", "lantern", "pepper")
_CITIES = (
    "Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Quebec", "Dublin", "Seville", "Krakow",
    "Cairo", "Perth", "Osaka", "Tallinn", "Bogota", "Vienna", "Dakar",
)  # fmt: skip
_JOBS = ("baker", "pilot", "surgeon", "weaver", "chemist", "sailor", "teacher", "jeweller")
_SYLLABLES = ("ka", "lo", "mi", "ren", "sa", "to", "vel", "da", "ni", "or", "bel", "fi", "ru")
#: sentences of prose per document when a context is cut into documents
DOC_SENTENCES = 5
#: the instruction before the context of every sample
INSTRUCTION = "Read the text and answer the question."


@dataclass(frozen=True)
class Sample:
    """One task instance: ``messages`` for the chat template, the assistant's ``answer_prefix``
    appended after the template, the expected ``answer``, the needle's ``depth``, and the
    context's ``documents`` and the ``question`` the user message is made of."""

    task: str
    messages: list
    answer_prefix: str
    answer: str
    depth: float
    documents: tuple[str, ...] = ()
    question: str = ""

    def is_correct(self, generated: str) -> bool:
        return self.answer in generated.strip().split("\n")[0]

    def with_documents(self, documents: list[str] | tuple[str, ...]) -> Sample:
        """The same sample with its context made of ``documents`` (a compressed context)."""
        return _wrap(self.task, documents, self.question, self.answer_prefix, self.answer,
                     self.depth)  # fmt: skip


def jargon_path() -> Path:
    """The Jargon File: ``$TOKENREDUCE_JARGON`` when set, else the Debian location."""
    return Path(os.environ.get(JARGON_ENV) or JARGON)


def jargon_sentences(path: str | Path | None = None) -> list[str]:
    """Prose sentences of the Jargon File, or of the text file ``path`` (gzip-compressed
    when its name ends in ``.gz``): paragraphs separated by blank lines, tables, headers and
    short lines left out. ``ValueError`` when no paragraph qualifies."""
    given = path is not None
    path = Path(path) if given else jargon_path()
    if not path.is_file():
        hint = (
            "give an existing text file"
            if given
            else "install the Debian package jargon-text (apt-get install jargon-text), set "
            f"${JARGON_ENV} to its jargon.txt.gz, or pass your own prose"
        )
        raise FileNotFoundError(f"{path} not found: {hint}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        text = f.read()
    sentences = []
    for para in re.split(r"\n\s*\n", text):
        if re.search(r"[│├┼┤─═]", para):
            continue
        flat = " ".join(para.split())
        if len(flat) < 200 or sum(c.isalpha() for c in flat) < 0.7 * len(flat):
            continue
        sentences += [s for s in re.split(r"(?<=[.!?])\s+", flat) if 20 <= len(s) <= 400]
    if not sentences:
        raise ValueError(
            f"{path}: no prose found (paragraphs of at least 200 characters, mostly letters, "
            "are needed)"
        )
    return sentences


def _haystack(sentences: list[str], n_tokens: int, tokenizer, rng: random.Random) -> list[str]:
    """Consecutive sentences from a random start, about ``n_tokens`` tokens in all."""
    start = rng.randrange(len(sentences))
    out, total = [], 0
    i = start
    while total < n_tokens:
        s = sentences[i % len(sentences)]
        out.append(s)
        total += len(tokenizer(s, add_special_tokens=False).input_ids) + 1
        i += 1
    return out


def _insert(hay: list[str], items: list[tuple[float, str]]) -> tuple[str, ...]:
    """The prose with the ``(depth, sentence)`` items inserted, cut into documents of
    :data:`DOC_SENTENCES` sentences."""
    hay = list(hay)
    for depth, sentence in sorted(items, reverse=True):
        hay.insert(round(depth * len(hay)), sentence)
    return tuple(" ".join(doc) for doc in _chunks(hay))


def _chunks(sentences: list[str]) -> list[list[str]]:
    step = DOC_SENTENCES
    return [sentences[i : i + step] for i in range(0, len(sentences), step)]


def _wrap(
    task: str, documents: tuple[str, ...] | list[str], question: str, prefix: str, answer: str,
    depth: float,
) -> Sample:  # fmt: skip
    text = " ".join(documents)
    content = f"{INSTRUCTION}\n\n{text}\n\nQuestion: {question}"
    message = [{"role": "user", "content": content}]
    return Sample(task, message, prefix, answer, depth, tuple(documents), question)


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(3)).capitalize()


def _docqa(sentences: list[str], tokenizer, n_tokens: int, depth: float, rng) -> Sample:
    """Documents of a few sentences of prose, about ``n_tokens`` tokens in all; three of them
    hold the biography of a made-up person (one of them at ``depth``, two distractors), and
    the question asks where the one at ``depth`` was born."""
    docs = _chunks(_haystack(sentences, n_tokens, tokenizer, rng))
    at = round(depth * (len(docs) - 1))
    others = rng.sample([d for d in range(len(docs)) if d != at], min(2, len(docs) - 1))
    names: list[str] = []
    while len(names) < 1 + len(others):
        name = _name(rng)
        names += [name] if name not in names else []
    cities = rng.sample(_CITIES, len(names))
    for d, name, city in zip([at, *others], names, cities, strict=True):
        job, year = rng.choice(_JOBS), rng.randrange(1900, 2000)
        bio = f"{name} was born in {city} in {year} and worked as a {job}."
        docs[d].insert(rng.randrange(len(docs[d]) + 1), bio)
    docs = [" ".join(doc) for doc in docs]
    question = f"In which city was {names[0]} born? Answer with the city only."
    return _wrap("docqa", docs, question, f"{names[0]} was born in", cities[0], depth)


def _variable_tracking(hay: list[str], number: str, depth: float, rng) -> Sample:
    """``number`` passed along a chain of three variables, the first at ``depth``."""
    names = ["".join(rng.choice("BCDFGHJKLMNPQRSTVWXZ") for _ in range(3)) for _ in range(3)]
    chain = [f"VAR {names[0]} = {number}."]
    chain += [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:], strict=False)]
    steps = [depth + (1 - depth) * i / len(chain) for i in range(len(chain))]
    docs = _insert(hay, list(zip(steps, chain, strict=True)))
    question = f"What number does VAR {names[-1]} hold? Answer with the number only."
    return _wrap("vt", docs, question, f"VAR {names[-1]} holds", number, depth)


def make_sample(
    task: str, tokenizer, n_tokens: int, depth: float, seed: int, sentences: list[str]
) -> Sample:
    """One sample of ``task`` with a haystack of about ``n_tokens`` tokens.

    Args:
        task: one of ``TASKS``.
        tokenizer: the model's tokenizer (to size the haystack in its tokens).
        n_tokens: haystack length in tokens (the prompt adds a few dozen).
        depth: where the needle goes, 0 (start) to 1 (end); for ``vt`` the first assignment.
        seed: seeds the haystack start, the numbers and the keys.
        sentences: the prose, e.g. :func:`jargon_sentences`.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; available: {', '.join(TASKS)}")
    if not 0 <= depth <= 1:
        raise ValueError(f"depth={depth!r} is invalid; allowed: a number in [0, 1]")
    rng = random.Random(f"{task}:{n_tokens}:{depth}:{seed}")
    if task == "docqa":
        return _docqa(sentences, tokenizer, n_tokens, depth, rng)
    hay = _haystack(sentences, n_tokens, tokenizer, rng)
    number = str(rng.randrange(1000, 10000))
    if task == "niah":
        docs = _insert(hay, [(depth, f"The secret number is {number}.")])
        return _wrap(
            task,
            docs,
            "What is the secret number? Answer with the number only.",
            "The secret number is",
            number,
            depth,
        )
    if task == "multikey":
        keys = rng.sample(_KEYS, 4)
        others = [str(rng.randrange(1000, 10000)) for _ in keys[1:]]
        needles = [(depth, f"The special number for {keys[0]} is {number}.")]
        needles += [
            (rng.random(), f"The special number for {k} is {v}.")
            for k, v in zip(keys[1:], others, strict=True)
        ]
        docs = _insert(hay, needles)
        return _wrap(
            task,
            docs,
            f"What is the special number for {keys[0]}? Answer with the number only.",
            f"The special number for {keys[0]} is",
            number,
            depth,
        )
    return _variable_tracking(hay, number, depth, rng)

__all__ = [
    "DOC_SENTENCES", "INSTRUCTION", "JARGON", "TASKS", "Sample", "jargon_path",
    "jargon_sentences", "make_sample",
]  # fmt: skip
