"""ToMe on the trained demo ViT against the authors' algorithm, block after block.

The reference forward below is the demo ViT run as the authors' timm patch runs it
(``tome/patch/timm.py``): attention with log(size) added to the logits once tokens have
merged, then bipartite soft matching on the keys averaged over heads, merged tokens in the
authors' order (``tests/tome_ref.py``). Attention is the same fused call as the adapter's, so
the only thing compared is what ToMe does between attention and the MLP.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tokenreduce
from tokenreduce import assets
from tokenreduce.core import TokenState
from tokenreduce.data import fashion_mnist, preprocess
from tokenreduce.methods import InvalidParameter

from ..conftest import images as random_images
from ..conftest import make_vit, record_sdpa_masks
from ..tome_ref import reference_bipartite

N_IMAGES = 32


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return assets.load("fmnist-vit")


@pytest.fixture(scope="module")
def images(model) -> torch.Tensor:
    images, _ = fashion_mnist("test", download=False)
    return preprocess(images[:N_IMAGES], model)


def reference_tome_forward(model, x: torch.Tensor, r: int):
    """Logits, final token sizes (B, N) and original index of each final token (B, N)."""
    x = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    b, n = x.shape[:2]
    size, origin = None, torch.arange(n).expand(b, n)
    for blk in model.blocks:
        attn = blk.attn
        qkv = attn.qkv(blk.norm1(x)).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = None if size is None else size.log()[:, None, None, :]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x + attn.proj(o.transpose(1, 2).reshape(b, n, -1))
        ones = torch.ones(b, n) if size is None else size
        x, size, slot_origin = reference_bipartite(x, k.mean(1), ones, r, True, False)
        origin = origin.gather(1, slot_origin)
        n = x.shape[1]
        x = x + blk.mlp(blk.norm2(x))
    return model.forward_head(model.norm(x)), size, origin


@pytest.mark.parametrize("r", [13, 16])  # 16 reaches the 50% clamp in the last blocks
def test_tome_follows_the_reference_order_through_every_block(model, images, r):
    with torch.inference_mode():
        ref_logits, ref_size, ref_origin = reference_tome_forward(model, images, r)
        with tokenreduce.patch(model, f"tome:r={r}") as handle:
            logits = model(images)
    state: TokenState = handle.state
    # Same tokens in the same order after all 12 blocks: the same merges at every block.
    assert torch.equal(state.position, ref_origin)
    assert torch.equal(state.size, ref_size)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-4)
    assert torch.equal(logits.argmax(-1), ref_logits.argmax(-1))
    # The source map follows the reordering: each final token holds its own anchor, and as
    # many originals as its size.
    m = state.num_tokens
    assert torch.equal(state.source.gather(1, state.position), torch.arange(m).expand(N_IMAGES, m))
    counts = torch.zeros(N_IMAGES, m).scatter_add_(1, state.source, torch.ones_like(state.source,
                                                                                   dtype=torch.float))
    assert torch.equal(counts, state.size)


def test_original_order_is_an_option_and_differs(model, images):
    with torch.inference_mode(), tokenreduce.patch(model, "tome:r=13,order=original") as handle:
        model(images[:4])
    position = handle.state.position
    assert bool((position.diff(dim=1) > 0).all())  # input order kept at every block
    with pytest.raises(tokenreduce.methods.InvalidParameter,
                       match="tome: order='sorted' is invalid; allowed: 'reference' or 'original'"):
        tokenreduce.methods.build("tome:order=sorted")


# -- on the tiny random ViT: the schedule, the cap on r, proportional attention -------------
def test_tome_schedule_longer_than_the_model():
    with pytest.raises(InvalidParameter, match="schedule has 6 entries but the model has 4 blocks"):
        tokenreduce.patch(make_vit(), "tome:schedule=[1,1,1,1,1,1]")


def test_r_larger_than_possible_is_clamped_to_half():
    model = make_vit()
    with torch.inference_mode(), tokenreduce.patch(model, "tome:r=1000") as handle:
        model(random_images())
    # 65 tokens, 1 protected: each block merges at most half of the unprotected ones.
    assert handle.trace.attn_tokens == [65, 33, 17, 9]
    assert handle.trace.mlp_tokens == [33, 17, 9, 5]


def test_proportional_attention_adds_log_size_bias(monkeypatch):
    masks = record_sdpa_masks(monkeypatch)
    model = make_vit()
    with torch.inference_mode(), tokenreduce.patch(model, "tome:r=8") as handle:
        model(random_images())
    assert masks[0] is None  # nothing merged before the first block
    assert masks[1] is not None and masks[1].shape[-1] == handle.trace.attn_tokens[1]
    masks.clear()
    with torch.inference_mode(), tokenreduce.patch(model, "tome:r=8,prop_attn=false"):
        model(random_images())
    assert all(m is None for m in masks)
