"""Diffusion models of diffusers: local sites (merge, run a sub-layer, unmerge) around the
sub-layers of every ``BasicTransformerBlock``, one file per model family."""

from .base import DiffusionAdapter, DiffusionTrace, SublayerCall
from .dit import DiffusersDiTAdapter
from .unet import DiffusersUNetAdapter

__all__ = [
    "DiffusersDiTAdapter", "DiffusersUNetAdapter", "DiffusionAdapter", "DiffusionTrace",
    "SublayerCall",
]  # fmt: skip
