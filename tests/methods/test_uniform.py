"""Uniform: a content-blind selection evenly spread over the patch grid."""

from __future__ import annotations

import pytest
import torch

from tokenreduce.core.state import TokenState
from tokenreduce.methods.uniform import nearest_to_points, uniform_points


def kept_cells(keep: int, h: int, w: int, num_prefix: int = 0) -> set[tuple[int, int]]:
    state = TokenState.initial(1, num_prefix + h * w, num_prefix)
    red = nearest_to_points(uniform_points(keep, h, w), state.position, (h, w),
                            state.protected, num_prefix)  # fmt: skip
    patches = red.anchor[0, num_prefix:] - num_prefix
    assert red.anchor[0, :num_prefix].tolist() == list(range(num_prefix))  # prefix kept
    return {(int(p) // w, int(p) % w) for p in patches}


def test_a_square_budget_keeps_a_strided_sub_grid():
    assert kept_cells(16, 8, 8) == {(r, c) for r in (0, 2, 4, 6) for c in (0, 2, 4, 6)}
    assert kept_cells(4, 6, 6, num_prefix=1) == {(1, 1), (1, 4), (4, 1), (4, 4)}


@pytest.mark.parametrize(("keep", "h", "w"), [(7, 8, 8), (18, 6, 6), (10, 4, 8), (63, 8, 8)])
def test_kept_tokens_are_spread_over_every_band_of_the_grid(keep, h, w):
    cells = kept_cells(keep, h, w)
    assert len(cells) == keep
    # every half of the grid, by rows and by columns, holds about half of the kept tokens
    for axis, side in ((0, h), (1, w)):
        first = sum(1 for cell in cells if cell[axis] < side / 2)
        assert abs(first - keep / 2) <= keep / 8 + 1, (axis, first)


def test_points_take_the_nearest_tokens_left_after_an_earlier_reduction():
    # only the right half of a 4x4 grid is left: four points land on its columns 2 and 3
    position = torch.tensor([[r * 4 + c for r in range(4) for c in (2, 3)]])
    red = nearest_to_points(uniform_points(4, 4, 4), position, (4, 4),
                            torch.zeros(1, 8, dtype=torch.bool), 0)  # fmt: skip
    kept = position[0, red.anchor[0]].tolist()
    assert len(set(kept)) == 4 and {p // 4 for p in kept} == {0, 2}


def test_too_many_points_for_the_grid_is_an_error():
    with pytest.raises(ValueError, match="keep=17 points do not fit a 4 x 4 grid"):
        uniform_points(17, 4, 4)
