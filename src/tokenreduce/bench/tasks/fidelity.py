"""Feature fidelity: how close a reduced vision transformer's features stay to the unreduced
model's, with no labels needed (any patched vision transformer, a backbone included).

Images: scikit-image's photos and easy-VQA's synthetic shapes, interleaved (photo, shape,
photo, ...; shapes only once the photos run out), made into inputs by the model's image
processor (or a timm model's ``pretrained_cfg``; see :class:`~.features.ImageInput`).
Per configuration:

* class cos: cosine similarity of the pooled embedding (the class token's final feature) to
  the unreduced model's, mean and minimum over the images, and per source;
* patch cos: cosine similarity of the recovered patch features (every patch of the full
  grid: merged tokens copied back to their patches, pruned patches given their last feature,
  see :mod:`tokenreduce.dense`) to the unreduced model's, averaged over patches and images;
* the cost columns of :mod:`.features`: analytic GFLOPs and FLOP ratio, throughput and the
  paired speedup, peak memory, mean tokens, share of patches recovered from before a prune.

Default budgets are matched (:mod:`tokenreduce.bench.matched`): 25 / 50 / 75 % of the patch
tokens removed at the same blocks by every method.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...dense import DenseFeatures
from ..configs import BASELINE
from ..measure import speedup_text
from . import Column, Options, Plot, register
from .features import COST_COLUMNS, THROUGHPUT, FeatureTask, ImageInput, data_hash, pareto_plots

PHOTO_COUNT, SHAPE_COUNT = 8, 8
QUICK_PHOTOS, QUICK_SHAPES, QUICK_REPEATS = 4, 4, 3
#: the issue's target: class cosine at least this at this speedup or more
TARGET_COS, TARGET_SPEEDUP = 0.95, 1.5


@register
class Fidelity(FeatureTask):
    """Cosine similarity of a reduced model's class embedding and recovered patch features to
    the unreduced model's, against GFLOPs and throughput.

    Args:
        inputs: model inputs (N, C, H, W).
        image_input: how they were made (for the token-map pictures).
        sources: what each input is (``"photo"``, ``"shape"``), for the per-source means.
        data_name: what the images are; the data id adds the count and a content hash.
        batch_size, repeats, warmup, threads, picture_indices: see :class:`FeatureTask`.
    """

    name = "fidelity"
    description = (
        "class-token and patch-feature cosine to the unreduced model on photos and easy-VQA "
        "shapes, against GFLOPs and throughput (any vision transformer)"
    )
    columns = (
        Column("cls_cos", "class cos", ".4f", True),
        Column("cls_cos_min", "class cos min", ".4f", True),
        Column("patch_cos", "patch cos", ".4f", True),
        *COST_COLUMNS,
    )
    plots = (
        *pareto_plots("cls_cos", "class-token cosine to unreduced"),
        Plot("throughput_scaled", "patch_cos", THROUGHPUT, "recovered patch-feature cosine"),
    )

    def __init__(
        self,
        inputs: torch.Tensor,
        image_input: ImageInput,
        sources: tuple[str, ...],
        data_name: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(inputs, image_input, **kwargs)
        if len(sources) != len(inputs):
            raise ValueError(f"got {len(sources)} sources for {len(inputs)} inputs")
        self.sources = tuple(sources)
        self._data_id = f"{data_name}[{len(inputs)}]#{data_hash(inputs)}"

    @classmethod
    def from_options(cls, loaded: Any, options: Options) -> Fidelity:
        """8 scikit-image photos and the first 8 easy-VQA test images, interleaved (``limit``:
        the first N of them), in batches of 4 (also the timed batch), 5 timed repeats after 1
        warm-up; ``quick``: 4 photos and 4 shapes, 3 repeats. Token maps of 4 photos."""
        from ...data.images import PHOTOS, easy_vqa_images, photos

        if loaded.kind != "vision":
            raise ValueError(f"task 'fidelity' needs a vision transformer; {loaded.name} is not")
        if options.data is not None:
            raise ValueError("task 'fidelity' reads no --data: its images are bundled")
        q = options.quick
        n_photos, n_shapes = (QUICK_PHOTOS, QUICK_SHAPES) if q else (PHOTO_COUNT, SHAPE_COUNT)
        if options.limit is not None:  # no more of either than the first `limit` can use
            n_photos, n_shapes = min(n_photos, options.limit), min(n_shapes, options.limit)
        items = _interleave(
            [("photo", im) for im in photos(PHOTOS[:n_photos])],
            [("shape", im) for im in easy_vqa_images(n_shapes)],
        )[: options.limit]
        image_input = ImageInput.of(loaded)
        task = cls(
            image_input([im for _, im in items]),
            image_input,
            tuple(s for s, _ in items),
            "skimage-photos+easy-vqa:test",
            batch_size=options.batch_size or 4,
            threads=options.threads,
            repeats=options.repeats or (QUICK_REPEATS if q else 5),
            warmup=options.warmup if options.warmup is not None else 1,
            picture_indices=tuple(i for i, (s, _) in enumerate(items) if s == "photo")[:4],
        )
        task.check_model(loaded.model)
        return task

    def quality(
        self, model: nn.Module, feats: DenseFeatures, baseline: dict[str, Any] | None
    ) -> dict[str, Any]:
        ref = self.reference(model)
        cls_cos = torch.cosine_similarity(feats.pooled, ref.pooled, dim=-1)
        patch_cos = torch.cosine_similarity(feats.patches, ref.patches, dim=-1).mean(1)
        out: dict[str, Any] = {
            "cls_cos": float(cls_cos.mean()),
            "cls_cos_min": float(cls_cos.min()),
            "patch_cos": float(patch_cos.mean()),
            "patch_cos_min": float(patch_cos.min()),
        }
        for source in sorted(set(self.sources)):
            mask = torch.tensor([s == source for s in self.sources])
            out[f"cls_cos_{source}"] = float(cls_cos[mask].mean())
            out[f"patch_cos_{source}"] = float(patch_cos[mask].mean())
        return out

    @classmethod
    def summary(cls, rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """The fastest configuration whose mean class cosine stays >= 0.95, against the
        target of 1.5x throughput, and the one saving the most FLOPs at that cosine."""
        from ..configs import label

        ok = [(c, m) for c, m in rows if c != BASELINE and m.get("cls_cos", -1.0) >= TARGET_COS]
        if not ok:
            return [f"no configuration keeps the class-token cosine >= {TARGET_COS}"]
        config, m = max(ok, key=lambda cm: cm[1]["speedup"])
        met = "met" if m["speedup"] >= TARGET_SPEEDUP else "not met"
        lines = [
            f"fastest with class-token cosine >= {TARGET_COS}: {label(config)}: "
            f"{speedup_text(m)} throughput (target {TARGET_SPEEDUP}x: {met}), class cosine "
            f"{m['cls_cos']:.4f} (min {m['cls_cos_min']:.4f}), patch cosine "
            f"{m['patch_cos']:.4f}, {m['flop_ratio']:.2f}x fewer FLOPs"
        ]
        config2, m2 = max(ok, key=lambda cm: cm[1]["flop_ratio"] or 0.0)
        if config2 != config:
            lines.append(
                f"most FLOPs saved with class-token cosine >= {TARGET_COS}: {label(config2)}: "
                f"{m2['flop_ratio']:.2f}x fewer FLOPs, {speedup_text(m2)} throughput, class "
                f"cosine {m2['cls_cos']:.4f}"
            )
        return lines


def _interleave(a: list, b: list) -> list:
    """a0, b0, a1, b1, ... then the rest of the longer list."""
    out = []
    for i in range(max(len(a), len(b))):
        out += a[i : i + 1] + b[i : i + 1]
    return out
