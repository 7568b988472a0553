"""Padded batches whose samples have different real lengths reduce per sample, for every
token method, on the test-only text encoder (per-sample valid masks in ``TokenState``)."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.methods import InvalidParameter, get

from ..conftest import identity, placed
from .toy_encoder import ToyEncoder
from .util import TOKEN_METHODS

LENGTHS = (12, 7, 4)


def padded_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (3, 12) with [CLS] (id 2) first, and their attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(LENGTHS), max(LENGTHS), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(LENGTHS):
        ids[b, :n] = torch.randint(3, 40, (n,), generator=g)
        ids[b, 0] = 2
        mask[b, :n] = 1
    return ids, mask


@pytest.fixture
def encoder() -> ToyEncoder:
    torch.manual_seed(0)
    return ToyEncoder().eval()


def pooled(hidden: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Size-weighted mean over tokens (padding has size 0): (B, dim)."""
    w = size.to(hidden.dtype)[..., None]
    return (hidden * w).sum(1) / w.sum(1)


def grid_free(name: str) -> bool:
    return not get(name).needs_grid


@pytest.mark.parametrize("name", [n for n in TOKEN_METHODS if grid_free(n)])
def test_padded_batch_equals_samples_one_by_one(encoder, name):
    ids, mask = padded_batch()
    method = placed(name, encoder)
    with tokenreduce.patch(encoder, method) as handle, torch.no_grad():
        batched = encoder(ids, mask)
        state = handle.state
        alone = []
        for b, n in enumerate(LENGTHS):
            out = encoder(ids[b : b + 1, :n], mask[b : b + 1, :n])
            alone.append((out, handle.state))
    assert state.ragged, "a padded batch keeps its per-sample valid mask"
    reduced = False
    for b, (out, one) in enumerate(alone):
        real = state.valid[b]
        assert int(real.sum()) == one.num_tokens  # the sample's own count survives
        assert torch.equal(state.position[b, real], one.position[0])
        assert torch.equal(state.size[b, real], one.size[0])
        assert not state.size[b, ~real].any()  # padding slots stand for no token
        assert bool(state.protected[b, 0]) and state.position[b, 0] == 0  # [CLS] survives
        torch.testing.assert_close(
            pooled(batched[b : b + 1], state.size[b : b + 1]), pooled(out, one.size),
            atol=1e-5, rtol=1e-4,
        )  # fmt: skip
        reduced |= one.num_tokens < LENGTHS[b]
    assert reduced, f"{method!r} removed nothing from any sample"


@pytest.mark.parametrize("name", [n for n in TOKEN_METHODS if grid_free(n)])
def test_padded_batch_at_zero_budget_is_the_identity(encoder, name):
    ids, mask = padded_batch()
    with torch.no_grad():
        plain = encoder(ids, mask)
        with tokenreduce.patch(encoder, identity(name, encoder)) as handle:
            out = encoder(ids, mask)
    assert torch.equal(out, plain)
    assert torch.equal(handle.state.valid, mask.bool())


def test_padding_stands_for_no_original_token(encoder):
    ids, mask = padded_batch()
    with tokenreduce.patch(encoder, None) as handle, torch.no_grad():
        encoder(ids, mask)
    assert handle.state.size.sum(1).tolist() == list(map(float, LENGTHS))


def test_a_method_that_needs_a_grid_is_refused_on_text(encoder):
    with pytest.raises(InvalidParameter, match="needs a patch grid"):
        tokenreduce.patch(encoder, placed("pool", encoder))


def test_unpatch_restores_the_encoder(encoder):
    ids, mask = padded_batch()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    with torch.no_grad():
        plain = encoder(ids, mask)
        with tokenreduce.patch(encoder, placed("topk", encoder)):
            encoder(ids, mask)
        assert torch.equal(encoder(ids, mask), plain)
    assert all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())
