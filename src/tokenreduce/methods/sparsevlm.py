from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..core.kv import KVContext
from .base import layer_tuple, param, register
from .prefill import PrefillMethod, prune_ratio_param

#: the paper's sites in LLaVA-1.5-7B's 32 layers, scaled to other depths
PAPER_LAYERS = (2, 6, 15)
PAPER_DEPTH = 32
#: neighbours of the density estimate of the recycled tokens' clustering (DPC-kNN's k)
NEIGHBOURS = 5


@register
@dataclass
class SparseVLM(PrefillMethod):
    """SparseVLM: image tokens ranked, at several layers of the language model, by the
    attention of the text tokens relevant to the image; the dropped ones partly recycled into
    a few merged tokens.

    Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model
    Inference", ICML 2025. https://arxiv.org/abs/2410.04417

    A prefill method (see :mod:`tokenreduce.methods.prefill`) acting on the image tokens of a
    vision-language model (a text-only language model is refused). At each site layer:

    * raters: with the layer's queries of the text tokens and keys of the image tokens, the
      logits (averaged over heads) are turned, for each image token, into a softmax over the
      text tokens after it; a text token's relevance is its mean over the image tokens, and
      the text tokens at least as relevant as their mean are the raters;
    * scores: an image token's score is the attention the raters pay it at this layer (the
      model's causal softmax, averaged over heads and raters);
    * the budget keeps the best (``prune_ratio`` of the image tokens gone after the last site,
      the share growing linearly over the sites);
    * recycling: the ``recycle_ratio`` best-scoring of the tokens dropped at the site are
      clustered by their keys (density peaks over ``NEIGHBOURS`` nearest neighbours,
      DPC-kNN), into ``ceil(merge_ratio * recycled)`` clusters; each cluster goes on as one
      token, the mean of its members' hidden states, at the cluster centre's position. So a
      site keeps its budget plus these few merged tokens.

    Differences from the paper: it chooses raters once from the input embeddings and the
    number dropped per layer from the rank of the attention matrix; here raters are chosen at
    each site from that layer's queries and keys, and the count follows the budget, so methods
    compare at equal token counts.

    Parameters:
        prune_ratio: share of the image tokens dropped after the last site (before
            recycling), in [0, 1); site i of K drops ``prune_ratio * (i + 1) / K``.
        layers: 0-based site layers, ascending (each below the last layer); None for the
            paper's layers 2, 6 and 15 of 32 scaled to the model's depth.
        recycle_ratio: share of the tokens dropped at a site that are recycled (the best
            scoring), in [0, 1]; 0 recycles nothing.
        merge_ratio: merged tokens per recycled token, in (0, 1] (at least one merged token
            when any is recycled).
    """

    name = "sparsevlm"
    paper = "Zhang et al., ICML 2025 (arXiv:2410.04417)"
    needs_images: ClassVar[bool] = True

    prune_ratio: float = prune_ratio_param()
    layers: tuple[int, ...] | None = layer_tuple(None, optional=True, ascending=True)
    recycle_ratio: float = param(0.3, ge=0, le=1)
    merge_ratio: float = param(0.1, gt=0, le=1)

    def sites(self, num_layers: int) -> tuple[int, ...]:
        if self.layers is not None:
            return self.layers
        scaled = (layer * num_layers // PAPER_DEPTH for layer in PAPER_LAYERS)
        return tuple(sorted({min(s, max(num_layers - 2, 0)) for s in scaled}))

    def scores(self, ctx: KVContext) -> Tensor:
        """(B, N) attention the raters pay each entry at this layer (0 without raters)."""
        logits, probs = _attention(ctx)
        raters = relevant_text(logits, ctx.text & ctx.valid, ~ctx.text & ctx.valid)
        paid = (probs * raters[:, :, None]).sum(1)
        return paid / raters.sum(1, keepdim=True).clamp_min(1)

    def recycle(self, ctx: KVContext, scores: Tensor, chosen: Tensor) -> Tensor | None:
        """Each sample's best dropped tokens clustered into a few merged slots."""
        n = chosen.shape[1]
        owner = torch.where(chosen, torch.arange(n, device=chosen.device), -1)
        dropped = ctx.valid & ~chosen & ~ctx.text
        recycled = False
        for b in range(chosen.shape[0]):
            idx = dropped[b].nonzero().squeeze(1)
            count = int(idx.numel() * self.recycle_ratio + 1e-9)
            if count == 0:
                continue
            best = idx[scores[b, idx].argsort(descending=True, stable=True)[:count]]
            keys = ctx.keys[b, :, best].transpose(0, 1).flatten(1).float()
            owner[b, best] = best[dpc_knn(keys, math.ceil(self.merge_ratio * count))]
            recycled = True
        return owner if recycled else None


def _attention(ctx: KVContext) -> tuple[Tensor, Tensor]:
    """(B, N, N) logits and causal attention of every entry over every entry at this layer,
    averaged over heads (rows are queries, columns keys; attention from and to padding is 0)."""
    q = ctx.queries(None).float()
    k = ctx.keys.float().repeat_interleave(q.shape[1] // ctx.keys.shape[1], dim=1)
    logits = (q @ k.transpose(-2, -1)) * ctx.scale
    n = logits.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    allowed = causal & ctx.valid[:, None, None, :] & ctx.valid[:, None, :, None]
    probs = logits.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
    return logits.mean(1), probs.mean(1)


def relevant_text(logits: Tensor, text: Tensor, image: Tensor) -> Tensor:
    """(B, N) the raters: text tokens whose relevance to the image tokens before them is at
    least the mean relevance of those text tokens.

    logits: (B, N, N) query-key logits (rows queries); text, image: (B, N) masks. For each
    image token, a softmax over the text tokens after it; a text token's relevance is its
    share averaged over the image tokens."""
    n = logits.shape[-1]
    after = torch.ones(n, n, dtype=torch.bool, device=logits.device).tril(-1)
    pair = after & text[:, :, None] & image[:, None, :]
    share = logits.masked_fill(~pair, float("-inf")).softmax(1).nan_to_num(0.0)
    relevance = share.sum(2) / image.sum(1, keepdim=True).clamp_min(1)
    seen = pair.any(2)  # text tokens with an image token before them
    mean = (relevance * seen).sum(1, keepdim=True) / seen.sum(1, keepdim=True).clamp_min(1)
    return seen & (relevance >= mean)


def dpc_knn(x: Tensor, clusters: int, k: int = NEIGHBOURS) -> Tensor:
    """Density-peak clustering of the rows of ``x`` (R, F): (R,) each row's cluster centre (a
    row index; a centre is its own).

    A row's density is ``exp(-mean squared distance to its k nearest rows)`` (distances over
    ``sqrt(F)``; k at most the mean cluster size less one, so that a small cluster's density
    is measured within it); its separation the distance to the nearest denser row (the largest distance
    for the densest); the ``clusters`` rows of highest density times separation are the
    centres, and every row joins its nearest centre."""
    r = x.shape[0]
    clusters = min(clusters, r)
    d = torch.cdist(x, x) / x.shape[1] ** 0.5
    k = max(1, min(k, r // clusters - 1))
    near = d.topk(min(k, r - 1) + 1, largest=False).values[:, 1:]
    density = (-(near**2).mean(1)).exp() if r > 1 else torch.ones(1, device=x.device)
    order = torch.arange(r, device=x.device)
    # denser, with ties broken by index, so the densest row is unique
    denser = (density[None, :] > density[:, None]) | (
        (density[None, :] == density[:, None]) & (order[None, :] < order[:, None])
    )
    separation = d.masked_fill(~denser, float("inf")).min(1).values
    separation = torch.where(torch.isinf(separation), d.max(), separation)
    centres = (density * separation).argsort(descending=True, stable=True)[:clusters]
    nearest = centres[d[:, centres].argmin(1)]
    return nearest.scatter(0, centres, centres)
