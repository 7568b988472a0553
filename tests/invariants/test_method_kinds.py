"""The shape every method shares: one base class per kind, declared parameter ranges, one
budget question (``keep(site, n)``), and default and matched sweeps owned by the methods
(``Range`` itself is tested in ``tests/methods/test_base.py``).

Parametrised over the registry, so a new method is checked the moment it is registered.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tokenreduce
from tokenreduce import methods
from tokenreduce.bench import configs as cfg
from tokenreduce.bench import matched
from tokenreduce.core.context import ModelInfo
from tokenreduce.core.reducers import topk_prune
from tokenreduce.methods.base import _REGISTRY, InvalidParameter, Range

from ..conftest import make_vit

KINDS = (
    methods.TokenMethod, methods.PerInputTokenMethod, methods.KVCacheMethod, methods.PrefillMethod,
    methods.PromptMethod, methods.LocalMethod,
)  # fmt: skip
ALL = methods.available()


def info(depth: int) -> ModelInfo:
    """A model of ``depth`` blocks with a class token and a 4 x 4 patch grid, whose sites give
    the instruction (so every method's budget and sweep can be asked)."""
    return ModelInfo("test", num_layers=depth, num_prefix=1, has_class_token=True, grid=(4, 4),
                     gives_query=True)  # fmt: skip


@pytest.mark.parametrize("name", ALL)
def test_every_method_is_of_exactly_one_kind(name):
    cls = methods.get(name)
    (kind,) = [k for k in KINDS if issubclass(cls, k)]
    assert cls.kind == kind.kind  # the display string follows the class


@pytest.mark.parametrize("name", ALL)
def test_every_parameter_declares_its_range(name):
    cls = methods.get(name)
    for f in dataclasses.fields(cls):
        assert isinstance(f.metadata.get("range"), Range), f"{name}.{f.name} has no param()"
        default = cls()
        assert f.metadata["range"].accepts(getattr(default, f.name))


@pytest.mark.parametrize("name", ALL)
def test_a_value_outside_a_range_names_it(name):
    """Every numeric field refuses a value below its lower bound with the generated words."""
    cls = methods.get(name)
    for f in dataclasses.fields(cls):
        rng = f.metadata["range"]
        low = rng.ge if rng.ge is not None else rng.gt
        if rng.type not in (int, float) or low is None:
            continue
        bad = low - 1 if rng.ge is not None else low
        with pytest.raises(InvalidParameter) as err:
            cls(**{f.name: bad})
        assert str(err.value) == f"{name}: {f.name}={bad!r} is invalid; allowed: {rng.describe()}"


@pytest.mark.parametrize("name", ALL)
def test_budget_keep_is_the_one_question(name):
    """Every kind answers keep(site, n) within [0, n]; the identity budget keeps all, the
    test-sized one removes something somewhere."""
    cls = methods.get(name)
    model, sites, lengths = info(4), range(4), (0, 1, 7, 40)
    heavy = cls.for_tests()
    zero = cls.for_tests(**{cls.budget_param: cls.budget_identity})
    for method in (heavy, zero):
        method.check_model(model)
        budget = method.budget(model)
        assert all(0 <= budget.keep(s, n) <= n for s in sites for n in lengths)
    assert all(zero.budget(model).keep(s, n) == n for s in sites for n in lengths)
    assert any(heavy.budget(model).keep(s, 40) < 40 for s in sites)


def swept(spec: str) -> methods.Method:
    """The method of a sweep's ``spec``; one that needs weights trained for the model (a user
    names them) with a random stand-in, since the sweep's placement is what is checked."""
    method = methods.build(spec)
    return method if method.in_default_sweep else dataclasses.replace(method, untrained=True)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("depth", [2, 4, 6, 12, 24])
def test_default_sweep_fits_any_depth(name, depth):
    for spec in cfg.default_sweep(name, depth):
        swept(spec).check_model(info(depth))
    assert len(cfg.default_sweep(name, depth, quick=True)) == 1


def test_a_new_keep_ratio_method_sweeps_at_its_models_depth(monkeypatch):
    """A keep-ratio method the benchmark has never heard of reduces at 1/4, 1/2, 3/4 of any
    depth (not at the 12-block defaults (3, 6, 9), which a 6-block model refuses)."""

    @dataclasses.dataclass
    class Newcomer(methods.KeepRatioMethod):
        name = "newcomer"

        def reduce(self, ctx, n_remove):
            return topk_prune(
                ctx.class_attention, ctx.num_reducible - n_remove, ctx.state.protected
            )

    monkeypatch.setitem(_REGISTRY, "newcomer", Newcomer)
    configs = cfg.resolve("newcomer", depth=6)[1:]
    assert [methods.build(c).layers for c in configs] == [(1, 3, 4)] * 3
    for config in configs:
        methods.build(config).check_model(info(6))
    (m,) = matched.matched_sweep("newcomer", 6, quick=True, n_patches=16)
    assert methods.build(m) == Newcomer(keep_ratio=matched.keep_ratio(0.5), layers=(1, 3, 4))


@pytest.mark.parametrize(
    "name", [n for n in ALL if issubclass(methods.get(n), methods.TokenMethod)]
)
def test_matched_sweep_fits_the_depth(name):
    for spec in matched.matched_sweep(name, 4, n_patches=16):
        swept(spec).check_model(info(4))


@torch.inference_mode()
@pytest.mark.parametrize("name", ["snapkv", "fastv"])
def test_a_vision_adapter_refuses_other_kinds_by_class(name):
    """The refusal is written once (the adapter base), from the classes an adapter accepts."""
    with pytest.raises(InvalidParameter) as err:
        tokenreduce.patch(make_vit("cls"), name)
    text = str(err.value)
    kind = methods.get(name).kind
    assert f"{name} is a " in text and f"(kind {kind!r})" in text
    tokens = ", ".join(n for n in ALL if issubclass(methods.get(n), methods.TokenMethod))
    assert f"use a token-sequence method: {tokens} (kind 'tokens')" in text
