from __future__ import annotations

from dataclasses import dataclass

from .base import layer_tuple, param, register
from .prefill import PrefillMethod, prune_ratio_param, stage_ends


@register
@dataclass
class LazyLLM(PrefillMethod):
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

    prune_ratio: float = prune_ratio_param()
    num_stages: int = param(4, ge=2)
    layers: tuple[int, ...] | None = layer_tuple(None, optional=True, ascending=True)
    keep_last: int = param(1, ge=1)
    revive: bool = param(True)

    def sites(self, num_layers: int) -> tuple[int, ...]:
        if self.layers is not None:
            return self.layers
        return stage_ends(num_layers, self.num_stages)
