"""The demo classifier: a timm ``VisionTransformer`` trained on Fashion-MNIST.

Its geometry mirrors ViT-B/16 at 224 as token-reduction methods see it: a 56x56 input
(Fashion-MNIST's 28x28 upsampled) cut into 4x4 patches gives a 14x14 grid, 196 patch tokens
plus a class token, through 12 blocks. Only the width is small, so it runs on a CPU.
The architecture is stored in the checkpoint's metadata, so the file alone rebuilds it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..data.fashion_mnist import LABELS

CHECKPOINT = Path(__file__).parent / "checkpoints" / "fmnist-vit.safetensors"
# Fashion-MNIST pixel statistics over the 60k training images (after scaling to [0, 1]).
MEAN = (0.2860,)
STD = (0.3530,)
DEFAULT_ARCH: dict[str, Any] = {
    "img_size": 56,
    "patch_size": 4,
    "in_chans": 1,
    "num_classes": 10,
    "embed_dim": 96,
    "depth": 12,
    "num_heads": 3,
    "mlp_ratio": 4.0,
}


def _conv_patch_embed_class() -> type:
    from timm.layers import PatchEmbed

    class ConvPatchEmbed(PatchEmbed):
        """timm's linear patch embedding plus a small convolutional branch added to it.

        Each token then also sees a few pixels around its patch (receptive field 9x9 for
        4x4 patches), which makes a small ViT learn much faster on little data (Xiao et al.,
        *Early Convolutions Help Transformers See Better*, NeurIPS 2021). The branch's last
        layer starts at zero, so a new branch leaves a trained model's outputs unchanged.
        Tokens, grid and everything after the embedding are exactly a plain ViT's.
        """

        def __init__(self, *args: Any, stem_channels: tuple[int, int] = (16, 32), **kw: Any):
            super().__init__(*args, **kw)
            if (
                not self.flatten
                or self.patch_size[0] % 2
                or self.patch_size[0] != self.patch_size[1]
            ):
                raise ValueError(
                    "the convolutional branch needs flat output and even square patches"
                )
            c1, c2 = stem_channels
            half = self.patch_size[0] // 2
            in_chans = self.proj.in_channels
            self.local = nn.Sequential(
                nn.Conv2d(in_chans, c1, 5, 1, 2),
                nn.GELU(),
                nn.Conv2d(c1, c2, 3, 2, 1),
                nn.GELU(),
                nn.Conv2d(c2, self.proj.out_channels, half, half),
            )
            nn.init.zeros_(self.local[-1].weight)
            nn.init.zeros_(self.local[-1].bias)

        def forward(self, x):
            local = self.local(x).flatten(2).transpose(1, 2)
            return super().forward(x) + local

    return ConvPatchEmbed


def build(arch: dict[str, Any] | None = None, **overrides: Any) -> nn.Module:
    """An untrained model of the demo architecture, with its ``pretrained_cfg`` set.

    ``arch`` holds ``VisionTransformer`` arguments, plus ``conv_stem``: ``[c1, c2]`` channel
    counts of a convolutional branch added to the patch embedding (absent or null: none).
    """
    from functools import partial

    from timm.models.vision_transformer import VisionTransformer

    cfg = {**DEFAULT_ARCH, **(arch or {}), **overrides}
    vit_args = {k: v for k, v in cfg.items() if k != "conv_stem"}
    if cfg.get("conv_stem"):
        embed = partial(_conv_patch_embed_class(), stem_channels=tuple(cfg["conv_stem"]))
        vit_args["embed_layer"] = embed
    model = VisionTransformer(class_token=True, global_pool="token", **vit_args)
    size = cfg["img_size"]
    model.pretrained_cfg = {
        "architecture": "vit_fmnist_patch4_56",
        "input_size": (cfg["in_chans"], size, size),
        "mean": MEAN,
        "std": STD,
        "interpolation": "bilinear",
        "num_classes": cfg["num_classes"],
        "label_names": LABELS,
        "arch": cfg,
    }
    return model


def save(
    model: nn.Module, file: str | Path, arch: dict[str, Any], extra: dict | None = None
) -> None:
    """Write ``model``'s weights and its architecture (metadata) to a safetensors file."""
    from safetensors.torch import save_file

    meta = {"arch": json.dumps(arch), **{k: json.dumps(v) for k, v in (extra or {}).items()}}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(file), metadata=meta)


def read_metadata(file: str | Path) -> dict[str, Any]:
    """The decoded metadata of a checkpoint written by ``save``."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {}
    return {k: json.loads(v) for k, v in meta.items()}


def load(file: str | Path | None = None) -> nn.Module:
    """The trained demo model in eval mode, from the checkpoint shipped in the package."""
    from safetensors.torch import load_file

    file = Path(file) if file is not None else CHECKPOINT
    if not file.is_file():
        raise FileNotFoundError(
            f"demo checkpoint {file} is missing; reinstall tokenreduce or train one with "
            "`python -m tokenreduce.train_demo`"
        )
    arch = read_metadata(file).get("arch", DEFAULT_ARCH)
    model = build(arch)
    model.load_state_dict(load_file(str(file)), strict=True)
    return model.eval()
