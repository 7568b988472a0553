"""Helpers for the language-model tests: tiny random decoders, a left-padded batch, greedy
generation with its scores."""

from __future__ import annotations

import torch

PROMPT = 40  # tokens of the longest prompt in :func:`padded_batch`


def tiny_lm(family: str = "llama", layers: int = 2, seed: int = 0) -> torch.nn.Module:
    """A random decoder of ``family`` (``llama``, ``qwen3`` or ``gemma3``): vocabulary 101,
    width 64, 4 query heads, SDPA attention. Gemma-3's first two layers use a 16-token
    sliding window, the others full attention."""
    import transformers

    torch.manual_seed(seed)
    common = dict(
        vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=256, initializer_range=0.3,
        attn_implementation="sdpa",
    )  # fmt: skip
    if family == "llama":
        cfg = transformers.LlamaConfig(**common, num_key_value_heads=2)
        return transformers.LlamaForCausalLM(cfg).eval()
    if family == "qwen3":
        cfg = transformers.Qwen3Config(**common, num_key_value_heads=2, head_dim=16)
        return transformers.Qwen3ForCausalLM(cfg).eval()
    if family == "gemma3":
        types = ["sliding_attention"] * 2 + ["full_attention"] * (layers - 2)
        cfg = transformers.Gemma3TextConfig(
            **common, num_key_value_heads=1, head_dim=16, sliding_window=16, layer_types=types
        )
        return transformers.Gemma3ForCausalLM(cfg).eval()
    raise ValueError(f"unknown family {family!r}")


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of 40, 33 and 26 tokens, left-padded to 40: (input_ids, attention_mask)."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 101, (3, PROMPT), generator=gen)
    mask = torch.ones_like(ids)
    for row, pad in ((1, 7), (2, 14)):
        ids[row, :pad] = 0
        mask[row, :pad] = 0
    return ids, mask


def generate(model, ids, mask=None, steps: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` greedy tokens after the prompt and their logits, (batch, steps[, vocab])."""
    out = model.generate(
        ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
        pad_token_id=0, output_scores=True, return_dict_in_generate=True,
    )  # fmt: skip
    return out.sequences[:, ids.shape[1] :], torch.stack(out.scores, dim=1)
