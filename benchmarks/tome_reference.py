"""``tome`` against the authors' implementation (facebookresearch/ToMe), side by side.

The reference is not on PyPI (its ``tome`` is an unrelated markup language): pass the path of a
checkout of https://github.com/facebookresearch/ToMe (``--tome-repo``). Its ``tome`` package is
imported from there and its timm patch (``tome.patch.timm``) is applied to a copy of each
model; nothing of it is copied here.

Two measurements (CPU):

* agreement: on the bundled demo ViT (``tokenreduce.assets.load("fmnist-vit")``) and the first
  ``--images`` Fashion-MNIST test images, for each ``r``: the share of identical predictions,
  the largest logit difference, and how many images differ by more than 1e-4;
* throughput: paired timings of one forward of a fixed random batch, ours and the reference
  alternating, median over ``--repeats`` rounds; ratio = reference time / our time (> 1: we are
  faster). On the demo ViT (batch 64) and timm ``vit_small_patch16_224`` with random weights
  (batch 16).

Attention kinds. ``tokenreduce.patch`` keeps timm's fused attention (SDPA); the reference
computes softmax(QK^T) explicitly ("eager"). Each measurement runs the reference as published
and, like for like, with its attention computed by the same SDPA call (a shim set on the
copy's attention modules here) or ours in eager mode (timm's ``fused_attn = False``). With the
same attention on both sides, only the merging differs.

Run: ``TOKENREDUCE_DATA=... .venv/bin/python benchmarks/tome_reference.py --tome-repo /tmp/ToMe``
(``--clock cpu`` times this process's CPU time: use it on a machine shared with other jobs).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import tokenreduce
from tokenreduce import assets
from tokenreduce.data import fashion_mnist, preprocess


def import_reference(repo: Path):
    """The ``tome`` package of a ToMe checkout, and its timm patch function."""
    if not (repo / "tome" / "merge.py").is_file():
        raise SystemExit(f"--tome-repo {repo}: no tome/merge.py there; pass a checkout of "
                         "https://github.com/facebookresearch/ToMe")
    sys.path.insert(0, str(repo))
    tome = importlib.import_module("tome")
    if Path(tome.__file__).resolve().parent != (repo / "tome").resolve():
        raise SystemExit(f"imported tome from {tome.__file__}, not from {repo}: uninstall it")
    return tome, importlib.import_module("tome.patch.timm").apply_patch


def reference_copy(model: nn.Module, apply_patch, r: int, sdpa: bool = False) -> nn.Module:
    """A copy of ``model`` patched by the reference with ``r``; with ``sdpa``, its attention
    computed by SDPA (see :func:`reference_attention_sdpa`).

    The reference's block and attention forwards are copies of an older timm's: they skip the
    layers today's timm added (q/k norm, attention output norm, layer scale). Those are
    identities in the models measured here; anything else is refused rather than misrun.
    """
    for i, blk in enumerate(model.blocks):
        skipped = (blk.attn.q_norm, blk.attn.k_norm, blk.attn.norm, blk.ls1, blk.ls2)
        if not all(isinstance(m, nn.Identity) for m in skipped):
            raise SystemExit(f"block {i} uses a layer the reference's timm patch skips")
    ref = copy.deepcopy(model)
    apply_patch(ref)
    ref.r = r
    if sdpa:
        for blk in ref.blocks:
            blk.attn.forward = types.MethodType(reference_attention_sdpa, blk.attn)
    return ref


def reference_attention_sdpa(attn: nn.Module, x: torch.Tensor, size: torch.Tensor | None = None):
    """The reference's ``ToMeAttention.forward`` with softmax(QK^T + log size) V computed by
    ``F.scaled_dot_product_attention``. Returns the output and the keys averaged over heads."""
    b, n, c = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    bias = None if size is None else size.log()[:, None, None, :, 0]
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return attn.proj_drop(attn.proj(o.transpose(1, 2).reshape(b, n, c))), k.mean(1)


def agreement(apply_patch, budgets: list[int], n_images: int) -> list[str]:
    model = assets.load("fmnist-vit")
    images, labels = fashion_mnist("test", download=False)
    x, labels = preprocess(images[:n_images], model), labels[:n_images]
    rows = ["| reference attention | r | same predictions | max abs logit diff | images > 1e-4 "
            "| top-1 ours | top-1 reference |", "|---|---|---|---|---|---|---|"]
    for sdpa in (False, True):
        for r in budgets:
            ref = reference_copy(model, apply_patch, r, sdpa)
            with torch.inference_mode(), tokenreduce.patch(model, f"tome:r={r}"):
                ours = torch.cat([model(b) for b in x.split(256)])
                theirs = torch.cat([ref(b) for b in x.split(256)])
            diff = (ours - theirs).abs().amax(1)
            same = (ours.argmax(1) == theirs.argmax(1)).float().mean().item()
            acc = [(y.argmax(1) == labels).float().mean().item() for y in (ours, theirs)]
            kind = "SDPA (shim)" if sdpa else "eager (as published)"
            rows.append(f"| {kind} | {r} | {same:.2%} | {diff.max().item():.1e} "
                        f"| {int((diff > 1e-4).sum())} | {acc[0]:.2%} | {acc[1]:.2%} |")
    return rows


def paired_ratio(ours: nn.Module, ref: nn.Module, x: torch.Tensor, repeats: int, clock):
    """Median times (s) of ours and of the reference, and the median per-round ratio."""
    def once(m: nn.Module) -> float:
        start = clock()
        m(x)
        return clock() - start

    t_ours, t_ref, ratios = [], [], []
    with torch.inference_mode():
        for m in (ours, ref, ours, ref):  # warm-up
            m(x)
        for i in range(repeats):
            # alternate who goes first, so neither always runs on a warmer cache
            if i % 2 == 0:
                a = once(ours)
                b = once(ref)
            else:
                b = once(ref)
                a = once(ours)
            t_ours.append(a)
            t_ref.append(b)
            ratios.append(b / a)
    return statistics.median(t_ours), statistics.median(t_ref), statistics.median(ratios)


def throughput(apply_patch, budgets: list[int], repeats: int, clock) -> list[str]:
    import timm

    torch.manual_seed(0)
    cases = [
        ("demo ViT (fmnist-vit)", assets.load("fmnist-vit"), torch.randn(64, 1, 56, 56)),
        ("vit_small_patch16_224, random weights",
         timm.create_model("vit_small_patch16_224").eval(), torch.randn(16, 3, 224, 224)),
    ]
    pairings = [  # (ours fused, reference SDPA shim): as shipped, then like for like
        (True, False), (True, True), (False, False)]
    rows = ["| model | batch | r | our attention | reference attention | ours ms | reference ms "
            "| ratio ours/reference |", "|---|---|---|---|---|---|---|---|"]
    for name, model, x in cases:
        for r in budgets:
            for fused, sdpa in pairings:
                ref = reference_copy(model, apply_patch, r, sdpa)
                ours = copy.deepcopy(model)
                for blk in ours.blocks:
                    blk.attn.fused_attn = fused
                with tokenreduce.patch(ours, f"tome:r={r}"):
                    t_ours, t_ref, ratio = paired_ratio(ours, ref, x, repeats, clock)
                rows.append(
                    f"| {name} | {x.shape[0]} | {r} | {'SDPA' if fused else 'eager'} "
                    f"| {'SDPA (shim)' if sdpa else 'eager (as published)'} | {t_ours * 1e3:.1f} "
                    f"| {t_ref * 1e3:.1f} | {ratio:.3f} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tome-repo", type=Path, required=True,
                    help="path of a checkout of facebookresearch/ToMe")
    ap.add_argument("--images", type=int, default=1024, help="test images for the agreement")
    ap.add_argument("--budgets", type=int, nargs="+", default=[8, 13, 16],
                    help="r values for the agreement")
    ap.add_argument("--speed-budgets", type=int, nargs="+", default=[13],
                    help="r values for the throughput")
    ap.add_argument("--repeats", type=int, default=15, help="timed rounds per configuration")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed time; cpu: this process's CPU time")
    ap.add_argument("--skip", choices=("agreement", "throughput"), action="append", default=[],
                    help="leave out a measurement")
    args = ap.parse_args(argv)
    _, apply_patch = import_reference(args.tome_repo)
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"torch {torch.__version__}, timm {importlib.import_module('timm').__version__}, "
          f"tokenreduce {tokenreduce.__version__}, {args.threads} thread(s), {args.clock} clock\n")
    if "agreement" not in args.skip:
        print("\n".join(agreement(apply_patch, args.budgets, args.images)) + "\n", flush=True)
    if "throughput" not in args.skip:
        print("\n".join(throughput(apply_patch, args.speed_budgets, args.repeats, clock)))


if __name__ == "__main__":
    main()
