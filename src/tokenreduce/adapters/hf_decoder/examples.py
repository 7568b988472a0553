"""Tiny random decoders of the supported families (:meth:`HFDecoderAdapter.examples`): width
64, 4 query heads, SDPA attention, a vocabulary of 101 and 2 layers unless overridden."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

_COMMON = dict(
    vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=256, initializer_range=0.3,
    attn_implementation="sdpa",
)  # fmt: skip


def _build(family: str, seed: int = 0, **overrides) -> nn.Module:
    import transformers

    torch.manual_seed(seed)
    fields = {**_COMMON, **overrides}
    if family == "llama":
        cfg = transformers.LlamaConfig(num_key_value_heads=2, **fields)
        return transformers.LlamaForCausalLM(cfg).eval()
    if family == "qwen3":
        cfg = transformers.Qwen3Config(num_key_value_heads=2, head_dim=16, **fields)
        return transformers.Qwen3ForCausalLM(cfg).eval()
    # Gemma-3: the first two layers attend through a 16-token sliding window, the rest fully.
    types = ["sliding_attention"] * 2 + ["full_attention"] * (fields["num_hidden_layers"] - 2)
    cfg = transformers.Gemma3TextConfig(
        num_key_value_heads=1, head_dim=16, sliding_window=16, layer_types=types, **fields
    )
    return transformers.Gemma3ForCausalLM(cfg).eval()


EXAMPLES = {family: partial(_build, family) for family in ("llama", "qwen3", "gemma3")}
