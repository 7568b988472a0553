"""ToFu: pruning at the first sites, MLERP merging (norm-preserving) at the later ones."""

from __future__ import annotations

import torch

from tokenreduce.methods import ToFu, ToMeSD
from tokenreduce.methods.local_base import LocalSite, MergePlan


def site(index: int, num_sites: int = 4, seed: int = 0) -> LocalSite:
    x = torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(seed))
    t = torch.full((2,), 500.0, dtype=torch.float64)
    return LocalSite(index, 1, x, (8, 8), t, num_sites=num_sites)


def merged(plan: MergePlan, x: torch.Tensor) -> torch.Tensor:
    return plan.run("attn1", x, lambda y: y)  # the identity sub-layer: merge then unmerge


def test_early_sites_prune_sources_into_their_unchanged_destinations():
    method = ToFu(ratio=0.5, prune_share=0.5)
    early = site(1)
    plan = method.plan(early)
    out, x = merged(plan, early.hidden), early.hidden
    red = plan.reduction
    same_slot = red.anchor.gather(1, red.assign)  # the destination each token went to
    torch.testing.assert_close(out, torch.stack([x[b, same_slot[b]] for b in range(2)]))
    assert red.num_out == 32  # as many tokens go as tomesd's would
    assert ToMeSD(ratio=0.5).plan(early).reduction.num_out == 32


def test_late_sites_merge_keeping_the_largest_norm_along_the_mean_direction():
    method = ToFu(ratio=0.5, prune_share=0.5)
    late = site(2)
    plan = method.plan(late)
    x, red = late.hidden, plan.reduction
    slots = plan.combine(x)
    plain = red.apply(x)  # tomesd's plain mean
    cos = torch.nn.functional.cosine_similarity(slots, plain, dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos))
    norms = x.norm(dim=-1)
    for b in range(2):
        for slot in range(red.num_out):
            members = (red.assign[b] == slot).nonzero()[:, 0]
            torch.testing.assert_close(slots[b, slot].norm(), norms[b, members].max())
    assert bool((slots.norm(dim=-1) >= plain.norm(dim=-1) - 1e-5).all())


def test_prune_share_splits_the_sites():
    assert [ToFu(prune_share=0.5).prunes(site(i)) for i in range(4)] == [True, True, False, False]
    assert not any(ToFu(prune_share=0.0).prunes(site(i)) for i in range(4))
    assert all(ToFu(prune_share=1.0).prunes(site(i)) for i in range(4))
