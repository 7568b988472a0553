"""The methods' base module: a parameter range (``Range``) in words, and what it accepts.
(The parameters of every registered method are checked in
``tests/invariants/test_method_kinds.py``.)"""

from __future__ import annotations

import pytest

from tokenreduce.methods.base import Range


@pytest.mark.parametrize(
    ("rng", "words"),
    [
        (Range(int, ge=0), "an integer >= 0"),
        (Range(int, ge=1, odd=True), "an odd integer >= 1"),
        (Range(int, ge=1, optional=True), "None or an integer >= 1"),
        (Range(float, ge=0, lt=1), "a number in [0, 1)"),
        (Range(float, gt=0, le=1), "a number in (0, 1]"),
        (Range(float, ge=-1, le=1), "a number in [-1, 1]"),
        (Range(float, ge=1), "a number >= 1"),
        (Range(bool), "true or false"),
        (Range(str, choices=("avg", "max")), "'avg' or 'max'"),
    ],
)
def test_range_words(rng, words):
    assert rng.describe() == words


def test_range_checks_type_and_bounds():
    assert not Range(int, ge=0).accepts(True) and not Range(int, ge=0).accepts(1.0)
    assert not Range(float, ge=0, lt=1).accepts(1) and Range(float, ge=0, lt=1).accepts(0)
    assert not Range(int, ge=1, odd=True).accepts(4) and Range(int, ge=1, odd=True).accepts(5)
    assert not Range(int, ge=1).accepts(None) and Range(int, ge=1, optional=True).accepts(None)
