"""What every trainable asset's command line does first (``python -m tokenreduce.assets NAME
COMMAND ...``)."""

from __future__ import annotations

import argparse
import shlex
import sys


def parse(
    parser: argparse.ArgumentParser, asset: str, argv: list[str] | None
) -> tuple[argparse.Namespace, str]:
    """``(args, command)``: ``argv`` (the process's arguments when None) parsed by ``parser``,
    torch's thread count set from ``--threads`` when it is given, and the command line that
    reproduces the run, as model cards quote it."""
    import torch

    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    words = sys.argv[1:] if argv is None else argv
    return args, f"python -m tokenreduce.assets {asset} " + shlex.join(words)
