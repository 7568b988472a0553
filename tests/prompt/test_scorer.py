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


def test_a_stream_is_conditioned_on_what_it_kept(scorer):
    first, second = ids(20, 1), ids(15, 2)
    stream = Stream(scorer)
    stream.score(first)
    kept = first[::3]
    stream.keep(kept)
    got = stream.score(second)
    start = torch.tensor([scorer.start_id])
    (want,) = scorer.self_information([second], [torch.cat([start, kept])])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # scoring forgets the segment: scoring it again gives the same numbers
    torch.testing.assert_close(stream.score(second), got)


def test_a_slow_tokenizer_is_refused():
    from transformers import PreTrainedTokenizer

    class Slow(PreTrainedTokenizer):
        pass

    with pytest.raises(TypeError, match="needs a fast tokenizer"):
        Scorer(tiny_lm("llama", layers=1), Slow.__new__(Slow))
