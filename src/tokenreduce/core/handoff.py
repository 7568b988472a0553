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
    red: Reduction, placeholders: Tensor, pad_side: str = "left", valid: Tensor | None = None
) -> Reduction:
    """Lift ``red`` over I images' tokens to the prompt whose placeholders they fill.

    Args:
        red: a reduction of (I, N) image tokens to (I, M) slots (``red.valid`` may mark
            padding slots of images that keep fewer).
        placeholders: (B, L) bool, True at the I * N placeholder tokens. Image 0 fills the
            first N of them in row-major order, image 1 the next N, and so on (the order of
            ``masked_scatter``, which Hugging Face VLMs use).
        pad_side: where shorter samples get their padding slots, "left" or "right".
        valid: (B, L) bool, False at the prompt's own padding (the attention mask), which is
            dropped; None when the prompt has none.

    Returns:
        A reduction of (B, L) prompt tokens. A slot that fuses image tokens into a new token
        (anchor -1 in ``red``, EViT's fused token) is placed after its image's last kept token
        and anchored at the image's last placeholder.

    Raises:
        ValueError: the placeholders do not hold whole images (their count is not I * N or an
        image's tokens straddle two samples), or ``pad_side`` is unknown.
    """
    if pad_side not in PAD_SIDES:
        raise ValueError(f"pad_side must be one of {PAD_SIDES}, got {pad_side!r}")
    images, n = red.assign.shape
    b, length = placeholders.shape
    flat = placeholders.reshape(-1).nonzero().squeeze(1)
    if flat.numel() != images * n:
        raise ValueError(
            f"the prompt has {flat.numel()} image placeholder tokens, but {images} images of "
            f"{n} tokens need {images * n}"
        )
    flat = flat.view(images, n)
    owner = flat[:, 0] // length
    if not bool((flat[:, -1] // length == owner).all()):
        raise ValueError("an image's placeholder tokens straddle two samples of the batch")
    lift = _Lift(red, flat % length)
    text = ~placeholders if valid is None else ~placeholders & valid.bool()
    counts = text.sum(1) + torch.stack([lift.count(owner == s) for s in range(b)])
    m = int(counts.max())
    out = _empty(b, length, m, placeholders.device)
    for s in range(b):
        offset = m - int(counts[s]) if pad_side == "left" else 0
        lift.fill(out, s, text[s], (owner == s).nonzero().squeeze(1), offset)
    assign, weight, anchor, valid = out
    return Reduction(assign, weight, anchor, valid=None if bool(valid.all()) else valid)


class _Lift:
    """The image reduction seen from the prompt: where each image slot sits."""

    def __init__(self, red: Reduction, where: Tensor) -> None:
        self.red, self.where = red, where  # where: (I, N) prompt position of each image token
        ones = torch.ones_like(red.anchor, dtype=torch.bool)
        self.kept = red.valid if red.valid is not None else ones
        fused = red.anchor < 0
        # a slot's prompt anchor: its anchor's placeholder, or the image's last placeholder
        last = where[:, -1:].expand_as(red.anchor)
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
        target = image_slot.gather(1, members.clamp_min(0)).masked_fill(members < 0, -1)
        assign[s, self.where[images]] = target
        weight[s, self.where[images]] = self.red.weight[images].to(weight.dtype)


def _empty(b: int, length: int, m: int, device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(assign, weight, anchor, valid) of a lifted reduction before any sample is written:
    every token dropped, every slot padding."""
    return (
        torch.full((b, length), -1, dtype=torch.long, device=device),
        torch.ones(b, length, device=device),
        torch.full((b, m), -1, dtype=torch.long, device=device),
        torch.zeros(b, m, dtype=torch.bool, device=device),
    )
