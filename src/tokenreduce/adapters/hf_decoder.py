"""Adapter for Hugging Face decoder language models (Llama, Mistral, Qwen2, Qwen3, Gemma-3):
key-value cache reduction at the end of prefill and while decoding, and prompt pruning
during prefill.

Each attention module's ``forward`` is wrapped on the instance (never on the class). The
wrapper calls the model's own forward, so the fast attention path (SDPA) stays on. When a
layer's cache is filled by a prompt (prefill), the wrapper scores the cached entries with the
method, keeps the best ``M`` per KV head and replaces the cache layer's ``keys``/``values`` by
the smaller tensors. Attention rows a method asks for (an observation window, the last query)
are computed there, for those rows only, from the layer's input with RoPE applied.

After a reduction the cache no longer lines up with the token sequence, so the adapter keeps,
per reduced layer, each entry's time step (its index in the fed sequence, padding included)
and a validity flag (False for padding and for the filler slots of a shorter prompt in a
batch), and builds that layer's attention mask itself: causal by time step, and limited to the
window on sliding-window layers. Position ids keep counting from the original prompt length:
``generate`` tracks them itself, and a plain forward without ``position_ids`` gets them from
the adapter. Batches must be left-padded.

Prefill methods (``kind = "prefill"``) select prompt tokens after the attention of their site
layers; the decoder layers from the first site on are wrapped too, and run on the selected
tokens with their original positions and a mask over them. Each layer's cache holds the
tokens that ran it. A method that revives tokens sees, at every site, all prompt tokens: those
pruned earlier with the residual state they had when they left (kept in an auxiliary tensor).
"""

from __future__ import annotations

import functools
import inspect
import sys
import types
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..core.context import ModelInfo
from ..core.kv import KVContext, gather_entries, grouped_attention_received, keep_per_head
from ..methods.base import InvalidParameter, Method
from .base import Adapter, Trace

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "gemma3_text")
_CLASSES = (
    "LlamaForCausalLM",
    "LlamaModel",
    "MistralForCausalLM",
    "MistralModel",
    "Qwen2ForCausalLM",
    "Qwen2Model",
    "Qwen3ForCausalLM",
    "Qwen3Model",
    "Gemma3ForCausalLM",
    "Gemma3TextModel",
)
_STATE = "_tokenreduce_kv"


@dataclass
class KVTrace(Trace):
    """What the last prefill did to the cache: entries kept per layer (``kv_entries``, None for
    a layer left alone), the prompt length ``prompt_tokens`` (padding included) and the real
    prompt lengths ``prompt_lengths`` per sample. A prefill method also records, per site,
    the prompt tokens it kept: ``prefill_kept[i]`` (B, M) token indices, -1 for filler slots
    of a sample that keeps fewer."""

    kv_entries: list[int | None] = field(default_factory=list)
    prompt_tokens: int = 0
    prompt_lengths: list[int] = field(default_factory=list)
    prefill_kept: list[Tensor] = field(default_factory=list)


@dataclass
class _LayerState:
    valid: Tensor  # (B, Hkv, L) entry is a real token
    time: Tensor  # (B, Hkv, L) index of the entry in the fed sequence
    keep: Tensor  # (B,) entries each sample keeps (its budget)
    pad: Tensor  # (B,) left padding of each sample (time - pad = position in its prompt)
    since: int = 0  # entries appended since the last reduction
    hold: Tensor | None = None  # (B,) entries held while decoding (decode_every)
    acc: Tensor | None = None  # (B, Hkv, L) attention received so far (accumulating methods)
    q: Tensor | None = None  # (B, Hq, R, D) the R most recent queries, RoPE applied
    q_time: Tensor | None = None  # (R,) their time steps


@dataclass
class _CacheState:
    layers: dict[int, _LayerState] = field(default_factory=dict)


@dataclass
class _Prune:
    """Prompt tokens kept by a prefill method at its latest site, for the layers after it."""

    index: Tensor  # (B, M) kept token indices (filler slots first, then ascending)
    kept: Tensor  # (B, M) False for filler slots
    keep: Tensor  # (B,) tokens kept per sample
    pad: Tensor  # (B,) left padding per sample
    n: int  # prompt length before pruning (padding included)
    valid: Tensor  # (B, n) real prompt tokens
    aux: Tensor | None = None  # (B, n, C) every token's latest residual state (revival)


@dataclass
class _Forward:
    start: int = 0  # time step of this forward's first token
    mask2d: Tensor | None = None  # (B, start + s) padding mask of the whole sequence, or None
    prefill: bool = False  # the cache was empty (or absent) when this forward began
    cache: object = None  # the cache of this forward, once the model or a layer has one
    attention_saw_cache: bool = False  # an attention layer received the cache
    reduced: set[int] = field(default_factory=set)  # layers whose cache a prefill reduced
    left_alone: set[int] = field(default_factory=set)  # sliding layers that had dropped the prompt


def find_cache(*values):
    """The transformers ``Cache`` among a call's arguments, however the caller passed it: by
    any keyword (``past_key_values`` until transformers 5.2x, ``cache`` after), positionally,
    or inside a ``**kwargs`` dict. Found by type, not by name, so a renamed argument is still
    found. None when there is none."""
    from transformers.cache_utils import Cache

    for value in values:
        if isinstance(value, Cache):
            return value
        if isinstance(value, (tuple, list)):
            found = find_cache(*value)
        elif isinstance(value, dict):
            found = find_cache(*value.values())
        else:
            continue
        if found is not None:
            return found
    return None


def output_cache(output):
    """The cache a Hugging Face model output carries (``output.past_key_values`` or, from
    transformers 5.2x on, ``output.cache``), or None."""
    return find_cache(*(output.values() if isinstance(output, dict) else (output,)))


def cache_kwargs(model: nn.Module, cache) -> dict:
    """``{name: cache}`` for passing a cache to ``model(...)`` or ``model.generate(...)`` under
    the keyword its transformers release takes (``past_key_values``, or ``cache`` from 5.2x
    on), without a deprecation warning."""
    params = _signature(type(model)).parameters
    return {"cache" if "cache" in params else "past_key_values": cache}


@functools.cache
def _signature(cls: type) -> inspect.Signature:
    return inspect.signature(cls.forward)  # follows decorators to the real parameters


class _Call:
    """One call of a module's own ``forward``, bound to its parameters by name: the adapter
    reads and replaces arguments by what they are (the hidden states, the mask, the cache)
    whatever position or keyword the model's code used for them."""

    def __init__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.module = module
        sig = _signature(type(module))
        try:
            self.bound = sig.bind(module, *args, **kwargs)
        except TypeError as err:
            raise TypeError(
                f"tokenreduce cannot read the arguments of {type(module).__name__}.forward "
                f"{sig}: {err}"
            ) from None
        named = self.bound.arguments
        extra = next((named[p.name] for p in sig.parameters.values()
                      if p.kind is p.VAR_KEYWORD and p.name in named), {})  # fmt: skip
        self.named = {**extra, **named}
        self.cache = find_cache(*self.named.values())

    def get(self, name: str):
        return self.named.get(name)

    def __call__(self, **replace):
        """Call the original forward with some arguments replaced (by parameter name)."""
        for name, value in replace.items():
            self.bound.arguments[name] = value
        return type(self.module).forward(*self.bound.args, **self.bound.kwargs)


def _config(model: nn.Module):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


class HFDecoderAdapter(Adapter):
    family = "Hugging Face decoder LMs (" + ", ".join(_CLASSES[::2]) + ")"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        mod = type(model).__module__
        return mod.startswith("transformers.models.") and type(model).__name__ in _CLASSES

    @classmethod
    def describe(cls, model: nn.Module) -> ModelInfo:
        cfg = _config(model)
        if cfg.model_type not in SUPPORTED:
            raise TypeError(
                f"tokenreduce cannot patch a {type(model).__name__} (model_type "
                f"{cfg.model_type!r}); supported decoder families: {', '.join(SUPPORTED)}"
            )
        return ModelInfo(
            family=f"hf_decoder:{cfg.model_type}",
            num_layers=cfg.num_hidden_layers,
            num_prefix=0,
            has_class_token=False,
            grid=None,
        )

    def __init__(self, model: nn.Module, method: Method) -> None:
        if getattr(method, "kind", "tokens") not in ("kv_cache", "prefill"):
            from ..methods import available, get

            ok = [n for n in available() if get(n).kind in ("kv_cache", "prefill")]
            raise InvalidParameter(
                f"{method.name} reduces token sequences (kind {method.kind!r}); on a decoder "
                f"language model use a KV-cache or prefill method: {', '.join(ok)}"
            )
        super().__init__(model, method)
        impl = getattr(_config(model), "_attn_implementation", "sdpa")
        if impl not in ("sdpa", "eager"):
            raise ValueError(
                f"tokenreduce needs attn_implementation 'sdpa' or 'eager' on this model, got "
                f"{impl!r}; load it with attn_implementation='sdpa'"
            )
        self.trace = KVTrace()
        self._fwd = _Forward()
        self._prune: _Prune | None = None
        self._hook = None
        base = model.model if hasattr(model, "model") else model
        self.base = base
        self.layers = list(base.layers)
        kind = method.kind
        self.sites = tuple(method.sites(self.info.num_layers)) if kind == "prefill" else ()

    # -- patching ---------------------------------------------------------------------------
    def patch(self) -> None:
        for i, layer in enumerate(self.layers):
            layer.self_attn.forward = types.MethodType(
                _make_attention_forward(self, i), layer.self_attn
            )
            if self.sites and i >= self.sites[0]:
                layer.forward = types.MethodType(_make_layer_forward(self, i), layer)
        self._hook = self.base.register_forward_pre_hook(self._before_forward, with_kwargs=True)

    def unpatch(self) -> None:
        for layer in self.layers:
            del layer.self_attn.forward
            if "forward" in vars(layer):
                del layer.forward
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _before_forward(self, module, args, kwargs):
        """Record the padding mask, the cache and the time step of this forward."""
        inputs = kwargs.get("input_ids", args[0] if args else None)
        if inputs is None:
            inputs = kwargs.get("inputs_embeds")
        mask = kwargs.get("attention_mask")
        if mask is not None and (not torch.is_tensor(mask) or mask.dim() != 2):
            mask = None  # a custom 4-D mask: only checked where a reduced layer needs it
        cache = find_cache(*args, *kwargs.values())
        # A reduced layer reports every token it has seen (see _count_dropped).
        start = cache.get_seq_length() if cache is not None else 0
        self._fwd = _Forward(start=start, mask2d=mask, prefill=start == 0, cache=cache)
        self._prune = None
        return args, kwargs

    # -- never silent -------------------------------------------------------------------------
    def verify(self, output) -> None:
        """After a prefill: every layer's cache was reduced to its budget (or is a sliding
        layer that had already dropped part of the prompt), and every prefill site selected."""
        method, fwd = self.method, self._fwd
        if not (method.active and fwd.prefill):
            return
        cache = fwd.cache if fwd.cache is not None else output_cache(output)
        if method.kind == "prefill":
            if len(self.trace.prefill_kept) != len(self.sites) or self._prune is None:
                raise self.not_applied(
                    f"a prefill ran but only {len(self.trace.prefill_kept)} of its "
                    f"{len(self.sites)} sites (layers {list(self.sites)}) selected tokens"
                )
            return
        if cache is None:
            raise self.not_applied(
                "the forward ran without a KV cache, so there was nothing to compress and its "
                "output is the full model's; call the model with use_cache=True (generate does)"
            )
        if not fwd.attention_saw_cache:
            raise self.not_applied(
                "the model filled a KV cache, but its attention layers never received it, so "
                "no entry was removed"
            )
        n = self.info.num_layers
        missing = [i for i in range(n) if i not in fwd.reduced and i not in fwd.left_alone]
        if missing:
            raise self.not_applied(
                f"after the prefill the caches of layers {missing} were not reduced "
                f"(expected every layer of {n} to keep its budget)"
            )
        for i in sorted(fwd.reduced):
            want, held = self.trace.kv_entries[i], _stored(cache, i)
            if held != want:
                raise self.not_applied(
                    f"layer {i}'s cache holds {held} entries after the prefill; the reduction "
                    f"kept {want}"
                )

    # -- analytic cost ----------------------------------------------------------------------
    def gflops(self, trace: Trace | None = None) -> float:
        """GFLOPs (multiply-adds) of one decoding step per sample after the last prefill: linear
        layers plus attention over the cache as reduced (or, with ``trace=None`` or before any
        prefill, over the whole prompt)."""
        cfg = _config(self.model)
        n0 = self.trace.prompt_tokens or 1
        entries = getattr(trace, "kv_entries", None) or [None] * cfg.num_hidden_layers
        d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        hq, hkv, c = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size
        flops = 0
        for m in entries:
            length = (n0 if m is None else m) + 1
            flops += c * d * (2 * hq + 2 * hkv) + 2 * hq * d * length
            flops += 3 * c * cfg.intermediate_size
        flops += c * cfg.vocab_size
        return flops / 1e9


def _rope_function(attn: nn.Module):
    fn = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)
    if fn is None:
        raise TypeError(f"{type(attn).__name__}: no apply_rotary_pos_emb in its module")
    return fn


def _is_sliding(attn: nn.Module, cache, layer: int) -> int | None:
    """The layer's sliding window, or None for global attention."""
    window = getattr(attn, "sliding_window", None)
    layers = getattr(cache, "layers", None)
    if layers is not None and layer < len(layers) and not getattr(layers[layer], "is_sliding", 0):
        return None
    return window


def _valid(mask2d: Tensor | None, b: int, n: int, device) -> Tensor:
    """(B, n) padding mask of the last ``n`` tokens; fails on right padding."""
    if mask2d is None:
        return torch.ones(b, n, dtype=torch.bool, device=device)
    valid = mask2d[:, -n:].to(device=device, dtype=torch.bool)
    if bool((valid[:, :-1] & ~valid[:, 1:]).any()):
        raise ValueError(
            "tokenreduce decoder methods need left padding (tokenizer.padding_side = 'left')"
        )
    return valid


def _queries(attn: nn.Module, x: Tensor, position_embeddings, rows: int | None) -> Tensor:
    """The last ``rows`` queries (all if None) of a layer's normalised input ``x``, after q norm
    and RoPE: (B, Hq, rows, D)."""
    h = x if rows is None else x[:, -rows:]
    b, r, _ = h.shape
    q = attn.q_proj(h).view(b, r, -1, attn.head_dim).transpose(1, 2)
    if getattr(attn, "q_norm", None) is not None:
        q = attn.q_norm(q)
    cos, sin = position_embeddings
    q, _ = _rope_function(attn)(q, q, cos[:, -r:], sin[:, -r:])
    return q


def _keys(attn: nn.Module, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Keys of a layer's normalised input ``x`` (B, N, C) at the given RoPE: (B, Hkv, N, D)."""
    b, n, _ = x.shape
    k = attn.k_proj(x).view(b, n, -1, attn.head_dim).transpose(1, 2)
    if getattr(attn, "k_norm", None) is not None:
        k = attn.k_norm(k)
    k, _ = _rope_function(attn)(k, k, cos, sin)
    return k


def _take(x: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` (B, M) of x (B or 1, N, C) -> (B, M, C)."""
    b, m = index.shape
    return x.expand(b, -1, -1).gather(1, index[:, :, None].expand(b, m, x.shape[-1]))


def _put(base: Tensor, index: Tensor, kept: Tensor, x: Tensor) -> Tensor:
    """``base`` (B, N, C) with rows ``index`` (B, M) replaced by ``x`` (B, M, C) where ``kept``;
    a filler slot's computation never reaches a token's state."""
    src = torch.where(kept[:, :, None], x, _take(base, index))
    return base.scatter(1, index[:, :, None].expand_as(src), src)


def _pruned_kwargs(adapter: HFDecoderAdapter, dl: nn.Module, pr: _Prune, kwargs: dict, dtype):
    """A layer's keyword arguments for the kept tokens: their positions and a mask over them
    (causal by original index)."""
    kwargs = dict(kwargs)
    cos, sin = kwargs["position_embeddings"]
    kwargs["position_embeddings"] = (_take(cos, pr.index), _take(sin, pr.index))
    if kwargs.get("position_ids") is not None:
        kwargs["position_ids"] = (
            kwargs["position_ids"].expand(pr.index.shape[0], -1).gather(1, pr.index)
        )
    t = pr.index
    m = t.shape[1]
    allowed = pr.kept[:, None, None, :] & (t[:, None, None, :] <= t[:, None, :, None])
    window = getattr(dl.self_attn, "sliding_window", None)
    if window is not None:
        allowed &= t[:, None, None, :] > t[:, None, :, None] - window
    # Every row may see itself, so a filler slot never has an all-masked row (NaN).
    allowed |= torch.eye(m, dtype=torch.bool, device=t.device)
    if _config(adapter.model)._attn_implementation != "sdpa":
        allowed = torch.zeros(allowed.shape, dtype=dtype, device=t.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    kwargs["attention_mask"] = allowed
    return kwargs


def _select(adapter: HFDecoderAdapter, dl: nn.Module, layer: int, stage: int, h_in: Tensor,
            out: Tensor, position_embeddings) -> Tensor:  # fmt: skip
    """A prefill method's site: rank the candidate prompt tokens by the method's score at this
    layer, keep the best, and return the hidden states the next layer runs on.

    Candidates are the tokens that ran this layer, or, for a method that revives, every prompt
    token: one pruned earlier takes part with its residual state from when it left (the
    auxiliary tensor), so the layers it skipped are not recomputed for it, and their caches
    lack it."""
    method, attn, fwd, pr = adapter.method, dl.self_attn, adapter._fwd, adapter._prune
    b, _, c = h_in.shape
    device = h_in.device
    if pr is None:  # the first site: every token ran this layer
        n = h_in.shape[1]
        valid = _valid(fwd.mask2d, b, n, device)
        index, kept, aux = torch.arange(n, device=device).expand(b, n), valid, None
    else:
        n, valid, index, kept, aux = pr.n, pr.valid, pr.index, pr.kept, pr.aux
    lengths = valid.sum(1)
    pad = n - lengths
    if aux is not None:  # revival: all tokens, the pruned ones at their stored state
        states = _put(aux, index, kept, h_in)
        cand, cand_valid = torch.arange(n, device=device).expand(b, n), valid
    else:
        states, cand, cand_valid = h_in, index, kept
    x = dl.input_layernorm(states)
    cos, sin = position_embeddings
    k = _keys(attn, x, _take(cos, cand), _take(sin, cand))
    q = _queries(attn, x, position_embeddings, 1)  # the last token: the last candidate
    position = (cand - pad[:, None]).masked_fill(~cand_valid, -1)
    ctx = KVContext(layer, adapter.info.num_layers, k, k, cand_valid, position, attn.scaling,
                    lambda rows: q)  # fmt: skip
    scores = method.scores(ctx).float()
    scores = scores.masked_fill(cand >= n - method.keep_last, float("inf"))
    scores = scores.masked_fill(~cand_valid, float("-inf"))
    keep = [method.keep_count(int(x), stage, len(adapter.sites)) for x in lengths.tolist()]
    keep = torch.tensor(keep, device=device)
    rel, new_kept = keep_per_head(scores[:, None, :], keep)
    rel, new_kept = rel[:, 0], new_kept[:, 0]
    new_index = cand.gather(1, rel)
    new_aux = None
    if method.revive:  # every token's state after this layer (pruned ones unchanged)
        after = out if pr is None else _put(states, index, kept, out)
        nxt = _take(after, new_index)
        new_aux = after if stage < len(adapter.sites) - 1 else None
    else:
        nxt = _take(out, rel)
    tr = adapter.trace
    if stage == 0:
        tr.kv_entries = [None] * adapter.info.num_layers
        tr.prompt_tokens, tr.prompt_lengths = n, lengths.tolist()
        tr.prefill_kept = []
    tr.prefill_kept.append(new_index.masked_fill(~new_kept, -1))
    adapter._prune = _Prune(new_index, new_kept, keep, pad, n, valid, new_aux)
    return nxt


def _make_layer_forward(adapter: HFDecoderAdapter, layer: int):
    """A decoder layer from a prefill method's first site on: during a prefill it runs on the
    kept tokens, with their positions and a mask over them; at a site it then selects."""
    method = adapter.method
    stage = adapter.sites.index(layer) if layer in adapter.sites else None

    def forward(dl, hidden_states: Tensor, *args, **kwargs):
        original = type(dl).forward
        pr = adapter._prune
        if not (method.active and adapter._fwd.prefill) or (pr is None and stage is None):
            return original(dl, hidden_states, *args, **kwargs)
        if args:
            raise TypeError("tokenreduce: decoder layers must be called with keyword arguments")
        position_embeddings = kwargs["position_embeddings"]
        if pr is not None:
            kwargs = _pruned_kwargs(adapter, dl, pr, kwargs, hidden_states.dtype)
        out = original(dl, hidden_states, **kwargs)
        if stage is None:
            return out
        return _select(adapter, dl, layer, stage, hidden_states, out, position_embeddings)

    return forward


def _stored(cache, layer: int) -> int:
    """Entries a cache layer holds (a sliding layer's ``get_seq_length`` counts all it saw)."""
    keys = getattr(cache.layers[layer], "keys", None)
    return 0 if keys is None or keys.numel() == 0 else keys.shape[-2]


def _seen_length(cache_layer) -> int:
    keys = cache_layer.keys
    if keys is None or keys.numel() == 0:  # reset, or never filled
        return 0
    return keys.shape[-2] + cache_layer._tokenreduce_dropped


def _count_dropped(cache_layer, removed: int) -> None:
    """Make a reduced cache layer report every token it has seen from ``get_seq_length``, not
    only the entries it still holds: the model derives the next positions from it, and
    ``generate`` the tokens still to feed (a compressed cache passed to ``generate`` with the
    whole conversation so far feeds only the new turn). Sliding layers already count what they
    saw. The method is set on the layer instance, so a ``copy.deepcopy`` of the cache (one
    compressed document, several questions) keeps it."""
    if getattr(cache_layer, "is_sliding", False) or removed == 0:
        return
    cache_layer._tokenreduce_dropped = getattr(cache_layer, "_tokenreduce_dropped", 0) + removed
    if "get_seq_length" not in vars(cache_layer):
        cache_layer.get_seq_length = types.MethodType(_seen_length, cache_layer)


def _cache_state(cache) -> _CacheState:
    state = getattr(cache, _STATE, None)
    if state is None:
        state = _CacheState()
        setattr(cache, _STATE, state)
    return state


def _make_attention_forward(adapter: HFDecoderAdapter, layer: int):
    method = adapter.method
    num_layers = adapter.info.num_layers

    def budgets(lengths: Tensor, whole: Tensor) -> list[int]:
        """Entries each sample keeps: its budget, or all it holds where ``whole`` is False."""
        keep = []
        for x, w in zip(lengths.tolist(), whole.tolist(), strict=True):
            k = method.layer_keep(layer, num_layers, x) if w else x
            if k < x and k < method.num_protected():
                raise InvalidParameter(
                    f"{method.name}: the budget leaves {k} of {x} entries, fewer than the "
                    f"{method.num_protected()} this method always keeps "
                    f"({method.protected_description()}); lower compression_ratio or raise "
                    "cache_budget"
                )
            keep.append(k)
        return keep

    def reduce_prefill(attn, cache, hidden, position_embeddings, fwd: _Forward) -> None:
        """Score the entries a prompt left in this layer's cache and keep each sample's budget.

        A sliding layer may hold only the last entries of a long prompt: a sample whose real
        tokens are not all there keeps every entry it holds (the layer is left alone for it),
        the others are reduced; the same decision as for each sample alone."""
        cl = cache.layers[layer]
        keys, values = cl.keys, cl.values
        b, hkv, n, _ = keys.shape
        s = hidden.shape[1]
        fed = _valid(fwd.mask2d, b, s, keys.device)
        prompt = fed.sum(1)  # real prompt tokens per sample
        valid = fed[:, s - n :]  # the stored entries are the last n fed
        lengths = valid.sum(1)
        whole = lengths == prompt
        if not bool(whole.any()):
            fwd.left_alone.add(layer)
            return
        method.check_prompt(int(prompt[whole].min()))
        keep = torch.tensor(budgets(lengths, whole), device=keys.device)
        position = (valid.long().cumsum(1) - 1 + (prompt - lengths)[:, None]).masked_fill(
            ~valid, -1
        )
        ctx = KVContext(
            layer,
            num_layers,
            keys,
            values,
            valid,
            position,
            attn.scaling,
            lambda rows: _queries(attn, hidden, position_embeddings, rows),
        )
        scores = method.scores(ctx, keep).float()
        scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
        index, kept = keep_per_head(scores, keep)
        cl.keys = gather_entries(keys, index)
        cl.values = gather_entries(values, index)
        _count_dropped(cl, n - index.shape[-1])
        ls = _LayerState(kept, fwd.start + (s - n) + index, keep, s - prompt)
        if method.decode_every:  # what holding the budget while decoding reads
            hold = [method.decode_keep(layer, num_layers, int(x)) if w else 2**62
                    for x, w in zip(prompt.tolist(), whole.tolist(), strict=True)]  # fmt: skip
            ls.hold = torch.tensor(hold, device=keys.device)
            if method.accumulates:
                ls.acc = ctx.attention(None).gather(-1, index).masked_fill(~kept, 0.0)
            r = min(method.decode_queries(), n)
            if r:
                ls.q = _queries(attn, hidden, position_embeddings, r)
                ls.q_time = torch.arange(fwd.start + s - r, fwd.start + s, device=keys.device)
        _cache_state(cache).layers[layer] = ls
        fwd.reduced.add(layer)
        tr = adapter.trace
        tr.kv_entries[layer] = index.shape[-1]
        tr.prompt_tokens, tr.prompt_lengths = s, prompt.tolist()

    def remember_pruned(attn, cache) -> None:
        """Record time steps and validity of a pruned layer's cache entries for decoding."""
        pr = adapter._prune
        hkv = cache.layers[layer].keys.shape[1]
        b, m = pr.index.shape
        valid = pr.kept[:, None, :].expand(b, hkv, m)
        time = adapter._fwd.start + pr.index[:, None, :].expand(b, hkv, m)
        stored = _stored(cache, layer)
        _count_dropped(cache.layers[layer], pr.n - m)
        _cache_state(cache).layers[layer] = _LayerState(
            valid[..., -stored:], time[..., -stored:], pr.keep, pr.pad
        )
        adapter.trace.kv_entries[layer] = stored

    def track(attn, cache, ls: _LayerState, hidden, position_embeddings, fwd: _Forward, window):
        """After a decoding forward: keep the most recent queries and add the new queries'
        attention to each entry's running total, for the methods that read them."""
        r = method.decode_queries()
        if not (r or method.accumulates):
            return
        s = hidden.shape[1]
        q = _queries(attn, hidden, position_embeddings, None)
        t = torch.arange(fwd.start, fwd.start + s, device=hidden.device)
        if r:
            ls.q = q if ls.q is None else torch.cat([ls.q, q], dim=2)
            ls.q_time = t if ls.q_time is None else torch.cat([ls.q_time, t])
            ls.q, ls.q_time = ls.q[:, :, -r:], ls.q_time[-r:]
        if method.accumulates:
            keys = cache.layers[layer].keys
            stored = keys.shape[-2]
            b, hkv = ls.valid.shape[:2]
            acc = torch.cat([ls.acc, ls.acc.new_zeros(b, hkv, s)], dim=-1)[..., -stored:]
            if fwd.mask2d is not None:
                q_valid = fwd.mask2d[:, -s:].to(device=keys.device, dtype=torch.bool)
            else:
                q_valid = torch.ones(b, s, dtype=torch.bool, device=keys.device)
            ls.acc = acc + grouped_attention_received(
                q, keys, t, ls.valid[..., -stored:], attn.scaling, q_valid=q_valid,
                k_index=ls.time[..., -stored:], window=window,
            )  # fmt: skip

    def reduce_decode(attn, cache, ls: _LayerState, hidden, position_embeddings, fwd, window):
        """Bring a layer's cache back to its budget while generating (``decode_every``)."""
        cl = cache.layers[layer]
        keys, values = cl.keys, cl.values
        position = (ls.time - ls.pad[:, None, None]).masked_fill(~ls.valid, -1)
        if ls.q is not None:
            q_time = ls.q_time
            recent = ls.q

            def queries(rows):
                return recent if rows is None else recent[:, :, -rows:]
        else:  # the score reads at most this forward's queries
            s = hidden.shape[1]
            q_time = torch.arange(fwd.start, fwd.start + s, device=keys.device)

            def queries(rows):
                return _queries(attn, hidden, position_embeddings,
                                s if rows is None else min(rows, s))  # fmt: skip

        ctx = KVContext(layer, num_layers, keys, values, ls.valid, position, attn.scaling,
                        queries, time=ls.time, query_time=q_time, accumulated=ls.acc,
                        window=window)  # fmt: skip
        keep = torch.minimum(ls.hold, ls.valid[:, 0].sum(-1))
        scores = method.scores(ctx, keep).float().masked_fill(~ls.valid, float("-inf"))
        index, kept = keep_per_head(scores, keep)
        cl.keys = gather_entries(keys, index)
        cl.values = gather_entries(values, index)
        _count_dropped(cl, keys.shape[-2] - index.shape[-1])
        ls.valid, ls.time, ls.since = kept, ls.time.gather(-1, index), 0
        if ls.acc is not None:
            ls.acc = ls.acc.gather(-1, index)
        adapter.trace.kv_entries[layer] = index.shape[-1]

    def own_mask(attn, ls: _LayerState, fwd: _Forward, s: int, window, dtype, device):
        """This forward's mask over the reduced cache plus the ``s`` new entries."""
        b, hkv = ls.valid.shape[:2]
        if fwd.mask2d is not None:
            new = fwd.mask2d[:, -s:].to(device=device, dtype=torch.bool)
        else:
            new = torch.ones(b, s, dtype=torch.bool, device=device)
        t = torch.arange(fwd.start, fwd.start + s, device=device)
        ls.valid = torch.cat([ls.valid, new[:, None, :].expand(b, hkv, s)], dim=-1)
        ls.time = torch.cat([ls.time, t.expand(b, hkv, s)], dim=-1)
        allowed = ls.valid[:, :, None, :] & (ls.time[:, :, None, :] <= t[None, None, :, None])
        if window is not None:
            allowed &= ls.time[:, :, None, :] > t[None, None, :, None] - window
        if s == 1 and bool(allowed.all()):
            return None
        allowed = allowed.repeat_interleave(attn.num_key_value_groups, dim=1)
        if _config(adapter.model)._attn_implementation == "sdpa":
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )

    def forward(attn, *args, **kwargs):
        adapter.site_fired()
        call = _Call(attn, args, kwargs)
        cache, fwd = call.cache, adapter._fwd
        if cache is not None:
            fwd.cache, fwd.attention_saw_cache = cache, True
        if not method.active or cache is None:
            return call()
        hidden = call.get("hidden_states")
        position_embeddings = call.get("position_embeddings")
        if cache.get_seq_length(layer) == 0:  # this layer's prefill
            out = call()
            if method.kind == "prefill":
                # Layers after the first site cache only the tokens that ran them.
                if adapter._prune is not None:
                    remember_pruned(attn, cache)
            else:
                if layer == 0:
                    adapter.trace.kv_entries = [None] * num_layers
                reduce_prefill(attn, cache, hidden, position_embeddings, fwd)
            return out
        state = getattr(cache, _STATE, None)
        ls = state.layers.get(layer) if state is not None else None
        if ls is None:  # a layer left alone
            return call()
        window = _is_sliding(attn, cache, layer)
        s = hidden.shape[1]
        mask = own_mask(attn, ls, fwd, s, window, hidden.dtype, hidden.device)
        out = call(attention_mask=mask)
        every = getattr(method, "decode_every", 0)
        if every:
            track(attn, cache, ls, hidden, position_embeddings, fwd, window)
        stored = _stored(cache, layer)
        if stored < ls.valid.shape[-1]:  # a sliding cache cropped its oldest entries
            ls.valid, ls.time = ls.valid[..., -stored:], ls.time[..., -stored:]
        ls.since += s
        if every and ls.since >= every:
            reduce_decode(attn, cache, ls, hidden, position_embeddings, fwd, window)
        return out

    return forward


def cache_bytes(cache) -> int:
    """Bytes held by the key and value tensors of a Hugging Face cache."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if torch.is_tensor(t):
                total += t.numel() * t.element_size()
    return total


__all__ = [
    "HFDecoderAdapter",
    "KVTrace",
    "cache_bytes",
    "cache_kwargs",
    "find_cache",
    "output_cache",
]
