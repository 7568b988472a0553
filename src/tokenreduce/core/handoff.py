"""Handoff: a reduction of one model's output tokens, carried into the next model's input.

A vision-language model's vision encoder produces N tokens per image; the language model
reads them in place of N placeholder tokens of its prompt. A reduction of the image tokens
(I images, N tokens each, M slots) is *lifted* here to a reduction of the prompt (B samples,
L tokens): every text token keeps its own slot, each placeholder joins the slot of the image
token it carried, and the slots stay in prompt order. Applied with
:meth:`Reduction.apply`, the lifted reduction rewrites the language model's every
token-aligned input consistently: embeddings (``"mean"``: merged image tokens are averaged as
the image reduction averaged them), ids, attention mask and positions (``"anchor"``: each
slot keeps its anchor's original value, so RoPE positions are the kept tokens' own).

Samples may end with different lengths (images per sample differ, or an adaptive method
keeps different counts): the shorter ones get padding slots on the side the language model
pads (left for generation), marked False in the lifted reduction's ``valid``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .reduction import Reduction

PAD_SIDES = ("left", "right")


def handoff(
    red: Reduction,
    placeholders: Tensor,
    pad_side: str = "left",
    valid: Tensor | None = None,
    lengths: Tensor | None = None,
) -> Reduction:
    """Lift ``red`` over I images' tokens to the prompt whose placeholders they fill.

    Args:
        red: a reduction of (I, N) image tokens to (I, M) slots (``red.valid`` may mark
            padding slots of images that keep fewer).
        placeholders: (B, L) bool, True at the images' placeholder tokens. Image 0 fills the
            first of them in row-major order, image 1 the next, and so on (the order of
            ``masked_scatter``, which Hugging Face VLMs use).
        pad_side: where shorter samples get their padding slots, "left" or "right".
        valid: (B, L) bool, False at the prompt's own padding (the attention mask), which is
            dropped; None when the prompt has none.
        lengths: (I,) tokens of each image when images differ in size (image i's tokens are
            the first ``lengths[i]`` of its row of ``red``; the rest is padding that ``red``
            drops); None when every image has N.

    Returns:
        A reduction of (B, L) prompt tokens. A slot that fuses image tokens into a new token
        (anchor -1 in ``red``, EViT's fused token) is placed after its image's last kept token
        and anchored at the image's last placeholder.

    Raises:
        ValueError: the placeholders do not hold whole images (their count is not the images'
        tokens, or an image's tokens straddle two samples), or ``pad_side`` is unknown.
    """
    if pad_side not in PAD_SIDES:
        raise ValueError(f"pad_side must be one of {PAD_SIDES}, got {pad_side!r}")
    images, n = red.assign.shape
    b, length = placeholders.shape
    if lengths is None:
        lengths = torch.full((images,), n, device=placeholders.device)
    where, real = _image_positions(placeholders, lengths.to(placeholders.device), n)
    owner = where[:, 0] // length
    last = where.gather(1, (lengths - 1).clamp_min(0)[:, None].to(where.device))[:, 0]
    if not bool((last // length == owner).all()):
        raise ValueError("an image's placeholder tokens straddle two samples of the batch")
    lift = _Lift(red, where % length, real)
    text = ~placeholders if valid is None else ~placeholders & valid.bool()
    counts = text.sum(1) + torch.stack([lift.count(owner == s) for s in range(b)])
    m = int(counts.max())
    out = _empty(b, length, m, placeholders.device)
    for s in range(b):
        offset = m - int(counts[s]) if pad_side == "left" else 0
        lift.fill(out, s, text[s], (owner == s).nonzero().squeeze(1), offset)
    assign, weight, anchor, valid = out
    return Reduction(assign, weight, anchor, valid=None if bool(valid.all()) else valid)


def _image_positions(placeholders: Tensor, lengths: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(I, N) flat prompt position of each image token (an image's padding repeats its last
    placeholder) and (I, N) True at real image tokens."""
    flat = placeholders.reshape(-1).nonzero().squeeze(1)
    total = int(lengths.sum())
    if flat.numel() != total:
        raise ValueError(
            f"the prompt has {flat.numel()} image placeholder tokens, but {lengths.numel()} "
            f"images of {_sizes(lengths)} tokens need {total}"
        )
    start = lengths.cumsum(0) - lengths
    ar = torch.arange(n, device=flat.device)
    real = ar[None, :] < lengths[:, None]
    index = start[:, None] + torch.minimum(ar[None, :], (lengths - 1).clamp_min(0)[:, None])
    return flat[index.clamp(max=max(total - 1, 0))], real


def _sizes(lengths: Tensor) -> str:
    sizes = sorted(set(lengths.tolist()))
    return str(sizes[0]) if len(sizes) == 1 else "/".join(map(str, sizes))


class _Lift:
    """The image reduction seen from the prompt: where each image slot sits."""

    def __init__(self, red: Reduction, where: Tensor, real: Tensor) -> None:
        # where: (I, N) prompt position of each image token; real: False at image padding
        self.red, self.where, self.real = red, where, real
        ones = torch.ones_like(red.anchor, dtype=torch.bool)
        self.kept = red.valid if red.valid is not None else ones
        fused = red.anchor < 0
        # a slot's prompt anchor: its anchor's placeholder, or the image's last placeholder
        last = where.gather(1, (real.sum(1, keepdim=True) - 1).clamp_min(0)).expand_as(red.anchor)
        self.anchor = torch.where(fused, last, where.gather(1, red.anchor.clamp_min(0)))
        self.order_key = 2 * self.anchor + fused  # a fused slot after the token it shares with

    def count(self, images: Tensor) -> Tensor:
        return self.kept[images].sum()

    def fill(self, out, s: int, text_mask: Tensor, images: Tensor, offset: int) -> None:
        """Write sample ``s``'s row of the lifted (assign, weight, anchor, valid)."""
        assign, weight, anchor, valid = out
        text = text_mask.nonzero().squeeze(1)
        kept = self.kept[images]
        anchors = torch.cat([text, self.anchor[images][kept]])
        order = torch.cat([2 * text, self.order_key[images][kept]]).argsort(stable=True)
        slot = torch.empty_like(order)
        slot[order] = torch.arange(order.numel(), device=order.device) + offset
        anchor[s, offset : offset + order.numel()] = anchors[order]
        valid[s, offset : offset + order.numel()] = True
        assign[s, text] = slot[: text.numel()]
        image_slot = torch.full_like(self.red.anchor[images], -1)
        image_slot[kept] = slot[text.numel() :]
        members = self.red.assign[images]
        if image_slot.shape[1] == 0:  # every image of the batch kept no token
            target = torch.full_like(members, -1)
        else:
            target = image_slot.gather(1, members.clamp_min(0)).masked_fill(members < 0, -1)
        real = self.real[images]
        assign[s, self.where[images][real]] = target[real]
        weight[s, self.where[images][real]] = self.red.weight[images][real].to(weight.dtype)


def _empty(b: int, length: int, m: int, device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(assign, weight, anchor, valid) of a lifted reduction before any sample is written:
    every token dropped, every slot padding."""
    return (
        torch.full((b, length), -1, dtype=torch.long, device=device),
        torch.ones(b, length, device=device),
        torch.full((b, m), -1, dtype=torch.long, device=device),
        torch.zeros(b, m, dtype=torch.bool, device=device),
    )
