"""Helpers of the test-only family tests."""

from __future__ import annotations

import torch

import tokenreduce
from tokenreduce.methods import available, get
from tokenreduce.methods.base import Method, TokenMethod

TOKEN_METHODS = [n for n in available() if issubclass(get(n), TokenMethod)]


def placed(name: str, model: torch.nn.Module, **overrides) -> Method:
    """Method ``name`` with its test parameters, placed by the model's depth."""
    cls = get(name)
    depth = tokenreduce.describe(model).num_layers
    return cls.for_tests(**{**cls.placement(depth), **overrides})


def identity(name: str, model: torch.nn.Module) -> Method:
    """Method ``name`` at the budget that removes nothing."""
    cls = get(name)
    return placed(name, model, **{cls.budget_param: cls.budget_identity})
