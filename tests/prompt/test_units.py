"""Words, groups and rendering (``tokenreduce.prompt.units``): no word or character is ever
split, whatever the tokenizer does at its boundaries."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenreduce.prompt import units

from ..lmutil import byte_tokenizer

TOKENIZER = byte_tokenizer()  # every byte a token: a CJK character is three


def grouped(text: str) -> units.Groups:
    enc = TOKENIZER(text, add_special_tokens=False, return_offsets_mapping=True)
    return units.groups(text, np.asarray(enc["offset_mapping"]).reshape(-1, 2))


def test_words_of_a_mixed_text():
    text = "Don't stop, 猫が座った! ok_2"
    ids = units.word_ids(text)
    words = {}
    for ch, i in zip(text, ids, strict=True):
        if not ch.isspace():
            words.setdefault(int(i), []).append(ch)
    assert ["".join(w) for w in words.values()] == [
        "Don't", "stop", ",", "猫", "が", "座", "っ", "た", "!", "ok_2",
    ]  # fmt: skip
    assert ids[5] == ids[6]  # the space before "stop" goes with it


TEXTS = st.text(
    alphabet=st.sampled_from(list("ab cd.,'\n") + ["猫", "が", "é", "😀"]), min_size=1, max_size=40
)


@settings(max_examples=200, deadline=None)
@given(TEXTS)
def test_a_group_never_splits_a_word(text):
    g = grouped(text)
    ids = units.word_ids(text)
    starts = np.concatenate([[0], g.char_end[:-1]])
    for a, b in zip(starts, g.char_end, strict=True):
        inside = {int(i) for i, ch in zip(ids[a:b], text[a:b], strict=True) if not ch.isspace()}
        after = {int(i) for i, ch in zip(ids[b:], text[b:], strict=True) if not ch.isspace()}
        assert not inside & after, (text, a, b)


@settings(max_examples=200, deadline=None)
@given(TEXTS, st.randoms(use_true_random=False))
def test_rendering_keeps_whole_characters_and_words(text, rnd):
    g = grouped(text)
    assert units.render(text, g, np.ones(len(g), dtype=bool)) == text.strip()
    keep = np.array([rnd.random() < 0.5 for _ in range(len(g))], dtype=bool)
    out = units.render(text, g, keep)
    out.encode("utf-8")  # whole characters only
    kept = [text[a:b].strip() for a, b, k in zip(np.r_[0, g.char_end[:-1]], g.char_end, keep,
                                                 strict=True) if k]  # fmt: skip
    assert "".join(out.split()) == "".join("".join(kept).split())


def test_a_space_is_put_back_where_a_removed_word_took_it():
    text = "zeta 猫が lambda, mu"
    g = grouped(text)
    words = [text[a:b] for a, b in zip(np.r_[0, g.char_end[:-1]], g.char_end, strict=True)]
    assert words == ["zeta", " 猫", "が", " lambda", ",", " mu"]
    assert units.render(text, g, np.array([1, 0, 1, 0, 1, 1], bool)) == "zeta が, mu"


def test_units_of_each_level():
    text = "One two, three. Four five"
    g = grouped(text)
    assert list(g.units("word")) == list(range(len(g)))
    assert list(g.units("phrase")) == [0, 0, 0, 1, 1, 2, 2]
    assert list(g.units("sentence")) == [0, 0, 0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="not one of word, phrase, sentence"):
        g.units("paragraph")
