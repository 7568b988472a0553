"""Long-context task generation: seeded, needle in place, answer checkable."""

from __future__ import annotations

import pytest

from tokenreduce.lmtasks import JARGON_ENV, TASKS, jargon_sentences, make_sample


class _Tokens:
    """A whitespace tokenizer with the call signature the generator uses."""

    def __call__(self, text, add_special_tokens=False):
        return type("Enc", (), {"input_ids": text.split()})()


PROSE = [f"Sentence number {i} talks about the weather and the roads today." for i in range(300)]


@pytest.mark.parametrize("task", TASKS)
def test_samples_are_seeded_and_hold_their_answer(task):
    a = make_sample(task, _Tokens(), 400, 0.5, seed=3, sentences=PROSE)
    b = make_sample(task, _Tokens(), 400, 0.5, seed=3, sentences=PROSE)
    c = make_sample(task, _Tokens(), 400, 0.5, seed=4, sentences=PROSE)
    assert a == b and a.messages != c.messages
    text = a.messages[0]["content"]
    assert a.answer in text and len(text.split()) >= 350
    assert a.is_correct(f" {a.answer}.") and not a.is_correct(" 12.")


def test_needle_depth_is_respected():
    for depth in (0.0, 0.5, 1.0):
        s = make_sample("niah", _Tokens(), 600, depth, seed=0, sentences=PROSE)
        text = s.messages[0]["content"]
        where = text.index("The secret number is") / len(text)
        assert abs(where - depth) < 0.1


def test_variable_chain_is_in_order():
    s = make_sample("vt", _Tokens(), 400, 0.2, seed=1, sentences=PROSE)
    text = s.messages[0]["content"]
    first = text.index(f"= {s.answer}.")
    assert all(text.index(m) > first for m in ["= VAR"])


def test_bad_task_and_depth():
    with pytest.raises(ValueError, match="unknown task 'qa'"):
        make_sample("qa", _Tokens(), 100, 0.5, 0, PROSE)
    with pytest.raises(ValueError, match=r"depth=1.5 is invalid"):
        make_sample("niah", _Tokens(), 100, 1.5, 0, PROSE)


def test_prose_comes_from_the_environment_when_set(tmp_path, monkeypatch):
    para = " ".join(f"The harbour master counted {i} boats before noon today." for i in range(6))
    (tmp_path / "prose.txt").write_text(f"{para}\n\n{para}\n")
    monkeypatch.setenv(JARGON_ENV, str(tmp_path / "prose.txt"))
    sentences = jargon_sentences()
    assert len(sentences) == 12 and sentences[0].startswith("The harbour master counted 0")
    monkeypatch.setenv(JARGON_ENV, str(tmp_path / "missing.txt.gz"))
    with pytest.raises(FileNotFoundError, match=f"missing.txt.gz not found.*{JARGON_ENV}"):
        jargon_sentences()


def test_text_without_prose_is_refused(tmp_path):
    (tmp_path / "list.txt").write_text("one\ntwo\n\nthree\n")
    with pytest.raises(ValueError, match="list.txt: no prose found"):
        jargon_sentences(tmp_path / "list.txt")


@pytest.mark.parametrize("task", TASKS)
def test_the_context_is_kept_as_documents(task):
    s = make_sample(task, _Tokens(), 400, 0.3, seed=2, sentences=PROSE)
    assert len(s.documents) > 3 and " ".join(s.documents) in s.messages[0]["content"]
    assert s.messages[0]["content"].endswith(f"Question: {s.question}")
    shorter = s.with_documents(s.documents[:2])
    assert shorter.messages[0]["content"].count("Sentence number") < s.messages[0][
        "content"
    ].count("Sentence number")
    assert (shorter.answer, shorter.question) == (s.answer, s.question)


def test_docqa_asks_about_one_person_among_many():
    s = make_sample("docqa", _Tokens(), 600, 1.0, seed=0, sentences=PROSE)
    name = s.question.removeprefix("In which city was ").split(" born")[0]
    (doc,) = [d for d in s.documents if f"{name} was born in {s.answer}" in d]
    assert doc == s.documents[-1]  # depth 1: the last document
    assert s.answer_prefix == f"{name} was born in"
    assert sum(" was born in " in d for d in s.documents) == 3  # two distractors
