"""A test-only vision-language model (LLaVA's shape) and its adapter: a reduction at the
vision side's output is handed over to the language model, whose embeddings, attention mask
and positions are rewritten by the lifted reduction (``tokenreduce.core.handoff``)."""

from __future__ import annotations

import torch
from torch import nn

from tokenreduce.adapters import Adapter
from tokenreduce.adapters.base import Trace
from tokenreduce.core.context import ModelInfo
from tokenreduce.core.handoff import handoff
from tokenreduce.core.state import TokenState
from tokenreduce.methods.base import TokenMethod

from .layers import Block, block_flops, padding_bias

IMAGE_TOKEN = 1
GRID = (4, 4)  # 16x16 images in 4x4 patches: 16 tokens per image


class ToyLM(nn.Module):
    """Embeddings (B, L, dim), mask (B, L) and positions (B, L) -> logits (B, L, vocab);
    causal, left padding."""

    def __init__(self, vocab: int, dim: int, heads: int, depth: int) -> None:
        super().__init__()
        self.pos = nn.Embedding(64, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.head = nn.Linear(dim, vocab)

    def forward(self, inputs_embeds, attention_mask, position_ids) -> torch.Tensor:
        x = inputs_embeds + self.pos(position_ids)
        n = x.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        allowed = causal[None] & attention_mask.bool()[:, None, :]
        bias = padding_bias(torch.ones(x.shape[:2], dtype=torch.bool), x.dtype)
        bias = bias.expand(-1, -1, n, -1).masked_fill(~allowed[:, None], torch.finfo(x.dtype).min)
        for blk in self.blocks:
            x = blk(x, bias)
        return self.head(x)


class ToyVLM(nn.Module):
    def __init__(self, vocab: int = 40, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.patch = nn.Linear(16, dim)
        self.vision = nn.ModuleList(Block(dim, heads) for _ in range(2))
        self.projector = nn.Linear(dim, dim)
        self.embed = nn.Embedding(vocab, dim)
        self.language_model = ToyLM(vocab, dim, heads, depth=2)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(I, 16, 16) images -> (I, 16, dim) tokens, one per 4x4 patch."""
        i = pixel_values.shape[0]
        patches = pixel_values.view(i, 4, 4, 4, 4).permute(0, 1, 3, 2, 4).reshape(i, 16, 16)
        x = self.patch(patches)
        for blk in self.vision:
            x = blk(x)
        return self.projector(x)

    def forward(self, input_ids, pixel_values, attention_mask) -> torch.Tensor:
        embeds = self.embed(input_ids)
        features = self.image_features(pixel_values)
        placeholders = (input_ids == IMAGE_TOKEN)[..., None]
        embeds = embeds.masked_scatter(placeholders, features.to(embeds.dtype))
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        return self.language_model(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions
        )


class ToyVLMAdapter(Adapter):
    """One site, the handoff (site index 0): the projector's output tokens are reduced, and
    the language model's inputs rewritten to match."""

    family = "toy vision-language model (tests only)"
    accepts = (TokenMethod,)
    kind = "vision-language"
    sites = ("handoff:projector->language_model",)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, ToyVLM)

    @classmethod
    def describe(cls, model: nn.Module) -> ModelInfo:
        return ModelInfo("toy_vlm", 1, 0, False, GRID, cls.kind, cls.sites)

    def patch(self) -> None:
        self._hooks = (
            self.model.register_forward_pre_hook(self._read_ids),
            self.model.projector.register_forward_hook(self._reduce_images),
            self.model.language_model.register_forward_pre_hook(self._rewrite, with_kwargs=True),
        )

    def unpatch(self) -> None:
        for hook in self._hooks:
            hook.remove()

    def _read_ids(self, model, args) -> None:
        self._placeholders = args[0] == IMAGE_TOKEN
        self._images = None

    def _reduce_images(self, projector, args, features: torch.Tensor) -> None:
        self.site_fired()
        i, n = features.shape[:2]
        self.trace.state = TokenState.initial(i, n, 0, features.device)
        head = features[:, None]
        self._images = self.reduction(0, features, head, head, features.shape[-1] ** -0.5, None)

    def _rewrite(self, lm, args, kwargs: dict) -> tuple[tuple, dict]:
        if self._images is None:  # nothing removed: the language model reads every token
            return args, kwargs
        mask = kwargs["attention_mask"]
        lifted = handoff(self._images, self._placeholders, pad_side="left", valid=mask.bool())
        mask = lifted.apply(mask, "anchor")
        if lifted.valid is not None:
            mask = mask & lifted.valid.to(mask.dtype)
        kwargs = {
            "inputs_embeds": lifted.apply(kwargs["inputs_embeds"]),
            "attention_mask": mask,
            "position_ids": lifted.apply(kwargs["position_ids"], "anchor"),
        }
        b, length = self._placeholders.shape
        self.trace.state = TokenState.initial(b, length).apply(lifted)
        self.trace.attn_tokens[:] = [mask.shape[1]]
        return args, kwargs

    def gflops(self, trace: Trace | None = None) -> float:
        dim = self.model.projector.out_features
        n = trace.attn_tokens[0] if trace and trace.attn_tokens else 64
        return 2 * block_flops(n, dim) / 1e9
