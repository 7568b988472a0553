"""The decoder adapter: which models it patches, what it wraps, how it checks a prefill took
effect, and the analytic cost of a decoding step."""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
from torch import nn

from ...core.context import ModelInfo
from ...methods.base import Method
from ...methods.kv_base import KVCacheMethod
from ...methods.prefill import PrefillMethod
from ..base import Adapter, Trace
from .attention import AttentionSite
from .cache_layer import held
from .calls import find_cache, output_cache
from .examples import EXAMPLES
from .family import CLASSES, SUPPORTED, text_config
from .prefill import LayerSite
from .trace import Forward, KVTrace


class HFDecoderAdapter(Adapter):
    family = "Hugging Face decoder LMs (" + ", ".join(CLASSES[::2]) + ")"
    accepts = (KVCacheMethod, PrefillMethod)
    kind = "language"
    sites = ("kv_cache:prefill", "kv_cache:decode", "prefill:layer")

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        mod = type(model).__module__
        return mod.startswith("transformers.models.") and type(model).__name__ in CLASSES

    @classmethod
    def describe(cls, model: nn.Module) -> ModelInfo:
        cfg = text_config(model)
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
            kind=cls.kind,
            sites=cls.sites,
        )

    @classmethod
    def examples(cls) -> dict[str, Callable[..., nn.Module]]:
        """Llama, Qwen3 (``q_norm``/``k_norm``) and Gemma-3 (sliding-window layers), tiny and
        random (``examples.py``); keyword arguments override config fields."""
        return dict(EXAMPLES)

    def __init__(self, model: nn.Module, method: Method) -> None:
        super().__init__(model, method)
        impl = getattr(text_config(model), "_attn_implementation", "sdpa")
        if impl not in ("sdpa", "eager"):
            raise ValueError(
                f"tokenreduce needs attn_implementation 'sdpa' or 'eager' on this model, got "
                f"{impl!r}; load it with attn_implementation='sdpa'"
            )
        self.trace = KVTrace()
        self.current = Forward()  # the forward in progress
        self._hook = None
        self.base = self.decoder(model)
        self.layers = list(self.base.layers)
        self.depth = len(self.layers)
        #: a prefill method (prunes prompt tokens at its sites) rather than a cache method
        self.prunes_prompt = isinstance(method, PrefillMethod)
        self.sites = tuple(method.sites(self.depth)) if self.prunes_prompt else ()
        #: the first layer that runs on a pruned prompt (its forward is wrapped from there on)
        self.first_pruned: int | None = self.sites[0] if self.sites else None

    @classmethod
    def decoder(cls, model: nn.Module) -> nn.Module:
        """The decoder stack (the module holding ``layers``)."""
        return model.model if hasattr(model, "model") else model

    @property
    def active(self) -> bool:
        """The method removes something (its budget is not the identity)."""
        return self.method.active

    # -- patching ---------------------------------------------------------------------------
    def patch(self) -> None:
        for i, layer in enumerate(self.layers):
            layer.self_attn.forward = types.MethodType(AttentionSite(self, i), layer.self_attn)
            if self.first_pruned is not None and i >= self.first_pruned:
                layer.forward = types.MethodType(LayerSite(self, i), layer)
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
        mask = kwargs.get("attention_mask")
        if mask is not None and (not torch.is_tensor(mask) or mask.dim() != 2):
            mask = None  # a custom 4-D mask: only checked where a reduced layer needs it
        cache = find_cache(*args, *kwargs.values())
        # A reduced layer reports every token it has seen (ReducedLayer.seen_length).
        start = cache.get_seq_length() if cache is not None else 0
        self.current = Forward(start=start, mask2d=mask, prefill=start == 0, cache=cache)
        return args, kwargs

    # -- never silent -------------------------------------------------------------------------
    def verify(self, output) -> None:
        """After a prefill: every layer's cache was reduced to its budget (or is a sliding
        layer that had already dropped part of the prompt), and every prefill site selected."""
        fwd = self.current
        if not (self.active and fwd.prefill):
            return
        if self.prunes_prompt:
            if len(self.trace.prefill_kept) != len(self.sites) or fwd.pruned is None:
                raise self.not_applied(
                    f"a prefill ran but only {len(self.trace.prefill_kept)} of its "
                    f"{len(self.sites)} sites (layers {list(self.sites)}) selected tokens"
                )
            return
        self._verify_cache(fwd.cache if fwd.cache is not None else output_cache(output))

    def _verify_cache(self, cache) -> None:
        fwd = self.current
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
        n = self.depth
        missing = [i for i in range(n) if i not in fwd.reduced and i not in fwd.left_alone]
        if missing:
            raise self.not_applied(
                f"after the prefill the caches of layers {missing} were not reduced "
                f"(expected every layer of {n} to keep its budget)"
            )
        for i in sorted(fwd.reduced):
            want, stored = self.trace.kv_entries[i], held(cache.layers[i])
            if stored != want:
                raise self.not_applied(
                    f"layer {i}'s cache holds {stored} entries after the prefill; the reduction "
                    f"kept {want}"
                )

    # -- analytic cost ----------------------------------------------------------------------
    def gflops(self, trace: Trace | None = None) -> float:
        """GFLOPs (multiply-adds) of one decoding step per sample after the last prefill: linear
        layers plus attention over the cache as reduced (or, with ``trace=None`` or before any
        prefill, over the whole prompt)."""
        cfg = text_config(self.model)
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
