"""Dense outputs of a token-reduced vision transformer: one feature for every patch.

A reduction leaves fewer tokens than patches. :func:`dense_features` runs one forward pass
and recovers a feature for every patch of the full grid from the token state's ``source``
map (which current token holds each original one):

* a kept patch gets its own final feature;
* a merged patch (ToMe, pooling, a prune-then-merge hybrid, EViT's fused token) gets the
  final feature of the token that absorbed it (:meth:`TokenState.unmerge`);
* a pruned patch has no final feature; it gets its *last* one: its hidden state just before
  the block that dropped it (the output of the block before, or the patch embedding when
  block 0 drops it), through the model's final norm. That is the value it had when it left
  the sequence.

Final features are the last block's output through the model's final norm: ``norm`` of a
timm ``VisionTransformer``, ``layernorm`` of Hugging Face ViT and DINOv2 (the
``last_hidden_state`` they return), ``post_layernorm`` of CLIP and SigLIP (applied here to
every token, not only the pooled one). The pooled embedding is the class token's final
feature (DINOv2's ``pooler_output``, a timm token-pool model's pre-logits features); for a
model without a class token, the size-weighted mean of the final patch tokens.

>>> with tokenreduce.patch(model, "tome:r=13"):
...     out = dense_features(model, pixels)       # out.patches: (B, rows * cols, C)
>>> out = dense_features(model, pixels)           # unpatched: the unreduced reference
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .adapters import blocks, final_norm
from .api import Handle, describe, handle_of, patch
from .core.reduction import scatter_back
from .core.state import TokenState


@dataclass
class DenseFeatures:
    """What :func:`dense_features` returns for a batch of B images.

    ``pooled`` (B, C): the pooled embedding; ``patches`` (B, rows * cols, C): one feature per
    patch in raster order; ``grid``: (rows, cols); ``pruned`` (B, rows * cols): True where a
    patch was dropped and its feature is its last one; ``gflops``: analytic GFLOPs per image
    of this forward; ``mean_tokens``: tokens entering attention, averaged over the blocks.
    """

    pooled: Tensor
    patches: Tensor
    grid: tuple[int, int]
    pruned: Tensor
    gflops: float
    mean_tokens: float


def _blocks_and_norm(model: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    """The transformer blocks in order and the final norm of a supported vision model, as
    its family's adapter gives them."""
    try:
        if describe(model).kind == "vision":
            return blocks(model), final_norm(model)
    except TypeError:
        pass
    raise TypeError(
        f"dense features need a timm VisionTransformer or a Hugging Face ViT, DINOv2, CLIP or "
        f"SigLIP vision model; got a {type(model).__name__}"
    )


@torch.inference_mode()
def dense_features(model: nn.Module, x: Tensor) -> DenseFeatures:
    """Pooled embedding and one feature per patch of ``model`` on images ``x`` (B, C, H, W).

    ``model`` may be patched (``tokenreduce.patch``): every reduction is undone to the full
    patch grid by the rule of the module docstring. An unpatched model is run under
    ``patch(model, None)``, which computes exactly what the model computes and only adds the
    bookkeeping (the unreduced reference).
    """
    layers, norm = _blocks_and_norm(model)
    handle = handle_of(model)
    if handle is None:
        with patch(model, None):
            return dense_features(model, x)
    records = _run_recording(model, x, layers, handle)
    state, info = handle.state, handle.info
    final = norm(records[-1][0])
    dense, pruned = _fill_patches(final, records[:-1], state, norm)
    p = info.num_prefix
    if info.has_class_token:
        pooled = final[:, 0]
    else:
        w = state.size[:, p:, None].to(final.dtype)
        pooled = (final[:, p:] * w).sum(1) / w.sum(1)
    grid = getattr(handle.trace, "grid", None)  # this input's, which may differ from info.grid
    if grid is None or grid[0] * grid[1] != dense.shape[1] - p:
        raise ValueError(
            f"{info.family}: the patch grid {grid} does not match the {dense.shape[1] - p} "
            "patch tokens of this forward"
        )
    tokens = handle.trace.attn_tokens
    return DenseFeatures(
        pooled=pooled,
        patches=dense[:, p:],
        grid=tuple(grid),
        pruned=pruned[:, p:],
        gflops=handle.gflops(),
        mean_tokens=sum(tokens) / len(tokens),
    )


def _run_recording(
    model: nn.Module, x: Tensor, layers: list[nn.Module], handle: Handle
) -> list[tuple[Tensor, Tensor]]:
    """Run ``model`` (patched, ``handle``) on ``x`` and return (hidden states (B, N, C),
    source map (B, N0)) before the first block and after every block, in order."""
    records: list[tuple[Tensor, Tensor]] = []

    def before_first(_module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        b, n = h.shape[:2]
        records.append((h, torch.arange(n, device=h.device).expand(b, n)))

    def after(_module, _args, output):
        h = output[0] if isinstance(output, tuple) else output
        records.append((h, handle.state.source))

    hooks = [layers[0].register_forward_pre_hook(before_first, with_kwargs=True)]
    hooks += [blk.register_forward_hook(after) for blk in layers]
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return records


def _fill_patches(
    final: Tensor, earlier: list[tuple[Tensor, Tensor]], state: TokenState, norm: nn.Module
) -> tuple[Tensor, Tensor]:
    """One feature per original token (B, N0, C) and the mask (B, N0) of dropped ones.

    ``final`` (B, N, C) is the normed last output; kept and merged tokens take it through
    ``state.unmerge``. A dropped token takes its last hidden state in ``earlier`` (the
    records before the last block's output), through ``norm``.
    """
    dense, missing = state.unmerge(final)
    pruned = missing.clone()
    for hidden, source in reversed(earlier):
        if not bool(missing.any()):
            break
        here = missing & (source >= 0)  # dropped later, still present at this point
        if bool(here.any()):
            values, _ = scatter_back(norm(hidden), source)
            dense = torch.where(here[..., None], values, dense)
            missing = missing & ~here
    return dense, pruned
