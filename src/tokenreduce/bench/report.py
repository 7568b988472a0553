"""One self-contained HTML report from the results store.

For every group of comparable rows (task, model, data, setting): the results table, the
task's Pareto plots (one curve per method, the baseline marked, the overall frontier
shaded) and the pictures stored with each configuration. Pictures are inline base64 PNGs,
so the file can be mailed or archived alone. Every string that comes from the user or the
store (model names, paths, labels, configurations) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .configs import BASELINE, budget_label, curve_of, label
from .measure import FLAG_MARK, NOISY
from .metrics import NOISY_SPREAD
from .store import Key, Result, Store
from .tasks import Column, Metrics, Plot, Task, task_class

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#222}
h1{font-size:1.6rem}h2{font-size:1.3rem;margin-top:2.5rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9rem;margin:1rem 0}
th,td{padding:.25rem .6rem;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{background:#f5f5f5}td.l,th.l{text-align:left}tr.base{font-weight:600;background:#fafaf0}
.meta{color:#555;font-size:.85rem}.plots img{width:49%;min-width:420px}
.pics img{max-width:100%;margin:.5rem 0}.note{background:#f4f8ff;padding:.5rem 1rem}
"""


def esc(value: Any) -> str:
    """HTML-escape any value (quotes included)."""
    return html.escape(str(value), quote=True)


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _columns(task: str, rows: list[Result]) -> list[Column]:
    cls = task_class(task)
    if cls is not None and cls.columns:
        return list(cls.columns)
    keys: list[str] = []  # unknown task: every scalar metric, in first-seen order
    for row in rows:
        for k, v in row.metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in keys:
                keys.append(k)
    return [Column(k, k, ".4g") for k in keys]


def short_labels(configs: Iterable[str]) -> dict[str, str]:
    """Budget-only labels (``tome:r=8``), or the full label where two would be equal."""
    configs = list(configs)
    short = {c: budget_label(c) for c in configs}
    counts = defaultdict(int)
    for s in short.values():
        counts[s] += 1
    return {c: s if counts[s] == 1 else label(c) for c, s in short.items()}


def _sort(rows: list[Result]) -> list[Result]:
    def order(r: Result):
        base = r.key.config == BASELINE
        return (not base, r.method, -(r.metrics.get("gflops") or 0), r.key.config)

    return sorted(rows, key=order)


def groups(store: Store, **where: str) -> dict[tuple[str, str, str, str], list[Result]]:
    """Latest stored rows grouped by (task, model, data, setting), baseline first, their
    throughput on the scale of the group's baseline row (:func:`one_scale`)."""
    out: dict[tuple[str, str, str, str], list[Result]] = defaultdict(list)
    for row in store.results(latest=True, **where):
        out[row.key.group()].append(row)
    return {g: one_scale(_sort(rows)) for g, rows in out.items()}


def one_scale(rows: list[Result]) -> list[Result]:
    """``rows`` with ``throughput_scaled`` set to the baseline row's throughput times each
    row's paired speedup. A sweep stores it so already, but rows stored by different runs
    (a later ``--fresh`` baseline) were scaled to different baselines; shown together they
    must share the one shown. Rows are returned unchanged without a baseline row."""
    base = next((r for r in rows if r.key.config == BASELINE), None)
    scale = base.metrics.get("throughput") if base else None
    if not scale:
        return rows
    return [
        replace(r, metrics={**r.metrics, "throughput_scaled": r.metrics["speedup"] * scale})
        if "throughput_scaled" in r.metrics and r.metrics.get("speedup") is not None
        else r
        for r in rows
    ]


def table_notes(rows: list[tuple[str, Metrics]]) -> list[str]:
    """Footnotes of a results table of ``(config, metrics)`` rows: the baseline that the
    scaled throughput column (images or texts per second) is scaled to, and every row whose paired timing stayed noisy (its speed
    figures carry :data:`~tokenreduce.bench.measure.FLAG_MARK`)."""
    notes = []
    base = dict(rows).get(BASELINE)
    if base and base.get("throughput") and any("throughput_scaled" in m for _, m in rows):
        notes.append(
            f"throughput (baseline × speedup): the baseline's {_rate(base['throughput'])} "
            "samples/s × each row's paired speedup, one scale for rows measured minutes apart"
        )
    for config, m in rows:
        if m.get(NOISY):
            notes.append(
                f"{FLAG_MARK} {label(config)}: timing too noisy to trust: the paired ratios "
                f"spread {m['speedup_spread']:.0%} (limit {NOISY_SPREAD:.0%}) after "
                f"{m['timing_attempts']} timing(s)"
            )
    return notes


def _rate(per_second: float) -> str:
    """Whole numbers from 100 up, three significant digits below (a slow model's 2.34)."""
    return f"{per_second:.0f}" if per_second >= 100 else f"{per_second:.3g}"


# -- plots -----------------------------------------------------------------------------------
def pareto_png(rows: list[Result], plot: Plot, title: str = "") -> bytes | None:
    """A Pareto plot of ``plot.y`` against ``plot.x`` as PNG bytes (None without data)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts = [(r, r.metrics.get(plot.x), r.metrics.get(plot.y)) for r in rows]
    pts = [
        (r, x, y) for r, x, y in pts if isinstance(x, (int, float)) and isinstance(y, (int, float))
    ]
    if not pts:
        return None
    fig = Figure(figsize=(6.4, 4.4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    front = _frontier([(x, y) for _, x, y in pts], plot.x_higher_is_better)
    ax.plot(
        *zip(*front, strict=True),
        color="#bbb",
        lw=6,
        alpha=0.5,
        zorder=1,
        label="Pareto frontier",
        solid_capstyle="round",
    )
    by_method: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    names = short_labels(r.key.config for r, _, _ in pts)
    for r, x, y in pts:
        if r.key.config == BASELINE:
            ax.scatter([x], [y], marker="*", s=260, color="black", zorder=4, label="baseline")
            ax.axhline(y, color="black", lw=0.8, ls=":", zorder=0)
        else:
            by_method[curve_of(r.key.config)].append((x, y, names[r.key.config].partition(":")[2]))
    for method, p in sorted(by_method.items()):
        p.sort()
        xs, ys, names = zip(*p, strict=True)
        ax.plot(xs, ys, marker="o", lw=1.5, zorder=3, label=method)
        for x, y, name in p:
            ax.annotate(
                name,
                (x, y),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=6,
                color="#444",
                parse_math=False,
            )
    ax.set_xlabel(plot.x_label)
    ax.set_ylabel(plot.y_label)
    if title:
        ax.set_title(title, fontsize=10, parse_math=False)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _frontier(points: list[tuple[float, float]], x_higher: bool) -> list[tuple[float, float]]:
    """Points not dominated by another (higher y, and better x), ordered by x."""
    best = sorted(points, key=lambda p: (-p[0] if x_higher else p[0], -p[1]))
    front, top = [], float("-inf")
    for x, y in best:
        if y > top:
            front.append((x, y))
            top = y
    return sorted(front)


# -- pictures --------------------------------------------------------------------------------
def pictures_png(store: Store, rows: list[Result]) -> list[tuple[str, bytes]]:
    """One figure per stored picture name: that picture for every configuration, side by side
    (``tokenreduce.viz.grid_figure``)."""
    from PIL import Image

    from .. import viz

    by_name: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    names = short_labels(r.key.config for r in rows)
    for r in rows:
        for name, (mime, content) in store.artifacts(r.key).items():
            if mime == "image/png":
                by_name[name].append((names[r.key.config], content))
    out = []
    for name, items in sorted(by_name.items(), key=lambda kv: _natural(kv[0])):
        images = [Image.open(io.BytesIO(png)).convert("RGB") for _, png in items]
        titles = [t for t, _ in items]
        fig = viz.grid_figure(images, titles, columns=min(len(images), 8), min_tile=160)
        buf = io.BytesIO()
        fig.save(buf, format="PNG", optimize=True)
        out.append((name, buf.getvalue()))
    return out


def _natural(name: str) -> tuple:
    head, _, tail = name.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (name, 0)


# -- HTML ------------------------------------------------------------------------------------
def table_html(task: str, rows: list[Result]) -> str:
    cols = _columns(task, rows)
    head = "".join(f"<th>{esc(c.header)}</th>" for c in cols)
    out = [
        f'<table><tr><th class="l">configuration</th><th class="l">method</th>{head}'
        '<th class="l">run</th></tr>'
    ]
    for r in rows:
        cls = ' class="base"' if r.key.config == BASELINE else ""
        cells = "".join(f"<td>{esc(c.cell(r.metrics))}</td>" for c in cols)
        out.append(
            f'<tr{cls}><td class="l" title="{esc(r.key.config)}">{esc(label(r.key.config))}</td>'
            f'<td class="l">{esc(r.method)}</td>{cells}<td class="l">{esc(r.run_id)}</td></tr>'
        )
    out.append("</table>")
    return "\n".join(out)


def _setting_text(setting: str) -> str:
    try:
        return ", ".join(f"{k}={v}" for k, v in json.loads(setting).items())
    except (ValueError, AttributeError):
        return setting


def _env_text(rows: list[Result]) -> str:
    envs = []
    for r in rows:
        e = r.env
        text = (
            f"tokenreduce {e.get('package_version')} (git {e.get('git_revision') or 'n/a'}), "
            f"torch {e.get('torch_version')}, {e.get('threads')} threads, {e.get('cpu')}, "
            f"Python {e.get('python')}"
        )
        if text not in envs:
            envs.append(text)
    return "; ".join(envs)


def group_html(store: Store, group: tuple[str, str, str, str], rows: list[Result]) -> str:
    task, model, data, setting = group
    parts = [
        f"<section><h2>{esc(task)} — {esc(model)}</h2>",
        f'<p class="meta">data: {esc(data)} · setting: {esc(_setting_text(setting))}<br>'
        f"measured with: {esc(_env_text(rows))}</p>",
    ]
    cls = task_class(task)
    if cls is not None:
        lines = cls.summary([(r.key.config, r.metrics) for r in rows])
        parts += [f'<p class="note">{esc(line)}</p>' for line in lines]
    parts.append(table_html(task, rows))
    notes = table_notes([(r.key.config, r.metrics) for r in rows])
    parts += [f'<p class="meta">{esc(note)}</p>' for note in notes]
    plots = [(p, pareto_png(rows, p)) for p in (cls.plots if cls else ())]
    imgs = [
        f'<img alt="{esc(p.y_label)} against {esc(p.x_label)}" src="{_png_data_uri(png)}">'
        for p, png in plots
        if png
    ]
    if imgs:
        parts.append('<div class="plots">' + "".join(imgs) + "</div>")
    try:
        pics = pictures_png(store, rows)
    except ImportError as err:  # the viz extra (pillow, numpy) is missing
        pics = []
        parts.append(f'<p class="meta">token pictures unavailable: {esc(err)}</p>')
    if pics:
        heading, caption = (cls or Task).picture_caption
        parts.append(f'<h3>{esc(heading)}</h3><p class="meta">{esc(caption)}</p><div class="pics">')
        parts += [f'<img alt="{esc(name)}" src="{_png_data_uri(png)}">' for name, png in pics]
        parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


def render(
    store: Store, only: Iterable[tuple[str, str, str, str]] | None = None, **where: str
) -> str:
    """The report as an HTML string: every group of the store (or only the given ones)."""
    found = groups(store, **where)
    if only is not None:
        wanted = set(only)
        found = {g: r for g, r in found.items() if g in wanted}
    body = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>tokenreduce benchmark</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>tokenreduce benchmark</h1>",
        f'<p class="meta">results store: {esc(store.path)} · written '
        f"{esc(time.strftime('%Y-%m-%d %H:%M:%S'))} · top-1 change, speedup and FLOP ratio are "
        "against the unreduced model (speedup measured interleaved with it in the same "
        "run, median of repeats).</p>",
    ]
    if not found:
        body.append("<p>No results stored yet: run <code>tokenreduce bench</code>.</p>")
    for group, rows in found.items():
        body.append(group_html(store, group, rows))
    body.append("</body></html>")
    return "\n".join(body)


def write(
    store: Store,
    out: str | Path,
    only: Iterable[tuple[str, str, str, str]] | None = None,
    **where: str,
) -> Path:
    """Write the report to ``out`` (parents created) and return its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render(store, only, **where)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)  # a reader never sees half a report
    return out


__all__ = ["esc", "groups", "one_scale", "pareto_png", "render", "table_notes", "write", "Key"]
