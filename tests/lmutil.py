"""Helpers for the language-model tests: tiny random decoders, an offline byte-level
tokenizer, a left-padded batch, greedy generation with its scores, a cache method sized for
them, the decoder as a budget sees it, and the lengths of a cache's layers."""

from __future__ import annotations

import torch

from tokenreduce import methods
from tokenreduce.core.context import ModelInfo

PROMPT = 40  # tokens of the longest prompt in :func:`padded_batch`


# ChatML, SmolLM2's chat format: the template of :func:`byte_tokenizer`
CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_lm(
    family: str = "llama", layers: int = 2, seed: int = 0, vocab_size: int = 101
) -> torch.nn.Module:
    """The decoder adapter's example of ``family`` (``llama``, ``qwen3`` or ``gemma3``) with
    ``layers`` layers and vocabulary ``vocab_size``: width 64, 4 query heads, SDPA attention.
    Gemma-3's first two layers use a 16-token sliding window, the others full attention."""
    from tokenreduce.adapters import HFDecoderAdapter

    examples = HFDecoderAdapter.examples()
    if family not in examples:
        raise ValueError(f"unknown family {family!r}; examples: {', '.join(examples)}")
    return examples[family](seed=seed, num_hidden_layers=layers, vocab_size=vocab_size)


def byte_tokenizer():
    """A byte-level tokenizer built in memory (no download): every byte is a token, plus the
    chat markers, so any text round-trips. Pads with ``<|endoftext|>``, ends with
    ``<|im_end|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[special] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tok.chat_template = CHAT
    return tok


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


def make(name: str, **kw) -> methods.Method:
    """The method with its test-sized parameters (``test_params``), then ``kw``."""
    return methods.get(name).for_tests(**kw)


def info(num_layers: int) -> ModelInfo:
    """A decoder of ``num_layers`` layers, as a method's budget sees it."""
    return ModelInfo("test", num_layers=num_layers, num_prefix=0, has_class_token=False, grid=None)


def prompt_keep(method, num_layers: int, site: int, n: int) -> int:
    """Prompt tokens a prefill method keeps at ``site`` of a prompt of ``n`` real tokens: its
    budget's share of the reducible ones, plus the ``keep_last`` it always keeps."""
    return method.budget(info(num_layers)).keep(site, n - method.keep_last) + method.keep_last


def cache_lengths(cache) -> list[int]:
    """Entries each layer of a transformers cache holds."""
    return [layer.keys.shape[2] for layer in cache.layers]


def left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts (1, L_i) left-padded with 0 into ids (B, max L_i) and their attention mask."""
    length = max(r.shape[1] for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, length - r.shape[1] :], mask[b, length - r.shape[1] :] = r[0], 1
    return ids, mask
