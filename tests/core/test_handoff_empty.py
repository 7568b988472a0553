"""A handoff whose images all keep no token (a per-input method may drop every image token)."""

from __future__ import annotations

import torch

from tokenreduce.core.handoff import handoff
from tokenreduce.core.reduction import Reduction


def test_images_that_keep_no_token_leave_the_text_alone():
    nothing = Reduction.select(torch.zeros(2, 0, dtype=torch.long), 3)  # two images, 3 tokens
    placeholders = torch.tensor([[False, True, True, True, False],
                                 [True, True, True, False, False]])  # fmt: skip
    lifted = handoff(nothing, placeholders)
    embeds = torch.randn(2, 5, 4)
    out = lifted.apply(embeds)
    assert out.shape == (2, 2, 4)
    torch.testing.assert_close(out[0], embeds[0, [0, 4]])
    torch.testing.assert_close(out[1], embeds[1, [3, 4]])
    assert lifted.apply(torch.arange(5).expand(2, 5), "anchor").tolist() == [[0, 4], [3, 4]]


def test_a_stacked_reduction_to_no_token_applies():
    parts = [Reduction.select(torch.zeros(1, 0, dtype=torch.long), 3)] * 2
    red = Reduction.stack(parts, [torch.arange(3)] * 2, 3)
    assert red.apply(torch.randn(2, 3, 4)).shape == (2, 0, 4)
