"""Feature fidelity and throughput of token reduction on DINOv2 ViT-S/14 at 224 px (256 patches).

No labels: every reduced model is compared with the unreduced one on the scikit-image photos.

* cls cos: cosine similarity of the class embedding (``pooler_output``) to the unreduced
  model's, mean and minimum over the photos;
* patch cos: mean cosine similarity of the recovered patch features (every reduction undone
  to the 16 x 16 grid, see ``dinov2_common``) to the unreduced model's;
* GFLOPs per image (analytic, multiply-adds) and speedup = median forward time of the
  unreduced model / that of the method, both measured in this run, interleaved, with a fixed
  number of threads (median over ``--repeats`` rounds; the order rotates between rounds).

Methods at matched budgets (25 / 50 / 75 % of patch tokens removed): see ``dinov2_common``.

Run: ``.venv/bin/python benchmarks/dinov2_fidelity.py --markdown dinov2_fidelity.md``
"""

from __future__ import annotations

import argparse
import platform
import statistics
from pathlib import Path

import numpy as np
import torch
from dinov2_common import BUDGETS, configs, dense_features, load_dinov2, time_forward

import tokenreduce

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "stereo_motorcycle",
    "camera",
)


def photos(processor) -> torch.Tensor:
    from skimage import data

    images = []
    for name in PHOTOS:
        im = getattr(data, name)()
        im = im[0] if isinstance(im, tuple) else im  # stereo pairs: the left view
        images.append(np.stack([im] * 3, -1) if im.ndim == 2 else im[..., :3])
    return processor(images=images, return_tensors="pt")["pixel_values"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timing rounds")
    ap.add_argument("--batch", type=int, default=4, help="images per timed forward")
    ap.add_argument("--markdown", type=Path, help="write the table here too")
    ap.add_argument("--budgets", type=float, nargs="*", default=list(BUDGETS))
    ap.add_argument("--methods", nargs="*", help="only these rows (names as in the table)")
    args = ap.parse_args()

    model, processor = load_dinov2(args.threads)
    x = photos(processor)
    base_cls, base_patch = dense_features(model, x)
    rows: list[tuple[str, float, tuple]] = []
    for f in args.budgets:
        for name, spec in configs(f).items():
            if args.methods and name not in args.methods:
                continue
            with tokenreduce.patch(model, spec) as handle:
                cls, patch = dense_features(model, x, handle)
                gflops = handle.gflops()
            cc = torch.cosine_similarity(cls, base_cls, dim=-1)
            pc = torch.cosine_similarity(patch, base_patch, dim=-1).mean(1)
            rows.append((name, f, (float(cc.mean()), float(cc.min()), float(pc.mean()), gflops)))
            print(
                f"{f:.0%} {name}: cls {cc.mean():.4f} patch {pc.mean():.4f} {gflops:.2f} GF",
                flush=True,
            )

    # Timing: every round times the baseline and each config once, in a rotated order.
    xb = x[: args.batch]
    keys = [None] + [(name, f) for name, f, _ in rows]
    specs = {(name, f): configs(f)[name] for name, f, _ in rows}
    times: dict = {k: [] for k in keys}
    time_forward(model, xb)  # warm-up
    for r in range(args.repeats):
        order = keys[r % len(keys) :] + keys[: r % len(keys)]
        for key in order:
            if key is None:
                times[key].append(time_forward(model, xb))
                continue
            with tokenreduce.patch(model, specs[key]):
                time_forward(model, xb)  # warm-up at this shape
                times[key].append(time_forward(model, xb))
        print(f"timing round {r + 1}/{args.repeats} done", flush=True)
    base_t = statistics.median(times[None])
    with tokenreduce.patch(model, "tome:r=0") as h, torch.inference_mode():
        model(x[:1])  # the cost at this input size (the config's is 518 px for DINOv2)
        base_gflops = h.baseline_gflops()

    lines = [
        f"DINOv2 ViT-S/14, 224 px, {len(PHOTOS)} scikit-image photos; torch "
        f"{torch.__version__}, {args.threads} threads, {platform.machine()}; timing batch "
        f"{args.batch}, median of {args.repeats} rounds; baseline {base_gflops:.2f} GFLOPs, "
        f"{args.batch / base_t:.2f} images/s",
        "",
        "| removed | method | cls cos (mean) | cls cos (min) | patch cos | GFLOPs | speedup |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, f, (cm, cmin, pm, g) in rows:
        speed = base_t / statistics.median(times[(name, f)])
        lines.append(
            f"| {f:.0%} | {name} | {cm:.4f} | {cmin:.4f} | {pm:.4f} | {g:.2f} | {speed:.2f}x |"
        )
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
