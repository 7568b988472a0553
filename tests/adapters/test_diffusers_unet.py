"""The diffusers UNet family (UNet2DConditionModel): sites chosen by resolution level, as
tomesd's ``max_downsample`` chooses them, on SD 1.x- and SDXL-shaped layouts."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.adapters import DiffusersUNetAdapter
from tokenreduce.adapters.diffusers.unet import EXAMPLE, tiny_unet
from tokenreduce.methods import InvalidParameter

from ..conftest import output

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
pytest.importorskip("diffusers")

#: SDXL's layout: no attention at the highest resolution, two blocks per Transformer2DModel
SDXL = {**EXAMPLE, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2)}  # fmt: skip


def levels(model) -> list[int]:
    return [site.level for site in DiffusersUNetAdapter.site_list(model)]


def test_sites_carry_their_resolution_level():
    # down stage 0 (one block), mid block, up stage 1 (two blocks): levels 1, 2, 1, 1
    assert levels(tiny_unet(**EXAMPLE)) == [1, 2, 1, 1]
    assert levels(tiny_unet(**SDXL)) == [2, 2, 2, 2, 2, 2, 2, 2]


@pytest.mark.parametrize(("max_downsample", "tokens"), [(1, [128, 64, 128, 128]),
                                                        (2, [128, 32, 128, 128])])  # fmt: skip
@torch.no_grad()
def test_max_downsample_chooses_the_levels_that_merge(max_downsample, tokens):
    model = tiny_unet(**EXAMPLE)
    batch = DiffusersUNetAdapter.example_batch(model)
    with tokenreduce.patch(model, f"tomesd:max_downsample={max_downsample}") as handle:
        model(**batch)
    assert handle.trace.attn_tokens == tokens  # 16x16 at level 1, 8x8 at level 2


@torch.no_grad()
def test_sdxl_layout_merges_from_level_two_and_refuses_level_one():
    model = tiny_unet(**SDXL)
    batch = DiffusersUNetAdapter.example_batch(model)
    with pytest.raises(InvalidParameter, match="resolution levels 2; raise max_downsample"):
        tokenreduce.patch(model, "tomesd")
    plain = output(model(**batch))
    with tokenreduce.patch(model, "tomesd:max_downsample=2") as handle:
        out = output(model(**batch))
    assert handle.trace.attn_tokens == [32] * 8 and out.shape == plain.shape
    with tokenreduce.patch(model, None):  # the unreduced patch needs no reachable level
        assert torch.equal(output(model(**batch)), plain)


@torch.no_grad()
def test_a_level_whose_grid_the_cells_do_not_divide_is_refused():
    model = tiny_unet(**{**EXAMPLE, "sample_size": 14})  # 14x14 at level 1, 7x7 at level 2
    batch = DiffusersUNetAdapter.example_batch(model)
    with tokenreduce.patch(model, "tomesd"):
        model(**batch)  # level 1 only: 14x14 tiles into 2x2 cells
    with tokenreduce.patch(model, "tomesd:max_downsample=2"), pytest.raises(ValueError) as err:
        model(**batch)
    assert "7x7 token grid of site 1 (level 2)" in str(err.value)


def test_attention_other_than_transformer2d_is_named():
    config = {**EXAMPLE, "down_block_types": ("AttnDownBlock2D", "DownBlock2D")}
    with pytest.raises(TypeError, match="AttnDownBlock2D of this UNet2DConditionModel holds a"):
        tokenreduce.describe(tiny_unet(**config))
