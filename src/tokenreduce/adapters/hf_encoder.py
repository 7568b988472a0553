"""Adapter for Hugging Face text encoders: ``BertModel`` (all-MiniLM-L6-v2 is one),
``RobertaModel`` and ``DistilBertModel``.

Each encoder layer's ``forward`` is replaced on the instance (never on the class) by one that
runs the same operations as the Hugging Face layer (``BertLayer``, ``RobertaLayer``,
DistilBERT's ``TransformerBlock`` of transformers 5), in the same order, and calls the model's own attention function
(``config._attn_implementation``: SDPA or eager), so an unreduced model is bitwise identical.
Tokens are reduced after attention (and its residual norm), before the feed-forward block.

Padded batches. The batch must be right-padded (real tokens first, as BERT tokenizers pad);
``attention_mask`` becomes the token state's valid mask, so samples of different real lengths
are reduced one by one, each with its own budget, and stacked with padding slots at the end.
Until a reduction happens the layers get the model's own attention mask; after one, a mask
built from the state (padding slots hidden, plus ``log(size)`` under proportional attention).

Protected tokens. The first token ([CLS], ``<s>``) and the last real token of each sample
([SEP], ``</s>``) are never dropped or merged; every sample needs at least these two.

Outputs. ``last_hidden_state`` is the reduced sequence (B, M, C), [CLS] first, each sample's
padding slots (size 0) at its end; the pooler reads [CLS] as usual. For a sentence embedding
use :func:`tokenreduce.text.mean_pool`, which weighs a merged token by its size.

Not supported while patched: decoders (``is_decoder``), cross-attention, ``output_attentions``
(the attention modules are bypassed), attention implementations other than SDPA and eager.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..core.context import ModelInfo
from ..core.state import TokenState
from ..methods.base import Method, PerInputTokenMethod, TokenMethod
from .base import Adapter, Trace
from .hf_vision import _module_family


@dataclass(frozen=True)
class _Spec:
    """What differs between the supported families."""

    family: str  # short name used in ModelInfo.family
    layer_class: str  # the encoder layer's class name
    layers: str  # attribute path from the model to its layer list
    style: str  # which layer forward mirrors the family's: "bert" or "distilbert"


_SPECS = {
    "BertModel": _Spec("bert", "BertLayer", "encoder.layer", "bert"),
    "RobertaModel": _Spec("roberta", "RobertaLayer", "encoder.layer", "bert"),
    "DistilBertModel": _Spec("distilbert", "TransformerBlock", "transformer.layer", "distilbert"),
}
_FAMILY_MODULES = ("bert", "roberta", "distilbert")

#: :meth:`HFEncoderAdapter.examples`: name -> (config class, model class)
_TINY = {
    "hf_bert": ("BertConfig", "BertModel"),
    "hf_roberta": ("RobertaConfig", "RobertaModel"),
    "hf_distilbert": ("DistilBertConfig", "DistilBertModel"),
}
EXAMPLE_SIZE = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 4,
                "num_attention_heads": 2, "max_position_embeddings": 64}  # fmt: skip
#: the feed-forward width, by each configuration's own name
_INNER = {"DistilBertConfig": {"hidden_dim": 64}}


def _tiny_hf(name: str, seed: int = 0, **overrides) -> nn.Module:
    import transformers

    config, model = _TINY[name]
    torch.manual_seed(seed)
    inner = _INNER.get(config, {"intermediate_size": 64})
    cfg = getattr(transformers, config)(**{**EXAMPLE_SIZE, **inner, **overrides})
    return getattr(transformers, model)(cfg).eval()


def _layers(model: nn.Module) -> nn.ModuleList:
    found = model
    for name in _SPECS[type(model).__name__].layers.split("."):
        found = getattr(found, name)
    return found


def right_padded_valid(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The valid mask (B, N) bool of a right-padded ``attention_mask`` (None: no padding).

    Raises ValueError for a mask that is not (B, N) of 0/1 with real tokens first, or a
    sample with fewer than two real tokens (it needs its [CLS] and [SEP])."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        raise ValueError(
            f"tokenreduce needs a (batch, tokens) attention_mask of 0/1 on a patched text "
            f"encoder, got shape {tuple(attention_mask.shape)}"
        )
    valid = attention_mask.bool()
    if bool((valid[:, 1:] & ~valid[:, :-1]).any()):
        raise ValueError(
            "tokenreduce needs right-padded batches on a text encoder (real tokens first, "
            "padding at the end); got a real token after padding: pad with "
            "tokenizer.padding_side = 'right'"
        )
    if bool((valid.sum(1) < 2).any()):
        raise ValueError(
            "every sample needs at least two real tokens ([CLS] and [SEP]) on a patched text "
            f"encoder; got real lengths {valid.sum(1).tolist()}"
        )
    return valid


def ends_protected(batch: int, num_tokens: int, valid: torch.Tensor | None, device) -> torch.Tensor:
    """(B, N) bool: the first token and the last real token of every sample."""
    pos = torch.arange(num_tokens, device=device).expand(batch, num_tokens)
    last = valid.sum(1, keepdim=True) - 1 if valid is not None else num_tokens - 1
    return (pos == 0) | (pos == last)


class HFEncoderAdapter(Adapter):
    family = "Hugging Face text encoders (" + ", ".join(_SPECS) + ")"
    accepts = (TokenMethod, PerInputTokenMethod)
    kind = "text"
    sites = ("block:after_attention",)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return _module_family(model) in _FAMILY_MODULES

    @classmethod
    def examples(cls) -> dict[str, Callable[..., nn.Module]]:
        """4 layers of width 32, 2 heads, a vocabulary of 100: BERT, RoBERTa, DistilBERT."""
        return {name: partial(_tiny_hf, name) for name in _TINY}

    @classmethod
    def describe(cls, model: nn.Module) -> ModelInfo:
        name = type(model).__name__
        if name not in _SPECS:
            raise TypeError(
                f"tokenreduce cannot patch a Hugging Face {name}; supported text-encoder "
                f"classes: {', '.join(_SPECS)} (patch the encoder inside a task model, e.g. "
                "model.bert)"
            )
        cfg = model.config
        if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
            raise TypeError(
                f"this {name} is configured as a decoder (is_decoder or add_cross_attention); "
                "tokenreduce's text-encoder adapter reduces bidirectional encoders only"
            )
        layer_class = _SPECS[name].layer_class
        for i, layer in enumerate(_layers(model)):
            if type(layer).__name__ != layer_class:
                raise TypeError(
                    f"layer {i} of this {name} is a {type(layer).__name__}; tokenreduce "
                    f"supports the standard {layer_class}"
                )
        return ModelInfo(
            family=f"hf_encoder:{_SPECS[name].family}",
            num_layers=cfg.num_hidden_layers,
            num_prefix=1,
            has_class_token=True,
            grid=None,
            kind=cls.kind,
            sites=cls.sites,
        )

    def __init__(self, model: nn.Module, method: Method) -> None:
        super().__init__(model, method)
        impl = getattr(model.config, "_attn_implementation", "eager") or "eager"
        if impl not in ("sdpa", "eager"):
            raise ValueError(
                f"tokenreduce needs attn_implementation 'sdpa' or 'eager' on a patched "
                f"{type(model).__name__}, got {impl!r}; load it with attn_implementation='sdpa'"
            )
        self._valid: torch.Tensor | None = None
        self._initial: TokenState | None = None

    # -- patching ---------------------------------------------------------------------------
    def patch(self) -> None:
        layers = _layers(self.model)
        for layer in layers:
            if "forward" in layer.__dict__:
                raise RuntimeError(
                    f"this {type(layer).__name__} already has an instance-level 'forward' "
                    "(another tool wraps it); tokenreduce cannot patch it"
                )
        self._mask_hook = self.model.register_forward_pre_hook(self._read_mask, with_kwargs=True)
        make = _LAYER_FORWARDS[_SPECS[type(self.model).__name__].style]
        for i, layer in enumerate(layers):
            layer.forward = types.MethodType(make(self, i), layer)

    def unpatch(self) -> None:
        self._mask_hook.remove()
        for layer in _layers(self.model):
            layer.__dict__.pop("forward", None)

    def _read_mask(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        if kwargs.get("output_attentions"):
            raise ValueError("output_attentions is not supported on a patched text encoder")
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        self._valid = right_padded_valid(mask)

    # -- sites ------------------------------------------------------------------------------
    def begin(self, layer: int, x: torch.Tensor, valid: torch.Tensor | None = None) -> TokenState:
        """As :meth:`Adapter.begin`, with [CLS] and each sample's [SEP] protected."""
        state = super().begin(layer, x, valid)
        if layer == 0:
            b, n = x.shape[:2]
            ends = ends_protected(b, n, valid, x.device)
            state = TokenState.initial(b, n, device=x.device, valid=valid, protected=ends)
            self.trace.state = self._initial = state
        return state

    def layer_mask(self, state: TokenState, x: torch.Tensor, model_mask):
        """The attention mask of a layer: the model's own until a reduction happened (bitwise
        the unpatched model), then an additive (B, 1, 1, N) bias hiding padding slots, with
        ``log(size)`` under proportional attention; None when neither applies."""
        if state is self._initial:
            return model_mask
        bias = self.size_bias(state, x.dtype)
        if state.valid is None:
            return bias
        hide = ~state.valid[:, None, None, :]
        bias = torch.zeros(hide.shape, dtype=x.dtype, device=x.device) if bias is None else bias
        return bias.masked_fill(hide, torch.finfo(x.dtype).min)

    def gflops(self, trace: Trace | None = None) -> float:
        """Analytic GFLOPs (multiply-adds) per sample of the encoder layers, on the padded
        width the last forward computed (or unreduced: its first layer's width, or the
        maximum position count before any forward)."""
        cfg = self.model.config
        inner = getattr(cfg, "intermediate_size", None) or cfg.hidden_dim  # DistilBERT's name
        c, depth = cfg.hidden_size, cfg.num_hidden_layers
        if trace is not None and trace.attn_tokens:
            attn, mlp = trace.attn_tokens, trace.mlp_tokens
        else:
            n0 = (
                self.trace.attn_tokens[0] if self.trace.attn_tokens else cfg.max_position_embeddings
            )
            attn = mlp = [n0] * depth
        flops = sum(4 * n * c * c + 2 * n * n * c for n in attn)
        return (flops + sum(2 * n * c * inner for n in mlp)) / 1e9


def _attend(adapter, layer_index, attn, projections, x, model_mask, kwargs):
    """The layer's self-attention through the model's own attention function, after the
    site's bookkeeping. Returns ``(state, output (B, N, C) before the output projection, q,
    k)``, q and k (B, H, N, D)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    state = adapter.begin(layer_index, x, valid=adapter._valid if layer_index == 0 else None)
    mask = adapter.layer_mask(state, x, model_mask)
    shape = (*x.shape[:-1], -1, attn.attention_head_size)
    q, k, v = (proj(x).view(shape).transpose(1, 2) for proj in projections)
    eager = sys.modules[type(attn).__module__].eager_attention_forward
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager)
    for name in ("encoder_attention_mask", "cache", "past_key_values"):
        kwargs.pop(name, None)  # a bidirectional encoder's self-attention takes neither
    out, _ = interface(attn, q, k, v, mask, dropout=attn.dropout.p if attn.training else 0.0,
                       scaling=attn.scaling, **kwargs)  # fmt: skip
    return state, out.reshape(*x.shape[:-1], -1).contiguous(), q, k


def _bert_layer_forward(adapter: HFEncoderAdapter, index: int):
    """The forward of ``BertLayer`` / ``RobertaLayer`` (transformers 5), with a site after
    attention."""
    from transformers.pytorch_utils import apply_chunking_to_forward

    def forward(layer, hidden_states, attention_mask=None, *args, **kwargs) -> torch.Tensor:
        attn = layer.attention.self
        projections = (attn.query, attn.key, attn.value)
        state, out, q, k = _attend(adapter, index, attn, projections, hidden_states,
                                   attention_mask, kwargs)  # fmt: skip
        x = layer.attention.output(out, hidden_states)
        x = adapter.reduce(index, x, q, k, attn.scaling, adapter.size_bias(state, x.dtype))
        return apply_chunking_to_forward(
            layer.feed_forward_chunk, layer.chunk_size_feed_forward, layer.seq_len_dim, x
        )

    return forward


def _distilbert_layer_forward(adapter: HFEncoderAdapter, index: int):
    """The forward of DistilBERT's ``TransformerBlock`` (transformers 5), with a site after
    attention."""

    def forward(layer, hidden_states, attention_mask=None, **kwargs) -> torch.Tensor:
        attn = layer.attention
        projections = (attn.q_lin, attn.k_lin, attn.v_lin)
        state, out, q, k = _attend(adapter, index, attn, projections, hidden_states,
                                   attention_mask, kwargs)  # fmt: skip
        x = layer.sa_layer_norm(attn.out_lin(out) + hidden_states)
        x = adapter.reduce(index, x, q, k, attn.scaling, adapter.size_bias(state, x.dtype))
        return layer.output_layer_norm(layer.ffn(x) + x)

    return forward


_LAYER_FORWARDS = {"bert": _bert_layer_forward, "distilbert": _distilbert_layer_forward}
