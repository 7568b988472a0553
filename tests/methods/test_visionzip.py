"""VisionZip's reduction: dominant tokens by score, the rest merged into contextual tokens."""

from __future__ import annotations

import torch

from tokenreduce.core.reducers import dominant_and_contextual
from tokenreduce.core.state import TokenState


def test_dominant_tokens_are_kept_and_the_rest_merged_into_contextual_ones():
    g = torch.Generator().manual_seed(0)
    b, n = 2, 12
    scores = torch.rand(b, n, generator=g)
    metric = torch.randn(b, n, 8, generator=g)
    state = TokenState.initial(b, n, num_protected=1)
    red = dominant_and_contextual(scores, metric, keep=6, contextual=2,
                                  protected=state.protected, size=state.size)  # fmt: skip
    after = state.apply(red)
    assert red.num_out == 1 + 6  # the protected token, 4 dominant, 2 contextual
    assert torch.equal(after.size.sum(1), torch.full((b,), float(n)))  # nothing dropped
    for s in range(b):
        top = scores[s, 1:].argsort(descending=True)[:4] + 1
        singles = {int(a) for a, z in zip(red.anchor[s], after.size[s], strict=True) if z == 1}
        assert set(top.tolist()) <= singles  # dominant tokens stand alone
        assert 0 in singles  # the protected token is never merged
        assert int((after.size[s] > 1).sum()) == 2  # two contextual tokens hold the rest


def test_without_contextual_tokens_it_is_a_top_k_prune():
    scores = torch.tensor([[0.0, 5.0, 1.0, 4.0, 3.0]])
    red = dominant_and_contextual(scores, torch.randn(1, 5, 4), keep=2, contextual=0,
                                  protected=torch.zeros(1, 5, dtype=torch.bool),
                                  size=torch.ones(1, 5))  # fmt: skip
    assert red.is_selection and red.anchor.tolist() == [[1, 3]]
