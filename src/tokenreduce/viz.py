"""Draw which patches a reduction kept, dropped or merged.

A token map is the input image with every patch coloured by its fate in the final token
state of a forward pass:

* kept on its own: the image, unchanged;
* dropped (``source == -1``): greyed out, darkened and faintly hatched;
* merged with other patches (one current token holds several patches, or a synthetic token
  such as EViT's fused token holds it): a tint of one colour per group, with a thin border
  where a group meets another group or patch, so group shapes read at a glance.

Only patch tokens (original index >= ``num_prefix``) are drawn. Needs numpy and pillow (the
``viz`` extra).

>>> with tokenreduce.patch(model, "tome:r=13") as handle:
...     model(x[None])
...     img = token_map(x, handle.state, handle.trace.grid, handle.info.num_prefix)
>>> img = visualize(model, x, "tome:r=13")          # the same in one call
>>> grid_figure([img, ...], ["tome", ...]).save("tokens.png")
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from .core.state import TokenState

ImageLike = Image.Image | np.ndarray | torch.Tensor

#: patch labels returned by :func:`patch_groups`
DROPPED, KEPT = -1, 0

_DROP_GAIN, _DROP_FLOOR = 0.3, 28.0  # dropped pixel = luminance * gain + floor (greys out)
_HATCH = 40.0  # added to dropped pixels on the hatch lines
_BORDER = (16, 16, 16)


# -- what happened to each patch -------------------------------------------------------------
def patch_groups(
    state: TokenState, grid: tuple[int, int], num_prefix: int, sample: int = 0
) -> np.ndarray:
    """Label every patch of one sample by its fate: an int array of shape ``grid``.

    ``-1`` (:data:`DROPPED`): dropped; ``0`` (:data:`KEPT`): kept on its own; ``k >= 1``: the
    k-th merged group, groups numbered in raster order of their first patch. A patch held by a
    synthetic token (position -1, e.g. EViT's fused token) is in a merged group even when it is
    the only one.
    """
    gh, gw = _check_grid(grid)
    if not isinstance(num_prefix, int) or isinstance(num_prefix, bool) or num_prefix < 0:
        raise ValueError(f"num_prefix must be an integer >= 0, got {num_prefix!r}")
    if not isinstance(state, TokenState):
        raise TypeError(f"state must be a TokenState (handle.state), got {type(state).__name__}")
    batch, n0 = state.source.shape
    if not 0 <= sample < batch:
        raise ValueError(
            f"sample must be in 0..{batch - 1} (the state holds {batch}), got {sample}"
        )
    if n0 != num_prefix + gh * gw:
        raise ValueError(
            f"the state has {n0} original tokens but grid {gh}x{gw} with num_prefix={num_prefix} "
            f"describes {num_prefix + gh * gw}; pass the grid and prefix count of the model that "
            "produced the state (handle.trace.grid, handle.info.num_prefix)"
        )
    source = state.source[sample].detach().cpu().long().numpy()
    position = state.position[sample].detach().cpu().long().numpy()
    held = source[source >= 0]
    # Originals per current token, prefix tokens included, so a patch merged into any other
    # token counts as merged.
    count = np.bincount(held, minlength=position.shape[0])
    patches = source[num_prefix:]
    labels = np.full(gh * gw, KEPT, dtype=np.int64)
    labels[patches < 0] = DROPPED
    next_group: dict[int, int] = {}
    for i, tok in enumerate(patches):
        if tok >= 0 and (count[tok] > 1 or position[tok] < 0):
            labels[i] = next_group.setdefault(int(tok), len(next_group) + 1)
    return labels.reshape(gh, gw)


def group_colors(n: int) -> np.ndarray:
    """``n`` distinct RGB colours (uint8, shape (n, 3)); consecutive ones far apart in hue."""
    out = np.empty((n, 3), dtype=np.uint8)
    for k in range(n):
        hue = (0.07 + k * 0.618033988749895) % 1.0  # golden-ratio steps spread any prefix
        sat = (0.85, 0.6, 0.95)[k % 3]
        val = (1.0, 0.8, 0.9)[(k // 3) % 3]
        out[k] = np.round(np.array(colorsys.hsv_to_rgb(hue, sat, val)) * 255)
    return out


# -- the map ---------------------------------------------------------------------------------
def token_map(
    image: ImageLike,
    state: TokenState,
    grid: tuple[int, int],
    num_prefix: int,
    patch_size: int | tuple[int, int] | None = None,
    *,
    sample: int = 0,
    alpha: float = 0.55,
    borders: bool = True,
    scale: int = 1,
) -> Image.Image:
    """Colour ``image`` by what the reduction in ``state`` did to each patch (RGB image).

    Args:
        image: the image the model saw, for display: a CHW (or 1xCxHxW) float tensor, an HxW or
            HxWxC uint8 array, or a PIL image; 1 or 3 channels (4: alpha is ignored). A tensor
            with values outside [0, 1] (a normalised input) is min-max rescaled for display.
            It may have any size: patch boundaries are placed proportionally.
        state: the final token state of a patched forward (``handle.state``).
        grid: the patch grid (rows, cols) of the input that produced ``state``
            (``handle.trace.grid``).
        num_prefix: leading non-patch tokens: class, distillation, registers
            (``handle.info.num_prefix``).
        patch_size: optional check that the image is exactly ``grid * patch_size`` pixels.
        sample: which sample of the batch in ``state`` to draw.
        alpha: tint strength for merged groups, in (0, 1].
        borders: draw 1-pixel borders around merged groups.
        scale: integer nearest-neighbour upscaling before drawing (small images, e.g. 28 px).

    Returns:
        An RGB image of the input's size times ``scale``; equal to the input (as RGB) when no
        patch was dropped or merged.
    """
    if not (isinstance(alpha, (int, float)) and 0 < alpha <= 1):
        raise ValueError(f"alpha must be a number in (0, 1], got {alpha!r}")
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    labels = patch_groups(state, grid, num_prefix, sample)
    rgb = to_rgb_array(image)
    _check_image_size(rgb.shape[:2], labels.shape, patch_size)
    if scale > 1:
        rgb = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
    lab = _pixel_labels(labels, rgb.shape[:2])
    out = rgb.astype(np.float32)
    _grey_dropped(out, lab, labels.shape)
    merged = lab > KEPT
    if merged.any():
        colors = group_colors(int(labels.max())).astype(np.float32)
        out[merged] = (1 - alpha) * out[merged] + alpha * colors[lab[merged] - 1]
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    if borders and merged.any():
        out[_border_mask(lab)] = _BORDER
    return Image.fromarray(out, "RGB")


def _check_image_size(
    size: tuple[int, int], grid: tuple[int, int], patch_size: int | tuple[int, int] | None
) -> None:
    """Raise ValueError unless an image of ``size`` (h, w) pixels can show the patch ``grid``:
    at least one pixel per patch, and exactly ``grid * patch_size`` pixels when a patch size
    is given."""
    (h, w), (gh, gw) = size, grid
    if patch_size is not None:
        ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        if (h, w) != (gh * ph, gw * pw):
            raise ValueError(
                f"image is {h}x{w} pixels but grid {gh}x{gw} with patch_size {ph}x{pw} covers "
                f"{gh * ph}x{gw * pw}"
            )
    if h < gh or w < gw:
        raise ValueError(f"image is {h}x{w} pixels, smaller than the {gh}x{gw} patch grid")


def _pixel_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The patch label of every pixel of an image of ``size`` (h, w): patches are placed
    proportionally, so any display size works."""
    (h, w), (gh, gw) = size, labels.shape
    return labels[(np.arange(h) * gh) // h][:, (np.arange(w) * gw) // w]


def _grey_dropped(out: np.ndarray, lab: np.ndarray, grid: tuple[int, int]) -> None:
    """Grey out, darken and hatch the pixels of dropped patches in ``out`` (h, w, 3) float, in
    place; ``lab`` (h, w) is the pixel labels, ``grid`` the patch grid."""
    dropped = lab == DROPPED
    if not dropped.any():
        return
    (h, w), (gh, gw) = lab.shape, grid
    lum = out[dropped] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out[dropped] = (lum * _DROP_GAIN + _DROP_FLOOR)[:, None]
    # Faint diagonal hatching keeps dropped patches apart from kept dark ones.
    period = max(3, round(min(h / gh, w / gw) / 4))
    hatch = ((np.arange(h)[:, None] + np.arange(w)[None, :]) % period == 0) & dropped
    out[hatch] += _HATCH


def _border_mask(lab: np.ndarray) -> np.ndarray:
    """1-pixel lines where a merged group meets a different label, on the merged side."""
    mask = np.zeros(lab.shape, dtype=bool)
    for axis in (0, 1):
        a = lab[:-1] if axis == 0 else lab[:, :-1]
        b = lab[1:] if axis == 0 else lab[:, 1:]
        edge = (a != b) & ((a > KEPT) | (b > KEPT))
        first = edge & (a > KEPT)  # mark the first pixel when it is merged, else the second
        second = edge & ~first
        if axis == 0:
            mask[:-1] |= first
            mask[1:] |= second
        else:
            mask[:, :-1] |= first
            mask[:, 1:] |= second
    return mask


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """Convert a display image to an HxWx3 uint8 array (grayscale is repeated on 3 channels)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        return _tensor_to_rgb(image)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    raise TypeError(
        f"image must be a PIL image, a numpy array (H, W[, C]) or a torch tensor (C, H, W), "
        f"got {type(image).__name__}"
    )


def _tensor_to_rgb(t: torch.Tensor) -> np.ndarray:
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ValueError(
            f"an image tensor must be (C, H, W) or (1, C, H, W) with C in 1 or 3, "
            f"got shape {tuple(t.shape)}"
        )
    x = t.detach().cpu()
    if x.dtype == torch.uint8:
        x = x.float() / 255
    x = x.float()
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:  # a normalised model input: stretch to [0, 1] for display
        x = (x - lo) / max(hi - lo, 1e-12)
    arr = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


def _array_to_rgb(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"an image array must be (H, W) or (H, W, C) with C in 1, 3 or 4, got shape {a.shape}"
        )
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating) or a.min() < 0 or a.max() > 1:
            raise ValueError(
                f"an image array must be uint8, or float with values in [0, 1]; got {a.dtype} "
                f"with range [{a.min()}, {a.max()}]"
            )
        a = (a * 255).round().astype(np.uint8)
    a = a[:, :, :3]
    return np.ascontiguousarray(np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a)


def _check_grid(grid) -> tuple[int, int]:
    ok = (
        isinstance(grid, (tuple, list))
        and len(grid) == 2
        and all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in grid)
    )
    if not ok:
        raise ValueError(f"grid must be (rows, cols) with two integers >= 1, got {grid!r}")
    return int(grid[0]), int(grid[1])


# -- one call: patch, run, draw, restore -----------------------------------------------------
def visualize(
    model: nn.Module,
    image_tensor: torch.Tensor,
    method,
    image_for_display: ImageLike | None = None,
    **map_kwargs,
) -> Image.Image:
    """Patch ``model`` with ``method``, run one forward on one image, return its token map.

    Args:
        model: a model :func:`tokenreduce.patch` supports (not already patched).
        image_tensor: the model input, (C, H, W) or (1, C, H, W), already normalised.
        method: a method object or spec string, e.g. ``"tome:r=13"``.
        image_for_display: what to draw on (e.g. the unnormalised photo); defaults to
            ``image_tensor`` min-max rescaled.
        **map_kwargs: passed to :func:`token_map` (``alpha``, ``borders``, ``scale``).

    The model is restored before returning, whatever happens.
    """
    from .api import patch

    if not isinstance(image_tensor, torch.Tensor):
        raise TypeError(f"image_tensor must be a torch tensor, got {type(image_tensor).__name__}")
    x = image_tensor[None] if image_tensor.dim() == 3 else image_tensor
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(
            f"image_tensor must be one image, (C, H, W) or (1, C, H, W); got shape "
            f"{tuple(image_tensor.shape)}"
        )
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(param.device)
    with patch(model, method) as handle, torch.no_grad():
        model(x)
        state, info = handle.state, handle.info
        grid = getattr(handle.trace, "grid", None)  # this image's, which may differ from info.grid
    if grid is None or state is None:
        raise ValueError(f"{info.family} has no patch grid to draw tokens on")
    display = image_tensor if image_for_display is None else image_for_display
    return token_map(display, state, grid, info.num_prefix, **map_kwargs)


# -- several maps in one figure --------------------------------------------------------------
def grid_figure(
    images: Sequence[Image.Image],
    titles: Sequence[str] | None = None,
    *,
    columns: int | None = None,
    min_tile: int = 192,
    pad: int = 8,
    legend: bool = True,
) -> Image.Image:
    """Lay token maps side by side with a title above each, into one RGB image.

    Tiles smaller than ``min_tile`` pixels are upscaled by an integer factor (nearest
    neighbour) so small inputs stay readable. ``columns`` defaults to all in one row.
    ``legend`` adds a key for kept / dropped / merged at the bottom.
    """
    images = list(images)
    if not images or not all(isinstance(im, Image.Image) for im in images):
        raise ValueError("images must be a non-empty sequence of PIL images")
    titles = [""] * len(images) if titles is None else [str(t) for t in titles]
    if len(titles) != len(images):
        raise ValueError(f"got {len(titles)} titles for {len(images)} images")
    cols = len(images) if columns is None else columns
    if not isinstance(cols, int) or cols < 1:
        raise ValueError(f"columns must be an integer >= 1, got {columns!r}")
    cols = min(cols, len(images))
    tw = max(im.width for im in images)
    th = max(im.height for im in images)
    factor = max(1, math.ceil(min_tile / max(tw, th)))
    tw, th = tw * factor, th * factor
    font = _font(max(12, min(20, tw // 14)))
    text_h = _text_size(font, "Ag")[1] + pad
    rows = math.ceil(len(images) / cols)
    legend_h = text_h + pad if legend else 0
    width = cols * (tw + pad) + pad
    if legend:
        width = max(width, _draw_legend(None, font, pad, 0, text_h - pad) + pad)
    fig = Image.new("RGB", (width, rows * (th + text_h + pad) + pad + legend_h), "white")
    draw = ImageDraw.Draw(fig)
    for i, (im, title) in enumerate(zip(images, titles, strict=True)):
        r, c = divmod(i, cols)
        x0, y0 = pad + c * (tw + pad), pad + r * (th + text_h + pad)
        tile = im.convert("RGB")
        if factor > 1:
            tile = tile.resize((im.width * factor, im.height * factor), Image.Resampling.NEAREST)
        text_w = _text_size(font, title)[0]
        draw.text((x0 + (tw - text_w) // 2, y0), title, fill="black", font=font)
        fig.paste(tile, (x0 + (tw - tile.width) // 2, y0 + text_h))
    if legend:
        _draw_legend(draw, font, pad, fig.height - legend_h, text_h - pad)
    return fig


def _draw_legend(draw: ImageDraw.ImageDraw | None, font, x: int, y: int, size: int) -> int:
    """Draw the key at (x, y) (only measure it when ``draw`` is None); return its right end."""
    grey = int(128 * _DROP_GAIN + _DROP_FLOOR)
    colors = [tuple(int(v) for v in c) for c in group_colors(3)]
    entries = [
        ([(255, 255, 255)], "kept (image unchanged)"),
        ([(grey, grey, grey)], "dropped"),
        (colors, "merged (one colour per group)"),
    ]
    for swatches, label in entries:
        for col in swatches:
            if draw is None:
                x += size + 2
                continue
            draw.rectangle([x, y, x + size, y + size], fill=col, outline=_BORDER)
            if label == "dropped":  # the hatching of dropped patches
                hatch = tuple(int(min(255, v + _HATCH)) for v in col)
                for d in range(4, 2 * size, 4):
                    a, b = max(0, d - size), min(d, size)
                    draw.line([x + a + 1, y + d - a, x + b, y + d - b + 1], fill=hatch)
            x += size + 2
        if draw is not None:
            draw.text((x + 2, y), label, fill="black", font=font)
        x += _text_size(font, label)[0] + 2 * size
    return x - size


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text or " ")
    return right - left, bottom
