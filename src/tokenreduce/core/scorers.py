"""Scorers: pure functions from a token context to one score per token (higher = keep)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def attention_received(
    q: Tensor,
    k: Tensor,
    queries: Tensor | slice | None = None,
    scale: float | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """Attention each token receives from a set of query tokens, averaged over heads and queries.

    Only the requested query rows are computed: for the class token that is one row of the
    attention map, O(N) per head instead of the O(N^2) full map.

    Args:
        q, k: (B, H, N, D) queries and keys of one attention layer (after any q/k norm).
        queries: the query rows, e.g. ``slice(0, 1)`` for the class token or an index tensor;
            ``None`` averages over every query (the full map, for models without a class token).
        scale: logit scale, ``D ** -0.5`` by default.
        bias: additive logit bias broadcastable to (B, H, Q, N), e.g. log token sizes.

    Returns:
        (B, N) scores that sum to one over the tokens.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    rows = q if queries is None else q[:, :, queries]
    logits = (rows.float() * scale) @ k.float().transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1).mean(dim=(1, 2))


def key_norm(k: Tensor) -> Tensor:
    """L2 norm of each token's key, averaged over heads. k: (B, H, N, D) -> (B, N)."""
    return k.float().norm(dim=-1).mean(dim=1)


def cosine_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise cosine similarity of two token sets: (B, Na, C), (B, Nb, C) -> (B, Na, Nb)."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-2, -1)


def random_scores(num_tokens: int, seed: int, device=None) -> Tensor:
    """Seeded random scores (N,), the same for every sample so batches match single samples."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.rand(num_tokens, generator=gen).to(device)
