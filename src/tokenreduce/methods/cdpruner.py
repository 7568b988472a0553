from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.context import TokenContext
from ..core.reduction import Reduction
from .base import register
from .pruning import KeepRatioMethod


@register
@dataclass
class CDPruner(KeepRatioMethod):
    """CDPruner: the tokens of greatest conditional diversity, a determinantal point process
    whose kernel weighs similarity by relevance to the instruction.

    Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token
    Pruning in MLLMs", 2025. https://arxiv.org/abs/2506.10967

    With ``S`` the cosine similarity of the image tokens' features and ``q`` each token's
    relevance to the instruction (its cosine similarity to the instruction's token
    embeddings, averaged over them, then min-max normalised to [0, 1] over the image's
    tokens), the kernel is ``L = diag(q) S diag(q)``; the kept tokens are the greedy MAP of
    the DPP of kernel ``L`` (Chen et al., NeurIPS 2018: each step adds the token of largest
    marginal gain in ``log det L_Y``, through an incremental Cholesky update, O(N k) a step).
    Relevant tokens weigh more, similar ones repel. On a vision-language model the features
    are the image tokens as handed to the language model and the instruction is the
    language model's input embeddings of the prompt's text tokens (the same space; the
    paper uses CLIP's text encoder where the vision tower has one). Computed in float64: the
    choice is a chain of argmax, and a batch must choose as its images one by one do.

    Only sites that know the instruction take it (``ModelInfo.gives_query``: the handoff of a
    vision-language model); elsewhere ``patch`` refuses it. Pruning only: the kept tokens
    are unchanged.

    Parameters:
        keep_ratio: fraction of unprotected tokens kept, in (0, 1] (64 of LLaVA-1.5's 576
            in the paper's lightest setting: 0.11).
        layers: 0-based indices of the sites that prune (the handoff is site 0).
    """

    name = "cdpruner"
    paper = "Zhang et al., 2025 (arXiv:2506.10967)"
    needs_query = True
    #: benchmarks leave it out of the default methods of models without images
    needs_images = True

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        if ctx.query is None:
            raise ValueError(
                f"{self.name}: the site gave no instruction (TokenContext.query is None); "
                "it runs at a vision-language model's handoff"
            )
        free = ~ctx.state.protected
        relevance = instruction_relevance(ctx.hidden, ctx.query, ctx.query_mask, free)
        kernel = conditional_kernel(ctx.hidden, relevance)
        chosen = greedy_dpp(kernel, ctx.num_reducible - n_remove, free)
        kept = (chosen | ctx.state.protected).nonzero()[:, 1].view(chosen.shape[0], -1)
        return Reduction.select(kept, ctx.state.num_tokens)


def instruction_relevance(
    features: Tensor, query: Tensor, query_mask: Tensor | None, free: Tensor
) -> Tensor:
    """(B, N) relevance in [0, 1] of each token to the instruction: its mean cosine similarity
    to the real rows of ``query`` (B, T, C), min-max normalised over the ``free`` (B, N)
    tokens of each sample (all ones when they are equally relevant; 0 at the others).

    ValueError when a sample's instruction has no token."""
    mask = torch.ones(query.shape[:2], dtype=torch.bool, device=query.device)
    mask = mask if query_mask is None else query_mask.bool()
    if not bool(mask.any(1).all()):
        raise ValueError("cdpruner: an image's prompt has no text token to take as instruction")
    text = F.normalize(query.double(), dim=-1) * mask[..., None]
    mean_text = text.sum(1) / mask.sum(1, keepdim=True)  # mean of unit text embeddings
    score = torch.einsum("bnc,bc->bn", F.normalize(features.double(), dim=-1), mean_text)
    low = score.masked_fill(~free, torch.inf).amin(1, keepdim=True)
    high = score.masked_fill(~free, -torch.inf).amax(1, keepdim=True)
    spread = high - low
    flat = spread <= 1e-12 * high.abs().clamp_min(1.0)
    scaled = torch.where(flat, torch.ones_like(score), (score - low) / spread.clamp_min(1e-300))
    return scaled.masked_fill(~free, 0.0)


def conditional_kernel(features: Tensor, relevance: Tensor) -> Tensor:
    """``diag(q) S diag(q)`` (B, N, N), float64: ``S`` the cosine similarity of ``features``
    (B, N, C), ``q`` the ``relevance`` (B, N)."""
    unit = F.normalize(features.double(), dim=-1)
    q = relevance.double()
    return q[:, :, None] * (unit @ unit.transpose(1, 2)) * q[:, None, :]


def greedy_dpp(kernel: Tensor, keep: int, candidates: Tensor) -> Tensor:
    """The greedy MAP of a DPP: ``keep`` of the ``candidates`` (B, N) bool, each step the one
    that raises ``log det`` of the kernel's chosen block most (Chen et al., "Fast Greedy MAP
    Inference for Determinantal Point Process", NeurIPS 2018). Returns (B, N) bool.

    ``d2[i]`` is the Schur complement of token i against the chosen set (its gain in the
    determinant), kept up to date by the rows ``c`` of the chosen tokens' incremental
    Cholesky factor; a chosen token's gain is set to -inf. Once the kernel's rank is spent
    (gains at zero), the remaining picks follow the largest gains left (ties to the lower
    index), so exactly ``keep`` are chosen."""
    b, n, _ = kernel.shape
    rows = torch.arange(b, device=kernel.device)
    gain = torch.diagonal(kernel, dim1=1, dim2=2).clone().masked_fill(~candidates, -torch.inf)
    factor = kernel.new_zeros(keep, b, n)
    chosen = torch.zeros(b, n, dtype=torch.bool, device=kernel.device)
    for step in range(keep):
        j = gain.argmax(1)
        chosen[rows, j] = True
        prior = torch.einsum("tb,tbn->bn", factor[:step, rows, j], factor[:step])
        pivot = gain[rows, j].clamp_min(1e-12).sqrt()[:, None]
        factor[step] = (kernel[rows, j] - prior) / pivot
        gain = gain - factor[step] ** 2
        gain[rows, j] = -torch.inf
    return chosen
