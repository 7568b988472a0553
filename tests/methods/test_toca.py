"""ToCa: full refreshes every ``interval`` steps, partial recomputation between them, the
tokens chosen by drift and staleness, and a new sampling run detected by its timestep."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.adapters import DiffusersDiTAdapter
from tokenreduce.core.context import ModelInfo
from tokenreduce.methods import ToCa

from ..conftest import output

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
pytest.importorskip("diffusers")


def steps(model, batch: dict, timesteps) -> list[tuple[torch.Tensor, list[int]]]:
    """Each step's output and the token counts self-attention ran on."""
    handle = tokenreduce.handle_of(model)
    seen = []
    for t in timesteps:
        out = output(model(**{**batch, "timestep": torch.full((2,), t)}))
        seen.append((out, list(handle.trace.attn_tokens)))
    return seen


@torch.no_grad()
def test_refresh_every_interval_steps_and_reuse_between():
    model = DiffusersDiTAdapter.examples()["diffusers_dit"]()
    batch = DiffusersDiTAdapter.example_batch(model)
    plain = output(model(**{**batch, "timestep": torch.full((2,), 900)}))
    with tokenreduce.patch(model, "toca:ratio=0.75,interval=3"):
        run = steps(model, batch, [900, 800, 700, 600, 500])
        again = steps(model, batch, [900, 800])  # a higher timestep: a new run
    assert [counts for _, counts in run] == [[64, 64], [16, 16], [16, 16], [64, 64], [16, 16]]
    assert torch.equal(run[0][0], plain)  # a refresh step computes everything
    assert again[1][1] == [16, 16] and torch.equal(again[0][0], plain)
    assert torch.equal(again[1][0], run[1][0])  # the cache was emptied, not carried over


def test_the_most_drifted_and_the_longest_cached_tokens_are_recomputed():
    from tokenreduce.methods.toca import CachedOutput

    method = ToCa(ratio=0.5, staleness=0.0)
    inputs = torch.ones(1, 4, 2)
    cached = CachedOutput(torch.zeros(1, 4, 3), inputs, torch.zeros(1, 4, dtype=torch.long))
    x = inputs.clone()
    x[0, 1] += 2.0
    x[0, 3] += 1.0
    assert method.fresh_tokens(x, cached).tolist() == [[1, 3]]
    stale = ToCa(ratio=0.5, staleness=10.0)
    old = CachedOutput(cached.outputs, inputs, torch.tensor([[5, 0, 4, 0]]))
    assert stale.fresh_tokens(x, old).tolist() == [[0, 2]]


def test_refresh_without_a_cache_keeps_state_in_the_run_not_the_method():
    method = ToCa()
    info = ModelInfo("test", 2, 0, False, (8, 8), "diffusion")
    first, second = method.start(info), method.start(info)
    first.start_call(torch.tensor([900.0]))
    first.start_call(torch.tensor([800.0]))
    second.start_call(torch.tensor([900.0]))
    assert (first.step, second.step) == (1, 0)
