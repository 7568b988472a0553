"""Words, phrases and sentences of a text, and the tokens that spell them.

Prompt compression removes whole words: a token is never dropped without the rest of its
word, so a word is never split and a multi-byte character (a CJK character that a byte-level
tokenizer spells with two or three tokens) is never cut. Everything here is vectorised over
the characters and tokens of a text (numpy), so long prompts cost no Python loop per token.

Words: a run of letters, digits and ``_`` (apostrophes inside a word join it: ``don't``), a
single CJK character (Han, kana: these scripts write no spaces, so each character is a word),
or a single other symbol. Whitespace belongs to the word that follows it.

A *group* is the shortest run of tokens that covers whole words: usually one word, several
when a token spans a word boundary (``".\\n"``). Groups are what compression keeps or drops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Han, CJK punctuation, kana, Hangul compatibility jamo excluded (Korean writes spaces),
# CJK compatibility ideographs and half/full-width forms.
_CJK_RANGES = (
    (0x3000, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0xFF00, 0xFFEF),
    (0x20000, 0x2FA1F),
)  # fmt: skip
_SENTENCE_END = set(".!?。！？")
_PHRASE_END = _SENTENCE_END | set(",;:，；：、")
#: the unit levels a method may keep or drop whole
LEVELS = ("word", "phrase", "sentence")


def _codes(text: str) -> np.ndarray:
    """The Unicode code points of ``text``, (n_chars,) uint32."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def _chars(text: str) -> tuple[np.ndarray, np.ndarray]:
    """The characters of ``text`` with one space appended (a sentinel past the end), and
    which of them are whitespace; both (n_chars + 1,)."""
    chars = np.array([*text, " "])
    return chars, np.char.isspace(chars)


def word_ids(text: str) -> np.ndarray:
    """The word each character belongs to, (n_chars,) int64; whitespace takes the id of the
    next word (len(words) after the last one)."""
    return _word_ids(text, *_chars(text))


def _word_ids(text: str, chars: np.ndarray, space: np.ndarray) -> np.ndarray:
    if not text:
        return np.zeros(0, dtype=np.int64)
    chars, space = chars[:-1], space[:-1]
    codes = _codes(text)
    wordy = (np.char.isalnum(chars) | (chars == "_")) & ~space
    cjk = np.zeros(len(codes), dtype=bool)
    for lo, hi in _CJK_RANGES:
        cjk |= (codes >= lo) & (codes <= hi)
    # an apostrophe between two word characters joins them
    apostrophe = np.isin(chars, ["'", "\u2019"])
    inner = np.zeros_like(apostrophe)
    inner[1:-1] = apostrophe[1:-1] & wordy[:-2] & wordy[2:]
    joined = (wordy | inner) & ~cjk
    prev_joined = np.concatenate([[False], joined[:-1]])
    starts = ~space & ~(joined & prev_joined)
    ids = np.cumsum(starts) - 1
    # whitespace: the id of the next word
    nxt = np.where(starts, np.arange(len(text)), len(text))
    nxt = np.minimum.accumulate(nxt[::-1])[::-1]
    n_words = int(starts.sum())
    following = np.append(ids, n_words)[nxt]
    return np.where(space, following, ids)


@dataclass(frozen=True)
class Groups:
    """A tokenised text cut into groups of whole words.

    ``of_token`` (n_tokens,): each token's group; ``sizes`` (n_groups,): tokens per group;
    ``char_end`` (n_groups,): the character offset where each group's text ends (a group's
    text starts where the previous one's ends, whitespace included); ``ends`` (n_groups,):
    1 where a group closes a phrase, 2 where it closes a sentence, else 0.
    """

    of_token: np.ndarray
    sizes: np.ndarray
    char_end: np.ndarray
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.sizes)

    def units(self, level: str) -> np.ndarray:
        """The unit (word, phrase or sentence) each group belongs to, (n_groups,) int64."""
        if level not in LEVELS:
            raise ValueError(f"unit level {level!r} is not one of {', '.join(LEVELS)}")
        if level == "word":
            return np.arange(len(self.sizes))
        closes = self.ends >= (2 if level == "sentence" else 1)
        return np.concatenate([[0], np.cumsum(closes[:-1])]).astype(np.int64)


def groups(text: str, offsets: np.ndarray) -> Groups:
    """Cut the tokens of ``text`` into groups of whole words.

    ``offsets`` (n_tokens, 2) are the tokens' character spans (a fast tokenizer's
    ``offset_mapping``, special tokens excluded). Tokens that only spell whitespace join the
    next word's group.
    """
    n = len(offsets)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Groups(empty, empty, empty, empty)
    chars, space = _chars(text)
    ids = _word_ids(text, chars, space)
    ids = np.append(ids, ids[-1] + 1 if len(ids) else 0)  # a virtual word past the end
    start, end = offsets[:, 0].astype(np.int64), offsets[:, 1].astype(np.int64)
    first = ids[start]
    last = np.where(end > start, ids[np.maximum(end - 1, 0)], first)
    space_only = _nonspace_between(space, start, end) == 0
    last = np.where(space_only, first, np.maximum(first, last))
    seen = np.maximum.accumulate(last)
    new = np.ones(n, dtype=bool)
    new[1:] = first[1:] > seen[:-1]
    of_token = np.cumsum(new) - 1
    sizes = np.bincount(of_token)
    char_end = np.maximum.reduceat(end, np.flatnonzero(new))
    return Groups(of_token, sizes, char_end, _closings(chars, space, char_end))


def _nonspace_between(space: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """How many non-whitespace characters each span ``[start, end)`` holds (``space``: the
    whitespace mask of :func:`_chars`)."""
    counts = np.concatenate([[0], np.cumsum(~space)])
    return counts[end] - counts[start]


def _closings(chars: np.ndarray, space: np.ndarray, char_end: np.ndarray) -> np.ndarray:
    """For each group ending at ``char_end``: 2 if its last non-space character ends a
    sentence or a line follows, 1 if it ends a phrase, else 0 (``chars``, ``space``: of
    :func:`_chars`)."""
    if not len(char_end):
        return np.zeros(0, dtype=np.int64)
    idx = np.arange(len(chars))
    last_nonspace = np.maximum.accumulate(np.where(space, -1, idx))
    tail = chars[np.maximum(last_nonspace[char_end - 1], 0)]
    newline_next = chars[np.minimum(char_end, len(chars) - 1)] == "\n"
    sentence = np.isin(tail, list(_SENTENCE_END)) | newline_next
    phrase = np.isin(tail, list(_PHRASE_END))
    return np.where(sentence, 2, np.where(phrase, 1, 0))


def render(text: str, grouped: Groups, keep: np.ndarray) -> str:
    """The text of the kept groups: ``keep`` (n_groups,) bool. Each kept group brings the
    whitespace before it; where removed words took the only whitespace between two kept
    words (``"zeta 猫が"`` without ``" 猫"``), one space is put back. The result has no
    leading or trailing whitespace."""
    if len(keep) != len(grouped):
        raise ValueError(f"keep has {len(keep)} entries for {len(grouped)} groups")
    if not len(keep):
        return ""
    keep = np.asarray(keep, dtype=bool)
    codes = _codes(text)
    starts = np.concatenate([[0], grouped.char_end[:-1]])
    lengths = grouped.char_end - starts
    mask = np.concatenate([np.repeat(keep, lengths), np.full(len(codes) - lengths.sum(), keep[-1])])
    kept = codes[mask]
    where = np.cumsum(np.where(keep, lengths, 0)) - np.where(keep, lengths, 0)
    gaps = _lost_spaces(text, starts, keep)
    kept = np.insert(kept, where[gaps], ord(" "))
    return kept.astype(np.uint32).tobytes().decode("utf-32-le").strip()


def _lost_spaces(text: str, starts: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Kept groups that need a space put back before them, (G,) bool: a group that starts
    with a word character, after removed groups that held whitespace, where the kept text
    before it does not end in whitespace."""
    chars, space = _chars(text)
    counts = np.concatenate([[0], np.cumsum(space)])
    ends = np.append(starts[1:], len(text))
    has_space = counts[ends] > counts[starts]
    idx = np.arange(len(keep))
    prev_kept = np.maximum.accumulate(np.where(keep, idx, -1))
    prev_kept = np.concatenate([[-1], prev_kept[:-1]])
    removed_space = np.cumsum(has_space & ~keep)
    before = np.where(prev_kept >= 0, removed_space[np.maximum(prev_kept, 0)], 0)
    run_space = (removed_space - before - (has_space & ~keep)) > 0
    prev_end = np.where(prev_kept >= 0, ends[np.maximum(prev_kept, 0)] - 1, 0)
    first = chars[np.minimum(starts, len(text))]
    return (
        keep
        & (prev_kept >= 0)
        & (prev_kept < idx - 1)
        & run_space
        & np.char.isalnum(first)
        & ~space[prev_end]
    )
