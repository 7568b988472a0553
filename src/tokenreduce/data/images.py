"""Real and synthetic images that load offline: scikit-image's photos and easy-VQA's shapes.

* :func:`photos`: natural photos bundled with scikit-image (``skimage.data``; only loaders
  that read files shipped with the package, none that download).
* :func:`easy_vqa_images`: the 64 x 64 synthetic-shape PNGs of the ``easy-vqa`` package
  (a circle, rectangle or triangle of one colour on a plain background), read in the order of
  their image id.

Both return HxWx3 uint8 arrays (grey photos are repeated on three channels).
"""

from __future__ import annotations

import numpy as np

#: scikit-image photos used by the benchmarks (all ship with the package)
PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "stereo_motorcycle",
    "camera",
)


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.stack([image] * 3, -1)
    image = image[..., :3]
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {image.dtype}")
    return np.ascontiguousarray(image)


def photos(names: tuple[str, ...] = PHOTOS) -> list[np.ndarray]:
    """The scikit-image photos called ``names`` (HxWx3 uint8; a stereo pair gives its left
    view)."""
    try:
        from skimage import data
    except ImportError:
        raise ImportError(
            "the photos come from scikit-image: pip install 'tokenreduce[bench]'"
        ) from None
    out = []
    for name in names:
        loader = getattr(data, name, None)
        if loader is None:
            raise ValueError(f"skimage.data has no image {name!r}; try one of {PHOTOS}")
        image = loader()
        out.append(_rgb(image[0] if isinstance(image, tuple) else image))
    return out


def easy_vqa_images(count: int, split: str = "test") -> list[np.ndarray]:
    """The first ``count`` easy-VQA images of ``split`` ("train" or "test"), by image id."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    try:
        import easy_vqa
    except ImportError:
        raise ImportError(
            "the easy-VQA images come from the easy-vqa package: pip install 'tokenreduce[bench]'"
        ) from None
    from PIL import Image

    paths = (easy_vqa.get_test_image_paths if split == "test" else easy_vqa.get_train_image_paths)()
    ids = sorted(paths)
    if count > len(ids):
        raise ValueError(f"easy-VQA {split} has {len(ids)} images, asked for {count}")
    out = []
    for i in ids[:count]:
        with Image.open(paths[i]) as im:
            out.append(_rgb(np.array(im.convert("RGB"))))  # a writable copy
    return out
