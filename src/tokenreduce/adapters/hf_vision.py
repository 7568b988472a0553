"""Adapter for Hugging Face vision transformers: ``ViTModel``, ``ViTForImageClassification``,
``Dinov2Model``, ``Dinov2WithRegistersModel``, ``CLIPVisionModel``,
``CLIPVisionModelWithProjection`` and ``SiglipVisionModel``.

Each encoder layer's ``forward`` is replaced on the instance (never on the class) by one that
runs the same operations as the Hugging Face layer, in the same order, and calls the model's
own attention function (``config._attn_implementation``: SDPA or eager), so an unreduced
model is bitwise identical. Tokens are reduced after attention, before the MLP; the class
token and DINOv2's register tokens are protected. Proportional attention's ``log(size)``
enters the attention function as its additive mask.

Pooling. ViT (its pooler and its classifier), DINOv2 and CLIP pool the class token, which is
never merged, so nothing changes. SigLIP has no class token: its multi-head attention pooling
head (``SiglipMultiheadAttentionPoolingHead``, present when ``vision_use_head`` is true: a
learned probe attending to every token) gets the additive bias ``log(size)`` on its attention
logits once tokens are merged, so a token standing for ``s`` patches weighs as much as ``s``
identical patches would; pruned tokens simply drop out of the pool. Any other head is refused
at patch time.

Image size. The height and width must be multiples of the patch size; anything else raises
``ValueError`` (Hugging Face would silently crop the border). Other sizes than the configured
one follow the model's own rule: DINOv2 always interpolates its position embeddings, ViT,
CLIP and SigLIP do when called with ``interpolate_pos_encoding=True``. Each input's patch grid
comes from its ``pixel_values`` shape: methods see it, the trace records it
(``handle.trace.grid``); ``handle.info.grid`` is the configured one.

Not supported while patched: a non-empty ``attention_mask``, ``output_attentions`` (the
attention modules are bypassed), attention implementations other than SDPA and eager.
``output_hidden_states`` works; later layers have fewer tokens.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..core.context import ModelInfo
from ..methods.base import Method
from .base import Trace
from .vision import VisionAdapter


@dataclass(frozen=True)
class _Spec:
    """What differs between the supported families."""

    family: str  # short name used in ModelInfo.family
    layer_class: str  # the encoder layer's class name
    style: str  # which layer forward mirrors the family's: "vit", "dinov2", "clip"
    backbone: str  # attribute path from the model to the vision transformer ("" = itself)
    has_class_token: bool


_SPECS: dict[str, _Spec] = {
    "ViTModel": _Spec("vit", "ViTLayer", "vit", "", True),
    "ViTForImageClassification": _Spec("vit", "ViTLayer", "vit", "vit", True),
    "Dinov2Model": _Spec("dinov2", "Dinov2Layer", "dinov2", "", True),
    "Dinov2WithRegistersModel": _Spec(
        "dinov2_with_registers", "Dinov2WithRegistersLayer", "dinov2", "", True
    ),
    "CLIPVisionModel": _Spec("clip", "CLIPEncoderLayer", "clip", "", True),
    "CLIPVisionModelWithProjection": _Spec(
        "clip", "CLIPEncoderLayer", "clip", "vision_model", True
    ),
    "SiglipVisionModel": _Spec("siglip", "SiglipEncoderLayer", "clip", "", False),
}
# Modules whose other classes get a clear "unsupported" error instead of a generic one.
_FAMILY_MODULES = ("vit", "dinov2", "dinov2_with_registers", "clip", "siglip")
_HINTS = {
    "CLIPModel": "patch its vision tower instead: tokenreduce.patch(model.vision_model, ...)",
    "SiglipModel": "patch its vision tower instead: tokenreduce.patch(model.vision_model, ...)",
}


#: :meth:`HFVisionAdapter.examples`: name -> (config class, model class, their extra fields)
_TINY = {
    "hf_vit": ("ViTConfig", "ViTForImageClassification",
               {"intermediate_size": 96, "num_labels": 10}),
    "hf_dinov2": ("Dinov2Config", "Dinov2Model", {"mlp_ratio": 2}),
    "hf_clip": ("CLIPVisionConfig", "CLIPVisionModel", {"intermediate_size": 96}),
    "hf_siglip": ("SiglipVisionConfig", "SiglipVisionModel", {"intermediate_size": 96}),
}  # fmt: skip
EXAMPLE_SIZE = {"image_size": 32, "patch_size": 4, "num_hidden_layers": 4, "hidden_size": 48,
              "num_attention_heads": 3}  # fmt: skip


def _tiny_hf(name: str, seed: int = 0, **overrides) -> nn.Module:
    import transformers

    config, model, extra = _TINY[name]
    torch.manual_seed(seed)
    cfg = getattr(transformers, config)(**{**EXAMPLE_SIZE, **extra, **overrides})
    return getattr(transformers, model)(cfg).eval()


def _module_family(model: nn.Module) -> str | None:
    parts = type(model).__module__.split(".")
    if len(parts) >= 3 and parts[:2] == ["transformers", "models"]:
        return parts[2]
    return None


def _get(obj: nn.Module, path: str) -> nn.Module:
    for name in filter(None, path.split(".")):
        obj = getattr(obj, name)
    return obj


def _layers(backbone: nn.Module) -> nn.ModuleList:
    # The layer list moved between transformers versions (encoder.layer, encoder.layers, layers).
    for path in ("layers", "encoder.layers", "encoder.layer"):
        try:
            found = _get(backbone, path)
        except AttributeError:
            continue
        if isinstance(found, nn.ModuleList):
            return found
    raise TypeError(f"no encoder layer list found in this {type(backbone).__name__}")


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


class HFVisionAdapter(VisionAdapter):
    family = "Hugging Face vision transformers (" + ", ".join(_SPECS) + ")"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        # Any class of a supported family's module: describe() names unsupported ones clearly.
        return _module_family(model) in _FAMILY_MODULES

    @classmethod
    def _spec(cls, model: nn.Module) -> _Spec:
        name = type(model).__name__
        spec = _SPECS.get(name)
        if spec is None:
            hint = _HINTS.get(name, "")
            raise TypeError(
                f"tokenreduce cannot patch a Hugging Face {name}; supported Hugging Face vision "
                f"classes: {', '.join(_SPECS)}" + (f". For a {name}, {hint}" if hint else "")
            )
        return spec

    @classmethod
    def examples(cls) -> dict[str, Callable[..., nn.Module]]:
        """32x32 images in 4x4 patches, 4 layers of width 48: a ViT classifier (10 labels),
        DINOv2, CLIP vision, and SigLIP vision (no class token, attention-pooling head)."""
        return {name: partial(_tiny_hf, name) for name in _TINY}

    @classmethod
    def describe(cls, model: nn.Module) -> ModelInfo:
        spec = cls._spec(model)
        backbone = _get(model, spec.backbone)
        for i, layer in enumerate(_layers(backbone)):
            if type(layer).__name__ != spec.layer_class:
                raise TypeError(
                    f"layer {i} of this {type(model).__name__} is a {type(layer).__name__}; "
                    f"tokenreduce supports the standard {spec.layer_class}"
                )
            attn = _attention(layer)
            if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "head_dim")):
                import transformers

                raise TypeError(
                    f"the {type(attn).__name__} of transformers {transformers.__version__} has "
                    "no q_proj/k_proj/v_proj; the Hugging Face vision adapter follows the "
                    "attention layout of transformers 5 (tested with 5.18 to 5.24): upgrade transformers"
                )
        cfg = backbone.config
        image, patch = _pair(cfg.image_size), _pair(cfg.patch_size)
        _check_head(backbone)
        num_prefix = int(spec.has_class_token) + int(getattr(cfg, "num_register_tokens", 0) or 0)
        return ModelInfo(
            family=f"hf_vision:{spec.family}",
            num_layers=cfg.num_hidden_layers,
            num_prefix=num_prefix,
            has_class_token=spec.has_class_token,
            grid=(image[0] // patch[0], image[1] // patch[1]),  # configured; inputs may differ
            kind=cls.kind,
            sites=cls.sites,
        )

    @classmethod
    def blocks(cls, model: nn.Module) -> list[nn.Module]:
        return list(_layers(_get(model, cls._spec(model).backbone)))

    @classmethod
    def final_norm(cls, model: nn.Module) -> nn.Module:
        # ViT and DINOv2 name it layernorm (their last_hidden_state), CLIP and SigLIP
        # post_layernorm (applied there to the pooled token only).
        backbone = _get(model, cls._spec(model).backbone)
        norm = getattr(backbone, "layernorm", None) or getattr(backbone, "post_layernorm", None)
        if not isinstance(norm, nn.Module):
            raise TypeError(
                f"no final norm (layernorm, post_layernorm) in this {type(backbone).__name__}"
            )
        return norm

    def __init__(self, model: nn.Module, method: Method) -> None:
        super().__init__(model, method)
        spec = self._spec(model)
        self.spec = spec
        self.backbone = _get(model, spec.backbone)
        self.layers = _layers(self.backbone)
        impl = getattr(self.backbone.config, "_attn_implementation", "eager") or "eager"
        if impl not in ("sdpa", "eager"):
            raise ValueError(
                f"tokenreduce needs attn_implementation 'sdpa' or 'eager' on a patched "
                f"{type(model).__name__}, got {impl!r}; load it with attn_implementation='sdpa'"
            )
        self.patch_size = _pair(self.backbone.config.patch_size)
        self._patched: list[tuple[nn.Module, str]] = []

    # -- patching ---------------------------------------------------------------------------
    def _replace(self, module: nn.Module, name: str, fn: Callable) -> None:
        if name in module.__dict__:
            # Another tool (e.g. accelerate's device hooks) already wraps this method; running
            # our copy of the layer would bypass it silently.
            raise RuntimeError(
                f"this {type(module).__name__} already has an instance-level {name!r} (another "
                "tool wraps it); tokenreduce cannot patch it"
            )
        setattr(module, name, types.MethodType(fn, module))
        self._patched.append((module, name))

    def patch(self) -> None:
        try:
            self._replace(self.backbone.embeddings, "forward", _make_embeddings_forward(self))
            make = _LAYER_FORWARDS[self.spec.style]
            for i, layer in enumerate(self.layers):
                self._replace(layer, "forward", make(self, i))
            head = getattr(self.backbone, "head", None)
            if head is not None:  # SigLIP's attention pooling (_check_head refused the others)
                self._replace(head, "forward", _make_map_head_forward(self))
        except Exception:
            self.unpatch()
            raise

    def unpatch(self) -> None:
        for module, name in reversed(self._patched):
            delattr(module, name)
        self._patched.clear()

    def _start_forward(self, height: int, width: int) -> None:
        ph, pw = self.patch_size
        if height % ph or width % pw:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the patch size {ph}x{pw}; "
                f"resize or pad the image to a multiple of {ph}x{pw} (e.g. "
                f"{(height // ph) * ph}x{(width // pw) * pw})"
            )
        self.embedded((height // ph, width // pw))

    # -- analytic cost ----------------------------------------------------------------------
    def gflops(self, trace: Trace | None = None) -> float:
        cfg = self.backbone.config
        n_patches, attn_n, mlp_n = self.token_counts(trace)
        c = cfg.hidden_size
        ph, pw = self.patch_size
        flops = n_patches * cfg.num_channels * ph * pw * c  # patch embedding
        for layer, n1, n2 in zip(self.layers, attn_n, mlp_n, strict=True):
            d = _attention(layer).q_proj.out_features
            flops += n1 * c * 3 * d + 2 * n1 * n1 * d + n1 * d * c  # qkv, QK^T and AV, out
            flops += n2 * _mlp_macs(layer.mlp)
        flops += self._head_macs(mlp_n[-1])
        return flops / 1e9

    def _head_macs(self, n: int) -> int:
        """Heads after the encoder: classifier, pooler, projection, SigLIP's pooling head."""
        macs = 0
        for name in ("classifier", "visual_projection"):
            mod = getattr(self.model, name, None)
            if isinstance(mod, nn.Linear):
                macs += mod.in_features * mod.out_features
        pooler = getattr(self.backbone, "pooler", None)
        if pooler is not None and isinstance(getattr(pooler, "dense", None), nn.Linear):
            macs += pooler.dense.in_features * pooler.dense.out_features
        head = getattr(self.backbone, "head", None)
        if head is not None:
            c = head.probe.shape[-1]
            # one query, keys and values for n tokens, output projection, then the MLP
            macs += c * c + 2 * n * c * c + 2 * n * c + c * c + _mlp_macs(head.mlp)
        return macs


# -- the layer forwards ---------------------------------------------------------------------
def _attention(layer: nn.Module) -> nn.Module:
    return layer.attention if hasattr(layer, "attention") else layer.self_attn


def _mlp_macs(mlp: nn.Module) -> int:
    """Multiply-adds per token of an MLP made of linear layers (plain or SwiGLU)."""
    return sum(m.in_features * m.out_features for m in mlp.modules() if isinstance(m, nn.Linear))


def _eager_fn(attn: nn.Module) -> Callable:
    # The family's own eager function: families differ (ViT softmaxes in float32, DINOv2 not).
    return sys.modules[type(attn).__module__].eager_attention_forward


def _attend(adapter: HFVisionAdapter, attn: nn.Module, h: torch.Tensor, attention_mask):
    """The Hugging Face attention module's forward, returning q and k for the reduction site.

    Returns ``(output, q, k, scale, bias)``, q and k as (B, H, N, D).
    """
    if attention_mask is not None:
        raise ValueError("tokenreduce: attention_mask is not supported on a patched vision model")
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    state = adapter.trace.state
    input_shape = h.shape[:-1]
    hidden_shape = (*input_shape, -1, attn.head_dim)
    q = attn.q_proj(h).view(hidden_shape).transpose(1, 2)
    k = attn.k_proj(h).view(hidden_shape).transpose(1, 2)
    v = attn.v_proj(h).view(hidden_shape).transpose(1, 2)
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(
        attn.config._attn_implementation, _eager_fn(attn)
    )
    # ViT and DINOv2 name these scaling / attention_dropout, CLIP and SigLIP scale / dropout.
    scale = attn.scaling if hasattr(attn, "scaling") else attn.scale
    p_drop = attn.attention_dropout if hasattr(attn, "attention_dropout") else attn.dropout
    bias = adapter.size_bias(state, q.dtype)
    o, _ = interface(
        attn, q, k, v, bias, dropout=0.0 if not attn.training else p_drop, scaling=scale
    )
    o = o.reshape(*input_shape, -1).contiguous()
    out_proj = attn.o_proj if hasattr(attn, "o_proj") else attn.out_proj
    return out_proj(o), q, k, scale, bias


def _make_vit_forward(adapter: HFVisionAdapter, layer: int):
    def forward(blk, hidden_states: torch.Tensor, attention_mask=None, **kwargs) -> torch.Tensor:
        adapter.begin(layer, hidden_states)
        residual = hidden_states
        h = blk.layernorm_before(hidden_states)
        h, q, k, scale, bias = _attend(adapter, blk.attention, h, attention_mask)
        h = blk.dropout(h)
        x = h + residual
        x = adapter.reduce(layer, x, q, k, scale, bias)
        del q, k, bias  # free before the MLP (lower peak memory)
        residual = x
        h = blk.layernorm_after(x)
        h = blk.mlp(h)
        h = blk.dropout(h)
        return h + residual

    return forward


def _make_dinov2_forward(adapter: HFVisionAdapter, layer: int):
    def forward(blk, hidden_states: torch.Tensor, attention_mask=None, **kwargs) -> torch.Tensor:
        adapter.begin(layer, hidden_states)
        residual = hidden_states
        h = blk.norm1(hidden_states)
        h, q, k, scale, bias = _attend(adapter, blk.attention, h, attention_mask)
        h = blk.layer_scale1(h)
        x = blk.drop_path(h) + residual
        x = adapter.reduce(layer, x, q, k, scale, bias)
        del q, k, bias  # free before the MLP (lower peak memory)
        residual = x
        h = blk.norm2(x)
        h = blk.mlp(h)
        h = blk.layer_scale2(h)
        return blk.drop_path(h) + residual

    return forward


def _make_clip_forward(adapter: HFVisionAdapter, layer: int):
    # CLIP and SigLIP encoder layers are the same pre-norm block.
    def forward(blk, hidden_states: torch.Tensor, attention_mask=None, **kwargs) -> torch.Tensor:
        adapter.begin(layer, hidden_states)
        residual = hidden_states
        h = blk.layer_norm1(hidden_states)
        h, q, k, scale, bias = _attend(adapter, blk.self_attn, h, attention_mask)
        x = residual + h
        x = adapter.reduce(layer, x, q, k, scale, bias)
        del q, k, bias  # free before the MLP (lower peak memory)
        residual = x
        h = blk.layer_norm2(x)
        h = blk.mlp(h)
        return residual + h

    return forward


_LAYER_FORWARDS = {
    "vit": _make_vit_forward,
    "dinov2": _make_dinov2_forward,
    "clip": _make_clip_forward,
}


def _make_embeddings_forward(adapter: HFVisionAdapter):
    def forward(emb, pixel_values: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        adapter._start_forward(*pixel_values.shape[-2:])
        return type(emb).forward(emb, pixel_values, *args, **kwargs)

    return forward


def _check_head(backbone: nn.Module) -> None:
    """Refuse a pooling head over all tokens other than SigLIP's, which the adapter makes
    weigh a merged token by its size (the other families pool the class token)."""
    head = getattr(backbone, "head", None)
    if head is not None and type(head).__name__ != "SiglipMultiheadAttentionPoolingHead":
        raise TypeError(
            f"this {type(backbone).__name__}'s pooling head is a {type(head).__name__}, which "
            "tokenreduce cannot make weigh a merged token by its size; supported: SigLIP's "
            "SiglipMultiheadAttentionPoolingHead and class-token pooling"
        )


def _make_map_head_forward(adapter: HFVisionAdapter):
    """SigLIP's attention-pooling head, with log(size) added to the probe's attention logits
    once tokens stand for several patches (unchanged, bitwise, before that)."""

    def forward(head, hidden_state: torch.Tensor) -> torch.Tensor:
        sizes = adapter.pool_sizes()
        if sizes is None:
            return type(head).forward(head, hidden_state)
        b = hidden_state.shape[0]
        probe = head.probe.repeat(b, 1, 1)
        bias = sizes.log().to(hidden_state.dtype)[:, None, :]  # (B, 1, N)
        # nn.MultiheadAttention takes a float mask of shape (B * heads, L, S), added to logits.
        mask = bias.repeat_interleave(head.attention.num_heads, dim=0)
        hidden_state = head.attention(
            probe, hidden_state, hidden_state, attn_mask=mask, need_weights=False
        )[0]
        residual = hidden_state
        hidden_state = head.layernorm(hidden_state)
        hidden_state = residual + head.mlp(hidden_state)
        return hidden_state[:, 0]

    return forward
