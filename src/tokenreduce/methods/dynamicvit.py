from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.context import ModelInfo, TokenContext
from ..core.reducers import topk_prune
from ..core.reduction import Reduction
from .base import InvalidParameter, param, register
from .pruning import KeepRatioMethod

#: predictor weights shipped with the package, by the name of the model they were trained on
BUNDLED = {"fmnist-vit": Path(__file__).parents[1] / "assets" / "checkpoints"
                         / "dynamicvit-fmnist-vit.safetensors"}  # fmt: skip


class StagePredictor(nn.Module):
    """DynamicViT's prediction module for one stage: keep/drop logits per token.

    Each token's feature is projected (LayerNorm, Linear, GELU) and split in two halves: a
    local half, the token's own, and a global half averaged over the tokens still kept
    (``policy``), so a token is judged against the whole image. An MLP on the concatenation
    gives two logits per token, index 0 = keep, index 1 = drop.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 4:
            raise ValueError(f"StagePredictor: dim={dim} must be a multiple of 4, >= 4")
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim // 4), nn.GELU(),
            nn.Linear(dim // 4, 2),
        )  # fmt: skip

    def forward(self, x: Tensor, policy: Tensor) -> Tensor:
        """``x`` (B, N, C) tokens, ``policy`` (B, N) 1 where a token is kept, 0 where dropped
        (differentiable during training); returns (B, N, 2) logits (keep, drop)."""
        h = self.in_conv(x)
        local, glob = h.chunk(2, dim=-1)
        w = policy.unsqueeze(-1).to(h.dtype)
        glob = (glob * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1e-6)
        return self.out_conv(torch.cat([local, glob.expand_as(local)], dim=-1))


class KeepPredictor(nn.Module):
    """One :class:`StagePredictor` per reduction stage, all on tokens of width ``dim``."""

    def __init__(self, dim: int, stages: int) -> None:
        super().__init__()
        self.dim = dim
        self.stages = nn.ModuleList(StagePredictor(dim) for _ in range(stages))

    def save(self, file: str | Path, metadata: dict[str, str] | None = None) -> None:
        """The weights as safetensors (the width and stage count follow from the shapes)."""
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(file), metadata=metadata or {})

    @classmethod
    def load(cls, file: str | Path) -> KeepPredictor:
        """A predictor from :meth:`save`'s file.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file holds no DynamicViT predictor weights.
        """
        from safetensors.torch import load_file

        state = load_file(str(file))
        stages = {int(k.split(".")[1]) for k in state if k.startswith("stages.")}
        key = "stages.0.in_conv.1.weight"
        if not stages or key not in state:
            raise ValueError(f"{file} holds no DynamicViT predictor (no '{key}')")
        predictor = cls(state[key].shape[0], max(stages) + 1)
        predictor.load_state_dict(state, strict=True)
        return predictor.eval()


def untrained_predictor(dim: int, stages: int, seed: int) -> KeepPredictor:
    """A predictor with PyTorch's default initialisation drawn from ``seed`` (tests only)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return KeepPredictor(dim, stages).eval()


def keep_scores(logits: Tensor) -> Tensor:
    """(B, N, 2) predictor logits -> (B, N) keep score, the log-odds of keeping."""
    return logits[..., 0] - logits[..., 1]


def _weights_file(weights: str) -> Path:
    return BUNDLED.get(weights, Path(weights))


@register
@dataclass
class DynamicViT(KeepRatioMethod):
    """DynamicViT: a learned prediction module decides which tokens to keep.

    Rao et al., "DynamicViT: Efficient Vision Transformers with Dynamic Token
    Sparsification", NeurIPS 2021. https://arxiv.org/abs/2106.02034

    At each stage (``layers``: after the block's attention) a small MLP scores every patch
    token from its own feature and the average of the kept tokens'
    (:class:`StagePredictor`); at inference the top ``ceil(keep_ratio * n)`` are kept and the
    rest removed, so stage s keeps ``keep_ratio ** s`` of the patch tokens (the paper's rho,
    rho^2, rho^3). Training (Gumbel-softmax masks with masked attention, the keep-ratio and
    distillation losses) is :mod:`tokenreduce.methods.dynamicvit_train`.

    The predictor's weights are part of the method: a predictor scores nothing useful until it
    has been trained for the model it runs on, so patching refuses a method given neither
    ``weights`` nor ``untrained``.

    Parameters:
        keep_ratio: rho, the fraction of patch tokens each stage keeps, in (0, 1]. The
            paper's default is 0.7.
        layers: 0-based blocks after whose attention a stage prunes, one predictor stage
            each; the paper's (3, 6, 9) on 12 blocks.
        weights: trained predictor weights: a safetensors file written by
            :meth:`KeepPredictor.save`, or a bundled name (``"fmnist-vit"``). Its stage count
            must equal ``len(layers)``; its width must equal the model's.
        untrained: True runs a randomly initialised predictor (drawn from ``seed``): for
            tests of the machinery, never for results. Exclusive with ``weights``.
        seed: the random predictor's seed (``untrained`` only), an integer >= 0.

    Raises:
        InvalidParameter: both ``weights`` and ``untrained``, or at patch time neither; a
            weights file that cannot be read or whose stage count differs from
            ``len(layers)``; at the first reduction, tokens of another width than the
            predictor's.
    """

    name = "dynamicvit"
    paper = "Rao et al., NeurIPS 2021 (arXiv:2106.02034)"
    test_params: ClassVar[dict[str, Any]] = {"keep_ratio": 0.5, "layers": (1, 2), "untrained": True}
    #: its predictor is trained for one model: sweeps run it only when a spec names weights
    in_default_sweep: ClassVar[bool] = False
    weights: str | None = param(None, type=str, optional=True, valid=lambda v: isinstance(v, str),
                                allowed="a safetensors file or a bundled name")  # fmt: skip
    untrained: bool = param(False)
    seed: int = param(0, ge=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        # not a field: the weights are named by ``weights``, compared and printed by it
        self.predictor: KeepPredictor | None = None
        if self.weights is not None and self.untrained:
            raise InvalidParameter(f"{self.name}: weights={self.weights!r} and untrained=True "
                                   "exclude each other; give one")  # fmt: skip
        if self.weights is not None:
            self.predictor = self._load(self.weights)

    def check_model(self, model: ModelInfo) -> None:
        """Besides the layers: refuse to run without a predictor, trained or declared random
        (an untrained predictor must never pass for a trained one)."""
        super().check_model(model)
        if self.weights is None and not self.untrained:
            raise InvalidParameter(
                f"{self.name}: give weights=<predictor file or one of {sorted(BUNDLED)}> "
                "(trained), or untrained=True (a random predictor, for tests)"
            )

    def _load(self, weights: str) -> KeepPredictor:
        try:
            predictor = KeepPredictor.load(_weights_file(weights))
        except (OSError, ValueError) as err:
            raise InvalidParameter(f"{self.name}: weights={weights!r} cannot be read: {err}") from None
        if len(predictor.stages) != len(self.layers):
            raise InvalidParameter(
                f"{self.name}: weights={weights!r} has {len(predictor.stages)} stages but "
                f"layers={self.layers} asks for {len(self.layers)}"
            )
        return predictor

    def stage_predictor(self, ctx: TokenContext) -> StagePredictor:
        """The predictor of the stage at ``ctx.layer`` (the random one built on first use)."""
        dim = ctx.hidden.shape[-1]
        if self.predictor is None:
            self.predictor = untrained_predictor(dim, len(self.layers), self.seed)
        if self.predictor.dim != dim:
            raise InvalidParameter(f"{self.name}: the predictor is {self.predictor.dim} wide, "
                                   f"the tokens at layer {ctx.layer} are {dim}")  # fmt: skip
        return self.predictor.stages[self.layers.index(ctx.layer)]

    @torch.no_grad()
    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        stage = self.stage_predictor(ctx).to(ctx.hidden.device)
        kept = (~ctx.state.protected).float()  # every token here is kept: none masked yet
        logits = stage(ctx.hidden.float(), kept)
        return topk_prune(keep_scores(logits), ctx.num_reducible - n_remove, ctx.state.protected)
