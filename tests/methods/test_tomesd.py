"""tomesd and its random baseline: the cell split, the matching of tomesd's algorithm, and
draws seeded per sample and timestep."""

from __future__ import annotations

import pytest
import torch

from tokenreduce.methods import RandomMerge, ToMeSD
from tokenreduce.methods.local_base import LocalSite
from tokenreduce.methods.tomesd import cell_destinations


def site(hidden: torch.Tensor, grid=(8, 8), timestep=None, index: int = 0) -> LocalSite:
    b = hidden.shape[0]
    t = torch.full((b,), 500.0, dtype=torch.float64) if timestep is None else timestep
    return LocalSite(index, 1, hidden, grid, t)


def tokens(b: int = 2, n: int = 64, c: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, n, c, generator=torch.Generator().manual_seed(seed))


def reference_merge(x: torch.Tensor, h: int, w: int, r: int) -> torch.Tensor:
    """tomesd's bipartite soft matching with top-left destinations (use_rand=False), written
    from the paper's algorithm: the merged tokens, each slot the mean of its members, as the
    set of rows (sorted) so slot order does not matter."""
    b, n, c = x.shape
    is_dst = torch.zeros(h, w, dtype=torch.bool)
    is_dst[::2, ::2] = True
    dst_idx, src_idx = is_dst.flatten().nonzero()[:, 0], (~is_dst.flatten()).nonzero()[:, 0]
    rows = []
    for i in range(b):
        m = x[i] / x[i].norm(dim=-1, keepdim=True)
        sim = m[src_idx] @ m[dst_idx].T
        best, match = sim.max(dim=-1)
        merged = best.argsort(descending=True)[:r]
        sums, counts = x[i, dst_idx].clone(), torch.ones(len(dst_idx))
        for s in merged.tolist():
            sums[match[s]] += x[i, src_idx[s]]
            counts[match[s]] += 1
        keep = [s for s in range(len(src_idx)) if s not in set(merged.tolist())]
        out = torch.cat([x[i, src_idx[keep]], sums / counts[:, None]])
        rows.append(out[torch.argsort(out[:, 0])])
    return torch.stack(rows)


def test_merging_follows_tomesds_matching():
    x = tokens()
    red = ToMeSD(ratio=0.4, use_rand=False).reduce(site(x), n_remove=25)
    merged = red.apply(x)
    assert merged.shape == (2, 64 - 25, 8)
    ordered = torch.stack([m[torch.argsort(m[:, 0])] for m in merged])
    torch.testing.assert_close(ordered, reference_merge(x, 8, 8, 25))


def test_one_destination_per_cell_and_never_more_than_the_sources_merge():
    x = tokens()
    dst, src = cell_destinations("tomesd", site(x), sx=2, sy=2, rand=True, seed=0)
    assert dst.shape == (2, 16) and src.shape == (2, 48)
    cell = (dst // 8 // 2) * 4 + (dst % 8) // 2  # the 2x2 cell of each destination
    assert all(sorted(c.tolist()) == list(range(16)) for c in cell)
    red = ToMeSD(ratio=0.9).reduce(site(x), n_remove=57)
    assert red.num_out == 16  # capped at the 48 sources: one token per cell is left


def test_draws_depend_on_seed_site_and_timestep_not_on_the_batch():
    x = tokens(3)
    t = torch.tensor([900.0, 500.0, 900.0], dtype=torch.float64)
    dst = cell_destinations("tomesd", site(x, timestep=t), 2, 2, True, seed=0)[0]
    assert torch.equal(dst[0], dst[2]) and not torch.equal(dst[0], dst[1])
    alone = cell_destinations("tomesd", site(x[1:2], timestep=t[1:2]), 2, 2, True, seed=0)[0]
    assert torch.equal(alone[0], dst[1])
    other_site = cell_destinations("tomesd", site(x, timestep=t, index=1), 2, 2, True, 0)[0]
    other_seed = cell_destinations("tomesd", site(x, timestep=t), 2, 2, True, seed=1)[0]
    assert not torch.equal(other_site, dst) and not torch.equal(other_seed, dst)


def test_random_merge_ignores_similarity():
    x = tokens()
    similar = ToMeSD(ratio=0.4).reduce(site(x), 25)
    chance = RandomMerge(ratio=0.4).reduce(site(x), 25)
    assert chance.num_out == similar.num_out == 39
    assert not torch.equal(chance.assign, similar.assign)
    permuted = RandomMerge(ratio=0.4).reduce(site(x[:, torch.randperm(64)]), 25)
    assert torch.equal(permuted.assign, chance.assign)  # the features play no part


def test_cells_of_other_sizes():
    x = tokens(1, n=48)  # a 6x8 grid in 3x2 cells (sy=3, sx=2): 8 cells
    dst, _ = cell_destinations("tomesd", site(x, grid=(6, 8)), sx=2, sy=3, rand=True, seed=0)
    assert dst.shape == (1, 8)
    with pytest.raises(ValueError, match="6x8 token grid of site 0 .* 4x2 cells"):
        cell_destinations("tomesd", site(x, grid=(6, 8)), sx=2, sy=4, rand=True, seed=0)
