"""The pure helpers of ``benchmarks/prompt_vs_llmlingua.py`` (the llmlingua side is not run)."""

import importlib.util
import sys
from pathlib import Path

import pytest

from tokenreduce import lmtasks

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "prompt_vs_llmlingua.py"
spec = importlib.util.spec_from_file_location("prompt_vs_llmlingua", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # its dataclasses look their module up there
spec.loader.exec_module(bench)


def test_documents_group_sentences_and_keep_every_word():
    text = "One is here. Two? Three! Four is last.  Five."
    docs = bench.documents(text, 2)
    assert docs == ["One is here. Two?", "Three! Four is last.", "Five."]
    assert " ".join(docs).split() == text.split()
    with pytest.raises(ValueError, match="sentences_per_doc"):
        bench.documents(text, 0)


def test_split_prompt_reads_back_instruction_context_and_question():
    content = "Read the text.\n\nA. B.\n\nMore prose.\n\nQuestion: What is it?"
    sample = lmtasks.Sample("niah", [{"role": "user", "content": content}], "It is", "7", 0.5)
    assert bench.split_prompt(sample) == ("Read the text.", "A. B.\n\nMore prose.", "What is it?")
    broken = lmtasks.Sample("niah", [{"role": "user", "content": "no question"}], "", "7", 0.5)
    with pytest.raises(ValueError, match="Question"):
        bench.split_prompt(broken)


def test_transformers4_config_moves_the_rope_base_and_drops_gguf():
    config = {
        "model_type": "llama", "dtype": "float32", "rope_parameters":
        {"rope_theta": 100000.0, "rope_type": "default"},
        "quantization_config": {"quant_method": "gguf"},
    }  # fmt: skip
    out = bench.transformers4_config(config)
    assert out == {"model_type": "llama", "torch_dtype": "float32", "rope_theta": 100000.0}
    scaled = {"rope_parameters": {"rope_theta": 1e6, "rope_type": "yarn", "factor": 4.0}}
    with pytest.raises(ValueError, match="not translated"):
        bench.transformers4_config(scaled)


def test_transformers4_tokenizer_config_names_the_fast_tokenizer():
    config = {"backend": "tokenizers", "tokenizer_class": "TokenizersBackend", "eos_token": "x"}
    out = bench.transformers4_tokenizer_config(config)
    assert out == {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "x"}
