"""The prune-then-merge hybrid (methods/prunemerge.py): without merging it is top-k; what it
merges and drops; its parameter checks."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce import methods

from ..conftest import images, make_vit


@torch.inference_mode()
def test_prunemerge_without_merging_is_topk():
    model, x = make_vit("cls"), images(2)
    with tokenreduce.patch(model, "topk:keep_ratio=0.5,layers=[1,2]"):
        expected = model(x)
    with tokenreduce.patch(model, "prunemerge:keep_ratio=0.5,layers=[1,2],merge_share=0"):
        assert torch.equal(model(x), expected)


@torch.inference_mode()
@pytest.mark.parametrize("share", [0.5, 1.0])
def test_prunemerge_counts_and_targets(share):
    model, x = make_vit("cls"), images(2)
    spec = f"prunemerge:keep_ratio=0.5,layers=[1],merge_share={share}"
    with tokenreduce.patch(model, spec) as handle:
        model(x)
        state = handle.state
    n = 64  # patches; block 1 keeps 32 of them, removes 32: share * 32 merged, the rest dropped
    assert handle.trace.mlp_tokens[1] == 1 + 32
    merged = round(share * 32)
    assert int((state.source[:, 1:] < 0).sum(1).max()) == 32 - merged
    assert torch.equal(state.size.sum(1), torch.full((2,), float(1 + n - (32 - merged))))
    assert (state.size[:, 0] == 1).all()  # the class token absorbs nothing
    assert int((state.size > 1).sum()) >= 1


def test_prunemerge_parameters_are_checked():
    with pytest.raises(methods.InvalidParameter, match="merge_share"):
        methods.build("prunemerge:merge_share=1.5")
    with pytest.raises(methods.InvalidParameter, match="keep_ratio"):
        methods.build("prunemerge:keep_ratio=0")
