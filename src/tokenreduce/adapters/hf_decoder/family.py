"""What the decoder adapter knows of each supported family's layers: which model classes it
patches, its text config, the RoPE function of an attention module's own modelling file, the
query and key projections (with Qwen3's and Gemma-3's ``q_norm``/``k_norm``), whether a layer
attends through a sliding window, and the mask form its attention implementation takes."""

from __future__ import annotations

import sys

import torch
from torch import Tensor, nn

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "gemma3_text",
             "qwen2_5_vl_text", "qwen2_vl_text")  # fmt: skip
CLASSES = (
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


def text_config(model: nn.Module):
    """The language model's config (a multimodal config's text part)."""
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def rope_function(attn: nn.Module):
    """``apply_rotary_pos_emb`` of the modelling file that defines ``attn``'s class."""
    fn = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)
    if fn is None:
        raise TypeError(f"{type(attn).__name__}: no apply_rotary_pos_emb in its module")
    return fn


def sliding_window(attn: nn.Module, cache, layer: int) -> int | None:
    """The layer's sliding window in tokens, or None for global attention: the attention
    module's ``sliding_window`` unless its cache layer says it is a global one."""
    window = getattr(attn, "sliding_window", None)
    layers = getattr(cache, "layers", None)
    if layers is not None and layer < len(layers) and not getattr(layers[layer], "is_sliding", 0):
        return None
    return window


def queries(attn: nn.Module, x: Tensor, position_embeddings, rows: int | None) -> Tensor:
    """The last ``rows`` queries (all if None) of a layer's normalised input ``x`` (B, N, C),
    after q norm and RoPE: (B, Hq, rows, D)."""
    h = x if rows is None else x[:, -rows:]
    b, r, _ = h.shape
    q = attn.q_proj(h).view(b, r, -1, attn.head_dim).transpose(1, 2)
    if getattr(attn, "q_norm", None) is not None:
        q = attn.q_norm(q)
    cos, sin = position_embeddings
    q, _ = rope_function(attn)(q, q, cos[:, -r:], sin[:, -r:])
    return q


def keys(attn: nn.Module, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Keys of a layer's normalised input ``x`` (B, N, C) at the given RoPE: (B, Hkv, N, D)."""
    b, n, _ = x.shape
    k = attn.k_proj(x).view(b, n, -1, attn.head_dim).transpose(1, 2)
    if getattr(attn, "k_norm", None) is not None:
        k = attn.k_norm(k)
    k, _ = rope_function(attn)(k, k, cos, sin)
    return k


def attention_mask(model: nn.Module, allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """``allowed`` (B, H, Q, K) as the model's attention implementation takes a mask: the
    boolean itself for SDPA, an additive ``dtype`` bias (0 or the dtype's minimum) for eager."""
    if text_config(model)._attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def padding_valid(mask2d: Tensor | None, b: int, n: int, device) -> Tensor:
    """(B, n) padding mask of the last ``n`` tokens; fails on right padding."""
    if mask2d is None:
        return torch.ones(b, n, dtype=torch.bool, device=device)
    valid = mask2d[:, -n:].to(device=device, dtype=torch.bool)
    if bool((valid[:, :-1] & ~valid[:, 1:]).any()):
        raise ValueError(
            "tokenreduce decoder methods need left padding (tokenizer.padding_side = 'left')"
        )
    return valid
