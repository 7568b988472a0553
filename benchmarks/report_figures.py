"""Export one stored benchmark group for BENCHMARKS.md: its Pareto plots and token-map
figures as PNG files, and its rows as JSON (the raw results beside the figures).

The figures are the report's own (``tokenreduce.bench.report``), drawn from the same store.

Run: ``.venv/bin/python benchmarks/report_figures.py --db results/dinov2.db --task fidelity
--threads 1 --figures docs/img/dinov2_fidelity --json benchmarks/results/dinov2_fidelity.json``
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from tokenreduce.bench import report
from tokenreduce.bench.configs import label
from tokenreduce.bench.store import Store
from tokenreduce.bench.tasks import task_class


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", type=Path, required=True, help="results store")
    ap.add_argument("--task", required=True, help="task of the group to export")
    ap.add_argument("--model", help="model name (default: the only one stored for the task)")
    ap.add_argument("--threads", type=int, help="only the group measured with these threads")
    ap.add_argument("--data", help="only the group whose data id contains this text")
    ap.add_argument("--figures", type=Path, help="file prefix of the PNG files")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()

    with Store.open(args.db, create=False) as store:
        found = {
            g: rows
            for g, rows in report.groups(store).items()
            if g[0] == args.task
            and args.model in (None, g[1], g[1].rpartition("@")[0])
            and args.threads in (None, json.loads(g[3]).get("threads"))
            and (args.data is None or args.data in g[2])
        }
        if len(found) != 1:
            names = "; ".join(f"{g[1]} {g[2]} {g[3]}" for g in found) or "none"
            raise SystemExit(f"expected one stored group for those filters, found: {names}")
        ((group, rows),) = found.items()
        if args.figures:
            args.figures.parent.mkdir(parents=True, exist_ok=True)
            for plot in task_class(args.task).plots:
                png = report.pareto_png(rows, plot)
                if png:
                    _write(args.figures, f"{plot.y}-vs-{plot.x}", png)
            for name, png in report.pictures_png(store, rows):
                _write(args.figures, name, png)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            out = {
                "task": group[0],
                "model": group[1],
                "data": group[2],
                "setting": json.loads(group[3]),
                "environment": rows[0].env,
                "rows": [
                    {
                        "config": r.key.config,
                        "label": label(r.key.config),
                        "run": r.run_id,
                        "metrics": r.metrics,
                    }
                    for r in rows
                ],
            }
            args.json.write_text(json.dumps(out, indent=1) + "\n")
            print(f"wrote {args.json}")


def _write(prefix: Path, name: str, png: bytes) -> None:
    path = prefix.with_name(f"{prefix.name}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png")
    path.write_bytes(png)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
