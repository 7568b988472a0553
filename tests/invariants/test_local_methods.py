"""The shared invariants for local-site methods (kind ``"local"``) on every diffusion family's
example models: after every reduced sub-layer the token count is whole again, a batch equals
its samples one by one (each sample's draws are seeded by its own timestep), the same seed
gives the same result, and zero ratio and unpatch leave the model as it was (the identity
and unpatch checks of every family are in ``test_every_family.py``).

Each case runs two forwards, as two steps of one sampling run (the same timesteps continue a
run), so a caching method is checked on a step that reuses its cache."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.adapters import ADAPTERS
from tokenreduce.methods import LocalMethod, available, get

from ..conftest import output, placed

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

DIFFUSION = [a for a in ADAPTERS if a.kind == "diffusion"]
LOCAL_METHODS = [n for n in available() if issubclass(get(n), LocalMethod)]
CASES = [
    pytest.param(adapter, example, name, id=f"{example}-{name}")
    for adapter in DIFFUSION
    for example in adapter.examples()
    for name in LOCAL_METHODS
]


def two_steps(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The output of the second of two forwards at the same timesteps."""
    model(**batch)
    return output(model(**batch))


def patched_steps(model: torch.nn.Module, name: str, batch: dict) -> torch.Tensor:
    """:func:`two_steps` of a sampling run of its own: patched, run, unpatched."""
    with tokenreduce.patch(model, placed(name, model)):
        return two_steps(model, batch)


def sample(batch: dict, i: int, size: int) -> dict:
    """Sample ``i`` of a batch of ``size`` as a batch of one (non-tensor values unchanged)."""
    return {k: v[i : i + 1] if torch.is_tensor(v) and v.shape[:1] == (size,) else v
            for k, v in batch.items()}  # fmt: skip


@pytest.mark.parametrize(("adapter", "example", "name"), CASES)
@torch.no_grad()
def test_a_batch_equals_its_samples(adapter, example, name):
    model = adapter.examples()[example]()
    batch = adapter.example_batch(model, batch=3)
    together = patched_steps(model, name, batch)
    alone = torch.cat([patched_steps(model, name, sample(batch, i, 3)) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("adapter", "example", "name"), CASES)
@torch.no_grad()
def test_every_reduced_sublayer_gives_back_every_token(adapter, example, name):
    model = adapter.examples()[example]()
    batch = adapter.example_batch(model)
    shapes: list[tuple[int, int]] = []
    hooks = [m.register_forward_hook(lambda _m, a, o: shapes.append((a[0].shape[1], o.shape[1])))
             for m in model.modules() if type(m).__name__ in ("Attention", "FeedForward")]  # fmt: skip
    with tokenreduce.patch(model, placed(name, model)) as handle:
        two_steps(model, batch)
    for hook in hooks:
        hook.remove()
    assert shapes and all(n_in == n_out for n_in, n_out in shapes)
    ran = [(c.tokens, c.full) for c in handle.trace.calls]
    assert any(tokens < full for tokens, full in ran), f"{name} reduced no sub-layer"


@pytest.mark.parametrize(("adapter", "example", "name"), CASES)
@torch.no_grad()
def test_same_seed_same_result_and_unpatch_restores(adapter, example, name):
    model = adapter.examples()[example]()
    batch = adapter.example_batch(model)
    plain = output(model(**batch))
    runs = [patched_steps(model, name, batch) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], plain)
    assert torch.equal(output(model(**batch)), plain)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", LOCAL_METHODS)
@torch.no_grad()
def test_half_precision_runs(name, dtype):
    adapter = DIFFUSION[0]
    model = next(iter(adapter.examples().values()))().to(dtype)
    batch = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
             for k, v in adapter.example_batch(model).items()}  # fmt: skip
    out = patched_steps(model, name, batch)
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
