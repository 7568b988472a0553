"""Dense recovery (tokenreduce.dense): a feature for every patch of a reduced model (the
prune-then-merge hybrid is in ``tests/methods/test_prunemerge.py``)."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.dense import dense_features

from .conftest import images, make_vit


@pytest.mark.parametrize("variant", ["cls", "hf_dinov2"])
def test_unreduced_features_are_the_model_outputs(variant):
    model, x = make_vit(variant), images(2)
    out = dense_features(model, x)
    assert out.grid == (8, 8) and out.patches.shape == (2, 64, 48)
    assert not out.pruned.any() and out.mean_tokens == 65
    with torch.inference_mode():
        if variant == "cls":  # timm: normed tokens, pre-logits of a token-pool model
            tokens = model.forward_features(x)
            pooled = model.forward_head(tokens, pre_logits=True)
        else:  # DINOv2: last_hidden_state is after the final layer norm
            res = model(x)
            tokens, pooled = res.last_hidden_state, res.pooler_output
    assert torch.equal(out.patches, tokens[:, 1:]) and torch.equal(out.pooled, pooled)
    assert tokenreduce.api.handle_of(model) is None  # the bookkeeping patch is gone


@torch.inference_mode()
def test_pruned_patches_get_their_last_feature_and_merged_ones_their_token():
    model, x = make_vit("hf_dinov2"), images(2)
    hidden = model(x, output_hidden_states=True).hidden_states  # [embeddings, block 0, ...]
    with tokenreduce.patch(model, "topk:keep_ratio=0.5,layers=[1,2]") as handle:
        out = dense_features(model, x)
        source = handle.state.source[:, 1:]
    assert out.pruned.equal(source < 0) and 0 < out.pruned.float().mean() < 1
    # Nothing differs from the unreduced model before block 1 prunes: a patch pruned there
    # carries block 0's output, through the final layer norm.
    before = model.layernorm(hidden[1])[:, 1:]
    with tokenreduce.patch(model, "topk:keep_ratio=0.5,layers=[1]") as handle:
        first = dense_features(model, x)
        gone = handle.state.source[:, 1:] < 0
    assert gone.any() and torch.allclose(first.patches[gone], before[gone], atol=1e-6)
    assert not torch.allclose(first.patches[~gone], before[~gone], atol=1e-3)
    with tokenreduce.patch(model, "tome:r=6") as handle:
        merged = dense_features(model, x)
        src = handle.state.source[:, 1:]
    assert not merged.pruned.any()
    for b in range(2):  # patches held by the same token share its feature
        for tok in src[b].unique():
            group = merged.patches[b, src[b] == tok]
            assert torch.equal(group, group[:1].expand_as(group))


def test_dense_features_rejects_other_models():
    with pytest.raises(TypeError, match="dense features need a timm VisionTransformer"):
        dense_features(torch.nn.Linear(3, 3), torch.zeros(1, 3))
