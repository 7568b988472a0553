"""Adapters for Hugging Face vision-language models: the handoff site (token methods on the
image tokens), prefill methods on image tokens only, KV-cache methods on the language model.
One module per family; ``base`` holds what they share."""

from __future__ import annotations

from .base import HANDOFF, Images, VLMAdapter
from .llava import HFLlavaAdapter
from .qwen_vl import HFQwenVLAdapter

__all__ = ["HANDOFF", "HFLlavaAdapter", "HFQwenVLAdapter", "Images", "VLMAdapter"]
