"""Fixtures for the benchmark tests: a tiny IDX data set, a tiny ViT checkpoint, a tiny
Llama folder with a byte-level tokenizer, and prose for the language-model tasks."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from benchutil import KV_HEADS, LAYERS, write_arch_checkpoint, write_idx

from tests.lmutil import byte_tokenizer


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return write_arch_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """A Hugging Face folder: a random Llama (``LAYERS`` layers, ``KV_HEADS`` KV heads of
    ``HEAD_DIM``) and its byte-level tokenizer."""
    import transformers

    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = byte_tokenizer()
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=KV_HEADS, max_position_embeddings=1024,
        initializer_range=0.3, attn_implementation="sdpa", architectures=["LlamaForCausalLM"],
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def prose(tmp_path_factory) -> Path:
    """Plain-text prose: paragraphs of sentences made from a small vocabulary."""
    rng = random.Random(0)
    words = ["the", "a", "river", "quiet", "engineer", "compiled", "seven", "old", "programs",
             "under", "lamp", "light", "while", "rain", "fell", "across", "hills", "harbours"]  # fmt: skip
    paragraphs = [
        " ".join(
            " ".join(rng.choice(words) for _ in range(rng.randrange(8, 16))).capitalize() + "."
            for _ in range(6)
        )
        for _ in range(40)
    ]
    file = tmp_path_factory.mktemp("prose") / "prose.txt"
    file.write_text("\n\n".join(paragraphs))
    return file
