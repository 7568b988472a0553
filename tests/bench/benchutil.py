"""Helpers for the benchmark tests: a tiny IDX data set, tiny ViT checkpoints, fast options."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import torch

TINY_ARCH = {
    "img_size": 28,
    "patch_size": 7,
    "in_chans": 1,
    "num_classes": 10,
    "embed_dim": 16,
    "depth": 4,
    "num_heads": 2,
    "mlp_ratio": 2.0,
}
#: the tiny Llama of ``conftest.tiny_lm``: layers, KV heads and their width
LAYERS, KV_HEADS, HEAD_DIM = 4, 2, 16


def write_idx(folder: Path, n: int = 40, seed: int = 0) -> Path:
    """Fashion-MNIST-shaped test split (IDX, gzip) with ``n`` random images and labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + labels.tobytes())
    return folder


def tiny_vit(arch: dict | None = None, seed: int = 0):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    return VisionTransformer(class_token=True, global_pool="token", **(arch or TINY_ARCH)).eval()


def write_arch_checkpoint(file: Path, arch: dict | None = None, seed: int = 0) -> Path:
    """A checkpoint in the bundled format: weights plus the ViT arguments as metadata."""
    from safetensors.torch import save_file

    arch = arch or TINY_ARCH
    model = tiny_vit(arch, seed)
    file.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(file), metadata={"arch": json.dumps(arch)})
    return file


def fast_args(ckpt: Path, data: Path, db: Path, out: Path) -> list[str]:
    """bench options for a sweep that takes seconds on the tiny model."""
    return [
        "--model",
        str(ckpt),
        "--data",
        str(data),
        "--db",
        str(db),
        "--out",
        str(out),
        "--limit",
        "20",
        "--batch-size",
        "10",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--threads",
        "1",
    ]


def write_tiny_dinov2(folder: Path, seed: int = 0) -> Path:
    """A Hugging Face folder (config.json + safetensors) holding a tiny random DINOv2: 32x32
    inputs, patch 4 (an 8x8 grid), 4 blocks, width 48. It has no image processor, so tasks
    fall back to its config's image size with ImageNet statistics."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.Dinov2Config(
        image_size=32,
        patch_size=4,
        num_hidden_layers=4,
        hidden_size=48,
        num_attention_heads=3,
        mlp_ratio=2,
    )
    transformers.Dinov2Model(config).eval().save_pretrained(str(folder))
    return folder


def stored_rows(db: Path) -> list[tuple[str, str, dict]]:
    """``(task, config, metrics)`` of every stored result, in the order they were stored."""
    import sqlite3

    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT task, config, metrics FROM results ORDER BY id").fetchall()
    finally:
        con.close()
    return [(t, c, json.loads(m)) for t, c, m in rows]
