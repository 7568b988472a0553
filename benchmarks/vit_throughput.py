"""Throughput and analytic FLOPs of every registered token method on a timm ViT (CPU).

The unpatched model is the baseline, measured in the same run and interleaved with the
methods (a baseline measurement opens every group of ``--baseline-every`` configs in every
round, and the config order rotates between rounds), so machine drift shows up in the
baseline's spread instead of in the ratios. Each measurement is one forward of a fixed batch
under ``torch.inference_mode()`` after warm-up; figures are medians over ``--repeats`` rounds.

Columns:

* images/s; speedup = baseline median time / method median time;
* paired = median over rounds of (the baseline measured just before the method in that
  round) / (method time), a drift-robust check of the speedup;
* GFLOPs per image from ``handle.gflops()`` after a forward (analytic, multiply-adds);
  FLOP ratio = baseline GFLOPs / method GFLOPs; efficiency = speedup / FLOP ratio;
* ceiling = speedup of the *oracle* with the same token counts per block: a method that
  keeps the first tokens (one gather per site, no scoring, no merging). It is what this
  machine gives for those FLOPs; method speedup / ceiling is the share of it the method's
  own work (scoring, merging, bookkeeping) leaves. Skip it with ``--no-oracle``.

On a machine shared with other jobs, elapsed time with 2 threads also measures how often
the scheduler makes one thread wait for the other at every parallel op; ``--threads 1
--clock cpu`` (this process's CPU time) is the contention-robust variant.

Run: ``.venv/bin/python benchmarks/vit_throughput.py --markdown vit_throughput.md``
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path
from typing import ClassVar

import torch

import tokenreduce
from tokenreduce import methods
from tokenreduce.bench.metrics import cpu_model
from tokenreduce.core import ModelInfo, PerLayer, Reduction, TokenContext
from tokenreduce.methods import Method

#: budgets measured per method; a registered method missing here runs with its defaults
DEFAULT_CONFIGS: dict[str, list[str]] = {
    "tome": ["tome:r=0", "tome:r=8", "tome:r=13", "tome:r=16"],
    "evit": ["evit:keep_ratio=0.7", "evit:keep_ratio=0.5"],
    "topk": ["topk:keep_ratio=0.7", "topk:keep_ratio=0.5"],
    "random": ["random:keep_ratio=0.7", "random:keep_ratio=0.5"],
    "pool": ["pool:kernel=2,layers=[4]"],
}


@dataclasses.dataclass
class KeepFirst(Method):
    """Oracle for timing only: at each block remove ``schedule[i]`` tokens by keeping the
    first ones. Same token counts as the method it shadows, near-zero reduction work."""

    name: ClassVar[str] = "keep_first"
    schedule: tuple[int, ...] = ()

    def budget(self, model: ModelInfo) -> PerLayer:
        return PerLayer(self.schedule)

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        b, n = ctx.hidden.shape[:2]
        keep = torch.arange(n - n_remove, device=ctx.hidden.device).expand(b, -1)
        return Reduction.select(keep, n)


@dataclasses.dataclass
class Result:
    spec: str
    gflops: float
    baseline_gflops: float
    final_tokens: int
    oracle: KeepFirst | None
    times: list[float] = dataclasses.field(default_factory=list)
    paired: list[float] = dataclasses.field(default_factory=list)
    oracle_times: list[float] = dataclasses.field(default_factory=list)


def default_specs() -> list[str]:
    """Budgets for every registered method that reduces the hidden-state tokens."""
    specs = []
    for name in methods.available():
        if getattr(methods.get(name), "kind", "tokens") != "tokens":
            continue  # KV-cache and other non-sequence methods do not apply to a ViT
        specs.extend(DEFAULT_CONFIGS.get(name, [name]))
    return specs


#: "wall": elapsed time. "cpu": this process's CPU time, which leaves out the time the
#: scheduler gives to other processes; meaningful with --threads 1 only (with more threads
#: it also counts threads spinning at barriers)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def time_forward(model: torch.nn.Module, images: torch.Tensor) -> float:
    start = clock()
    model(images)
    return clock() - start


def time_patched(model: torch.nn.Module, method, images: torch.Tensor) -> float:
    with tokenreduce.patch(model, method):  # patching is outside the timed forward
        return time_forward(model, images)


def prepare(model, images, specs, args) -> tuple[list[Result], list[str]]:
    """Warm every config up once, record its FLOPs and token counts, build its oracle."""
    results, skipped = [], []
    for spec in specs:
        try:
            handle = tokenreduce.patch(model, spec)
        except (TypeError, ValueError) as err:  # a method that does not fit this model
            skipped.append(f"{spec}: {err}")
            continue
        with handle:
            for _ in range(max(args.warmup, 1)):
                model(images)
            trace = handle.trace
            removed = tuple(a - m for a, m in zip(trace.attn_tokens, trace.mlp_tokens, strict=True))
            res = Result(
                spec,
                handle.gflops(),
                handle.baseline_gflops(),
                trace.mlp_tokens[-1],
                KeepFirst(removed) if args.oracle and any(removed) else None,
            )
        if res.oracle is not None:
            with tokenreduce.patch(model, res.oracle) as oh:
                for _ in range(max(args.warmup, 1)):
                    model(images)
                if oh.trace.mlp_tokens != trace.mlp_tokens:
                    raise RuntimeError(f"oracle token counts differ from {spec}'s")
        results.append(res)
    return results, skipped


def run(args: argparse.Namespace) -> tuple[list[float], list[Result], list[str]]:
    """Measure; returns the baseline times, one result per config, and skipped specs."""
    import timm

    global clock
    clock = CLOCKS[args.clock]
    args.load = [os.getloadavg()[0]]

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = timm.create_model(args.model, pretrained=False).eval()
    images = torch.randn(args.batch, 3, *model.patch_embed.img_size)
    specs = args.configs or default_specs()

    baseline: list[float] = []
    with torch.inference_mode():
        for _ in range(args.warmup):
            model(images)
        results, skipped = prepare(model, images, specs, args)
        for rnd in range(args.repeats):
            # Rotate the order every round so no config always follows the baseline.
            k = rnd % max(len(results), 1)
            order = results[k:] + results[:k]
            last_base, round_base = 0.0, []
            for i, res in enumerate(order):
                if i % args.baseline_every == 0:
                    last_base = time_forward(model, images)
                    round_base.append(last_base)
                t = time_patched(model, res.spec, images)
                res.times.append(t)
                res.paired.append(last_base / t)
                if res.oracle is not None:
                    res.oracle_times.append(time_patched(model, res.oracle, images))
            if not order:
                round_base.append(time_forward(model, images))
            baseline.extend(round_base)
            if args.verbose:
                print(
                    f"round {rnd + 1}/{args.repeats}: baseline "
                    f"{', '.join(f'{b:.3f}' for b in round_base)} s",
                    file=sys.stderr,
                )
    args.load.append(os.getloadavg()[0])
    return baseline, results, skipped


HEADER = [
    "config",
    "images/s",
    "speedup",
    "paired",
    "GFLOPs",
    "FLOP ratio",
    "efficiency",
    "ceiling",
    "of ceiling",
    "final tokens",
]


def rows(baseline: list[float], results: list[Result], batch: int) -> list[list[str]]:
    """Table rows (strings), the baseline first."""
    base_t = statistics.median(baseline)
    base_gf = results[0].baseline_gflops if results else float("nan")
    out = [
        [
            "baseline",
            f"{batch / base_t:.1f}",
            "1.00",
            "1.00",
            f"{base_gf:.2f}",
            "1.00",
            "1.00",
            "-",
            "-",
            "-",
        ]
    ]
    for r in results:
        med = statistics.median(r.times)
        speedup = base_t / med
        flop_ratio = r.baseline_gflops / r.gflops
        if r.oracle_times:
            ceiling = base_t / statistics.median(r.oracle_times)
            ceil_s, share = f"{ceiling:.2f}", f"{speedup / ceiling:.2f}"
        else:
            ceil_s = share = "-"
        out.append(
            [
                r.spec,
                f"{batch / med:.1f}",
                f"{speedup:.2f}",
                f"{statistics.median(r.paired):.2f}",
                f"{r.gflops:.2f}",
                f"{flop_ratio:.2f}",
                f"{speedup / flop_ratio:.2f}",
                ceil_s,
                share,
                str(r.final_tokens),
            ]
        )
    return out


def markdown(args, baseline: list[float], table: list[list[str]], skipped: list[str]) -> str:
    med = statistics.median(baseline)
    spread = (max(baseline) - min(baseline)) / med
    lines = [
        f"{args.model}, random weights, batch {args.batch}, {args.threads} threads, "
        f"{args.clock} clock, "
        f"torch {torch.__version__}, CPU {cpu_model()}; median of {args.repeats} rounds after "
        f"{args.warmup} warm-up forwards; baseline measured {len(baseline)} times: median "
        f"{med:.3f} s, min {min(baseline):.3f} s, max {max(baseline):.3f} s "
        f"(spread {spread:.1%}); 1-minute load average {args.load[0]:.2f} at the start, "
        f"{args.load[1]:.2f} at the end.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(HEADER) - 1)) + "|",
    ]
    for row in table:
        cells = [f"`{row[0]}`" if row[0] != "baseline" else row[0], *row[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"\nskipped: {s}" for s in skipped]
    return "\n".join(lines) + "\n"


def print_rich(table: list[list[str]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for i, h in enumerate(HEADER):
        t.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in table:
        t.add_row(*row)
    console = Console(stderr=True)
    console.width = max(console.width, 140)
    console.print(t)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--model", default="vit_small_patch16_224", help="timm model name")
    p.add_argument("--batch", type=int, default=32, help="images per forward")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed forwards per config")
    p.add_argument(
        "--baseline-every",
        type=int,
        default=3,
        help="re-measure the baseline before every this many configs in a round",
    )
    p.add_argument(
        "--configs",
        nargs="+",
        metavar="SPEC",
        help="method specs such as 'tome:r=13' (default: every registered method at a few budgets)",
    )
    p.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time; cpu: process CPU time, robust to other processes on a "
        "shared machine (use with --threads 1)",
    )
    p.add_argument(
        "--no-oracle",
        dest="oracle",
        action="store_false",
        help="skip the keep-first oracle (the 'ceiling' column)",
    )
    p.add_argument("--markdown", type=Path, help="write the markdown table here (else stdout)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and images")
    p.add_argument("--verbose", action="store_true", help="print baseline times per round")
    args = p.parse_args(argv)
    for name in ("batch", "threads", "repeats", "baseline_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    baseline, results, skipped = run(args)
    table = rows(baseline, results, args.batch)
    print_rich(table, f"{args.model}, batch {args.batch}, {args.threads} threads")
    md = markdown(args, baseline, table, skipped)
    if args.markdown:
        args.markdown.write_text(md)
        print(f"wrote {args.markdown}", file=sys.stderr)
    else:
        print(md)


if __name__ == "__main__":
    main()
