"""What ``--model`` accepts, and how each form is loaded.

In order:

1. a bundled asset name (``tokenreduce.assets.available()``, e.g. ``fmnist-vit``); a
   diffusion asset (``dit-fmnist``) is benchmarked as its denoiser, its sampler kept beside it;
2. a local checkpoint: a ``.safetensors`` file, or a folder holding ``model.safetensors``.
   The architecture comes from, in order:

   * the file's safetensors metadata ``arch``: JSON keyword arguments of timm's
     ``VisionTransformer`` (the format of the bundled checkpoint, read by
     ``tokenreduce.assets.fmnist_vit.build``: class token, ``global_pool="token"``, and an
     optional ``conv_stem`` as in the demo model). Optional metadata ``pretrained_cfg``
     (JSON) overrides the input size, mean and std;
   * a ``config.json`` beside the weights, in timm's Hugging Face Hub layout:
     ``{"architecture": "vit_small_patch16_224", "num_classes": 10, "model_args": {...},
     "pretrained_cfg": {"input_size": [3, 224, 224], "mean": [...], "std": [...]}}``;
   * or a sidecar ``<file>.json`` next to a single ``.safetensors`` file, same layout;
3. a local Hugging Face folder (``config.json`` with a ``model_type``): a causal language
   model (``...ForCausalLM``) is loaded with its tokenizer, a vision-language model
   (``LlavaForConditionalGeneration``, e.g. llava-shapes saved with ``save_pretrained``) with
   its processor, any other model with ``transformers.AutoModel``: a text encoder (BERT,
   RoBERTa, DistilBERT) with its tokenizer, a vision backbone (DINOv2) with its image
   processor when the folder has one;
4. a timm model name, created with its pretrained weights (``timm.create_model(name,
   pretrained=True)``; ``hf-hub:owner/repo`` names included). Weights come from the local
   cache; nothing is downloaded when the machine is offline, and a missing cache is an error.

Whatever the source, the model must be one that ``tokenreduce.patch`` supports; this is
checked before any weights are read where the architecture is known first.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import tokenreduce

#: the task ``tokenreduce bench`` runs on a model of each kind when ``--task`` is not given
#: (a vision model's depends on its head: :attr:`LoadedModel.default_task`)
DEFAULT_TASKS = {
    "lm": "niah",
    "vlm": "vqa",
    "encoder": "sentence-fidelity",
    "diffusion": "generation",
}
#: the kinds of :attr:`LoadedModel.kind` in words, for error messages
KIND_WORDS = {
    "lm": "a language model",
    "vlm": "a vision-language model",
    "vision": "a vision model",
    "encoder": "a text encoder",
    "diffusion": "a diffusion model",
}
#: :attr:`LoadedModel.kind` by the kind ``tokenreduce.describe`` answers; models of the kinds
#: not listed are vision models
_KINDS = {
    "language": "lm",
    "vision-language": "vlm",
    "text": "encoder",
    "diffusion": "diffusion",
}


class ModelError(ValueError):
    """``--model`` names nothing loadable, or a model that tokenreduce cannot patch."""


@dataclass
class LoadedModel:
    """A model ready to benchmark: eval mode, with a display name and a weight hash.

    ``kind`` is ``"lm"`` for a decoder language model (``tokenizer`` set), ``"encoder"`` for
    a text encoder such as BERT (``tokenizer`` set), ``"vlm"`` for a vision-language model
    (``processor``: its processor of images and prompts), ``"diffusion"`` for a diffusion
    asset (``model``: its denoiser; ``processor``: its sampler, e.g. ``dit-fmnist``'s
    :class:`~tokenreduce.assets.dit_fmnist.DiTFashionMNIST` with its scheduler) and
    ``"vision"`` otherwise (``processor``: the Hugging Face image processor, when the source
    has one).
    """

    model: nn.Module
    name: str
    source: str  # "asset", "checkpoint", "hf" or "timm"
    kind: str = "vision"
    tokenizer: Any = None
    processor: Any = None

    @property
    def is_classifier(self) -> bool:
        """Whether the model ends in a classification head (timm ``num_classes`` > 0, or a
        Hugging Face ``...ForImageClassification``)."""
        if self.kind != "vision":
            return False
        if hasattr(self.model, "num_classes"):
            return int(self.model.num_classes) > 0
        return type(self.model).__name__.endswith("ForImageClassification")

    @property
    def default_task(self) -> str:
        """The task ``tokenreduce bench`` runs when ``--task`` is not given."""
        if self.kind in DEFAULT_TASKS:
            return DEFAULT_TASKS[self.kind]
        return "classification" if self.is_classifier else "fidelity"

    @property
    def key(self) -> str:
        """Name plus weight hash: the store's ``model`` key (a retrained model differs)."""
        return f"{self.name}@{weights_hash(self.model)}"


def load(spec: str) -> LoadedModel:
    """Load what ``--model`` names (see the module docstring)."""
    from .. import assets

    if not spec or not spec.strip():
        raise ModelError("--model is empty; give an asset name, a checkpoint path or a timm name")
    if spec in assets.available():
        try:
            loaded = assets.load(spec)
        except FileNotFoundError as err:  # an asset whose trained weights are not there yet
            raise ModelError(f"--model {spec!r}: {err}") from None
        model, extra = loaded if isinstance(loaded, tuple) else (loaded, None)
        if hasattr(loaded, "transformer"):  # a diffusion asset: the denoiser and its sampler
            model, extra = loaded.transformer, loaded
        return _loaded(model.eval(), spec, "asset", extra)
    path = Path(spec).expanduser()
    if path.is_dir() and _hf_config(path) is not None:
        return _load_hf_folder(path)
    if path.exists():
        return LoadedModel(_load_checkpoint(path).eval(), path.stem, "checkpoint")
    return LoadedModel(_load_timm(spec).eval(), spec, "timm")


def _loaded(model: nn.Module, name: str, source: str, extra: Any) -> LoadedModel:
    """A checked :class:`LoadedModel`; ``extra`` is the tokenizer of a language model or
    the (image) processor of a vision or vision-language model, or the sampler of a diffusion
    model."""
    kind = check_supported(model, name)
    if kind in ("lm", "encoder"):
        return LoadedModel(model, name, source, kind, tokenizer=extra)
    return LoadedModel(model, name, source, kind, processor=extra)


def check_supported(model: nn.Module, what: str) -> str:
    """Raise :class:`ModelError` unless ``tokenreduce.patch`` accepts ``model``; return its
    kind, ``"lm"``, ``"vlm"``, ``"encoder"`` or ``"vision"``, as ``tokenreduce.describe``
    answers it. A vision model or a text encoder gets an unreduced patch (``patch(model,
    None)``) applied and removed; it runs nothing, so a model on the meta device works."""
    try:
        kind = _KINDS.get(tokenreduce.describe(model).kind, "vision")
        if kind in ("vision", "encoder"):
            tokenreduce.patch(model, None).remove()
    except (TypeError, ValueError) as err:  # ValueError: an attention the adapter cannot run
        raise ModelError(f"--model {what!r} cannot be benchmarked: {err}") from None
    return kind


def _hf_config(folder: Path) -> dict[str, Any] | None:
    """The folder's Hugging Face ``config.json`` (one with a ``model_type``), else None."""
    file = folder / "config.json"
    if not file.is_file():
        return None
    config = _json(file.read_text(), file, "the config")
    return config if isinstance(config, dict) and "model_type" in config else None


def _load_hf_folder(folder: Path) -> LoadedModel:
    from ..assets.llm import load_lm

    config = _hf_config(folder) or {}
    try:
        architectures = config.get("architectures") or ()
        if any(a.endswith("ForCausalLM") for a in architectures):
            model, tokenizer = load_lm(folder)
            return _loaded(model, folder.name, "hf", tokenizer)
        if "LlavaForConditionalGeneration" in architectures:
            model, processor = _load_llava(folder)
            return _loaded(model, folder.name, "hf", processor)
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(folder)).eval()
        extra = _preprocessor(model, folder)
    except (OSError, ValueError) as err:
        raise ModelError(f"--model {str(folder)!r}: cannot load it: {err}") from None
    return _loaded(model, folder.name, "hf", extra)


def _preprocessor(model: nn.Module, folder: Path) -> Any:
    """The folder's tokenizer for a text encoder (``OSError`` without one), else its image
    processor, or None when it has no ``preprocessor_config.json`` (the task decides)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    try:
        is_text = tokenreduce.describe(model).kind == "text"
    except TypeError:  # not a supported family: _loaded says so
        is_text = False
    if is_text:
        return AutoTokenizer.from_pretrained(str(folder))
    try:
        return AutoImageProcessor.from_pretrained(str(folder))
    except (OSError, ValueError):
        return None


def _load_llava(folder: Path) -> tuple[nn.Module, Any]:
    """(model, processor) of a LLaVA folder, with SDPA attention."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(str(folder), attn_implementation="sdpa")
    return model.eval(), AutoProcessor.from_pretrained(str(folder))


def weights_hash(model: nn.Module, length: int = 12) -> str:
    """A short SHA-256 of the model's state dict (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:length]


# -- local checkpoints -----------------------------------------------------------------------
def _load_checkpoint(path: Path) -> nn.Module:
    import safetensors
    from safetensors import safe_open
    from safetensors.torch import load_file

    unreadable = (OSError, getattr(safetensors, "SafetensorError", RuntimeError))

    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file() or file.suffix != ".safetensors":
        raise ModelError(
            f"--model {str(path)!r}: expected a .safetensors file or a folder holding "
            "model.safetensors"
        )
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
    except unreadable as err:
        raise ModelError(f"--model {str(path)!r}: cannot read {file}: {err}") from None
    if "arch" in meta:
        model = _from_arch(_json(meta["arch"], file, "metadata 'arch'"), meta, file)
    else:
        config = _sidecar_config(file)
        model = _from_timm_config(config, file)
    check_supported(model, str(path))
    try:
        state = load_file(str(file))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, *unreadable) as err:
        raise ModelError(
            f"--model {str(path)!r}: weights do not fit the architecture: {err}"
        ) from None
    return model


def _json(text: str, file: Path, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelError(f"{file}: {what} is not valid JSON: {err}") from None


def _from_arch(arch: Any, meta: dict[str, str], file: Path) -> nn.Module:
    from ..assets import fmnist_vit

    if not isinstance(arch, dict):
        raise ModelError(f"{file}: metadata 'arch' must be a JSON object of ViT arguments")
    try:
        with torch.device("meta"):
            fmnist_vit.build(arch)  # fail on bad arguments before allocating real weights
        model = fmnist_vit.build(arch)
    except TypeError as err:
        raise ModelError(f"{file}: metadata 'arch' is not a VisionTransformer: {err}") from None
    if "pretrained_cfg" in meta:
        model.pretrained_cfg = {
            **model.pretrained_cfg,
            **_json(meta["pretrained_cfg"], file, "'pretrained_cfg'"),
        }
    return model


def _sidecar_config(file: Path) -> dict[str, Any]:
    for cand in (
        file.with_name(file.name + ".json"),
        file.with_suffix(".json"),
        file.parent / "config.json",
    ):
        if cand.is_file():
            config = _json(cand.read_text(), cand, "the config")
            if not isinstance(config, dict) or "architecture" not in config:
                raise ModelError(f"{cand}: expected a JSON object with an 'architecture' key")
            return config
    raise ModelError(
        f"{file}: no architecture found; add safetensors metadata 'arch' or a config.json "
        "beside it with 'architecture' (a timm model name), 'num_classes', 'model_args' and "
        "'pretrained_cfg'"
    )


def _from_timm_config(config: dict[str, Any], file: Path) -> nn.Module:
    import timm

    name = config["architecture"]
    kwargs = dict(config.get("model_args") or {})
    if "num_classes" in config:
        kwargs.setdefault("num_classes", config["num_classes"])
    if not timm.is_model(name):
        raise ModelError(f"{file}: 'architecture' {name!r} is not a timm model name")
    with torch.device("meta"):
        check_supported(timm.create_model(name, **kwargs), name)
    overlay = config.get("pretrained_cfg") or {}
    return timm.create_model(name, pretrained=False, pretrained_cfg_overlay=overlay, **kwargs)


# -- timm names ------------------------------------------------------------------------------
def _load_timm(name: str) -> nn.Module:
    import timm

    if not (name.startswith("hf-hub:") or timm.is_model(name)):
        raise ModelError(
            f"--model {name!r} is not a bundled asset ({', '.join(_assets())}), an existing "
            "checkpoint path, or a timm model name"
        )
    if not name.startswith("hf-hub:"):
        with torch.device("meta"):  # architecture check without allocating weights
            check_supported(timm.create_model(name), name)
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as err:  # timm raises many types for a missing download / cache
        raise ModelError(
            f"--model {name!r}: could not load its pretrained weights ({type(err).__name__}: "
            f"{err}). Offline, only weights already in the local cache load (HF_HUB_OFFLINE=1 "
            "skips the network retries); otherwise pass a local checkpoint"
        ) from None
    check_supported(model, name)
    return model


def _assets() -> list[str]:
    from .. import assets

    return assets.available()
