"""Fashion-MNIST (Xiao et al., 2017) from local IDX files, with no network by default.

The files are looked up, in order, in an explicit ``path``, in ``$TOKENREDUCE_DATA``, in the
Debian package location ``/usr/share/datasets/fashion-mnist/`` (``apt-get install
dataset-fashion-mnist``), and finally fetched with torchvision when a network is reachable.
The IDX format is parsed here (gzip + numpy) so loading needs neither torchvision nor a
download.
"""

from __future__ import annotations

import gzip
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "TOKENREDUCE_DATA"
SPLITS = {"train": ("train", 60_000), "test": ("t10k", 10_000)}
LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# IDX magic: two zero bytes, a type code (0x08 = unsigned byte) and the number of dimensions.
_MAGIC_IMAGES = 0x00000803
_MAGIC_LABELS = 0x00000801

HOW_TO_GET = (
    "Fashion-MNIST was not found. Get it with one of:\n"
    "  sudo apt-get install dataset-fashion-mnist    (files land in /usr/share/datasets/fashion-mnist)\n"
    "  apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb DIR\n"
    f"      then export {ENV_VAR}=DIR/usr/share/datasets/fashion-mnist\n"
    f"  or point {ENV_VAR} (or path=) at a folder holding train-images-idx3-ubyte.gz,\n"
    "  train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz.\n"
    "(`./run bench` and `./run test` do the no-root extraction themselves.)"
)


class DataNotFoundError(FileNotFoundError):
    """Raised when no source of the data set is available; the message says how to get it."""


def _file_names(split: str) -> tuple[str, str]:
    prefix = SPLITS[split][0]
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


def _has_split(folder: Path, split: str) -> bool:
    return all((folder / name).is_file() for name in _file_names(split))


def find_fashion_mnist(split: str = "test", path: str | os.PathLike | None = None) -> Path | None:
    """Return the first local folder holding ``split``'s IDX files, or None.

    An explicit ``path`` that lacks the files is an error rather than a fall-through, so a
    typo never silently loads data from somewhere else.
    """
    _check_split(split)
    if path is not None:
        folder = Path(path)
        if not _has_split(folder, split):
            missing = [n for n in _file_names(split) if not (folder / n).is_file()]
            raise DataNotFoundError(f"path={str(path)!r} lacks {missing}.\n{HOW_TO_GET}")
        return folder
    env = os.environ.get(ENV_VAR)
    if env and _has_split(Path(env), split):
        return Path(env)
    if _has_split(DEBIAN_DIR, split):
        return DEBIAN_DIR
    return None


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a Fashion-MNIST split; use one of {list(SPLITS)}")


def read_idx(file: str | os.PathLike, magic: int, shape_tail: tuple[int, ...]) -> np.ndarray:
    """Read a gzip-compressed IDX file of unsigned bytes, checking its magic and shape.

    ``shape_tail`` is the expected shape after the first (count) dimension.
    """
    with gzip.open(file, "rb") as f:
        data = f.read()
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{file}: {len(data)} bytes is too short for an IDX header")
    (got,) = struct.unpack(">I", data[:4])
    if got != magic:
        raise ValueError(
            f"{file}: bad IDX magic number 0x{got:08x}, expected 0x{magic:08x} "
            f"(unsigned bytes, {ndim} dimensions); the file is not the expected IDX file"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if tuple(dims[1:]) != shape_tail:
        raise ValueError(
            f"{file}: IDX shape {dims}, expected (N, {', '.join(map(str, shape_tail))})"
        )
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise ValueError(
            f"{file}: {len(data) - header} data bytes, but the header {dims} announces {expected}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _load_folder(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    img_name, lab_name = _file_names(split)
    images = read_idx(folder / img_name, _MAGIC_IMAGES, (28, 28))
    labels = read_idx(folder / lab_name, _MAGIC_LABELS, ())
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} images but {len(labels)} labels for {split!r}")
    if labels.size and labels.max() >= len(LABELS):
        raise ValueError(f"{folder}: label {labels.max()} out of range 0..{len(LABELS) - 1}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def _download(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fetch with torchvision into a cache folder; raises DataNotFoundError when offline."""
    try:
        from torchvision.datasets import FashionMNIST
    except ImportError as e:
        raise DataNotFoundError(f"{HOW_TO_GET}\n(torchvision is not installed: {e})") from e
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tokenreduce"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        root = Path(tempfile.gettempdir()) / "tokenreduce"
    try:
        ds = FashionMNIST(str(root), train=split == "train", download=True)
    except Exception as e:  # torchvision raises URLError, RuntimeError, ... when offline
        raise DataNotFoundError(f"{HOW_TO_GET}\n(download failed: {e})") from e
    return ds.data.to(torch.uint8), ds.targets.to(torch.int64)


def fashion_mnist(
    split: str = "test", path: str | os.PathLike | None = None, *, download: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a Fashion-MNIST split.

    Returns ``(images, labels)``: uint8 images of shape (N, 28, 28) and int64 labels in 0..9
    (names in ``LABELS``). ``split`` is ``"train"`` (60,000) or ``"test"`` (10,000). The
    search order is ``path``, ``$TOKENREDUCE_DATA``, ``/usr/share/datasets/fashion-mnist``,
    then a torchvision download when ``download`` is true and the network is reachable;
    otherwise ``DataNotFoundError`` says how to get the files.
    """
    folder = find_fashion_mnist(split, path)
    if folder is not None:
        return _load_folder(folder, split)
    if not download:
        raise DataNotFoundError(HOW_TO_GET)
    return _download(split)


def preprocess(images: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Turn uint8 images (N, H, W) or (N, C, H, W) into the float input ``model`` expects.

    Reads ``model.pretrained_cfg``: ``input_size`` (C, H, W) sets the resize (bilinear) and
    the channel count (grey images are repeated to 3 channels when asked), ``mean``/``std``
    the normalisation. Missing keys fall back to no resize and ImageNet-free [0, 1] scaling.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"preprocess expects uint8 images, got {images.dtype}")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4:
        raise ValueError(f"preprocess expects (N, H, W) or (N, C, H, W), got {tuple(images.shape)}")
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    x = images.float().div_(255.0)
    c, h, w = cfg.get("input_size", (x.shape[1], x.shape[2], x.shape[3]))
    if x.shape[1] != c:
        if x.shape[1] != 1:
            raise ValueError(f"cannot turn {x.shape[1]}-channel images into {c} channels")
        x = x.expand(-1, c, -1, -1)
    if (x.shape[2], x.shape[3]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    mean = torch.tensor(cfg.get("mean", (0.0,) * c), dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(cfg.get("std", (1.0,) * c), dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std
