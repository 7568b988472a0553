"""The Fashion-MNIST loader on tiny IDX files written here, and ``preprocess``."""

from __future__ import annotations

import gzip
import importlib
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from tokenreduce.data import fashion_mnist, preprocess

# The module, not the function of the same name that the package re-exports.
fm = importlib.import_module("tokenreduce.data.fashion_mnist")


def write_idx(file: Path, array: np.ndarray, magic: int | None = None) -> None:
    """Write ``array`` (uint8) as a gzip IDX file; ``magic`` overrides the header's magic."""
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(file, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_split(folder: Path, prefix: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return images, labels


@pytest.fixture
def no_system_data(monkeypatch, tmp_path):
    """Hide $TOKENREDUCE_DATA and the Debian folder, so only what a test sets up is found."""
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")


def test_explicit_path_values_labels_shapes(tmp_path, no_system_data):
    images, labels = make_split(tmp_path / "a", "t10k", 7, seed=1)
    train_images, train_labels = make_split(tmp_path / "a", "train", 5, seed=2)
    x, y = fashion_mnist("test", tmp_path / "a")
    assert x.shape == (7, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (7,) and y.dtype == torch.int64
    assert torch.equal(x, torch.from_numpy(images))
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    x, y = fashion_mnist("train", str(tmp_path / "a"))
    assert torch.equal(x, torch.from_numpy(train_images))
    assert torch.equal(y, torch.from_numpy(train_labels.astype(np.int64)))


def test_search_order(tmp_path, monkeypatch, no_system_data):
    explicit, _ = make_split(tmp_path / "explicit", "t10k", 3, seed=1)
    env, _ = make_split(tmp_path / "env", "t10k", 4, seed=2)
    debian, _ = make_split(tmp_path / "debian", "t10k", 5, seed=3)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    # Debian folder alone
    assert torch.equal(fashion_mnist("test")[0], torch.from_numpy(debian))
    # $TOKENREDUCE_DATA beats the Debian folder
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path / "env"))
    assert torch.equal(fashion_mnist("test")[0], torch.from_numpy(env))
    # an explicit path beats both
    assert torch.equal(fashion_mnist("test", tmp_path / "explicit")[0], torch.from_numpy(explicit))
    # an env folder without the files falls through to Debian
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path / "empty"))
    assert torch.equal(fashion_mnist("test")[0], torch.from_numpy(debian))


def test_explicit_path_without_files_is_an_error(tmp_path, no_system_data):
    make_split(tmp_path / "env", "t10k", 3, seed=1)
    with pytest.raises(fm.DataNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        fashion_mnist("test", tmp_path / "nowhere")


def test_bad_magic_raises(tmp_path, no_system_data):
    make_split(tmp_path, "t10k", 3, seed=1)
    labels = np.zeros(3, dtype=np.uint8)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, magic=0x00000803)
    with pytest.raises(ValueError, match="bad IDX magic number 0x00000803, expected 0x00000801"):
        fashion_mnist("test", tmp_path)


def test_truncated_and_wrong_shape_raise(tmp_path, no_system_data):
    make_split(tmp_path, "t10k", 3, seed=1)
    file = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = gzip.decompress(file.read_bytes())
    file.write_bytes(gzip.compress(data[:-10]))
    with pytest.raises(ValueError, match="data bytes"):
        fashion_mnist("test", tmp_path)
    write_idx(file, np.zeros((3, 32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"expected \(N, 28, 28\)"):
        fashion_mnist("test", tmp_path)
    write_idx(file, np.zeros((4, 28, 28), dtype=np.uint8))
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        fashion_mnist("test", tmp_path)


def test_bad_split(tmp_path):
    with pytest.raises(ValueError, match="'val' is not a Fashion-MNIST split"):
        fashion_mnist("val", tmp_path)


def test_missing_data_says_how_to_get_it(no_system_data):
    with pytest.raises(fm.DataNotFoundError) as e:
        fashion_mnist("test", download=False)
    assert "apt-get install dataset-fashion-mnist" in str(e.value)
    assert fm.ENV_VAR in str(e.value)


def test_failed_download_says_how_to_get_it(monkeypatch, tmp_path, no_system_data):
    """Offline, the torchvision fallback fails; the error still says how to get the data."""

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    fake = types.ModuleType("torchvision.datasets")
    fake.FashionMNIST = offline
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(fm.DataNotFoundError) as e:
        fashion_mnist("train")
    assert "apt-get install dataset-fashion-mnist" in str(e.value)
    assert "network is unreachable" in str(e.value)


class _Cfg(torch.nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.pretrained_cfg = cfg


def test_preprocess_resizes_and_normalises():
    images = torch.zeros(2, 28, 28, dtype=torch.uint8)
    images[1] = 255
    model = _Cfg({"input_size": (1, 56, 56), "mean": (0.25,), "std": (0.5,)})
    x = preprocess(images, model)
    assert x.shape == (2, 1, 56, 56) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], torch.full((1, 56, 56), -0.5))
    torch.testing.assert_close(x[1], torch.full((1, 56, 56), 1.5))
    rgb = _Cfg({"input_size": (3, 32, 32), "mean": (0.0, 0.5, 1.0), "std": (1.0, 1.0, 1.0)})
    x = preprocess(images, rgb)
    assert x.shape == (2, 3, 32, 32)
    torch.testing.assert_close(x[1, :, 0, 0], torch.tensor([1.0, 0.5, 0.0]))


def test_preprocess_rejects_float_input():
    with pytest.raises(TypeError, match="uint8"):
        preprocess(torch.zeros(1, 28, 28), _Cfg({}))
