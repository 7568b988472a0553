"""Token maps: which patches were kept, dropped or merged, drawn on the input image."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

import tokenreduce
from tokenreduce.core.state import TokenState
from tokenreduce.viz import (
    DROPPED,
    KEPT,
    grid_figure,
    group_colors,
    patch_groups,
    to_rgb_array,
    token_map,
    visualize,
)

VISION_METHODS = ["tome", "evit", "topk", "random", "pool"]


def make_state(source: list[int], position: list[int], num_prefix: int = 1) -> TokenState:
    """A one-sample state from a source map and the positions of the current tokens."""
    src = torch.tensor([source])
    pos = torch.tensor([position])
    n = pos.shape[1]
    size = torch.zeros(1, n).scatter_add_(1, src.clamp_min(0), (src >= 0).float())
    protected = torch.zeros(1, n, dtype=torch.bool)
    protected[:, :num_prefix] = True
    return TokenState(size=size, source=src, position=pos, protected=protected, merged=True)


# Grid 2 x 3 behind one class token. Current tokens: 0 class, 1 holds patches 0 and 1,
# 2 holds patch 2 alone, 3 holds patches 4 and 5; patch 3 is dropped.
STATE = make_state([0, 1, 1, 2, -1, 3, 3], [0, 1, 3, 5])
GRID = (2, 3)
P = 6  # pixels per patch side in the hand-made images


def patch_pixels(img: Image.Image | np.ndarray, row: int, col: int, p: int = P) -> np.ndarray:
    a = np.asarray(img)
    return a[row * p : (row + 1) * p, col * p : (col + 1) * p].reshape(-1, 3)


def constant_image(rgb=(100, 150, 200), h: int = 2 * P, w: int = 3 * P) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (h, w, 3)).copy()


# -- hand-made states ------------------------------------------------------------------------
def test_patch_groups_labels_kept_dropped_and_merged_groups():
    labels = patch_groups(STATE, GRID, num_prefix=1)
    assert labels.tolist() == [[1, 1, KEPT], [DROPPED, 2, 2]]


def test_fused_token_is_a_merged_group_even_with_one_patch():
    # Token 3 is synthetic (position -1) and holds patches 2, 3, 4; token 5 is synthetic too
    # and holds patch 5 alone.
    state = make_state([0, 1, 2, 3, 3, 3, 5], [0, 1, 2, -1, 99, -1])
    labels = patch_groups(state, GRID, num_prefix=1)
    assert labels.tolist() == [[KEPT, KEPT, 1], [1, 1, 2]]


def test_each_group_gets_one_colour_and_groups_differ():
    img = constant_image()
    out = np.asarray(token_map(img, STATE, GRID, 1, alpha=1.0, borders=False))
    colors = group_colors(2)
    group1 = np.concatenate([patch_pixels(out, 0, 0), patch_pixels(out, 0, 1)])
    group2 = np.concatenate([patch_pixels(out, 1, 1), patch_pixels(out, 1, 2)])
    assert (group1 == colors[0]).all()
    assert (group2 == colors[1]).all()
    assert not np.array_equal(colors[0], colors[1])


def test_partial_tint_is_uniform_within_a_group_on_a_uniform_image():
    out = np.asarray(token_map(constant_image(), STATE, GRID, 1, alpha=0.5, borders=False))
    group1 = np.concatenate([patch_pixels(out, 0, 0), patch_pixels(out, 0, 1)])
    group2 = np.concatenate([patch_pixels(out, 1, 1), patch_pixels(out, 1, 2)])
    assert (group1 == group1[0]).all() and (group2 == group2[0]).all()
    assert not np.array_equal(group1[0], group2[0])
    assert not np.array_equal(group1[0], np.array([100, 150, 200]))


def test_kept_patch_is_unchanged_and_dropped_patch_is_greyed():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (2 * P, 3 * P, 3), dtype=np.uint8)
    out = token_map(img, STATE, GRID, 1)
    assert np.array_equal(patch_pixels(out, 0, 2), patch_pixels(img, 0, 2))
    dropped = patch_pixels(out, 1, 0).astype(int)
    assert not np.array_equal(dropped, patch_pixels(img, 1, 0))
    # grey: all channels equal
    assert (dropped[:, 0] == dropped[:, 1]).all() and (dropped[:, 1] == dropped[:, 2]).all()


@pytest.mark.parametrize("value", [0, 255])
def test_dropped_differs_from_kept_on_black_and_white_images(value):
    img = constant_image((value, value, value))
    out = token_map(img, STATE, GRID, 1)
    kept, dropped = patch_pixels(out, 0, 2), patch_pixels(out, 1, 0)
    assert (kept == value).all()
    assert (dropped != value).any(axis=1).all()  # every dropped pixel is visibly different


def test_borders_separate_groups_but_not_patches_of_one_group():
    out = np.asarray(token_map(constant_image(), STATE, GRID, 1, alpha=1.0))
    interior = group_colors(2)[0]
    # group 1 spans columns 0..11 of rows 0..5; its right edge meets the kept patch
    assert not (out[1:5, 2 * P - 1] == interior).all(axis=1).any()
    # no border between its two patches (columns 5 and 6), away from the group's outline
    assert (out[1 : P - 1, P - 1] == interior).all() and (out[1 : P - 1, P] == interior).all()
    # the kept patch itself is untouched, the border lies on the merged side
    assert (patch_pixels(out, 0, 2) == [100, 150, 200]).all()


def test_grayscale_inputs_give_rgb_with_equal_channels():
    gray = np.arange(2 * P * 3 * P, dtype=np.uint8).reshape(2 * P, 3 * P)
    state = make_state([0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6])
    for img in (gray, gray[:, :, None], Image.fromarray(gray), torch.from_numpy(gray)[None] / 255):
        out = np.asarray(token_map(img, state, GRID, 1))
        assert out.shape == (2 * P, 3 * P, 3)
        assert (out == gray[:, :, None]).all()


def test_any_display_size_and_scale():
    img = Image.new("RGB", (50, 37), (10, 20, 30))
    assert token_map(img, STATE, GRID, 1).size == (50, 37)
    assert token_map(img, STATE, GRID, 1, scale=3).size == (150, 111)


def test_normalised_tensor_is_rescaled_for_display():
    t = torch.linspace(-2, 2, 3 * 12 * 18).reshape(3, 12, 18)
    arr = to_rgb_array(t)
    assert arr.dtype == np.uint8 and arr.min() == 0 and arr.max() == 255


@pytest.mark.parametrize(
    "grid, num_prefix, match",
    [
        ((3, 3), 1, "original tokens"),
        ((2, 3), 0, "original tokens"),
        ((2, 0), 1, "grid"),
        ((2.0, 3), 1, "grid"),
        ((2, 3), -1, "num_prefix"),
    ],
)
def test_bad_grid_or_prefix_raises(grid, num_prefix, match):
    with pytest.raises(ValueError, match=match):
        token_map(constant_image(), STATE, grid, num_prefix)


def test_bad_images_and_arguments_raise():
    with pytest.raises(TypeError, match="PIL image"):
        token_map([[0]], STATE, GRID, 1)
    with pytest.raises(ValueError, match="C in 1 or 3"):
        token_map(torch.rand(2, 12, 18), STATE, GRID, 1)
    with pytest.raises(ValueError, match="C in 1, 3 or 4"):
        token_map(np.zeros((12, 18, 2), np.uint8), STATE, GRID, 1)
    with pytest.raises(ValueError, match="uint8"):
        token_map(np.full((12, 18), 3.0), STATE, GRID, 1)
    with pytest.raises(ValueError, match="patch_size"):
        token_map(constant_image(), STATE, GRID, 1, patch_size=4)
    with pytest.raises(ValueError, match="sample"):
        token_map(constant_image(), STATE, GRID, 1, sample=1)
    with pytest.raises(ValueError, match="smaller than"):
        token_map(np.zeros((1, 3), np.uint8), STATE, GRID, 1)
    with pytest.raises(TypeError, match="TokenState"):
        token_map(constant_image(), STATE.source, GRID, 1)
    token_map(constant_image(), STATE, GRID, 1, patch_size=P)  # the matching size passes


# -- real models -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=2, num_classes=5
    ).eval()


@pytest.fixture(scope="module")
def gray_vit() -> VisionTransformer:
    """Shaped like the Fashion-MNIST demo model: 1 x 56 x 56, patch 4, 14 x 14 grid."""
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=56, patch_size=4, in_chans=1, embed_dim=48, depth=4, num_heads=3, num_classes=10
    ).eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(3, 64, 64)


def _identity_spec(name: str) -> str:
    cls = tokenreduce.methods.get(name)
    layers = ",layers=[1,2]" if "layers" in {f.name for f in dataclasses.fields(cls)} else ""
    return f"{name}:{cls.budget_param}={cls.budget_identity}{layers}"


@pytest.mark.parametrize("name", VISION_METHODS)
def test_unreduced_model_map_equals_input(vit, image, name):
    photo = Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy())
    out = visualize(vit, image, _identity_spec(name), image_for_display=photo)
    assert out.size == photo.size
    assert np.array_equal(np.asarray(out), np.asarray(photo))
    # the tensor itself as display image gives the same picture
    assert np.array_equal(
        np.asarray(visualize(vit, image, _identity_spec(name))), np.asarray(photo)
    )


@pytest.mark.parametrize(
    "spec", ["tome:r=8", "evit:keep_ratio=0.5,layers=[1,2]", "pool:kernel=2,layers=[1]"]
)
def test_merged_groups_match_the_token_state(vit, image, spec):
    with tokenreduce.patch(vit, spec) as handle, torch.no_grad():
        vit(image[None])
    state, info = handle.state, handle.info
    labels = patch_groups(state, info.grid, info.num_prefix)
    src = state.source[0, info.num_prefix :]
    pos = state.position[0]
    counts = torch.bincount(state.source[0][state.source[0] >= 0], minlength=pos.shape[0])
    grouped = (src >= 0) & ((counts[src.clamp_min(0)] > 1) | (pos[src.clamp_min(0)] < 0))
    assert np.array_equal(labels.reshape(-1) > 0, grouped.numpy())
    assert int(labels.max()) == len(set(src[grouped].tolist())) > 0
    # each group is exactly the set of patches one token holds
    for k in range(1, int(labels.max()) + 1):
        assert len(set(src[torch.from_numpy(labels.reshape(-1) == k)].tolist())) == 1

    out = np.asarray(token_map(image, state, info.grid, info.num_prefix, alpha=1.0, borders=False))
    colors = group_colors(int(labels.max()))
    for r in range(info.grid[0]):
        for c in range(info.grid[1]):
            if labels[r, c] > 0:
                assert (patch_pixels(out, r, c, 8) == colors[labels[r, c] - 1]).all()


def test_random_pruning_greys_exactly_the_dropped_patches(vit, image):
    with tokenreduce.patch(vit, "random:keep_ratio=0.5,layers=[1]") as handle, torch.no_grad():
        vit(image[None])
    info = handle.info
    out = token_map(image, handle.state, info.grid, info.num_prefix)
    base = to_rgb_array(image)
    dropped = (handle.state.source[0, info.num_prefix :] < 0).reshape(info.grid).numpy()
    assert dropped.sum() == 32  # half of the 64 patches
    for r in range(info.grid[0]):
        for c in range(info.grid[1]):
            same = np.array_equal(patch_pixels(out, r, c, 8), patch_pixels(base, r, c, 8))
            assert same != dropped[r, c]


def test_visualize_restores_the_model(vit, image):
    with torch.no_grad():
        before = vit(image[None])
    visualize(vit, image, "tome:r=8")
    assert tokenreduce.handle_of(vit) is None
    with torch.no_grad():
        assert torch.equal(vit(image[None]), before)


def test_grayscale_demo_shaped_model(gray_vit):
    torch.manual_seed(2)
    x = torch.rand(1, 56, 56)
    out = visualize(gray_vit, x, "tome:r=16", scale=2)
    assert out.size == (112, 112) and out.mode == "RGB"
    ident = np.asarray(visualize(gray_vit, x, "tome:r=0"))
    assert (ident == to_rgb_array(x)).all() and (ident[..., 0] == ident[..., 2]).all()


def test_visualize_rejects_a_batch(vit):
    with pytest.raises(ValueError, match="one image"):
        visualize(vit, torch.rand(2, 3, 64, 64), "tome:r=4")
    assert tokenreduce.handle_of(vit) is None


# -- figures ---------------------------------------------------------------------------------
def test_grid_figure_contains_every_tile():
    tiles = [Image.new("RGB", (40, 30), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    fig = grid_figure(tiles, ["a", "b", "c"], min_tile=0, legend=False)
    a = np.asarray(fig)
    assert fig.width >= 3 * 40 and fig.height >= 30
    for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]:
        assert (a == c).all(axis=2).sum() == 40 * 30
    # small tiles are upscaled by an integer factor, two columns give two rows
    fig2 = grid_figure(tiles, columns=2, min_tile=120)
    assert (np.asarray(fig2) == (255, 0, 0)).all(axis=2).sum() == 3 * 3 * 40 * 30  # 120 / 40
    assert fig2.height >= 2 * 3 * 30


def test_grid_figure_validates():
    tile = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match="titles"):
        grid_figure([tile], ["a", "b"])
    with pytest.raises(ValueError, match="non-empty"):
        grid_figure([])
    with pytest.raises(ValueError, match="columns"):
        grid_figure([tile], columns=0)
