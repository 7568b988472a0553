"""Synthetic shapes with exact segmentation masks, rendered from a seed at any size.

Each image has a smooth two-colour gradient background with pixel noise and 2 to 4 shapes
(circle, square, triangle; random size, position, rotation and colour, so colour says
nothing about the class). Classes: background, circle, square, triangle. Masks are exact per
pixel, so a per-patch predictor can be scored on every pixel.

>>> images, masks = shapes(8, seed=0, size=(224, 224))   # (8, 224, 224, 3) floats, (8, 224, 224)
>>> labels = patch_labels(masks, patch=(14, 14))         # (8, 256): majority class per patch
"""

from __future__ import annotations

import numpy as np

CLASSES = ("background", "circle", "square", "triangle")


def render(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One image (H, W, 3) of floats in [0, 1] and its class mask (H, W) int64."""
    h, w = size
    scale = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy) / scale
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    img = c0 + (c1 - c0) * ((t - t.min()) / (np.ptp(t) + 1e-9))[..., None]
    mask = np.zeros((h, w), dtype=np.int64)
    for _ in range(rng.integers(2, 5)):
        cls = int(rng.integers(1, 4))
        r = rng.uniform(0.09, 0.21) * scale  # circumradius
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        rot = rng.uniform(0, 2 * np.pi)
        u = np.cos(rot) * (xx - cx) + np.sin(rot) * (yy - cy)
        v = -np.sin(rot) * (xx - cx) + np.cos(rot) * (yy - cy)
        if cls == 1:
            inside = u**2 + v**2 <= r**2
        elif cls == 2:
            inside = (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
        else:  # equilateral triangle: three half-planes at distance r / 2 from the centre
            inside = np.ones_like(u, dtype=bool)
            for k in range(3):
                a = 2 * np.pi * k / 3
                inside &= np.cos(a) * u + np.sin(a) * v <= r / 2
        img[inside] = rng.uniform(0, 1, 3)
        mask[inside] = cls
    img = np.clip(img + rng.normal(0, 0.04, img.shape), 0, 1)
    return img, mask


def shapes(count: int, seed: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images (N, H, W, 3) float32 in [0, 1] and masks (N, H, W) from ``seed``."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    rng = np.random.default_rng(seed)
    images, masks = zip(*(render(rng, size) for _ in range(count)), strict=True)
    return np.stack(images).astype(np.float32), np.stack(masks)


def _patches(masks: np.ndarray, patch: tuple[int, int]) -> np.ndarray:
    """(N, H, W) -> (N, rows * cols, ph * pw): the pixels of every patch in raster order."""
    n, h, w = masks.shape
    ph, pw = patch
    if h % ph or w % pw:
        raise ValueError(f"mask size {h}x{w} is not a multiple of the patch size {ph}x{pw}")
    blocks = masks.reshape(n, h // ph, ph, w // pw, pw).transpose(0, 1, 3, 2, 4)
    return blocks.reshape(n, (h // ph) * (w // pw), ph * pw)


def patch_labels(masks: np.ndarray, patch: tuple[int, int]) -> np.ndarray:
    """The majority class of each patch's pixels: (N, rows * cols) int64."""
    pixels = _patches(masks, patch)
    counts = np.stack([(pixels == c).sum(-1) for c in range(len(CLASSES))], -1)
    return counts.argmax(-1)


def miou(patch_pred: np.ndarray, masks: np.ndarray, patch: tuple[int, int]) -> float:
    """Mean IoU over the classes of per-patch predictions (N, rows * cols), each patch's class
    painted on all its pixels and compared with the exact masks (N, H, W). A class absent from
    both prediction and truth counts as IoU 1."""
    pixels = _patches(masks, patch)
    pred = np.broadcast_to(patch_pred[..., None], pixels.shape)
    ious = []
    for c in range(len(CLASSES)):
        inter = np.logical_and(pred == c, pixels == c).sum()
        union = np.logical_or(pred == c, pixels == c).sum()
        ious.append(inter / union if union else 1.0)
    return float(np.mean(ious))
