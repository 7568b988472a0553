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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module, as sweeps with --threads 1 run; restored afterwards.
    (On a loaded machine, two threads spin on a tiny model's many small operations.)"""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
