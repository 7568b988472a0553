"""ToMe's bipartite soft matching written out plainly, in the token order of the authors' code
(Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023; facebookresearch/ToMe), for
tests to compare ``tokenreduce``'s ``tome`` against."""

from __future__ import annotations

import math

import torch


def reference_bipartite(x, metric, size, r, class_token, distill_token):
    """Bipartite soft matching written out plainly from the ToMe paper (Bolya et al. 2023), with
    the token order of the authors' code: the class (and distillation) token, the unmerged A
    tokens (sorted by index when there is a class token), then the B tokens.

    Returns merged tokens, their sizes and the original index of each output token.
    """
    t = metric.shape[1]
    r = min(r, (t - int(class_token) - int(distill_token)) // 2)
    if r <= 0:  # nothing merges, nothing moves
        return x, size, torch.arange(t).expand(x.shape[0], -1)
    m = metric / metric.norm(dim=-1, keepdim=True)
    scores = m[:, ::2] @ m[:, 1::2].transpose(1, 2)
    if class_token:
        scores[:, 0, :] = -math.inf
    if distill_token:
        scores[:, :, 0] = -math.inf
    node_max, node_idx = scores.max(dim=-1)
    order = node_max.argsort(dim=-1, descending=True)
    src, unm = order[:, :r], order[:, r:]
    if class_token:
        unm = unm.sort(dim=1).values
    dst = node_idx.gather(1, src)
    c = x.shape[-1]
    wx = x * size[..., None]
    a, b = wx[:, ::2], wx[:, 1::2]
    b = b.scatter_reduce(1, dst[..., None].expand(-1, -1, c), a.gather(1, src[..., None].expand(-1, -1, c)), "sum")
    sb = size[:, 1::2].scatter_reduce(1, dst, size[:, ::2].gather(1, src), "sum")
    parts = [  # (x, size, origin) of the unmerged A tokens and of the B tokens
        (a.gather(1, unm[..., None].expand(-1, -1, c)), size[:, ::2].gather(1, unm), 2 * unm),
        (b, sb, (2 * torch.arange(b.shape[1]) + 1).expand(x.shape[0], -1)),
    ]
    if distill_token:  # the distillation token (first B token) follows the class token
        (ua, us, uo), (ba, bs, bo) = parts
        parts = [(ua[:, :1], us[:, :1], uo[:, :1]), (ba[:, :1], bs[:, :1], bo[:, :1]),
                 (ua[:, 1:], us[:, 1:], uo[:, 1:]), (ba[:, 1:], bs[:, 1:], bo[:, 1:])]
    out_x, out_s, origin = (torch.cat(p, 1) for p in zip(*parts, strict=True))
    return out_x / out_s[..., None], out_s, origin
