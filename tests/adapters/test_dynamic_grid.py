"""The patch grid follows each input: pooling cells, the trace, FLOPs, dense features, token maps.

The models are built for 32x32 images (patch 4: an 8x8 grid) and called on 48x32 (12x8) and
16x64 (4x16) images: a timm ViT with ``dynamic_img_size=True`` and the Hugging Face families
with ``interpolate_pos_encoding=True`` (DINOv2 always interpolates). Block 0's MLP is zeroed,
so block 0's output is the state right after its attention: the unpatched model's output
pooled by hand over 2x2 cells must equal the patched model's, class token untouched.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tokenreduce
from tokenreduce.dense import dense_features
from tokenreduce.viz import patch_groups, visualize

from ..conftest import TINY, make_hf

timm = pytest.importorskip("timm")

SIZES = [(48, 32), (16, 64)]  # (height, width) -> grids 12x8 and 4x16
POOL = "pool:kernel=2,layers=(0,)"


def make_dynamic(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", **TINY, dynamic_img_size=True, **kwargs
    ).eval()


def zero_last_linear(mlp: nn.Module) -> None:
    last = [m for m in mlp.modules() if isinstance(m, nn.Linear)][-1]
    last.weight.data.zero_()
    last.bias.data.zero_()


def pool_by_hand(tokens: torch.Tensor, prefix: int, rows: int, cols: int) -> torch.Tensor:
    """Prefix tokens, then the mean of every 2x2 cell of the patch grid in raster order."""
    b, _, c = tokens.shape
    grid = tokens[:, prefix:].reshape(b, rows // 2, 2, cols // 2, 2, c)
    return torch.cat([tokens[:, :prefix], grid.mean((2, 4)).reshape(b, -1, c)], dim=1)


def cell_sources(prefix: int, rows: int, cols: int) -> torch.Tensor:
    """The token holding each original token after 2x2 pooling: prefix i -> i, patch (r, c)
    -> its cell."""
    r, c = torch.arange(rows)[:, None], torch.arange(cols)
    cells = prefix + (r // 2) * (cols // 2) + c // 2
    return torch.cat([torch.arange(prefix), cells.flatten()])


def block0_output(model: nn.Module, block: nn.Module, x: torch.Tensor, **kwargs) -> torch.Tensor:
    out = []

    def record(_module, _args, output):
        out.append(output[0] if isinstance(output, tuple) else output)

    hook = block.register_forward_hook(record)
    try:
        with torch.inference_mode():
            model(x, **kwargs)
    finally:
        hook.remove()
    return out[0]


def check_pools_the_inputs_cells(model, block, prefix, size, **kwargs) -> None:
    rows, cols = size[0] // 4, size[1] // 4
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    full = block0_output(model, block, x, **kwargs)
    with tokenreduce.patch(model, POOL) as handle:
        pooled = block0_output(model, block, x, **kwargs)
        assert handle.trace.grid == (rows, cols)
        assert handle.info.grid == (8, 8)  # the configured grid, documented as such
        assert handle.trace.mlp_tokens[0] == prefix + rows * cols // 4
        assert torch.equal(handle.state.source, cell_sources(prefix, rows, cols).expand(2, -1))
    assert torch.equal(pooled[:, :prefix], full[:, :prefix])  # class token intact
    torch.testing.assert_close(pooled, pool_by_hand(full, prefix, rows, cols), rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", SIZES, ids=["48x32", "16x64"])
def test_timm_dynamic_size_pools_the_inputs_cells(size):
    model = make_dynamic()
    zero_last_linear(model.blocks[0].mlp)
    check_pools_the_inputs_cells(model, model.blocks[0], 1, size)


HF_FAMILIES = {  # variant -> (prefix tokens, forward kwargs)
    "hf_vit": (1, {"interpolate_pos_encoding": True}),
    "hf_dinov2": (1, {}),  # DINOv2 always interpolates
    "hf_clip": (1, {"interpolate_pos_encoding": True}),
    "hf_siglip": (0, {"interpolate_pos_encoding": True}),
}


@pytest.mark.parametrize("size", SIZES, ids=["48x32", "16x64"])
@pytest.mark.parametrize("variant", HF_FAMILIES)
def test_hf_interpolated_size_pools_the_inputs_cells(variant, size):
    from tokenreduce.adapters.hf_vision import _get, _layers

    model = make_hf(variant)
    layer = _layers(_get(model, "vit" if variant == "hf_vit" else ""))[0]
    zero_last_linear(layer.mlp)
    prefix, kwargs = HF_FAMILIES[variant]
    check_pools_the_inputs_cells(model, layer, prefix, size, **kwargs)


@torch.inference_mode()
def test_flops_follow_the_input():
    """An unreduced 48x32 forward costs what a model built for 48x32 images costs."""
    built = timm.create_model("vit_tiny_patch16_224", **{**TINY, "img_size": (48, 32)})
    with tokenreduce.patch(built, "tome:r=0") as handle:
        expected = handle.baseline_gflops()
    model = make_dynamic()
    with tokenreduce.patch(model, "tome:r=0") as handle:
        at_32 = handle.baseline_gflops()
        model(torch.randn(1, 3, 48, 32))
        assert handle.gflops() == pytest.approx(expected, rel=1e-12)
        assert handle.baseline_gflops() == pytest.approx(expected, rel=1e-12)
    assert at_32 < expected


def test_dense_features_and_token_maps_follow_the_input():
    model = make_dynamic()
    x = torch.rand(3, 48, 32)
    with tokenreduce.patch(model, POOL):
        out = dense_features(model, x[None])
    assert out.grid == (12, 8) and out.patches.shape == (1, 96, 48)
    img = visualize(model, x, POOL)
    assert img.size == (32, 48)  # (width, height)
    with tokenreduce.patch(model, POOL) as handle, torch.inference_mode():
        model(x[None])
        labels = patch_groups(handle.state, handle.trace.grid, handle.info.num_prefix)
    # every 2x2 cell is one merged group, numbered in raster order
    expected = cell_sources(0, 12, 8).reshape(12, 8).numpy() + 1
    assert (labels == expected).all()


@torch.inference_mode()
def test_method_needing_a_grid_refuses_tokens_it_cannot_place():
    # Patch dropout (training) keeps a random subset of patches: no grid to pool on.
    model = make_dynamic(patch_drop_rate=0.25).train()
    x = torch.randn(2, 3, 32, 32)
    refused = r"pool needs the patch grid of each input.*48 patch tokens.*8x8"
    with tokenreduce.patch(model, POOL), pytest.raises(ValueError, match=refused):
        model(x)
    with tokenreduce.patch(model, "tome:r=4") as handle:  # a method without a grid still runs
        model(x)
        assert handle.trace.grid is None and handle.trace.mlp_tokens[-1] < 49
    # Blocks called without the patch embedding have no grid, not the previous input's.
    model.eval()
    with tokenreduce.patch(model, POOL) as handle:
        model(x)
        assert handle.trace.grid == (8, 8)
        tokens = torch.randn(2, 65, 48)
        with pytest.raises(ValueError, match=r"no patch embedding ran"):
            model.blocks(tokens)
