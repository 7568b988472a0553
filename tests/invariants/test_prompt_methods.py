"""The shared invariants of the prompt-compression methods (kind ``"prompt"``), parametrised
over every registered one and run with a tiny random Llama as the scorer and a byte-level
tokenizer (every byte a token, so a CJK character is three tokens).

Identity at ``rate=1``; the instruction and question are never touched; whole words only;
a batch equals its prompts one by one; the same call gives the same text; the achieved rate
is within 2% of a requested rate or count on a long enough context; and bad input fails
with an error naming it.
"""

from __future__ import annotations

import re

import pytest

from tokenreduce import methods, prompt
from tokenreduce.methods import InvalidParameter
from tokenreduce.prompt.scorer import Scorer

from ..lmutil import byte_tokenizer, tiny_lm

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT_METHODS = [
    n for n in methods.available() if issubclass(methods.get(n), methods.PromptMethod)
]
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
]
QUESTION = "Which word comes after kappa?"
INSTRUCTION = "Answer with one word."


def docs(n: int = 3, words: int = 40, seed: int = 0) -> list[str]:
    """``n`` documents of ``words`` words each, punctuated, with some CJK characters."""
    out = []
    for d in range(n):
        picked = [WORDS[(seed + 7 * d + 3 * i + i * i) % len(WORDS)] for i in range(words)]
        for i in range(5, words, 9):
            picked[i] += "," if i % 2 else "."
        picked[words // 2] = "猫が座った"
        out.append(" ".join(picked).capitalize() + ".")
    return out


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer(tiny_lm("llama", layers=2, vocab_size=300), byte_tokenizer(), batch_size=4)


def build(name: str, **budget) -> methods.Method:
    extra = {"unit": "word"} if name == "selective_context" else {}
    return methods.get(name)(**{**extra, **budget})


def run(name: str, scorer: Scorer, context=None, **budget) -> prompt.Compressed:
    return prompt.compress(
        docs() if context is None else context,
        build(name, **budget),
        question=QUESTION,
        instruction=INSTRUCTION,
        scorer=scorer,
    )


def test_the_prompt_kind_has_methods():
    assert {"selective_context", "llmlingua", "longllmlingua"} <= set(PROMPT_METHODS)


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_rate_one_is_the_identity(name, scorer):
    out = run(name, scorer, rate=1.0)
    assert out.context == docs() and out.order == [0, 1, 2]
    assert out.tokens == out.original_tokens and out.rate == 1.0


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_instruction_and_question_are_kept_whole(name, scorer):
    out = run(name, scorer, rate=0.3)
    assert out.text.startswith(INSTRUCTION + "\n\n") and out.text.endswith("\n\n" + QUESTION)
    assert out.tokens < out.original_tokens


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_only_whole_words_survive_in_order(name, scorer):
    """Every kept word is a word of its document, in the document's order; CJK characters
    (three byte-tokens each) are kept or dropped whole."""
    out = run(name, scorer, rate=0.4)
    for d, text in zip(out.order, out.context, strict=True):
        source = re.findall(r"[^\W\d_]+|[^\w\s]", docs()[d])
        kept = re.findall(r"[^\W\d_]+|[^\w\s]", text)
        assert _is_subsequence_of_units(kept, source), (kept, source)
        text.encode("utf-8").decode("utf-8")  # no byte of a character lost


def _is_subsequence_of_units(kept: list[str], source: list[str]) -> bool:
    # CJK runs may lose characters but each kept character is whole
    expanded = [c for w in source for c in (list(w) if re.match(r"[\u3040-\u9fff]", w) else [w])]
    flat = [c for w in kept for c in (list(w) if re.match(r"[\u3040-\u9fff]", w) else [w])]
    it = iter(expanded)
    return all(any(k == s for s in it) for k in flat)


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_a_batch_equals_its_prompts_one_by_one(name, scorer):
    method = build(name, rate=0.5)
    prompts = [
        prompt.Prompt(docs(n=k, words=20 + 9 * k, seed=k), QUESTION, INSTRUCTION) for k in (1, 2, 3)
    ]
    together = prompt.compress_batch(prompts, method, scorer=scorer)
    alone = [prompt.compress_batch([p], method, scorer=scorer)[0] for p in prompts]
    assert [o.text for o in together] == [o.text for o in alone]


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_the_same_call_gives_the_same_text(name, scorer):
    assert run(name, scorer, rate=0.5).text == run(name, scorer, rate=0.5).text


@pytest.mark.parametrize("name", PROMPT_METHODS)
@pytest.mark.parametrize("rate", [0.5, 0.25, 0.1])
def test_the_achieved_rate_is_within_two_percent(name, rate, scorer):
    out = run(name, scorer, context=docs(n=3, words=120), rate=rate)
    assert abs(out.rate - rate) <= prompt.TOLERANCE, (out.rate, out.note)
    assert out.note == ""


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_a_target_token_count_is_met(name, scorer):
    out = run(name, scorer, context=docs(n=3, words=120), target_token=200)
    assert abs(out.tokens - 200) <= prompt.TOLERANCE * out.original_tokens
    assert out.requested == 200 / out.original_tokens


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_a_threshold_removes_more_as_it_falls(name, scorer):
    """A lower probability threshold removes every unit a higher one removes, and more."""
    high = run(name, scorer, threshold=0.2)
    low = run(name, scorer, threshold=0.001)
    assert high.requested is None and high.note == ""
    assert low.tokens <= high.tokens <= high.original_tokens


@pytest.mark.parametrize("name", PROMPT_METHODS)
@pytest.mark.parametrize("bad", [{"rate": 0.0}, {"rate": 1.5}, {"threshold": 1.0}])
def test_a_budget_out_of_range_names_it(name, bad):
    (key,) = bad
    with pytest.raises(InvalidParameter, match=f"{name}: {key}="):
        build(name, **bad)


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_two_budgets_are_refused(name):
    with pytest.raises(InvalidParameter, match="give one budget"):
        build(name, rate=0.5, target_token=10)


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_bad_prompts_are_refused(name, scorer):
    with pytest.raises(ValueError, match="more than the context's"):
        run(name, scorer, target_token=10_000)
    with pytest.raises(ValueError, match="has no context"):
        run(name, scorer, context=[])
    with pytest.raises(ValueError, match="document 1 of its context is empty"):
        run(name, scorer, context=["some words here", ""])


def test_a_scorer_must_be_a_causal_lm():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, vocab_size=300))  # fmt: skip
    with pytest.raises(TypeError, match="causal language model .* got BertModel"):
        Scorer(bert, byte_tokenizer())


def test_other_kinds_are_refused_by_name(scorer):
    with pytest.raises(InvalidParameter, match="tome is a token-sequence method .* llmlingua"):
        prompt.compress(docs(), "tome:r=2", scorer=scorer)


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_patch_refuses_a_prompt_method_and_says_how_to_run_it(name):
    import tokenreduce

    with pytest.raises(InvalidParameter, match=r"run it with tokenreduce\.prompt\.compress"):
        tokenreduce.patch(tiny_lm("llama", layers=2), name)
