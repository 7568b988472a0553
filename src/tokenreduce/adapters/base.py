"""What every adapter provides, and the run-time record a patched model keeps."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar

import torch
from torch import nn

from ..core.budgets import Budget
from ..core.context import ModelInfo, TokenContext
from ..core.ragged import reduce_per_sample
from ..core.reduction import Reduction
from ..core.state import TokenState
from ..methods.base import InvalidParameter, Method, kinds_text


class ReductionNotApplied(RuntimeError):
    """A patched model ran a forward in which its reduction did not take effect: no site ran,
    or a site ran but the tokens or cache entries it should have removed are still there.

    Raised instead of returning unreduced results labelled as reduced. The message names the
    method, the model class, what was expected and the versions of the libraries involved
    (a model library that changed its internals is the usual cause)."""


def library_versions() -> str:
    """``"tokenreduce 0.1.0, torch 2.14.1, transformers 5.24.0"``: the versions of this
    package, torch and whichever model libraries (transformers, timm, diffusers) are imported."""
    from .. import __version__

    parts = [f"tokenreduce {__version__}"]
    for name in ("torch", "transformers", "timm", "diffusers"):
        module = sys.modules.get(name)
        if module is not None:
            parts.append(f"{name} {getattr(module, '__version__', '?')}")
    return ", ".join(parts)


@dataclass
class Trace:
    """What the last forward did: tokens entering attention and the MLP of every block, and
    the final token state (for visualisation, unmerging and FLOP counts)."""

    attn_tokens: list[int] = field(default_factory=list)
    mlp_tokens: list[int] = field(default_factory=list)
    state: TokenState | None = None


class Adapter:
    """The only code that knows a model family's internals.

    An adapter finds the sites, builds the token context there, applies reductions to the
    hidden states and all side data, and restores the model exactly on :meth:`unpatch`.
    """

    family: ClassVar[str]
    #: the method classes this family takes (e.g. ``(TokenMethod,)``); any other method is
    #: refused at patch time, naming the kinds and the registered methods that fit
    accepts: ClassVar[tuple[type[Method], ...]] = ()
    #: ``ModelInfo.kind`` of the models it patches: "vision" or "language"
    kind: ClassVar[str]
    #: ``ModelInfo.sites``: where it reduces, e.g. ``("block:after_attention",)``
    sites: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        raise NotImplementedError

    def __init__(self, model: nn.Module, method: Method) -> None:
        if not isinstance(method, self.accepts):
            raise InvalidParameter(
                f"{method.name} is a {method.kind_words} method (kind {method.kind!r}), which "
                f"a {type(model).__name__} does not take; use {kinds_text(self.accepts)}"
                + (f" ({method.runs_without_patch})" if method.runs_without_patch else "")
            )
        self.model = model
        self.method = method
        self.info: ModelInfo = self.describe_for(model, type(method))
        method.check_model(self.info)
        self.budget: Budget = method.budget(self.info)
        self.trace = Trace()

    @classmethod
    def describe(cls, model: nn.Module) -> ModelInfo:
        """Facts about ``model`` (kind, depth, prefix tokens, grid, sites); TypeError when a
        model of the family has a layout the adapter does not support."""
        raise NotImplementedError

    @classmethod
    def describe_for(cls, model: nn.Module, kind: type[Method]) -> ModelInfo:
        """The facts a method of class ``kind`` sees: :meth:`describe`, unless the family's
        sites for that kind form a model of their own (a vision-language model's handoff)."""
        return cls.describe(model)

    @classmethod
    def examples(cls) -> dict[str, Callable[..., nn.Module]]:
        """Tiny randomly initialised models of the family's layouts, by name: each a function
        of ``seed`` (and, where the family allows, keyword overrides of its configuration)
        that builds a model in milliseconds, with no download. The shared invariant suites
        run every method the family accepts on each of them, so a family is tested the moment
        it is registered; it must give at least one."""
        raise NotImplementedError(f"{cls.__name__} gives no example models")

    @classmethod
    def blocks(cls, model: nn.Module) -> list[nn.Module]:
        """The model's transformer blocks in order (vision families)."""
        raise TypeError(f"a {type(model).__name__} ({cls.family}) has no vision blocks")

    @classmethod
    def final_norm(cls, model: nn.Module) -> nn.Module:
        """The norm applied to the last block's output (vision families)."""
        raise TypeError(f"a {type(model).__name__} ({cls.family}) has no vision final norm")

    def patch(self) -> None:
        raise NotImplementedError

    def unpatch(self) -> None:
        raise NotImplementedError

    # -- never silent ---------------------------------------------------------------------
    def install(self) -> None:
        """Patch the model and guard every top-level forward: it must reach a site
        (:meth:`site_fired`) and pass :meth:`verify`, else :class:`ReductionNotApplied`."""
        self.patch()
        self._fired = 0
        self._guard = (
            self.model.register_forward_pre_hook(self._guard_begin),
            self.model.register_forward_hook(self._guard_end),
        )

    def uninstall(self) -> None:
        for hook in getattr(self, "_guard", ()):
            hook.remove()
        self._guard = ()
        self.unpatch()

    def site_fired(self) -> None:
        """Called by the adapter's code at every site it reaches during a forward."""
        self._fired += 1

    def _guard_begin(self, module: nn.Module, args) -> None:
        self._fired = 0
        self.trace.state = None  # never read a previous forward's token state

    def _guard_end(self, module: nn.Module, args, output) -> None:
        if self._fired == 0:
            raise self.not_applied(
                "the forward ran without reaching any of the sites tokenreduce patched, so "
                "its output is the unreduced model's"
            )
        self.verify(output)

    def verify(self, output) -> None:
        """Check, after a forward that reached its sites, that the reduction took effect;
        raise :meth:`not_applied` otherwise. Token-sequence sites reduce where they run, so
        the default checks nothing more."""

    def not_applied(self, what: str) -> ReductionNotApplied:
        return ReductionNotApplied(
            f"{self.method.name} ({self.method!r}) did not act on {type(self.model).__name__}: "
            f"{what}. "
            f"Versions: {library_versions()}. The model library may have changed the internals "
            "this adapter relies on; please report it with this message."
        )

    # -- the shared site logic of token-sequence adapters ---------------------------------
    def begin(self, layer: int, x: torch.Tensor, valid: torch.Tensor | None = None) -> TokenState:
        """Called by every block before attention; the first block starts a new trace.
        ``valid`` (B, N) marks the real tokens of a padded batch (False at padding)."""
        self.site_fired()
        if layer == 0:
            b, n = x.shape[:2]
            self.trace.state = TokenState.initial(b, n, self.info.num_prefix, x.device, valid=valid)
            self.trace.attn_tokens.clear()
            self.trace.mlp_tokens.clear()
        self.trace.attn_tokens.append(x.shape[1])
        return self.trace.state

    def size_bias(self, state: TokenState, dtype: torch.dtype) -> torch.Tensor | None:
        """Proportional attention's additive logit bias log(size), (B, 1, 1, N), once merged."""
        if state.merged and self.method.uses_proportional_attention():
            return state.size.log().to(dtype)[:, None, None, :]
        return None

    def reduction(
        self,
        layer: int,
        x: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        scale: float,
        bias: torch.Tensor | None,
        outside: tuple[torch.Tensor, torch.Tensor] | None = None,
        info: ModelInfo | None = None,
        query: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Reduction | None:
        """What the method does at ``layer`` under its budget, for tokens ``x`` (B, N, C) in
        the current token state; None where the budget removes nothing. A ragged state (a
        padded batch) is reduced sample by sample, each with its own count.

        ``q`` and ``k`` are (B, H, N, D) as the layer used them (or the features the site
        compares tokens by, as one head); ``bias`` the additive attention logit bias;
        ``outside`` the (B, H, 1, D) query and key of a class token that is not among the
        tokens (:attr:`TokenContext.class_query`); ``info`` the facts of this input when they
        differ from the model's (an image's own patch grid); ``query`` the instruction's
        token embeddings (B, T, C) and their mask (B, T) (:attr:`TokenContext.query`).
        """
        state = self.trace.state
        info = self.info if info is None else info
        ctx = TokenContext(layer, x, q, k, state, info, scale, bias,
                           *(outside or (None, None)), *(query or (None, None)))  # fmt: skip
        keep = partial(self.budget.keep, layer)
        if state.ragged:
            return reduce_per_sample(ctx, keep, self.method.reduce)
        n_remove = ctx.num_reducible - keep(ctx.num_reducible)
        return self.method.reduce(ctx, n_remove) if n_remove > 0 else None

    def reduce(
        self,
        layer: int,
        x: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        scale: float,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """A sequence site (after attention): the reduction stays for the rest of the model.
        Applies it to ``x`` and the token state; returns the reduced ``x`` (B, M, C)."""
        red = self.reduction(layer, x, q, k, scale, bias)
        if red is not None:
            x = red.apply(x)
            self.trace.state = self.trace.state.apply(red)
        self.trace.mlp_tokens.append(x.shape[1])
        return x

    def around(
        self,
        layer: int,
        x: torch.Tensor,
        sublayer: Callable[[torch.Tensor], torch.Tensor],
        metric: torch.Tensor,
    ) -> torch.Tensor:
        """A local site: reduce ``x`` (B, N, C), run ``sublayer`` on the M remaining tokens,
        and undo the reduction on its output (merge, attend, unmerge; tomesd's pattern).

        ``metric`` (B, N, D) are the features tokens are compared by (given to the method as
        one head of keys and queries). Returns (B, N, C'): a merged token's output is copied
        to every token it stands for, a dropped token's output is zero (with a residual
        connection it keeps its input). The token state (:meth:`begin`) is left as it was.
        """
        self.site_fired()
        head = metric[:, None]
        red = self.reduction(layer, x, head, head, metric.shape[-1] ** -0.5, None)
        if red is None:
            return sublayer(x)
        return red.unmerge(sublayer(red.apply(x)))[0]

    def gflops(self, trace: Trace | None = None) -> float:
        """Analytic GFLOPs per sample (multiply-adds, the fvcore convention) of the last
        forward, or of the unreduced model before any forward."""
        raise NotImplementedError
