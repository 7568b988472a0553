"""How the decoder adapter talks to transformers' calls, whatever a release names things: the
cache found by type among a call's arguments or a model's output, the keyword a model takes a
cache under, one call of a module's own ``forward`` bound to its parameters by name."""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn


def find_cache(*values):
    """The transformers ``Cache`` among a call's arguments, however the caller passed it: by
    any keyword (``past_key_values`` until transformers 5.2x, ``cache`` after), positionally,
    or inside a ``**kwargs`` dict. Found by type, not by name, so a renamed argument is still
    found. None when there is none."""
    from transformers.cache_utils import Cache

    for value in values:
        if isinstance(value, Cache):
            return value
        if isinstance(value, (tuple, list)):
            found = find_cache(*value)
        elif isinstance(value, dict):
            found = find_cache(*value.values())
        else:
            continue
        if found is not None:
            return found
    return None


def output_cache(output):
    """The cache a Hugging Face model output carries (``output.past_key_values`` or, from
    transformers 5.2x on, ``output.cache``), or None."""
    return find_cache(*(output.values() if isinstance(output, dict) else (output,)))


def cache_kwargs(model: nn.Module, cache) -> dict:
    """``{name: cache}`` for passing a cache to ``model(...)`` or ``model.generate(...)`` under
    the keyword its transformers release takes (``past_key_values``, or ``cache`` from 5.2x
    on), without a deprecation warning."""
    params = _signature(type(model)).parameters
    return {"cache" if "cache" in params else "past_key_values": cache}


def cache_bytes(cache) -> int:
    """Bytes held by the key and value tensors of a Hugging Face cache."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if torch.is_tensor(t):
                total += t.numel() * t.element_size()
    return total


@functools.cache
def _signature(cls: type) -> inspect.Signature:
    return inspect.signature(cls.forward)  # follows decorators to the real parameters


class Call:
    """One call of a module's own ``forward``, bound to its parameters by name: the adapter
    reads and replaces arguments by what they are (the hidden states, the mask, the cache)
    whatever position or keyword the model's code used for them."""

    def __init__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.module = module
        sig = _signature(type(module))
        try:
            self.bound = sig.bind(module, *args, **kwargs)
        except TypeError as err:
            raise TypeError(
                f"tokenreduce cannot read the arguments of {type(module).__name__}.forward "
                f"{sig}: {err}"
            ) from None
        named = self.bound.arguments
        extra = next((named[p.name] for p in sig.parameters.values()
                      if p.kind is p.VAR_KEYWORD and p.name in named), {})  # fmt: skip
        self.named = {**extra, **named}
        self.cache = find_cache(*self.named.values())

    def get(self, name: str):
        return self.named.get(name)

    def __call__(self, **replace):
        """Call the original forward with some arguments replaced (by parameter name)."""
        for name, value in replace.items():
            self.bound.arguments[name] = value
        return type(self.module).forward(*self.bound.args, **self.bound.kwargs)
