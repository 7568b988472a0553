"""What the diffusers families share: local sites around the sub-layers of diffusers'
``BasicTransformerBlock``.

Nothing of diffusers' code is copied. Each block keeps its own ``forward``; tokenreduce adds
a forward pre-hook on the block (the block's input tokens: the site's similarity metric) and
replaces, on the instance, the ``forward`` of its sub-layers ``attn1`` (self-attention),
``attn2`` (cross-attention) and ``ff`` (feed-forward) by one that asks the method's
:class:`~tokenreduce.methods.local_base.LocalPlan` to run the original: merge the block's
normalised tokens, run the sub-layer on them with the model's own attention processor (SDPA
stays on), unmerge its output. The block's gates, residuals and the rest of the network see
every token. Unpatch removes the hooks and the instance attributes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar

import torch
from torch import nn

from ...core.context import ModelInfo
from ...core.state import TokenState
from ...methods.base import InvalidParameter
from ...methods.local_base import PARTS, LocalMethod, LocalSite
from ..base import Adapter, Trace

#: the one block class whose sub-layers are sites
BLOCK_CLASS = "BasicTransformerBlock"


@dataclass
class SublayerCall:
    """One sub-layer run of the last forward: ``part`` of block ``site``, on ``tokens`` of
    the block's ``full`` tokens, attending over ``context`` keys (cross-attention: the text
    tokens; self-attention: ``tokens``)."""

    site: int
    part: str
    full: int
    tokens: int
    context: int


@dataclass
class DiffusionTrace(Trace):
    """:class:`~tokenreduce.adapters.base.Trace` plus every sub-layer run of the forward:
    ``attn_tokens`` are the tokens self-attention ran on per block, ``mlp_tokens`` those of
    the feed-forward."""

    calls: list[SublayerCall] = field(default_factory=list)


@dataclass(frozen=True)
class Site:
    """A block of the model, its resolution level and the module whose input gives its grid
    (the model for a DiT, the block's ``Transformer2DModel`` for a UNet) with that module's
    patch size."""

    block: nn.Module
    level: int
    grid_owner: nn.Module
    patch: int


class DiffusionAdapter(Adapter):
    """Local sites around every ``BasicTransformerBlock`` a family lists (:meth:`site_list`)."""

    accepts = (LocalMethod,)
    kind = "diffusion"
    sites = ("block:around_self_attention", "block:around_cross_attention",
             "block:around_feed_forward")  # fmt: skip
    #: diffusers class names the family patches
    classes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return type(model).__module__.startswith("diffusers.") and type(model).__name__ in cls.classes

    @classmethod
    def site_list(cls, model: nn.Module) -> list[Site]:
        """The model's sites in execution order; TypeError naming an unsupported block."""
        raise NotImplementedError

    @classmethod
    def latent_grid(cls, model: nn.Module) -> tuple[int, int]:
        """The token grid of the highest-resolution level at the configured sample size."""
        raise NotImplementedError

    @classmethod
    def describe(cls, model: nn.Module) -> ModelInfo:
        depth = len(cls.site_list(model))
        name = f"diffusers:{type(model).__name__}"
        return ModelInfo(name, depth, 0, False, cls.latent_grid(model), cls.kind, cls.sites)

    @classmethod
    def example_batch(cls, model: nn.Module, batch: int = 2, seed: int = 0) -> dict:
        """Keyword inputs of a forward of an example model: ``batch`` samples, each at its
        own timestep."""
        raise NotImplementedError

    # -- patching ------------------------------------------------------------------------
    def __init__(self, model: nn.Module, method: LocalMethod) -> None:
        super().__init__(model, method)
        self.site_specs = self.site_list(model)
        self.trace = DiffusionTrace()
        self._check_levels()

    def _check_levels(self) -> None:
        method = self.method
        if getattr(method, method.budget_param) == method.budget_identity:
            return
        levels = sorted({s.level for s in self.site_specs})
        if not any(method.reaches(level) for level in levels):
            raise InvalidParameter(
                f"{method.name} ({method!r}) reaches no attention block of this "
                f"{type(self.model).__name__}: its blocks are at resolution levels "
                f"{', '.join(map(str, levels))}; raise max_downsample to one of them"
            )

    def patch(self) -> None:
        self.run = self.method.start(self.info)
        self._signature = inspect.signature(self.model.forward)
        self._hooks = [self.model.register_forward_pre_hook(self._start_call, with_kwargs=True)]
        owners = {id(s.grid_owner): s for s in self.site_specs}
        for spec in owners.values():
            hook = partial(self._enter_owner, spec.patch)
            self._hooks.append(spec.grid_owner.register_forward_pre_hook(hook, with_kwargs=True))
        for index, spec in enumerate(self.site_specs):
            hook = partial(self._enter_block, index, spec.level)
            self._hooks.append(spec.block.register_forward_pre_hook(hook, with_kwargs=True))
            for part in PARTS:
                module = getattr(spec.block, part, None)
                if module is not None:
                    module.forward = self._sublayer_forward(index, part, module)

    def unpatch(self) -> None:
        for hook in self._hooks:
            hook.remove()
        for spec in self.site_specs:
            for part in PARTS:
                module = getattr(spec.block, part, None)
                if module is not None and "forward" in module.__dict__:
                    del module.forward

    # -- the hooks -----------------------------------------------------------------------
    def _start_call(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        """A forward is a denoising step: every sample's timestep seeds its draws."""
        bound = self._signature.bind(*args, **kwargs).arguments
        latents = next(iter(bound.values()))
        t = bound.get("timestep")
        t = torch.as_tensor(0.0 if t is None else t, dtype=torch.float64).flatten().cpu()
        self._timestep = t.expand(latents.shape[0]) if t.numel() == 1 else t
        self.run.start_call(self._timestep)
        self.trace.calls.clear()
        self.trace.attn_tokens.clear()
        self.trace.mlp_tokens.clear()

    def _enter_owner(self, patch: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        latents = args[0] if args else kwargs["hidden_states"]
        self._grid = (latents.shape[-2] // patch, latents.shape[-1] // patch)

    def _enter_block(self, index: int, level: int, block, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        b, n = x.shape[:2]
        if self._grid[0] * self._grid[1] != n:
            raise ValueError(
                f"block {index} of this {type(self.model).__name__} received {n} tokens, not "
                f"the {self._grid[0]}x{self._grid[1]} grid of its input"
            )
        self.trace.state = TokenState.initial(b, n, 0, x.device)
        site = LocalSite(index, level, x, self._grid, self._timestep,
                         num_sites=len(self.site_specs))  # fmt: skip
        self._plan = self.run.plan(site)

    def _sublayer_forward(self, index: int, part: str, module: nn.Module) -> Callable:
        original = type(module).forward

        def forward(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            self.site_fired()
            context = kwargs.get("encoder_hidden_states", args[0] if args else None)

            def sublayer(x: torch.Tensor) -> torch.Tensor:
                if part == "attn1" and x.shape[1] != hidden_states.shape[1]:
                    _refuse_token_mask(kwargs.get("attention_mask"), index)
                kv = x.shape[1] if context is None or part != "attn2" else context.shape[1]
                self._record(index, part, hidden_states.shape[1], x.shape[1], kv)
                return original(module, x, *args, **kwargs)

            return self._plan.run(part, hidden_states, sublayer)

        return forward

    def _record(self, site: int, part: str, full: int, tokens: int, context: int) -> None:
        self.trace.calls.append(SublayerCall(site, part, full, tokens, context))
        if part == "attn1":
            self.trace.attn_tokens.append(tokens)
        elif part == "ff":
            self.trace.mlp_tokens.append(tokens)

    # -- cost ----------------------------------------------------------------------------
    def gflops(self, trace: Trace | None = None) -> float:
        """Analytic GFLOPs (multiply-adds) per sample of the transformer blocks' sub-layers in
        the last forward (``trace``), or unreduced (``trace`` None: every sub-layer on all of
        its block's tokens, at the last forward's sizes, or before any forward at the
        configured sample size with one text token). Convolutions, norms and embeddings are
        not counted: they are the same with and without reduction."""
        calls = self.trace.calls if trace is not None else self._unreduced_calls()
        blocks = [s.block for s in self.site_specs]
        return sum(sublayer_macs(blocks[c.site], c) for c in calls) / 1e9

    def _unreduced_calls(self) -> list[SublayerCall]:
        if self.trace.calls:
            return [SublayerCall(c.site, c.part, c.full, c.full,
                                 c.full if c.part == "attn1" else c.context)
                    for c in self.trace.calls]  # fmt: skip
        h, w = self.latent_grid(self.model)
        calls = []
        for index, spec in enumerate(self.site_specs):
            n = -(-h // spec.level) * -(-w // spec.level)
            for part in PARTS:
                if getattr(spec.block, part, None) is not None:
                    calls.append(SublayerCall(index, part, n, n, n if part == "attn1" else 1))
        return calls


def _refuse_token_mask(mask: torch.Tensor | None, site: int) -> None:
    """A self-attention mask over the image tokens no longer fits once they are reduced."""
    if mask is not None:
        raise ValueError(
            f"block {site} was given a self-attention mask over its image tokens, which a "
            "reduction of those tokens cannot carry; run this model without one or with ratio=0"
        )


def sublayer_macs(block: nn.Module, call: SublayerCall) -> float:
    """Multiply-adds of one sub-layer run: its linear layers on the tokens they read (keys
    and values on the context), plus the attention products."""
    module = getattr(block, call.part)
    if call.part == "ff":
        return call.tokens * sum(m.in_features * m.out_features
                                 for m in module.modules() if isinstance(m, nn.Linear))  # fmt: skip
    linear = {name: getattr(module, name, None) for name in ("to_q", "to_k", "to_v")}
    out = module.to_out[0]
    macs = call.tokens * (linear["to_q"].in_features * linear["to_q"].out_features
                          + out.in_features * out.out_features)  # fmt: skip
    macs += call.context * sum(m.in_features * m.out_features for m in
                               (linear["to_k"], linear["to_v"]))  # fmt: skip
    return macs + 2 * call.tokens * call.context * linear["to_q"].out_features

