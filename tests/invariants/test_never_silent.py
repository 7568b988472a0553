"""Never silent, on every vision adapter: a patched model whose sites do not run in a forward
raises :class:`tokenreduce.ReductionNotApplied` instead of returning the unreduced output.
(The decoder adapter's own cases are in ``tests/adapters/test_lm_drift.py``.)"""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce import ReductionNotApplied

from ..conftest import HF_VARIANTS, VIT_VARIANTS, images, make_hf, make_vit, run


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    if hasattr(model, "blocks"):  # timm
        return list(model.blocks)
    return list(next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList)))


def _called_through_the_class(monkeypatch, model: torch.nn.Module) -> None:
    """Blocks called through their class's ``forward`` (a compiled or re-dispatched call path,
    as a future release might do): the forwards patched on the instances never run."""
    cls = type(_blocks(model)[0])
    monkeypatch.setattr(cls, "__call__", lambda self, *a, **k: cls.forward(self, *a, **k))


MODELS = [("timm", v) for v in VIT_VARIANTS] + [("hf", v) for v in HF_VARIANTS]


@pytest.mark.parametrize(("lib", "variant"), MODELS, ids=[v for _, v in MODELS])
@pytest.mark.parametrize("spec", ["tome:r=2", "tome:r=0"])
def test_sites_that_never_run_raise(lib, variant, spec, monkeypatch):
    model = make_vit(variant) if lib == "timm" else make_hf(variant)
    x = images()
    with tokenreduce.patch(model, spec):
        run(model, x)  # the patched path works
        _called_through_the_class(monkeypatch, model)
        with pytest.raises(ReductionNotApplied) as err:
            run(model, x)
    msg = str(err.value)
    assert "without reaching" in msg and type(model).__name__ in msg
    assert "tome" in msg and f"torch {torch.__version__}" in msg


def test_guard_is_removed_with_the_patch(monkeypatch):
    model = make_vit("cls")
    x = images()
    with tokenreduce.patch(model, "tome:r=2"):
        pass
    _called_through_the_class(monkeypatch, model)
    run(model, x)  # unpatched: no guard left behind
    assert not model._forward_hooks and not model._forward_pre_hooks
