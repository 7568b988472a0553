"""The test-only families are registered for the tests of this folder only."""

from __future__ import annotations

import pytest

import tokenreduce.adapters as adapters

from .toy_dit import ToyDiTAdapter
from .toy_encoder import ToyEncoderAdapter
from .toy_vlm import ToyVLMAdapter


@pytest.fixture(autouse=True)
def toy_families(monkeypatch):
    monkeypatch.setattr(
        adapters, "ADAPTERS", [*adapters.ADAPTERS, ToyEncoderAdapter, ToyVLMAdapter, ToyDiTAdapter]
    )
