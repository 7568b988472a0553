from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..core.budgets import Budget
from ..core.context import ModelInfo
from ..core.kv import CacheBudget, KVContext, removed_count
from .base import InvalidParameter, Method, check, register
from .kv_base import _is_int


def _is_ratio(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1


@register
@dataclass
class LazyLLM(Method):
    """LazyLLM: progressive prompt pruning during prefill, with revival of pruned tokens.

    Fu et al., "LazyLLM: Dynamic Token Pruning for Efficient Long Context LLM Inference",
    2024. https://arxiv.org/abs/2407.14057

    At a few site layers spread over the depth, the attention of the prompt's last token
    (one query row, averaged over heads, computed at that layer with RoPE) ranks the prompt
    tokens, and only the best go on to the next layers. Later sites prune more (the share
    removed grows linearly to ``prune_ratio`` at the last site), so early layers see most of
    the prompt and deep layers a small part of it. Each layer caches the tokens that ran it;
    positions stay those of the original prompt, so ``generate`` continues correctly.

    Revival (``revive=True``): a site ranks every prompt token, not only those still running.
    A token pruned at an earlier site keeps, in an auxiliary tensor (the paper's Aux Cache),
    the residual state it had when it left; that state gives its key at the later site and,
    if it ranks high enough, it rejoins from there. The layers it skipped are not recomputed
    for it, so their caches lack it. The paper revives tokens at later generation steps;
    here revival happens between the sites of the prefill, and decoding reads the cache the
    prefill left.

    Parameters:
        prune_ratio: share of the prompt tokens (all but the ``keep_last`` protected ones)
            removed after the last site, in [0, 1); site i of K removes
            ``prune_ratio * (i + 1) / K``.
        num_stages: the layers are split into this many stages of equal depth (an integer
            >= 2); a site ends each stage but the last. Ignored when ``layers`` is set.
        layers: 0-based layers after which tokens are selected, ascending (each below the last
            layer); None to use ``num_stages``.
        keep_last: prompt tokens at the end that always survive (an integer >= 1; the last
            one ranks the others).
        revive: whether a site may bring back tokens pruned at an earlier site.
    """

    name = "lazyllm"
    paper = "Fu et al., 2024 (arXiv:2407.14057)"
    kind: ClassVar[str] = "prefill"
    budget_param: ClassVar[str] = "prune_ratio"
    budget_identity: ClassVar[object] = 0.0
    budget_sweep: ClassVar[tuple] = (0.25, 0.5, 0.75)

    prune_ratio: float = 0.5
    num_stages: int = 4
    layers: tuple[int, ...] | None = None
    keep_last: int = 1
    revive: bool = True

    def __post_init__(self) -> None:
        check(self.name, "prune_ratio", self.prune_ratio, _is_ratio(self.prune_ratio),
              "a number in [0, 1)")  # fmt: skip
        check(self.name, "num_stages", self.num_stages,
              _is_int(self.num_stages) and self.num_stages >= 2, "an integer >= 2")  # fmt: skip
        check(self.name, "keep_last", self.keep_last,
              _is_int(self.keep_last) and self.keep_last >= 1, "an integer >= 1")  # fmt: skip
        check(self.name, "revive", self.revive, isinstance(self.revive, bool), "True or False")
        if self.layers is not None:
            ok = (
                isinstance(self.layers, tuple)
                and len(self.layers) >= 1
                and all(_is_int(i) and i >= 0 for i in self.layers)
                and list(self.layers) == sorted(set(self.layers))
            )
            check(self.name, "layers", self.layers, ok,
                  "None or a non-empty ascending tuple of distinct layer indices >= 0")  # fmt: skip

    @property
    def active(self) -> bool:
        return self.prune_ratio > 0

    def sites(self, num_layers: int) -> tuple[int, ...]:
        """Layers after whose attention prompt tokens are selected."""
        if self.layers is not None:
            return self.layers
        # The last layer of each stage but the final one; a shallow model merges stages.
        ends = (s * num_layers // self.num_stages - 1 for s in range(1, self.num_stages))
        return tuple(sorted({min(max(e, 0), num_layers - 2) for e in ends}))

    def check_model(self, model: ModelInfo) -> None:
        last = model.num_layers - 2
        if last < 0:
            raise InvalidParameter(
                f"{self.name}: a {model.num_layers}-layer model leaves no layer to run on fewer "
                "tokens; it needs at least 2 layers"
            )
        if self.layers is not None and self.layers[-1] > last:
            raise InvalidParameter(
                f"{self.name}: layers contains {self.layers[-1]}, which leaves no layer to run "
                f"on fewer tokens; allowed: 0..{last} for this {model.num_layers}-layer model"
            )

    def budget(self, model: ModelInfo) -> Budget:
        return CacheBudget(float(self.prune_ratio))

    def stage_ratio(self, stage: int, num_sites: int) -> float:
        """Share of the unprotected prompt tokens removed after site ``stage`` of ``num_sites``."""
        stage = stage % num_sites
        return float(self.prune_ratio) * (stage + 1) / num_sites

    def keep_count(self, n: int, stage: int = -1, num_sites: int = 1) -> int:
        """Tokens kept after site ``stage`` of ``num_sites`` (default: the last) of a prompt
        of ``n`` real tokens."""
        protected = min(n, self.keep_last)
        return n - removed_count(n - protected, self.stage_ratio(stage, num_sites))

    def scores(self, ctx: KVContext) -> Tensor:
        """(B, N) attention from the last query, averaged over all heads."""
        return ctx.attention(1).mean(dim=1)

    def reduce(self, ctx, n_remove):
        raise TypeError(f"{self.name} prunes a decoder LM's prompt; patch a decoder language model")
