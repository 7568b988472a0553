"""WordNet noun synsets, offline: short labelled texts for the text-encoder tasks.

Read from WordNet 3.0's ``data.noun`` as the Debian package ``wordnet-base`` installs it
(``/usr/share/wordnet``), or from the folder ``$TOKENREDUCE_WORDNET`` names (``./run`` sets
it, to the package extracted into the checkout's ``.cache`` when it is not installed).

Each synset gives its lexicographer category (``noun.animal``, ``noun.food``, ...: the file
it was written in, lexnames(5WN)), its words (lemmas, underscores read as spaces), its
definition and its example sentences (the quoted parts of the gloss).

>>> synsets = noun_synsets()
>>> synsets[0].category, synsets[0].lemmas, synsets[0].definition
('noun.Tops', ('entity',), 'that which is perceived or known or inferred to have its own ...')
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

WORDNET = Path("/usr/share/wordnet")
#: names the folder holding ``data.noun`` to read instead of the Debian location
WORDNET_ENV = "TOKENREDUCE_WORDNET"
#: the lexicographer files of nouns (lexnames(5WN)): file number -> category
NOUN_CATEGORIES = dict(enumerate((
    "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute", "noun.body",
    "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food",
    "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity",
    "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
), start=3))  # fmt: skip


@dataclass(frozen=True)
class Synset:
    """One noun synset: its byte ``offset`` in ``data.noun`` (WordNet's id), its
    lexicographer ``category``, its ``lemmas`` (the first is the most frequent sense's word),
    its ``definition`` and its ``examples``."""

    offset: int
    category: str
    lemmas: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]


def wordnet_dir(path: str | Path | None = None) -> Path:
    """The folder holding ``data.noun``: ``path``, else ``$TOKENREDUCE_WORDNET``, else the
    Debian location. ``FileNotFoundError`` saying how to get it when ``data.noun`` is not
    there."""
    folder = Path(path or os.environ.get(WORDNET_ENV) or WORDNET)
    if not (folder / "data.noun").is_file():
        raise FileNotFoundError(
            f"{folder / 'data.noun'} not found: install the Debian package wordnet-base "
            f"(apt-get install wordnet-base), set ${WORDNET_ENV} to the folder holding its "
            "data.noun, or pass that folder (--data)"
        )
    return folder


def parse_line(line: str) -> Synset | None:
    """The synset of one ``data.noun`` line (wndb(5WN)), or None for a licence line."""
    if line.startswith(" "):
        return None
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    offset, filenum, count = int(fields[0]), int(fields[1]), int(fields[3], 16)
    lemmas = tuple(fields[4 + 2 * i].replace("_", " ") for i in range(count))
    definition, _, rest = gloss.strip().partition('; "')
    examples = tuple(re.findall(r'"([^"]+)"', '"' + rest)) if rest else ()
    return Synset(offset, NOUN_CATEGORIES[filenum], lemmas, definition.strip(), examples)


def noun_synsets(path: str | Path | None = None) -> list[Synset]:
    """Every noun synset, in file order (see :func:`wordnet_dir` for where it is read)."""
    return list(_read(wordnet_dir(path) / "data.noun"))


@lru_cache(maxsize=2)
def _read(file: Path) -> tuple[Synset, ...]:
    with open(file, encoding="utf-8", errors="replace") as f:
        parsed = (parse_line(line) for line in f)
        return tuple(s for s in parsed if s is not None)


def sample_by_category(
    synsets: list[Synset], categories: tuple[str, ...], per_category: int, seed: int
) -> list[Synset]:
    """``per_category`` synsets of each category, drawn with ``seed``, in category order.
    ``ValueError`` naming the category when one has fewer."""
    rng = random.Random(f"wordnet:{seed}")
    out: list[Synset] = []
    for category in categories:
        pool = [s for s in synsets if s.category == category]
        if len(pool) < per_category:
            raise ValueError(
                f"WordNet has {len(pool)} synsets of {category}, fewer than the "
                f"{per_category} asked for; known categories: "
                f"{', '.join(sorted(set(NOUN_CATEGORIES.values())))}"
            )
        out += rng.sample(pool, per_category)
    return out


def distinct_words(synsets: list[Synset], count: int, seed: int) -> list[Synset]:
    """``count`` synsets drawn with ``seed`` whose word lists are all different and have at
    least two words, so that each one names its synset (a query of the retrieval task)."""
    rng = random.Random(f"wordnet-words:{seed}")
    pool = [s for s in synsets if len(s.lemmas) >= 2]
    rng.shuffle(pool)
    seen: set[tuple[str, ...]] = set()
    out = []
    for s in pool:
        key = tuple(w.lower() for w in s.lemmas)
        if key not in seen:
            seen.add(key)
            out.append(s)
        if len(out) == count:
            return out
    raise ValueError(f"WordNet has only {len(out)} synsets with distinct word lists, {count} asked")


__all__ = [
    "NOUN_CATEGORIES",
    "WORDNET",
    "WORDNET_ENV",
    "Synset",
    "distinct_words",
    "noun_synsets",
    "parse_line",
    "sample_by_category",
    "wordnet_dir",
]
