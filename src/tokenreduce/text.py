"""Text encoders: sentence embeddings from a (reduced) encoder's token states, and LTP
thresholds calibrated on a few batches."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .api import Handle, describe, patch
from .methods import LTP
from .methods.power_bert import received_attention


def mean_pool(
    hidden: torch.Tensor, handle: Handle | None = None, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The mean of token states ``hidden`` (B, N, C) per sample, (B, C).

    With ``handle`` (the patch of the model that produced ``hidden`` in its last forward),
    each token weighs as many original tokens as it stands for (``handle.state.size``: a
    merged token counts its members, a padding slot 0), so a reduced sequence's mean
    estimates the unreduced one's. Without a handle, ``attention_mask`` (B, N) weighs real
    tokens 1 and padding 0 (sentence-transformers' mean pooling); with neither, a plain mean.

    Raises ValueError when the handle's state does not match ``hidden`` (another forward ran
    since, or the handle was never run) or both weightings are given.
    """
    if handle is not None and attention_mask is not None:
        raise ValueError("mean_pool: give a handle or an attention_mask, not both")
    if handle is not None:
        state = handle.state
        if state is None or tuple(state.size.shape) != tuple(hidden.shape[:2]):
            got = None if state is None else tuple(state.size.shape)
            raise ValueError(
                f"mean_pool: the handle's token state {got} does not match hidden states "
                f"{tuple(hidden.shape[:2])}; pool the output of the handle's last forward"
            )
        weight = state.size
    elif attention_mask is not None:
        weight = attention_mask
    else:
        weight = torch.ones(hidden.shape[:2], device=hidden.device)
    w = weight.to(hidden.dtype)[..., None]
    return (hidden * w).sum(1) / w.sum(1).clamp_min(torch.finfo(hidden.dtype).tiny)


class _RecordingLTP(LTP):
    """LTP that also keeps the scores of the unprotected tokens it sees at ``layer``."""

    def reduce(self, ctx, n_remove):
        if ctx.layer == self.layer:
            self.recorded.append(received_attention(ctx)[~ctx.state.protected].float().cpu())
        return super().reduce(ctx, n_remove)


def calibrate_ltp(
    model: nn.Module, batches: Iterable[dict], keep_ratio: float, min_keep: float = 0.0
) -> LTP:
    """LTP thresholds for ``model`` set on a few ``batches`` so that, on them, the share of
    each layer's reducible tokens left falls linearly from 1 to ``keep_ratio`` after the last
    layer (the paper learns them; this sets them from the score quantiles instead).

    Layer by layer, the batches run with the thresholds found so far and the layer's scores
    recorded; its threshold is the quantile that keeps the wanted share of those scores.

    Args:
        model: a text encoder tokenreduce supports (unpatched; it is patched and restored).
        batches: keyword arguments of the model's forward (``input_ids``, ``attention_mask``),
            right-padded; read once per layer, so a list, not a generator.
        keep_ratio: share of the reducible tokens left after the last layer, in (0, 1].
        min_keep: the returned method's ``min_keep``.

    Raises:
        ValueError: ``keep_ratio`` outside (0, 1] or no batches.
    """
    batches = list(batches)
    if not 0 < keep_ratio <= 1 or not batches:
        raise ValueError(
            f"calibrate_ltp: keep_ratio must be in (0, 1] and batches non-empty; got "
            f"keep_ratio={keep_ratio!r} and {len(batches)} batches"
        )
    depth = describe(model).num_layers
    thresholds: list[float] = []
    for layer in range(depth):
        share = (1 - (1 - keep_ratio) * (layer + 1) / depth) / (
            1 - (1 - keep_ratio) * layer / depth
        )  # of the tokens entering this layer
        probe = _RecordingLTP(thresholds=(*thresholds, 1e-12), min_keep=min_keep)
        probe.layer, probe.recorded = layer, []
        with torch.no_grad(), patch(model, probe):
            for batch in batches:
                model(**batch)
        scores = torch.cat(probe.recorded)
        thresholds.append(float(scores.quantile(1 - share)) if share < 1 else 0.0)
    return LTP(thresholds=tuple(thresholds), min_keep=min_keep)
