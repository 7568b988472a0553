"""The wrapped ``forward`` of a decoder attention module.

Every call runs the model's own attention once (the fast SDPA path stays on), around a phase
chosen from the layer's cache:

- *prefill reduce*: a KV-cache method's prompt just filled the layer's cache; afterwards the
  method scores the entries and each sample keeps its budget (:meth:`AttentionSite.reduce_prefill`);
- *prefill remember*: a prefill method's layer after its first site cached only the prompt
  tokens that ran it; afterwards their time steps are recorded (:meth:`AttentionSite.remember`);
- *decode*: the layer's cache was reduced earlier; before the call the layer's
  :class:`ReducedLayer` builds the mask over its entries and the new ones, afterwards it follows
  a sliding window's crop, tracks what the method reads and, every ``decode_every`` entries,
  is brought back to its budget (*decode re-evict*, :meth:`AttentionSite.reevict`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...core.budgets import Budget
from ...core.kv import KVContext, grouped_attention_received, keep_per_head
from ...methods.base import InvalidParameter, Method
from .cache_layer import ReducedLayer, held
from .calls import Call
from .family import attention_mask, padding_valid, queries, sliding_window
from .trace import Forward

PREFILL_REDUCE, PREFILL_REMEMBER, DECODE = "prefill reduce", "prefill remember", "decode"


@dataclass
class Step:
    """One attention call the adapter acts on, and the phase it is in."""

    phase: str
    attn: nn.Module
    cache: object
    layer: int
    hidden: Tensor  # (B, s, C) the layer's normalised input
    position_embeddings: tuple[Tensor, Tensor]  # RoPE (cos, sin) of the s tokens
    fwd: Forward
    reduced: ReducedLayer | None = None
    window: int | None = None  # the layer's sliding window, None for global attention

    @property
    def host(self):
        """The transformers cache layer of this attention layer."""
        return self.cache.layers[self.layer]


class AttentionSite:
    """The ``forward`` of attention layer ``layer``, bound on its module's instance."""

    def __init__(self, adapter, layer: int) -> None:
        self.adapter = adapter
        self.method: Method = adapter.method
        self.budget: Budget = adapter.budget
        self.layer = layer
        self.num_layers: int = adapter.depth

    def __call__(self, attn: nn.Module, *args, **kwargs):
        self.adapter.site_fired()
        call = Call(attn, args, kwargs)
        self.adapter.current.saw(call.cache)
        step = self.step(attn, call)
        if step is None:  # nothing to do at this layer: the model's own attention
            return call()
        out = call(**self.before(step))
        {PREFILL_REDUCE: self.reduce_prefill, PREFILL_REMEMBER: self.remember,
         DECODE: self.after_decode}[step.phase](step)  # fmt: skip
        return out

    def step(self, attn: nn.Module, call: Call) -> Step | None:
        """The phase of this call, or None where the layer runs unchanged (no cache, the method
        inactive, a prefill method's layer before its first site, a layer left alone)."""
        cache, fwd = call.cache, self.adapter.current
        if not self.adapter.active or cache is None:
            return None
        hidden, pe = call.get("hidden_states"), call.get("position_embeddings")
        step = Step(DECODE, attn, cache, self.layer, hidden, pe, fwd)
        if cache.get_seq_length(self.layer) == 0:  # this layer's prefill
            if not self.adapter.prunes_prompt:
                step.phase = PREFILL_REDUCE
                return step
            step.phase = PREFILL_REMEMBER
            return step if fwd.pruned is not None else None
        step.reduced = ReducedLayer.of(step.host)
        step.window = sliding_window(attn, cache, self.layer)
        return step if step.reduced is not None else None

    def before(self, step: Step) -> dict:
        """Arguments replaced in the original call: the own mask while decoding."""
        if step.phase != DECODE:
            return {}
        rl, hidden = step.reduced, step.hidden
        b, s = hidden.shape[:2]
        t = rl.extend(step.fwd.start, step.fwd.fed(b, s, hidden.device))
        allowed = rl.mask(t, step.window)
        if allowed is None:
            return {"attention_mask": None}
        allowed = allowed.repeat_interleave(step.attn.num_key_value_groups, dim=1)
        return {"attention_mask": attention_mask(self.adapter.model, allowed, hidden.dtype)}

    # -- prefill --------------------------------------------------------------------------------
    def reduce_prefill(self, step: Step) -> None:
        """Score the entries a prompt left in this layer's cache and keep each sample's budget.

        A sliding layer may hold only the last entries of a long prompt: a sample whose real
        tokens are not all there keeps every entry it holds (the layer is left alone for it),
        the others are reduced; the same decision as for each sample alone."""
        method, layer, fwd, host = self.method, self.layer, step.fwd, step.host
        trace = self.adapter.trace
        if layer == 0:
            trace.kv_entries = [None] * self.num_layers
        b, hkv, n, _ = host.keys.shape
        s = step.hidden.shape[1]
        fed = padding_valid(fwd.mask2d, b, s, host.keys.device)
        prompt = fed.sum(1)  # real prompt tokens per sample
        valid = fed[:, s - n :]  # the stored entries are the last n fed
        lengths = valid.sum(1)
        whole = lengths == prompt
        if not bool(whole.any()):
            fwd.left_alone.add(layer)
            return
        method.check_prompt(int(prompt[whole].min()))
        keep = torch.tensor(
            _budgets(method, self.budget, layer, lengths, whole), device=valid.device
        )
        position = (valid.long().cumsum(1) - 1 + (prompt - lengths)[:, None]).masked_fill(
            ~valid, -1
        )
        ctx = KVContext(layer, self.num_layers, host.keys, host.values, valid, position,
                        step.attn.scaling, lambda rows: _queries(step, rows))  # fmt: skip
        scores = method.scores(ctx, keep).float().masked_fill(~valid[:, None, :], float("-inf"))
        index, kept = keep_per_head(scores, keep)
        time = fwd.start + s - n + torch.arange(n, device=valid.device).expand(b, hkv, n)
        rl = ReducedLayer.attach(host, valid[:, None, :].expand(b, hkv, n), time, keep, s - prompt)
        if method.decode_every:
            self.prepare_decoding(step, rl, ctx, prompt, whole)
        rl.select(index, kept)
        fwd.reduced.add(layer)
        trace.kv_entries[layer] = index.shape[-1]
        trace.prompt_tokens, trace.prompt_lengths = s, prompt.tolist()

    def prepare_decoding(self, step: Step, rl: ReducedLayer, ctx: KVContext, prompt: Tensor,
                         whole: Tensor) -> None:  # fmt: skip
        """What holding the budget while decoding (``decode_every``) reads: the entries each
        sample holds, the attention received so far, the most recent queries."""
        method, device = self.method, prompt.device
        hold = [method.decode_keep(self.layer, self.num_layers, int(x)) if w else 2**62
                for x, w in zip(prompt.tolist(), whole.tolist(), strict=True)]  # fmt: skip
        rl.hold = torch.tensor(hold, device=device)
        if method.accumulates:
            rl.accumulated = ctx.attention(None)
        r = min(method.decode_queries(), ctx.num_entries)
        if r:
            end = step.fwd.start + step.hidden.shape[1]
            rl.remember_queries(_queries(step, r), torch.arange(end - r, end, device=device), r)

    def remember(self, step: Step) -> None:
        """Record the time steps and validity of a pruned layer's cache entries for decoding."""
        pr = step.fwd.pruned
        b, m = pr.index.shape
        hkv = step.host.keys.shape[1]
        valid = pr.kept[:, None, :].expand(b, hkv, m)
        time = step.fwd.start + pr.index[:, None, :].expand(b, hkv, m)
        ReducedLayer.attach(step.host, valid, time, pr.keep, pr.pad).removed(pr.n - m)
        self.adapter.trace.kv_entries[self.layer] = held(step.host)

    # -- decoding -------------------------------------------------------------------------------
    def after_decode(self, step: Step) -> None:
        rl = step.reduced
        rl.follow_crop()  # a sliding cache may have cropped its oldest entries
        every = getattr(self.method, "decode_every", 0)
        if every:
            self.track(step)
        rl.since += step.hidden.shape[1]
        if every and rl.since >= every:
            self.reevict(step)

    def track(self, step: Step) -> None:
        """After a decoding forward: keep the most recent queries and add the new queries'
        attention to each entry's running total, for the methods that read them."""
        method, rl, hidden = self.method, step.reduced, step.hidden
        r = method.decode_queries()
        if not (r or method.accumulates):
            return
        b, s = hidden.shape[:2]
        q = _queries(step, None)
        t = torch.arange(step.fwd.start, step.fwd.start + s, device=hidden.device)
        if r:
            rl.remember_queries(q, t, r)
        if method.accumulates:
            keys = step.host.keys
            rl.accumulated = rl.accumulated + grouped_attention_received(
                q, keys, t, rl.valid, step.attn.scaling, q_valid=step.fwd.fed(b, s, keys.device),
                k_index=rl.time, window=step.window,
            )  # fmt: skip

    def reevict(self, step: Step) -> None:
        """Bring a layer's cache back to its budget while generating (``decode_every``)."""
        rl, host = step.reduced, step.host
        read, query_time = _query_reader(step)
        ctx = KVContext(self.layer, self.num_layers, host.keys, host.values, rl.valid,
                        rl.position(), step.attn.scaling, read, time=rl.time,
                        query_time=query_time, accumulated=rl.accumulated,
                        window=step.window)  # fmt: skip
        keep = torch.minimum(rl.hold, rl.valid[:, 0].sum(-1))
        scores = self.method.scores(ctx, keep).float().masked_fill(~rl.valid, float("-inf"))
        rl.select(*keep_per_head(scores, keep))
        self.adapter.trace.kv_entries[self.layer] = held(host)


def _queries(step: Step, rows: int | None) -> Tensor:
    """The last ``rows`` queries (all if None) of this call's input, RoPE applied."""
    return queries(step.attn, step.hidden, step.position_embeddings, rows)


def _query_reader(step: Step):
    """``(queries(rows), their time steps)`` a re-eviction reads: the recent queries the layer
    kept, or, for a method that keeps none, at most this forward's own."""
    rl = step.reduced
    if rl.queries is not None:
        recent = rl.queries
        return (lambda rows: recent if rows is None else recent[:, :, -rows:]), rl.query_time
    s = step.hidden.shape[1]
    time = torch.arange(step.fwd.start, step.fwd.start + s, device=step.hidden.device)
    return (lambda rows: _queries(step, s if rows is None else min(rows, s))), time


def _budgets(
    method: Method, budget: Budget, layer: int, lengths: Tensor, whole: Tensor
) -> list[int]:
    """Entries each sample keeps: its budget, or all it holds where ``whole`` is False."""
    keep = []
    for x, w in zip(lengths.tolist(), whole.tolist(), strict=True):
        k = budget.keep(layer, x) if w else x
        if k < x and k < method.num_protected():
            raise InvalidParameter(
                f"{method.name}: the budget leaves {k} of {x} entries, fewer than the "
                f"{method.num_protected()} this method always keeps "
                f"({method.protected_description()}); lower compression_ratio or raise "
                "cache_budget"
            )
        keep.append(k)
    return keep
