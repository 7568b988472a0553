"""Every registered model family, on each of its example models (``Adapter.examples``), with
every registered method of a kind it accepts: the family and the method are tested here the
moment they are registered, with no table to edit."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.adapters import ADAPTERS, find_adapter
from tokenreduce.methods import available, get

from ..conftest import identity, images, output, placed

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def fits(adapter, method) -> bool:
    """Whether the family can take the method: a text encoder has no patch grid, a text-only
    language model no image tokens, and only a vision-language model gives the instruction a
    method may read (``needs_query``)."""
    if adapter.kind == "language" and getattr(method, "needs_images", False):
        return False
    if adapter.kind != "vision-language" and getattr(method, "needs_query", False):
        return False
    return not (adapter.kind == "text" and getattr(method, "needs_grid", False))


CASES = [
    pytest.param(adapter, example, name, id=f"{example}-{name}")
    for adapter in ADAPTERS
    for example in adapter.examples()
    for name in available()
    if issubclass(get(name), adapter.accepts) and fits(adapter, get(name))
]


def inputs(model: torch.nn.Module, adapter) -> tuple[tuple, dict]:
    """Two images for a vision model; two prompts, the second left-padded, for a decoder; for
    a vision-language model, its family's example batch (prompts with an image each); for a
    text encoder, two sentences, the second right-padded; for a diffusion model, its
    family's example batch (two latents at different timesteps, with their conditioning)."""
    if adapter.kind == "diffusion":
        return (), adapter.example_batch(model)
    if adapter.kind == "vision":
        return (images(2),), {}
    if adapter.kind == "vision-language":
        return (), {**adapter.example_batch(model), "use_cache": True}
    g = torch.Generator().manual_seed(0)
    if adapter.kind == "text":
        ids = torch.randint(5, model.config.vocab_size, (2, 16), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 11:] = 0
        return (ids,), {"attention_mask": mask}
    ids = torch.randint(10, model.config.vocab_size, (2, 16), generator=g)  # within windows
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return (ids,), {"attention_mask": mask, "use_cache": True}


def test_every_family_gives_example_models():
    for adapter in ADAPTERS:
        examples = adapter.examples()
        assert examples, f"{adapter.__name__} gives no example model"
        for name, build in examples.items():
            assert find_adapter(build()) is adapter, f"{name} is not matched by its family"


@pytest.mark.parametrize(("adapter", "example", "name"), CASES)
@torch.no_grad()
def test_every_family_runs_every_method_it_accepts(adapter, example, name):
    model = adapter.examples()[example]()
    args, kwargs = inputs(model, adapter)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    plain = output(model(*args, **kwargs))
    with tokenreduce.patch(model, identity(name, model)):
        assert torch.equal(output(model(*args, **kwargs)), plain), "zero budget changed outputs"
    with tokenreduce.patch(model, placed(name, model)) as handle:
        # a diffusion model's forward is one denoising step: caching methods reuse features
        # from the second step of a run on (the same timesteps continue the run)
        for _ in range(2 if adapter.kind == "diffusion" else 1):
            reduced = output(model(*args, **kwargs))  # the guard raises if nothing was reduced
    assert handle.gflops() < handle.baseline_gflops() or not torch.equal(reduced, plain)
    assert torch.equal(output(model(*args, **kwargs)), plain), "unpatch left a change"
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
