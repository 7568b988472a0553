"""The command line of :func:`tokenreduce.train.finetune` on Fashion-MNIST.

    python -m tokenreduce.train finetune --model fmnist-vit --method "tome:r=16" \
        --epochs 1 --threads 2 --out runs/ft-tome-r16
    python -m tokenreduce.train evaluate --model runs/ft-tome-r16/model.safetensors \
        --method "tome:r=16"

``--model`` is what ``tokenreduce bench --model`` takes (an asset name or a checkpoint).
The run resumes when ``--out`` already holds it; ``<out>/model.safetensors`` is the result,
which ``tokenreduce bench --model <out>/model.safetensors`` measures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tokenreduce.train")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("finetune", help="fine-tune a vision classifier with a token method")
    f.add_argument("--model", default="fmnist-vit", help="asset name or checkpoint path")
    f.add_argument("--method", required=True, help='token method spec, e.g. "tome:r=16"')
    f.add_argument("--out", type=Path, required=True, help="checkpoint folder (resumed)")
    length = f.add_mutually_exclusive_group(required=True)
    length.add_argument("--epochs", type=float, help="length in epochs (may be < 1)")
    length.add_argument("--steps", type=int, help="length in optimiser steps")
    f.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    f.add_argument("--ema", type=float, default=None, help="weight-average decay (off)")
    f.add_argument("--warmup", type=float, default=0.05, help="warm-up, fraction of steps")
    f.add_argument("--checkpoint-every", type=int, default=50, help="steps between saves")
    f.add_argument("--eval-limit", type=int, default=1000,
                   help="test images scored at each checkpoint and at the end (0: none)")  # fmt: skip
    f.add_argument("--data", default=None, help="Fashion-MNIST folder (IDX .gz files)")
    e = sub.add_parser("evaluate", help="top-1 on the 10,000 test images, reduced by a method")
    e.add_argument("--model", default="fmnist-vit", help="asset name or checkpoint path")
    e.add_argument("--method", default=None, help="token method spec (none: unreduced)")
    e.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    e.add_argument("--data", default=None, help="Fashion-MNIST folder (IDX .gz files)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from ..bench.models import ModelError, load
    from ..data.fashion_mnist import fashion_mnist
    from ..methods.base import InvalidParameter
    from . import FinetuneError, finetune

    args = parse_args(argv)
    try:
        model = load(args.model).model
        if args.command == "evaluate":
            return _evaluate(model, args)
        test = fashion_mnist("test", args.data)
        evaluation = (test[0][: args.eval_limit], test[1][: args.eval_limit])
        finetune(
            model, args.method, fashion_mnist("train", args.data),
            steps=args.steps, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
            seed=args.seed, threads=args.threads, out=args.out, ema=args.ema,
            warmup=args.warmup, checkpoint_every=args.checkpoint_every,
            eval_data=evaluation if args.eval_limit > 0 else None,
        )  # fmt: skip
    except (ModelError, FinetuneError, InvalidParameter) as err:
        sys.exit(f"python -m tokenreduce.train: {err}")


def _evaluate(model, args: argparse.Namespace) -> None:
    """Print the top-1 of ``model`` reduced by ``args.method`` on the whole test split."""
    import torch

    from .. import api
    from ..data.fashion_mnist import fashion_mnist
    from .recipe import evaluate

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with api.patch(model, args.method):
        top1 = evaluate(model, fashion_mnist("test", args.data))
    print(f"{args.model} with {args.method or 'no reduction'}: top-1 {top1:.2f}% (10,000 images)")
