"""Local sites undo their reduction right after a sub-layer (merge, attend, unmerge), for
every token method, on the test-only diffusion transformer."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.core.reducers import topk_prune
from tokenreduce.core.reduction import Reduction

from ..conftest import identity, placed
from .toy_dit import ToyDiT
from .util import TOKEN_METHODS


@pytest.fixture
def dit() -> ToyDiT:
    torch.manual_seed(0)
    return ToyDiT().eval()


def latents(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 64, 4, generator=torch.Generator().manual_seed(seed))


def attention_inputs(dit: ToyDiT) -> tuple[list[int], list]:
    """Token counts the blocks' self-attention receives, recorded per call."""
    seen: list[int] = []
    hooks = [blk.attn.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
             for blk in dit.blocks]  # fmt: skip
    return seen, hooks


@pytest.mark.parametrize("name", TOKEN_METHODS)
def test_attention_runs_on_fewer_tokens_and_the_grid_is_whole_again(dit, name):
    x = latents()
    method = placed(name, dit)
    with tokenreduce.patch(dit, method) as handle, torch.no_grad():
        seen, hooks = attention_inputs(dit)
        out = dit(x)
        alone = torch.cat([dit(x[:1]), dit(x[1:])])
        for h in hooks:
            h.remove()
    assert out.shape == x.shape  # unmerged back to the full 8x8 grid
    assert min(seen) < 64, f"{method!r} never reduced the tokens attention sees"
    assert handle.state.num_tokens == 64  # the reduction is undone: the state stays whole
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", TOKEN_METHODS)
def test_local_site_at_zero_budget_is_the_identity(dit, name):
    x = latents()
    with torch.no_grad():
        plain = dit(x)
        with tokenreduce.patch(dit, identity(name, dit)):
            assert torch.equal(dit(x), plain)
        assert torch.equal(dit(x), plain)


def test_unmerge_copies_a_slot_to_its_members_and_zeroes_dropped_tokens():
    x = torch.randn(1, 5, 3)
    merge = Reduction.from_groups(
        torch.tensor([[0, 0, 2, 2, 2]]), torch.ones(1, 5), torch.tensor([[1, 0, 1, 0, 0]]).bool()
    )
    out, dropped = merge.unmerge(merge.apply(x))  # the sub-layer here is the identity
    torch.testing.assert_close(out[0, :2], x[0, :2].mean(0).expand(2, 3))
    torch.testing.assert_close(out[0, 2:], x[0, 2:].mean(0).expand(3, 3))
    assert not dropped.any()
    prune = topk_prune(torch.tensor([[5.0, 1.0, 4.0, 0.0, 3.0]]), 3, torch.zeros(1, 5).bool())
    out, dropped = prune.unmerge(prune.apply(x))
    assert dropped.tolist() == [[False, True, False, True, False]]
    assert torch.equal(out[0, [0, 2, 4]], x[0, [0, 2, 4]]) and not out[0, [1, 3]].any()
