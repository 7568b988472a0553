"""A fine-tuning run's folder: weights as safetensors, the optimiser and progress as a file
``torch.load(..., weights_only=True)`` reads, so a run resumes where it stopped.

Layout of ``out``:

* ``last.safetensors``: the model's weights at the last checkpoint (metadata: ``arch`` when
  the model carries one, the method spec, the step);
* ``last-ema.safetensors``: the averaged weights, when the run keeps an average;
* ``state.pt``: ``{"step", "optimizer", "rng", "config"}``;
* ``model.safetensors``: the final weights (averaged where kept), written when the run ends:
  ``tokenreduce bench --model <out>`` loads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

WEIGHTS, EMA_WEIGHTS, STATE, FINAL = (
    "last.safetensors",
    "last-ema.safetensors",
    "state.pt",
    "model.safetensors",
)


def save_weights(model: nn.Module, file: Path, meta: dict) -> None:
    """``model``'s state dict to ``file``; ``meta`` values are stored as JSON, plus the
    model's ``pretrained_cfg["arch"]`` (the demo ViT's architecture) so loaders rebuild it."""
    from safetensors.torch import save_file

    arch = (getattr(model, "pretrained_cfg", None) or {}).get("arch")
    meta = {**({"arch": arch} if arch is not None else {}), **meta}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = file.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})
    tmp.replace(file)  # never leave a half-written checkpoint behind


def load_weights(model: nn.Module, file: Path) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(file)), strict=True)


def save(out: Path, step: int, model, ema, optimizer, config: dict) -> None:
    """Write the checkpoint of ``step`` (weights first, so ``state.pt`` never names a step
    whose weights are missing)."""
    meta = {"method": config["method"], "step": step}
    save_weights(model, out / WEIGHTS, meta)
    if ema is not None:
        save_weights(ema, out / EMA_WEIGHTS, meta)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "rng": torch.get_rng_state(),
        "config": config,
    }
    torch.save(state, out / ".state.tmp")
    (out / ".state.tmp").replace(out / STATE)


def resume(out: Path, model, ema, optimizer, config: dict) -> int:
    """Restore the run saved in ``out`` into ``model``, ``ema`` and ``optimizer``; returns the
    step to continue from (0 when ``out`` holds no checkpoint).

    Raises:
        ValueError: ``out`` holds a run with different settings (the message names them);
            finish it elsewhere or choose a new ``out``.
    """
    if not (out / STATE).is_file():
        return 0
    state = torch.load(out / STATE, weights_only=True)
    differ = {k: (state["config"].get(k), v) for k, v in config.items()
              if state["config"].get(k) != v}  # fmt: skip
    if differ:
        words = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise ValueError(f"{out} holds a run with other settings ({words}); use a new out folder")
    load_weights(model, out / WEIGHTS)
    if ema is not None:
        load_weights(ema, out / EMA_WEIGHTS)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])
