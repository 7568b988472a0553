"""VisPruner: important tokens by attention, diverse ones left by duplicate removal."""

from __future__ import annotations

import torch

from tokenreduce.methods.vispruner import important_and_diverse, remove_duplicates


def test_important_tokens_are_the_most_attended_and_duplicates_go():
    # tokens 1..4 are four copies of one feature; 5..8 are distinct; token 0 is protected
    features = torch.cat([torch.randn(1, 4), torch.ones(4, 4), torch.eye(4)])[None]
    scores = torch.tensor([[0.0, 0.9, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.3]])
    protected = torch.zeros(1, 9, dtype=torch.bool)
    protected[0, 0] = True
    kept = important_and_diverse(scores, features, keep=5, important=1, protected=protected)
    # candidates by attention: 8, 5, 6, 7, 2, 3, 4; one round drops 3 of A = (8, 6, 2, 4): the
    # copies 2 and 4 (similarity 1 to their twin 3 in B), then 8 (0.5, ahead of 6 by rank)
    assert kept[0].tolist() == [0, 1, 3, 5, 6, 7]


def test_share_one_is_attention_top_k():
    g = torch.Generator().manual_seed(0)
    scores, features = torch.rand(2, 10, generator=g), torch.randn(2, 10, 6, generator=g)
    none = torch.zeros(2, 10, dtype=torch.bool)
    kept = important_and_diverse(scores, features, keep=4, important=4, protected=none)
    assert torch.equal(kept, scores.topk(4, dim=1).indices.sort(dim=1).values)


def test_duplicate_removal_drops_the_copies_first():
    unit = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0],
                                                       [-1.0, 0.0], [0.0, -1.0]]), dim=-1)[None]  # fmt: skip
    left = remove_duplicates(unit, torch.tensor([[0, 1, 2, 3, 4]]), keep=4)
    assert sorted(left[0].tolist()) in ([1, 2, 3, 4], [0, 2, 3, 4])  # one of the twins goes
