"""Shared parts of the DINOv2 benchmarks: the methods at matched budgets, dense-feature
recovery, and timing.

Matched budgets. A budget ``f`` (0.25, 0.5, 0.75) is the share of the 256 patch tokens gone
after the last reducing block. Every "matched" method reduces at the same blocks (3, 6, 9,
0-based; after attention, before the MLP) and removes the same number of tokens there: the
pruning methods keep ``ceil(k * n)`` of ``n`` with ``k = (1 - f) ** (1/3)`` and ToMe gets the
same counts as an explicit schedule, so prune, merge and hybrid rows have equal token counts
per block and equal GFLOPs (EViT keeps one extra fused token). ``tome-r`` is ToMe as in its
paper, merging a constant ``r = f * 256 / 12`` in every block: the same final count reached
gradually, at a different cost.

Hybrids. ``evit`` keeps the attentive tokens and fuses the rest into one token (prune + fuse);
``prune+merge`` (defined here) drops the half of each block's quota with the least class
attention, then merges the other half by ToMe's bipartite matching.

Dense recovery (``dense_features``): every reduction is undone to the full patch grid with the
final token state's source map. A merged token's final feature is copied back to each patch it
absorbed (``TokenState.unmerge``). A pruned patch has no final feature; it gets its last one:
the output of the block before the one that pruned it, passed through the model's final layer
norm (the value it had when it left the sequence). EViT's fused token counts as a merge.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import ClassVar

import torch

import tokenreduce
import tokenreduce.assets
from tokenreduce.core import ModelInfo, PerLayer, Reduction, TokenContext
from tokenreduce.core.reducers import bipartite_merge, topk_prune
from tokenreduce.core.reduction import scatter_back
from tokenreduce.methods import Method
from tokenreduce.methods.tome import ToMe

LAYERS = (3, 6, 9)
BUDGETS = (0.25, 0.5, 0.75)
N_PATCHES = 256  # 224 px / 14 px patches = 16 x 16


def keep_ratio(f: float) -> float:
    return (1.0 - f) ** (1.0 / len(LAYERS))


def matched_counts(f: float, n: int = N_PATCHES) -> list[int]:
    """Tokens removed at each of ``LAYERS`` by a keep-ratio method at budget ``f``."""
    k, out = keep_ratio(f), []
    for _ in LAYERS:
        keep = math.ceil(k * n)
        out.append(n - keep)
        n = keep
    return out


def schedule(counts: list[int], num_layers: int = 12) -> tuple[int, ...]:
    sched = [0] * num_layers
    for layer, c in zip(LAYERS, counts, strict=True):
        sched[layer] = c
    return tuple(sched)


@dataclass
class PruneMerge(Method):
    """Hybrid: of the ``n`` tokens a block removes, drop the ``n // 2`` with the least class
    attention, then merge ``n - n // 2`` of the rest by bipartite matching (ToMe's metric)."""

    name: ClassVar[str] = "prune+merge"
    kind: ClassVar[str] = "tokens"
    proportional_attention: ClassVar[bool] = True
    counts: tuple[int, ...] = ()

    def budget(self, model: ModelInfo) -> PerLayer:
        return PerLayer(schedule(list(self.counts), model.num_layers))

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        n_prune = n_remove // 2
        st = ctx.state
        pruned = topk_prune(ctx.class_attention, ctx.num_reducible - n_prune, st.protected)
        merged = bipartite_merge(
            pruned.apply(ctx.key_mean),
            n_remove - n_prune,
            pruned.apply(st.protected, "anchor"),
            pruned.apply(st.size, "anchor"),
        )
        # Compose: the prune is a selection, so each kept token's slot is looked up in the merge.
        kept = pruned.assign >= 0
        idx = pruned.assign.clamp_min(0)
        assign = merged.assign.gather(1, idx).masked_fill(~kept, -1)
        weight = merged.weight.gather(1, idx).masked_fill(~kept, 0.0)
        anchor = pruned.anchor.gather(1, merged.anchor)
        return Reduction(assign, weight, anchor)


def configs(f: float) -> dict[str, Method | str | None]:
    """Method name -> method at budget ``f`` (all matched except ``tome-r``)."""
    k = keep_ratio(f)
    counts = matched_counts(f)
    layers = list(LAYERS)
    out: dict[str, Method | str | None] = {
        "topk (prune)": f"topk:keep_ratio={k!r},layers={layers}",
        "random (prune)": f"random:keep_ratio={k!r},layers={layers}",
        "tome (merge)": ToMe(schedule=schedule(counts)),
        "evit (prune+fuse)": f"evit:keep_ratio={k!r},layers={layers}",
        "prune+merge": PruneMerge(counts=tuple(counts)),
        "tome-r (merge, all blocks)": f"tome:r={round(f * N_PATCHES / 12)}",
    }
    if f == 0.75:  # 2x2 pooling removes exactly 75%; at block 3 like the others' first cut
        out["pool 2x2 (block 3)"] = "pool:kernel=2,layers=[3]"
    return out


def load_dinov2(threads: int = 2):
    torch.set_num_threads(threads)
    model, processor = tokenreduce.assets.load("dinov2-small")
    return model, processor


@torch.inference_mode()
def dense_features(model, x: torch.Tensor, handle=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cls, patches)``: the class embedding (B, C) and recovered patch features
    (B, 256, C), both after the final layer norm. See the module docstring for the rule."""
    if handle is None:
        h = model(x).last_hidden_state
        return h[:, 0], h[:, 1:]
    records: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(_module, _inputs, output):
        records.append((output, handle.state.source.clone()))

    hooks = [layer.register_forward_hook(hook) for layer in model.encoder.layer]
    try:
        final = model(x).last_hidden_state
    finally:
        for hk in hooks:
            hk.remove()
    dense, missing = handle.state.unmerge(final)
    for out, source in reversed(records[:-1]):
        if not bool(missing.any()):
            break
        alive = missing & (source >= 0)
        if bool(alive.any()):
            values, _ = scatter_back(out, source)  # what TokenState.unmerge does
            dense = torch.where(alive[..., None], model.layernorm(values), dense)
            missing = missing & ~alive
    if bool(missing.any()):
        raise RuntimeError("a patch was dropped before the first recorded block")
    return final[:, 0], dense[:, 1:]


@torch.inference_mode()
def time_forward(model, x: torch.Tensor, repeats: int = 1) -> float:
    """Seconds of one forward (median of ``repeats``)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def as_method(spec):
    return spec if spec is None else tokenreduce.methods.build(spec)
