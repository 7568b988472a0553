"""Fixtures for the benchmark tests: a tiny IDX data set and a tiny ViT checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchutil import write_arch_checkpoint, write_idx


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return write_arch_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")
