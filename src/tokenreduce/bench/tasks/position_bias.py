"""Position bias of visual-token reduction: ``position-bias``.

Does a method keep tokens by content, or by where they sit? Attention-based selection is
known to favour some positions (with a causal language model, the end of the sequence: the
bottom of the image); a spatially uniform selection cannot. The task asks a vision-language
model about scenes of one object placed in each cell of a coarse grid in turn
(:func:`tokenreduce.data.vqa.grid_scenes_vqa`: 3 x 3 cells, its colour and its shape), so every
position is asked about equally often, and records for every configuration:

* **accuracy per object position** (one figure per cell, row-major) and its **spread** across
  cells (max - min, and the standard deviation, in points); the accuracy and the share of the
  full model's accuracy kept, as ``vqa`` does;
* **where the kept visual tokens lie**: for every patch of the image's token grid, the share
  of questions whose reduction kept it (a merged token counts at its own patch, its anchor);
  the **KL divergence** (nats) of the kept tokens' position distribution from uniform, per
  patch (how much the selection keeps the same patches whatever the image: a fixed random or
  lattice subset of a quarter of the patches reaches its maximum, log 4) and over 4 x 4
  regions, or as many as the tokens kept can fill (2 x 2 for fewer than 9) (large-scale skew:
  a lattice is uniform there, a selection favouring the bottom of the image is not), and
  their centre of mass (row 0 = top, 1 = bottom; column 0 = left, 1 =
  right). Objects are spread evenly over the cells, so an unbiased selection that follows
  content averages out near uniform;
* **the object's patches kept**: the share of the patches the object covers whose token
  survived, overall and per cell: where a method loses the object, it cannot answer.

The kept tokens are read from the handle (``handle.trace.prefill_kept``, the prompt tokens the
language model ran on, against the image placeholders), for handoff and prefill methods alike.
The report shows the kept-token heatmap and the per-cell accuracy of every configuration.
"""

from __future__ import annotations

import hashlib
import io
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..configs import BASELINE, label
from ..measure import Steps, check_ints
from . import Column, Metrics, Options, Plot, register
from .answers import VISUAL_TOKENS, UntimedQuestions, tokens_plot
from .vqa import (
    _digest,
    accuracy_by_type,
    kept_image_tokens,
    last_kept,
)

#: cells per side of the grid the object is placed in
GRID = 3
#: rounds over the grid's cells (two questions per image) by default and with ``--quick``
DEFAULT_ROUNDS, QUICK_ROUNDS = 8, 1
#: regions per side the kept-token share is pooled into for the large-scale index (a fixed
#: lattice of every other patch is uniform at this scale; the patch-level KL is not); fewer
#: when the budget keeps fewer tokens than regions (the square root of the tokens kept)
REGIONS = 4
#: share of a patch's pixels the object must cover to count as one of its patches
OBJECT_COVER = 0.25
#: channel spread above which a pixel is coloured (the object), not the grey background
COLOURED = 40


# -- pure measures ---------------------------------------------------------------------------
def kl_from_uniform(counts: np.ndarray, sizes: np.ndarray | None = None) -> float:
    """KL divergence (nats) of the distribution ``counts`` (any shape, non-negative, not all
    zero) from the uniform distribution over its entries, or, with ``sizes`` (same shape,
    positive), from the distribution proportional to ``sizes`` (regions of unequal size): 0
    when the two agree, at most ``log(n)`` when one of n equal entries holds everything.
    Raises ``ValueError`` otherwise."""
    counts = np.asarray(counts, dtype=np.float64).ravel()
    if counts.size == 0 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError("counts must be non-negative with a positive sum")
    q = np.ones_like(counts) if sizes is None else np.asarray(sizes, np.float64).ravel()
    if q.shape != counts.shape or (q <= 0).any():
        raise ValueError(f"sizes must be positive, one per count; got {q.shape} for {counts.shape}")
    p, q = counts / counts.sum(), q / q.sum()
    nonzero = p > 0
    return float(np.sum(p[nonzero] * np.log(p[nonzero] / q[nonzero])))


def pooled(share: np.ndarray, regions: int) -> tuple[np.ndarray, np.ndarray]:
    """``(sums, sizes)``: ``share`` (H, W) summed over a ``regions`` x ``regions`` split into
    blocks as even as the grid allows, and the patches in each block."""
    rows = np.array_split(np.arange(share.shape[0]), regions)
    cols = np.array_split(np.arange(share.shape[1]), regions)
    sums = np.array([[share[np.ix_(r, c)].sum() for c in cols] for r in rows])
    sizes = np.array([[len(r) * len(c) for c in cols] for r in rows])
    return sums, sizes


def centre_of_mass(share: np.ndarray) -> tuple[float, float]:
    """``(row, column)`` of the weight ``share`` (H, W) in [0, 1] (0 = top / left, 1 =
    bottom / right, 0.5 = centred), each patch at its centre."""
    h, w = share.shape
    total = share.sum()
    rows = (np.arange(h) + 0.5) / h
    cols = (np.arange(w) + 0.5) / w
    return float(share.sum(1) @ rows / total), float(share.sum(0) @ cols / total)


def accuracy_by_cell(correct: list[bool], cells: np.ndarray, n_cells: int) -> list[float | None]:
    """Exact-match accuracy (%) of the questions in each cell 0..n_cells-1 (None for a cell
    with no question). Raises ``ValueError`` when the lengths differ."""
    if len(correct) != len(cells):
        raise ValueError(f"need one cell per answer; got {len(correct)} and {len(cells)}")
    hits = np.asarray(correct, dtype=np.float64)
    return [
        100.0 * float(hits[cells == c].mean()) if (cells == c).any() else None
        for c in range(n_cells)
    ]


def object_patches(image: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(H * W,) bool, row-major over the patch ``grid``: the patches of ``image`` (S, S, 3)
    uint8 of which the object (coloured pixels on a grey background) covers at least
    :data:`OBJECT_COVER`. The image must split evenly into the grid's patches."""
    h, w = grid
    if image.shape[0] % h or image.shape[1] % w:
        raise ValueError(f"an image of {image.shape[:2]} px does not split into a {h}x{w} grid")
    img = image.astype(np.int16)
    coloured = (img.max(-1) - img.min(-1)) > COLOURED
    ph, pw = image.shape[0] // h, image.shape[1] // w
    cover = coloured.reshape(h, ph, w, pw).mean(axis=(1, 3))
    return (cover >= OBJECT_COVER).ravel()


def cell_text(values: list[float | None], grid: int) -> str:
    """Per-cell figures as rows of the grid: ``"90 85 80 / 75 70 65 / ..."``."""
    cells = ["-" if v is None else f"{v:.0f}" for v in values]
    return " / ".join(" ".join(cells[r * grid : (r + 1) * grid]) for r in range(grid))


def heatmap_png(values: np.ndarray, title: str, vmax: float, fmt: str) -> bytes:
    """A PNG of ``values`` (H, W) on a fixed colour scale 0..``vmax`` (so configurations
    compare tile by tile), each cell annotated with ``fmt`` when the grid is small."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.6, 2.6), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(values, cmap="viridis", vmin=0.0, vmax=vmax)
    if values.size <= 16:
        for (r, c), v in np.ndenumerate(values):
            ink = "black" if v > 0.6 * vmax else "white"  # readable on viridis' light end
            ax.text(c, r, format(v, fmt), ha="center", va="center", color=ink, fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9, parse_math=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# -- the task --------------------------------------------------------------------------------
@register
class PositionBias(UntimedQuestions):
    """Accuracy per object position and the positions of the kept visual tokens of a
    vision-language model answering questions about one-object scenes (module docstring).

    Args:
        processor: the model's processor (images and chat prompts; its tokenizer pads left).
        questions: a :class:`tokenreduce.data.vqa.VQASplit` of one-object scenes.
        cells: (Q,) int, the grid cell (row-major) of each question's object.
        grid: cells per side of the grid ``cells`` index.
        batch_size, threads, max_new_tokens: as :class:`~.vqa.VisualQuestionAnswering`.

    Raises ``ValueError`` for cells that do not match the questions or the grid.
    """

    name = "position-bias"
    description = (
        "position bias: accuracy per object position in a 3x3 grid and where the kept visual "
        "tokens lie (KL from uniform) (vision-language models)"
    )
    splits = ()
    columns = (
        Column("accuracy", "accuracy %", ".1f", True),
        Column("accuracy_kept", "kept % (accuracy)", ".1f", True),
        Column("accuracy_by_cell", "accuracy % per cell (rows)", "s"),
        Column("accuracy_spread", "spread (max-min)", ".1f", False),
        Column("accuracy_std", "std across cells", ".1f", False),
        VISUAL_TOKENS,
        Column("kept_kl", "KL kept vs uniform (nats)", ".3f", False),
        Column("kept_kl_regions", "KL over regions (nats)", ".3f", False),
        Column("kept_regions", "regions per side", "d"),
        Column("kept_row", "kept centre row (0 top)", ".3f"),
        Column("kept_col", "kept centre col (0 left)", ".3f"),
        Column("object_kept", "object patches kept %", ".1f", True),
        Column("object_kept_by_cell", "object kept % per cell (rows)", "s"),
    )
    plots = (
        Plot(
            "kept_kl",
            "accuracy",
            "KL divergence of kept-token positions from uniform (nats)",
            "accuracy (%)",
            x_higher_is_better=False,
        ),
        tokens_plot("accuracy", "accuracy (%)"),
    )
    picture_caption = (
        "Where the kept tokens lie, and accuracy by object position",
        "kept-positions: per patch, the share of questions in which its visual token was kept "
        "(0 to 1; titled with the KL of kept positions from uniform, per patch and over "
        "regions). accuracy-by-position: the accuracy (%) with the object in each cell of the "
        "grid (blank: no question there).",
    )

    def __init__(
        self,
        processor: Any,
        questions: Any,
        cells: np.ndarray,
        grid: int = GRID,
        *,
        batch_size: int = 8,
        threads: int = 1,
        max_new_tokens: int = 4,
    ) -> None:
        super().__init__(
            processor, questions, batch_size=batch_size, threads=threads,
            max_new_tokens=max_new_tokens,
        )  # fmt: skip
        check_ints(("grid", grid, 1))
        cells = np.asarray(cells, dtype=np.int64)
        if cells.shape != (len(questions),) or cells.min() < 0 or cells.max() >= grid * grid:
            raise ValueError(
                f"need one cell in 0..{grid * grid - 1} per question; got {cells.shape[0]} "
                f"cells for {len(questions)} questions, from {cells.min()} to {cells.max()}"
            )
        self.cells, self.grid = cells, grid
        digest = hashlib.sha256(_digest(questions).encode() + cells.tobytes()).hexdigest()[:12]
        self._data_id = f"position-bias:{questions.name}:n={len(questions)}#{digest}"
        self._measured: dict[str, Metrics] = {}  # for the pictures of what was measured

    @classmethod
    def from_options(cls, loaded, options: Options) -> PositionBias:
        """One-object scenes over a 3 x 3 grid: 8 rounds over the cells (144 questions);
        ``options.limit`` questions, rounded up to whole rounds (18 questions each);
        ``quick``: one round. Batches of 8 (``options.batch_size``)."""
        from ...data.vqa import grid_scenes_vqa

        per_round = 2 * GRID * GRID
        rounds = QUICK_ROUNDS if options.quick else DEFAULT_ROUNDS
        if options.limit is not None:
            check_ints(("limit", options.limit, 1))
            rounds = math.ceil(options.limit / per_round)
        questions, cells = grid_scenes_vqa(GRID, rounds)
        task = cls(
            loaded.processor, questions, cells, GRID,
            batch_size=options.batch_size or 8, threads=options.threads,
        )  # fmt: skip
        task.check_model(loaded.model)
        return task

    # -- measurement ---------------------------------------------------------------------------
    def run(self, model: nn.Module, config: str, baseline: Metrics | None, step: Steps) -> Metrics:
        answers = self.answer_all(model, config, step, self._kept_patches)
        kept = torch.cat(answers.extra).numpy()
        metrics = self._position_metrics(answers.words, kept, baseline)
        self._measured[config] = metrics
        return metrics

    def _kept_patches(self, model: nn.Module, handle: Any, batch: list[int]) -> torch.Tensor:
        """(B, N) bool: which of the N image tokens of each question of ``batch`` the language
        model ran on in the prefill just answered (its class token, if handed over, left out);
        N must form a square patch grid."""
        ids = self._inputs(model, batch)["input_ids"]
        placeholders = ids == model.config.image_token_id
        kept = kept_image_tokens(last_kept(handle), placeholders).cpu()
        prefix = handle.info.num_prefix
        rows = [kept[b][placeholders[b].cpu()][prefix:] for b in range(len(batch))]
        n = rows[0].numel()
        if math.isqrt(n) ** 2 != n:
            raise ValueError(
                f"the image's {n} tokens (after {prefix} prefix) are not a square grid"
            )
        return torch.stack(rows)

    def _position_metrics(
        self, words: list[str], kept: np.ndarray, baseline: Metrics | None
    ) -> Metrics:
        """The row's metrics from the answers and the (Q, N) kept image tokens."""
        q = self.questions
        correct = [w == a for w, a in zip(words, q.answers, strict=True)]
        accuracy = 100.0 * sum(correct) / len(correct)
        base_accuracy = (baseline or {}).get("accuracy", accuracy)
        by_cell = accuracy_by_cell(correct, self.cells, self.grid**2)
        side = math.isqrt(kept.shape[1])
        share = kept.mean(0).reshape(side, side)
        row, col = centre_of_mass(share)
        # no finer than the budget can fill evenly: 8 kept tokens cannot cover 16 regions
        per_side = max(1, min(REGIONS, side, math.isqrt(round(float(kept.sum(1).mean())))))
        regions = pooled(share, per_side)
        objects = np.stack(
            [object_patches(q.images[q.image_index[i]], (side, side)) for i in range(len(q))]
        )
        on_object = (kept & objects).sum(1) / np.maximum(objects.sum(1), 1)
        object_by_cell = [
            100.0 * float(on_object[self.cells == c].mean()) for c in range(self.grid**2)
        ]
        filled = [a for a in by_cell if a is not None]
        return {
            "accuracy": accuracy,
            "accuracy_delta": accuracy - base_accuracy,
            "accuracy_kept": 100.0 * accuracy / base_accuracy if base_accuracy else None,
            "accuracy_per_cell": by_cell,
            "accuracy_by_cell": cell_text(by_cell, self.grid),
            "accuracy_spread": max(filled) - min(filled),
            "accuracy_std": float(np.std(filled)),
            "accuracy_per_type": accuracy_by_type(correct, q.qtypes),
            "visual_tokens": float(kept.sum(1).mean()),
            "visual_share": float(kept.mean()),
            "kept_share_map": share.ravel().tolist(),
            "kept_kl": kl_from_uniform(share),
            "kept_kl_regions": kl_from_uniform(*regions),
            "kept_regions": per_side,
            "kept_row": row,
            "kept_col": col,
            "object_kept": 100.0 * float(on_object.mean()),
            "object_kept_per_cell": object_by_cell,
            "object_kept_by_cell": cell_text(object_by_cell, self.grid),
            "questions": len(correct),
            "correct": [int(c) for c in correct],
            "outputs": words,
        }

    # -- pictures -------------------------------------------------------------------------------
    def pictures(self, model: nn.Module, config: str) -> dict[str, bytes]:
        """Two heatmaps of ``config``: ``kept-positions``, the share of questions in which each
        patch's token was kept (0 to 1), and ``accuracy-by-position``, the accuracy (%) with
        the object in each cell. Drawn from the metrics :meth:`run` measured (measured now
        when it has not)."""
        metrics = self._measured.get(config) or self.measure(model, config, None)
        share = np.asarray(metrics["kept_share_map"])
        side = math.isqrt(share.size)
        cells = np.array(
            [np.nan if a is None else a for a in metrics["accuracy_per_cell"]], dtype=np.float64
        ).reshape(self.grid, self.grid)
        return {
            "kept-positions": heatmap_png(
                share.reshape(side, side),
                f"kept · KL {metrics['kept_kl']:.2f}, regions {metrics['kept_kl_regions']:.2f}",
                1.0,
                ".2f",
            ),
            "accuracy-by-position": heatmap_png(
                cells, f"accuracy % · spread {metrics['accuracy_spread']:.0f}", 100.0, ".0f"
            ),
        }

    # -- findings -------------------------------------------------------------------------------
    @classmethod
    def summary(cls, rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """The configurations whose kept tokens are the most and the least skewed over the
        image's regions (KL over 4 x 4 regions, the patch-level KL and the centre of mass), and
        the largest spread of accuracy across object positions against the full model's own."""
        reduced = [(c, m) for c, m in rows if c != BASELINE and "kept_kl_regions" in m]
        if not reduced:
            return []
        most = max(reduced, key=lambda cm: cm[1]["kept_kl_regions"])
        least = min(reduced, key=lambda cm: cm[1]["kept_kl_regions"])
        widest = max(reduced, key=lambda cm: cm[1]["accuracy_spread"])

        def where(cm: tuple[str, dict[str, Any]]) -> str:
            c, m = cm
            return (
                f"{label(c)} (KL {m['kept_kl_regions']:.3f} nats over regions, "
                f"{m['kept_kl']:.3f} per patch; centre row {m['kept_row']:.2f}, "
                f"column {m['kept_col']:.2f})"
            )

        lines = [f"kept tokens most skewed: {where(most)}; least: {where(least)}"]
        base = dict(rows).get(BASELINE, {})
        own = base.get("accuracy_spread")
        lines.append(
            f"widest accuracy spread across object positions: {label(widest[0])}, "
            f"{widest[1]['accuracy_spread']:.1f} points (the full model's: "
            + ("-" if own is None else f"{own:.1f}")
            + ")"
        )
        return lines


__all__ = [
    "GRID",
    "PositionBias",
    "accuracy_by_cell",
    "centre_of_mass",
    "kl_from_uniform",
    "object_patches",
    "pooled",
]
