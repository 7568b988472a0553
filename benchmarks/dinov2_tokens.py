"""Draw the patches DINOv2 ViT-S/14 keeps, drops and merges on photos, at 50 % removed.

Rows are scikit-image photos (224 px, 16 x 16 patches), columns the matched methods of
``dinov2_common`` at budget 0.5: kept patches show the photo, dropped ones are greyed and
hatched, each merged group (ToMe, EViT's fused token) has its own tint and border.

Run: ``.venv/bin/python benchmarks/dinov2_tokens.py --out dinov2_tokens.png``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from dinov2_common import configs, load_dinov2

from tokenreduce.viz import grid_figure, visualize

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
METHODS = ("topk (prune)", "tome (merge)", "evit (prune+fuse)", "prune+merge")
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("dinov2_tokens.png"))
    ap.add_argument("--budget", type=float, default=0.5, choices=(0.25, 0.5, 0.75))
    args = ap.parse_args()
    from skimage import data

    model, processor = load_dinov2()
    specs = configs(args.budget)
    tiles, titles = [], []
    for name in PHOTOS:
        x = processor(images=getattr(data, name)(), return_tensors="pt")["pixel_values"][0]
        photo = (x.permute(1, 2, 0).numpy() * STD + MEAN).clip(0, 1)
        photo = (photo * 255).round().astype(np.uint8)
        for method in METHODS:
            with torch.inference_mode():
                tiles.append(visualize(model, x, specs[method], image_for_display=photo))
            titles.append(f"{name}: {method}")
    grid_figure(tiles, titles, columns=len(METHODS)).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
