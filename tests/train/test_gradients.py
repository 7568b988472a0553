"""Gradients flow through every registered token method in training mode.

Parametrised over ``tokenreduce.train.token_methods()``: a method is covered the moment it
is registered. Each runs on the first cheap example model that takes it (a tiny timm ViT, or
a tiny text encoder for a method only text encoders take), in ``model.train()``.
"""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce import methods
from tokenreduce.adapters import ADAPTERS
from tokenreduce.train import GRADIENT_PATHS, token_methods
from tokenreduce.train.gradients import gradient_path

from ..conftest import placed
from ..invariants.test_every_family import fits, inputs

pytestmark = pytest.mark.usefixtures("one_thread")

#: the families tried in order: a method only vision-language models take (it reads the
#: instruction, or keeps a count per image) runs on the tiny LLaVA
KINDS = ("vision", "text", "vision-language")


def first_fit(name: str):
    """(adapter, example builder) of the first family, in :data:`KINDS` order, that takes
    method ``name``."""
    cls = methods.get(name)
    for kind in KINDS:
        for adapter in ADAPTERS:
            if adapter.kind == kind and issubclass(cls, adapter.accepts) and fits(adapter, cls):
                return adapter, next(iter(adapter.examples().values()))
    raise AssertionError(f"no example family takes {name}")


def loss_of(out) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    logits = getattr(out, "last_hidden_state", None) if logits is None else logits
    return (out if logits is None else logits).float().logsumexp(-1).mean()


def reduced(adapter, handle) -> bool:
    """Whether the forward removed tokens: fewer entered some MLP than its attention, or
    (a vision-language model) the language model ran on fewer prompt tokens than it was given."""
    if adapter.kind == "vision-language":
        kept = handle.trace.prefill_kept
        return bool(kept) and kept[-1].shape[1] < handle.trace.prompt_tokens
    pairs = zip(handle.trace.attn_tokens, handle.trace.mlp_tokens, strict=True)
    return any(a > b for a, b in pairs)


def first_block_grads(adapter, model) -> list[torch.Tensor]:
    """Gradients of the first transformer block's parameters (a text encoder names no
    blocks: its parameters under ``layer.0.``; a vision-language model: its vision tower's)."""
    if adapter.kind == "vision":
        params = list(adapter.blocks(model)[0].parameters())
    elif adapter.kind == "vision-language":
        params = [p for k, p in model.named_parameters() if "vision_tower" in k and ".layer.0." in k]
    else:
        params = [p for k, p in model.named_parameters() if ".layer.0." in k]
    assert params, f"no first block found in {type(model).__name__}"
    return [p.grad for p in params if p.grad is not None]


@pytest.mark.parametrize("name", token_methods())
def test_gradients_reach_the_embedding_and_first_block(name):
    adapter, build = first_fit(name)
    model = build().train()
    args, kwargs = inputs(model, adapter)
    with tokenreduce.patch(model, placed(name, model)) as handle:
        loss_of(model(*args, **kwargs)).backward()
        assert reduced(adapter, handle), f"{name} removed no token"
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert all(g.isfinite().all() for g in grads.values())
    assert any(g.abs().sum() > 0 for g in first_block_grads(adapter, model))
    if adapter.family.startswith("timm"):  # the named tensors of the issue
        assert model.patch_embed.proj.weight.grad.abs().sum() > 0
        assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_every_listed_gradient_path_names_a_token_method():
    assert set(GRADIENT_PATHS) <= set(token_methods())
    assert "gather" in gradient_path("topk") and "average" in gradient_path("tome")


def test_a_cache_method_is_refused_naming_the_token_methods():
    from tokenreduce.train import check_trainable

    with pytest.raises(methods.InvalidParameter, match="snapkv.*'kv_cache'.*tome"):
        check_trainable("snapkv")
