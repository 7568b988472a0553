"""The scorer (``tokenreduce.prompt.scorer``): padded batches score like single texts, and a
stream that keeps part of a segment scores the next one as if the kept text were all there
was."""

from __future__ import annotations

import pytest
import torch

from tokenreduce.prompt.scorer import Scorer, Stream

from ..lmutil import byte_tokenizer, tiny_lm

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer(tiny_lm("llama", layers=2, vocab_size=300), byte_tokenizer(), batch_size=3)


def ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 250, (n,), generator=torch.Generator().manual_seed(seed))


def test_a_padded_batch_scores_like_each_text_alone(scorer):
    texts = [ids(n, s) for s, n in enumerate((30, 7, 19, 12))]
    prefixes = [None, ids(5, 9), None, ids(3, 8)]
    together = scorer.self_information(texts, prefixes)
    for t, p, got in zip(texts, prefixes, together, strict=True):
        (alone,) = scorer.self_information([t], [p])
        assert got.shape == t.shape
        torch.testing.assert_close(got, alone, rtol=1e-4, atol=1e-4)
    assert all((g > 0).all() for g in together)  # -log p of a token is positive


def test_a_stream_holds_the_entries_of_what_it_kept(scorer):
    """After ``keep``, the cache holds the prefix and the kept tokens' own entries: scoring
    the next segment equals reading it after those cached keys and values."""
    first, second = ids(20, 1), ids(15, 2)
    stream = Stream(scorer)
    stream.score(first)
    chosen = torch.zeros(20, dtype=torch.bool)
    chosen[::3] = True
    full = [(layer.keys.clone(), layer.values.clone()) for layer in stream.cache.layers]
    stream.keep(chosen)
    index = torch.cat([torch.tensor([0]), 1 + torch.nonzero(chosen)[:, 0]])
    for layer, (k, v) in zip(stream.cache.layers, full, strict=True):
        torch.testing.assert_close(layer.keys, k[..., index, :])
        torch.testing.assert_close(layer.values, v[..., index, :])
    assert stream.length == 1 + int(chosen.sum())
    got = stream.score(second)
    assert got.shape == (15,) and (got > 0).all()


def test_keeping_nothing_leaves_the_stream_as_it_was(scorer):
    stream = Stream(scorer)
    before = stream.score(ids(10, 3))
    stream.keep(torch.zeros(10, dtype=torch.bool))
    torch.testing.assert_close(stream.score(ids(10, 3)), before)


def test_a_sliding_window_scorer_reads_the_kept_tokens_again():
    from ..lmutil import tiny_lm as lm

    gemma = Scorer(lm("gemma3", layers=2, vocab_size=300), byte_tokenizer())
    first, second = ids(20, 1), ids(15, 2)
    stream = Stream(gemma)
    stream.score(first)
    chosen = torch.zeros(20, dtype=torch.bool)
    chosen[::3] = True
    stream.keep(chosen)
    got = stream.score(second)
    start = torch.tensor([gemma.start_id])
    (want,) = gemma.self_information([second], [torch.cat([start, first[chosen]])])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_slow_tokenizer_is_refused():
    from transformers import PreTrainedTokenizer

    class Slow(PreTrainedTokenizer):
        pass

    with pytest.raises(TypeError, match="needs a fast tokenizer"):
        Scorer(tiny_lm("llama", layers=1), Slow.__new__(Slow))
