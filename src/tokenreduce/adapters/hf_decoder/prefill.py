"""Prefill methods (FastV, LazyLLM): prompt tokens selected after the attention of the site
layers, the layers after a site run on the selected tokens.

The decoder layers from the first site on are wrapped (:class:`LayerSite`). During a prefill a
wrapped layer runs on the kept tokens, with their original positions (RoPE gathered by index)
and a mask over them, causal by original index; at a site it then ranks the candidates by the
method's score (:func:`select`). A method that revives ranks every prompt token at every site:
one pruned earlier takes part with its residual state from when it left (an auxiliary
tensor), so the layers it skipped are not recomputed for it, and their caches lack it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...core.kv import KVContext, keep_per_head
from .family import attention_mask, keys, padding_valid, queries


@dataclass
class Pruned:
    """Prompt tokens kept by a prefill method at its latest site, for the layers after it."""

    index: Tensor  # (B, M) kept token indices (filler slots first, then ascending)
    kept: Tensor  # (B, M) False for filler slots
    keep: Tensor  # (B,) tokens kept per sample
    pad: Tensor  # (B,) left padding per sample
    n: int  # prompt length before pruning (padding included)
    valid: Tensor  # (B, n) real prompt tokens
    aux: Tensor | None = None  # (B, n, C) every token's latest residual state (revival)


class LayerSite:
    """The ``forward`` of decoder layer ``layer`` (at or after a prefill method's first site),
    bound on its module's instance: during a prefill it runs on the kept tokens, with their
    positions and a mask over them; at a site it then selects."""

    def __init__(self, adapter, layer: int) -> None:
        self.adapter = adapter
        self.layer = layer
        self.stage = adapter.sites.index(layer) if layer in adapter.sites else None

    def __call__(self, dl: nn.Module, hidden_states: Tensor, *args, **kwargs):
        original = type(dl).forward
        fwd = self.adapter.current
        if fwd.handoff is not None and fwd.prefill:
            hidden_states = hand_over(self.adapter, fwd, hidden_states)
        pr = fwd.pruned
        if not (self.adapter.active and fwd.prefill) or (pr is None and self.stage is None):
            return original(dl, hidden_states, *args, **kwargs)
        if args:
            raise TypeError("tokenreduce: decoder layers must be called with keyword arguments")
        position_embeddings = kwargs["position_embeddings"]
        if pr is not None:
            kwargs = pruned_kwargs(self.adapter.model, dl, pr, kwargs, hidden_states.dtype)
        out = original(dl, hidden_states, **kwargs)
        if self.stage is None:
            return out
        return select(self.adapter, dl, self.layer, self.stage, hidden_states, out,
                      position_embeddings)  # fmt: skip


def hand_over(adapter, fwd, hidden: Tensor) -> Tensor:
    """Apply the prompt reduction a handoff left for the first layer (``fwd.handoff``, a
    :func:`~tokenreduce.core.handoff.handoff` lifted to the prompt, padding slots first): the
    layers from here on run on its slots, at their anchors' positions. Returns (B, M, C)."""
    lifted, fwd.handoff = fwd.handoff, None
    b, n = hidden.shape[:2]
    valid = padding_valid(fwd.mask2d, b, n, hidden.device)
    kept = lifted.valid
    if kept is None:
        kept = torch.ones(lifted.anchor.shape, dtype=torch.bool, device=hidden.device)
    lengths = valid.sum(1)
    index = lifted.anchor.clamp_min(0)  # a padding slot reads token 0, masked by ``kept``
    fwd.pruned = Pruned(index, kept, kept.sum(1), n - lengths, n, valid)
    _record(adapter, 0, n, lengths, index.masked_fill(~kept, -1))
    return lifted.apply(hidden)


def pruned_kwargs(model: nn.Module, dl: nn.Module, pr: Pruned, kwargs: dict, dtype) -> dict:
    """A layer's keyword arguments for the kept tokens: their positions and a mask over them
    (causal by original index)."""
    kwargs = dict(kwargs)
    cos, sin = kwargs["position_embeddings"]
    kwargs["position_embeddings"] = (take(cos, pr.index), take(sin, pr.index))
    if kwargs.get("position_ids") is not None:
        kwargs["position_ids"] = (
            kwargs["position_ids"].expand(pr.index.shape[0], -1).gather(1, pr.index)
        )
    t = pr.index
    allowed = pr.kept[:, None, None, :] & (t[:, None, None, :] <= t[:, None, :, None])
    window = getattr(dl.self_attn, "sliding_window", None)
    if window is not None:
        allowed &= t[:, None, None, :] > t[:, None, :, None] - window
    # Every row may see itself, so a filler slot never has an all-masked row (NaN).
    allowed |= torch.eye(t.shape[1], dtype=torch.bool, device=t.device)
    kwargs["attention_mask"] = attention_mask(model, allowed, dtype)
    return kwargs


def select(adapter, dl: nn.Module, layer: int, stage: int, h_in: Tensor, out: Tensor,
           position_embeddings) -> Tensor:  # fmt: skip
    """A prefill method's site: rank the candidate prompt tokens by the method's score at this
    layer, keep the best (and the slots the method recycles dropped tokens into), and return
    the hidden states the next layer runs on (B, M, C).

    Candidates are the tokens that ran this layer or, for a method that revives, every prompt
    token (the pruned ones at their stored state)."""
    method, fwd = adapter.method, adapter.current
    pr = fwd.pruned
    if pr is None:  # the first site: every token ran this layer
        b, n = h_in.shape[:2]
        valid = padding_valid(fwd.mask2d, b, n, h_in.device)
        index, kept, aux = torch.arange(n, device=h_in.device).expand(b, n), valid, None
    else:
        n, valid, index, kept, aux = pr.n, pr.valid, pr.index, pr.kept, pr.aux
    lengths = valid.sum(1)
    pad = n - lengths
    if aux is not None:  # revival: all tokens, the pruned ones at their stored state
        states = put(aux, index, kept, h_in)
        cand, cand_valid = torch.arange(n, device=h_in.device).expand_as(valid), valid
    else:
        states, cand, cand_valid = h_in, index, kept
    protected = _protected(adapter, valid.shape[0], n, h_in.device)
    ctx = _context(adapter, dl, layer, states, cand, cand_valid, pad, position_embeddings)
    scores = method.scores(ctx).float().masked_fill(protected.gather(1, cand), float("inf"))
    scores = scores.masked_fill(~cand_valid, float("-inf"))
    fixed = (protected & valid).sum(1)  # real tokens no site removes
    keep = [adapter.budget.keep(layer, r) + f
            for r, f in zip((lengths - fixed).tolist(), fixed.tolist(), strict=True)]  # fmt: skip
    keep = torch.tensor(keep, device=h_in.device)
    rel, new_kept = keep_per_head(scores[:, None, :], keep)
    rel, new_kept = rel[:, 0], new_kept[:, 0]
    # every candidate's state after this layer (a revived method's pruned ones unchanged)
    after = put(states, index, kept, out) if method.revive and pr is not None else out
    chosen = torch.zeros_like(cand_valid).scatter(1, rel, new_kept)
    owner = method.recycle(ctx, scores, chosen)
    if owner is not None:
        rel, new_kept, after = _recycled(method.name, after, owner, chosen, cand_valid)
        keep = new_kept.sum(1)
    new_index = cand.gather(1, rel)
    new_aux = after if method.revive and stage < len(adapter.sites) - 1 else None
    _record(adapter, stage, n, lengths, new_index.masked_fill(~new_kept, -1))
    fwd.pruned = Pruned(new_index, new_kept, keep, pad, n, valid, new_aux)
    return take(after, rel)


def _recycled(name: str, after: Tensor, owner: Tensor, chosen: Tensor,
              cand_valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """The slots a method's :meth:`~tokenreduce.methods.PrefillMethod.recycle` asked for:
    their candidate indices (B, M), filler first, whether each is real (B, M), and every
    candidate's state, each slot's being the mean of its members' (B, K, C)."""
    k = owner.shape[1]
    self_index = torch.arange(k, device=owner.device).expand_as(owner)
    owner = owner.masked_fill(~cand_valid, -1)
    slots = owner == self_index
    joined = owner.clamp_min(0)
    if bool((chosen & ~slots).any()) or bool(((owner >= 0) & ~slots.gather(1, joined)).any()):
        raise ValueError(
            f"{name}.recycle: every chosen token must own its slot, and a token may only join "
            "a slot whose owner owns itself"
        )
    rel, kept = keep_per_head(torch.where(slots, 1.0, float("-inf"))[:, None], slots.sum(1))
    members = (owner >= 0)[:, :, None].to(after.dtype)
    sums = torch.zeros_like(after).scatter_add(
        1, joined[:, :, None].expand_as(after), after * members
    )
    count = torch.zeros_like(members).scatter_add(1, joined[:, :, None], members)
    # a slot alone keeps its state exactly (x / 1), a merged slot is its members' mean; the
    # others keep theirs (a reviving method's stored state of a token that left)
    merged = torch.where(slots[:, :, None], sums / count.clamp_min(1), after)
    return rel[:, 0], kept[:, 0], merged


def _protected(adapter, b: int, n: int, device) -> Tensor:
    """(B, n) prompt tokens no site removes: the method's last ``keep_last`` and those the
    model family protects (``fwd.protected``: a vision-language model's text)."""
    method, fwd = adapter.method, adapter.current
    if method.needs_images and fwd.protected is None:
        raise adapter.not_applied(
            f"{method.name} removes image tokens, but this prompt's image tokens are unknown "
            "(call the vision-language model with input_ids holding its image placeholders)"
        )
    last = (torch.arange(n, device=device) >= n - method.keep_last)[None].expand(b, n)
    return last if fwd.protected is None else last | fwd.protected.to(device)


def _context(adapter, dl: nn.Module, layer: int, states: Tensor, cand: Tensor,
             cand_valid: Tensor, pad: Tensor, position_embeddings) -> KVContext:  # fmt: skip
    """What the method reads at a site: the candidates' keys at this layer (RoPE at their
    original positions), their queries on demand (the last one ranks for most methods), and
    which of them are text on a vision-language model."""
    attn = dl.self_attn
    x = dl.input_layernorm(states)
    cos, sin = position_embeddings
    cand_rope = (take(cos, cand), take(sin, cand))
    k = keys(attn, x, *cand_rope)
    position = (cand - pad[:, None]).masked_fill(~cand_valid, -1)
    protected = adapter.current.protected
    text = None if protected is None else protected.to(cand.device).gather(1, cand)
    return KVContext(layer, adapter.depth, k, k, cand_valid, position, attn.scaling,
                     lambda rows: queries(attn, x, cand_rope, rows), text=text)  # fmt: skip


def _record(adapter, stage: int, n: int, lengths: Tensor, kept: Tensor) -> None:
    """Add a site's kept tokens (B, M), -1 for filler, to the trace; the first starts it."""
    tr = adapter.trace
    if stage == 0:
        tr.kv_entries = [None] * adapter.depth
        tr.prompt_tokens, tr.prompt_lengths = n, lengths.tolist()
        tr.prefill_kept = []
    tr.prefill_kept.append(kept)


def take(x: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` (B, M) of x (B or 1, N, C) -> (B, M, C)."""
    b, m = index.shape
    return x.expand(b, -1, -1).gather(1, index[:, :, None].expand(b, m, x.shape[-1]))


def put(base: Tensor, index: Tensor, kept: Tensor, x: Tensor) -> Tensor:
    """``base`` (B, N, C) with rows ``index`` (B, M) replaced by ``x`` (B, M, C) where ``kept``;
    a filler slot's computation never reaches a token's state."""
    src = torch.where(kept[:, :, None], x, take(base, index))
    return base.scatter(1, index[:, :, None].expand_as(src), src)
