"""Dense prediction under token reduction: per-patch segmentation on frozen DINOv2 ViT-S/14.

Task: synthetic shapes with exact masks, rendered from a seed. Each 224 x 224 image has a
smooth two-colour gradient background with pixel noise and 2 to 4 shapes (circle, square,
triangle; random size, rotation and colour, so colour says nothing about the class). Classes:
background, circle, square, triangle; masks are exact per pixel.

Head: a linear layer on the unreduced model's patch features (16 x 16 grid), trained in
seconds on the training images' patches (label = the majority class of the patch's pixels).
The same head then reads every reduced model's recovered patch features (every reduction
undone to the full grid, see ``dinov2_common``: merged tokens copied back to each patch,
pruned patches given their last feature). Each patch's prediction covers its 14 x 14 pixels;
mIoU is over the four classes and every test pixel. "patch-grid ceiling" is the mIoU of the
true majority labels drawn the same way: the best any per-patch predictor can do.

Methods at matched budgets (25 / 50 / 75 % of patch tokens removed): see ``dinov2_common``.
Speedup = median forward time of the unreduced model / that of the method, measured in this
run (interleaved, rotated order, fixed threads).

Run: ``.venv/bin/python benchmarks/dense_prediction.py --markdown dense.md --plot dense.png``
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

CLASSES = ("background", "circle", "square", "triangle")
SIZE, PATCH = 224, 14
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def render(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image (SIZE, SIZE, 3) in [0, 1] and its exact class mask (SIZE, SIZE)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy) / SIZE
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    img = c0 + (c1 - c0) * ((t - t.min()) / (np.ptp(t) + 1e-9))[..., None]
    mask = np.zeros((SIZE, SIZE), dtype=np.int64)
    for _ in range(rng.integers(2, 5)):
        cls = int(rng.integers(1, 4))
        r = rng.uniform(20, 48)
        cx, cy = rng.uniform(r, SIZE - r, 2)
        rot = rng.uniform(0, 2 * np.pi)
        u = np.cos(rot) * (xx - cx) + np.sin(rot) * (yy - cy)
        v = -np.sin(rot) * (xx - cx) + np.cos(rot) * (yy - cy)
        if cls == 1:
            inside = u**2 + v**2 <= r**2
        elif cls == 2:
            inside = (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
        else:  # equilateral triangle with circumradius r: three half-planes
            inside = np.ones_like(u, dtype=bool)
            for k in range(3):
                a = 2 * np.pi * k / 3
                inside &= np.cos(a) * u + np.sin(a) * v <= r / 2
        img[inside] = rng.uniform(0, 1, 3)
        mask[inside] = cls
    img = np.clip(img + rng.normal(0, 0.04, img.shape), 0, 1)
    return img, mask


def dataset(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    imgs, masks = zip(*(render(rng) for _ in range(n)), strict=True)
    x = (np.stack(imgs) - MEAN) / STD
    return torch.from_numpy(x).permute(0, 3, 1, 2).float(), np.stack(masks)


def patch_labels(masks: np.ndarray) -> np.ndarray:
    """Majority class of each patch's pixels: (B, 256)."""
    g = SIZE // PATCH
    blocks = (
        masks.reshape(-1, g, PATCH, g, PATCH)
        .transpose(0, 1, 3, 2, 4)
        .reshape(-1, g * g, PATCH * PATCH)
    )
    counts = np.stack([(blocks == c).sum(-1) for c in range(len(CLASSES))], -1)
    return counts.argmax(-1)


def miou(patch_pred: np.ndarray, masks: np.ndarray) -> float:
    """Mean IoU over classes of per-patch predictions (B, 256) drawn on the pixel grid."""
    g = SIZE // PATCH
    pix = patch_pred.reshape(-1, g, g).repeat(PATCH, 1).repeat(PATCH, 2)
    ious = []
    for c in range(len(CLASSES)):
        inter = np.logical_and(pix == c, masks == c).sum()
        union = np.logical_or(pix == c, masks == c).sum()
        ious.append(inter / union if union else 1.0)
    return float(np.mean(ious))


@torch.inference_mode()
def features(model, x: torch.Tensor, handle=None, batch: int = 8) -> torch.Tensor:
    return torch.cat(
        [dense_features(model, x[i : i + batch], handle)[1] for i in range(0, len(x), batch)]
    )


def train_head(feats: torch.Tensor, labels: np.ndarray, steps: int = 300) -> torch.nn.Linear:
    torch.manual_seed(0)
    f = feats.reshape(-1, feats.shape[-1])
    y = torch.from_numpy(labels.reshape(-1))
    mu, sd = f.mean(0), f.std(0) + 1e-6
    head = torch.nn.Linear(f.shape[1], len(CLASSES))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head((f - mu) / sd), y)
        loss.backward()
        opt.step()
    # Fold the standardisation into the layer.
    with torch.no_grad():
        head.weight /= sd
        head.bias -= (head.weight * mu).sum(1)
    return head


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train", type=int, default=48, help="training images")
    ap.add_argument("--test", type=int, default=24, help="test images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timing rounds")
    ap.add_argument("--batch", type=int, default=4, help="images per timed forward")
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--plot", type=Path, help="mIoU against GFLOPs and speedup (PNG)")
    ap.add_argument(
        "--speed-from",
        type=Path,
        help="take the speedups from dinov2_fidelity.py's markdown table instead of timing",
    )
    args = ap.parse_args()

    model, _ = load_dinov2(args.threads)
    x_train, m_train = dataset(args.train, args.seed)
    x_test, m_test = dataset(args.test, args.seed + 1)
    head = train_head(features(model, x_train), patch_labels(m_train))
    ceiling = miou(patch_labels(m_test), m_test)

    def evaluate(handle=None) -> float:
        with torch.inference_mode():
            pred = head(features(model, x_test, handle)).argmax(-1).numpy()
        return miou(pred, m_test)

    base_miou = evaluate()
    with tokenreduce.patch(model, "tome:r=0") as h, torch.inference_mode():
        model(x_test[:1])  # the cost at this input size (the config's is 518 px for DINOv2)
        base_gflops = h.baseline_gflops()
    print(f"unreduced mIoU {base_miou:.4f}, patch-grid ceiling {ceiling:.4f}", flush=True)
    rows = []
    for f in BUDGETS:
        for name, spec in configs(f).items():
            with tokenreduce.patch(model, spec) as handle:
                score = evaluate(handle)
                gflops = handle.gflops()
            rows.append((name, f, score, gflops))
            print(f"{f:.0%} {name}: mIoU {score:.4f} {gflops:.2f} GF", flush=True)

    if args.speed_from:
        speed = read_speedups(args.speed_from)
        timing = f"speedups from {args.speed_from.name} (same configs, same model)"
    else:
        speed = measure_speedups(model, x_test[: args.batch], rows, args.repeats)
        timing = f"timing batch {args.batch}, median of {args.repeats} rounds"

    lines = [
        f"DINOv2 ViT-S/14 (frozen) + linear head, synthetic shapes 224 px, {args.train} train / "
        f"{args.test} test images (seed {args.seed}); torch {torch.__version__}, "
        f"{args.threads} threads, {platform.machine()}; {timing}",
        "",
        "| removed | method | mIoU | GFLOPs | speedup |",
        "|---|---|---|---|---|",
        f"| 0% | unreduced | {base_miou:.4f} | {base_gflops:.2f} | 1.00x |",
    ]
    for name, f, score, g in rows:
        lines.append(f"| {f:.0%} | {name} | {score:.4f} | {g:.2f} | {speed[(name, f)]:.2f}x |")
    lines.append(f"| - | patch-grid ceiling | {ceiling:.4f} | - | - |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.plot:
        plot(rows, speed, base_miou, base_gflops, args.plot)


def measure_speedups(model, xb: torch.Tensor, rows, repeats: int) -> dict:
    """(method, budget) -> speedup; interleaved rounds in rotated order, medians."""
    keys = [None] + [(name, f) for name, f, _, _ in rows]
    times: dict = {k: [] for k in keys}
    time_forward(model, xb)
    for r in range(repeats):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            if key is None:
                times[key].append(time_forward(model, xb))
                continue
            with tokenreduce.patch(model, configs(key[1])[key[0]]):
                time_forward(model, xb)
                times[key].append(time_forward(model, xb))
        print(f"timing round {r + 1}/{repeats} done", flush=True)
    base_t = statistics.median(times[None])
    return {k: base_t / statistics.median(v) for k, v in times.items() if k is not None}


def read_speedups(path: Path) -> dict:
    """(method, budget) -> speedup from dinov2_fidelity.py's table."""
    out = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0].endswith("%") and cells[-1].endswith("x"):
            out[(cells[1], float(cells[0][:-1]) / 100)] = float(cells[-1][:-1])
    if not out:
        raise ValueError(f"no speedups found in {path}")
    return out


def plot(rows, speed, base_miou, base_gflops, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    names = list(dict.fromkeys(name for name, *_ in rows))
    for name in names:
        pts = [(g, speed[(n, f)], s) for n, f, s, g in rows if n == name]
        gs, sp, sc = zip(*pts, strict=True)
        axes[0].plot(gs, sc, "o-", label=name)
        axes[1].plot(sp, sc, "o-", label=name)
    for ax, xv in zip(axes, (base_gflops, 1.0), strict=True):
        ax.plot([xv], [base_miou], "k*", markersize=12, label="unreduced")
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("GFLOPs per image")
    axes[1].set_xlabel("speedup vs unreduced (CPU, measured)")
    axes[0].set_ylabel("mIoU (synthetic shapes)")
    axes[1].legend(fontsize=8, loc="lower left")
    fig.suptitle("DINOv2 ViT-S/14 dense prediction: 25 / 50 / 75 % of patch tokens removed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
