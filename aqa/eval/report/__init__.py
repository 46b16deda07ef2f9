"""`aqa report`: a Table-2-style accuracy table and plots from eval dirs and training run dirs.

    aqa report runs/zs/eval runs/sft runs/grpo -o report/ --names zero-shot,sft,grpo

Each DIR is one of:

- an eval dir (`metrics.json` and/or `predictions.jsonl`): one table row. When metrics.json is
  missing it is computed in memory from the predictions; the input dir is never written to.
- a training run dir (`train_log.jsonl`): a loss (and reward) plot, and one table row per
  eval dir under `eval/<name>/`, named `<run>/<name>`.
- any other dir with eval dirs under `eval/<name>/` (e.g. a demo dir): one row per eval dir.

Written to OUT: `report.md`, `report.html` (self-contained apart from the PNGs beside it,
which it references by relative path), `accuracy_per_subset.png`, `loss_<run>.png` per
training run, and `calibration.png` when any eval dir has per-option probabilities.
"""

from __future__ import annotations

import argparse
import html
import io
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aqa.eval.metrics import ci_text, pct
from aqa.eval.report.calibration import N_CALIBRATION_BINS, calibration_points
from aqa.eval.report.data import TRAIN_LOG, EvalRun, ReportError, TrainRun, all_subsets, discover, log
from aqa.io import atomic_write_bytes, atomic_write_text


@dataclass
class Table:
    """A table rendered to both Markdown and HTML, so that the two can never differ."""

    title: str
    header: list[str]
    rows: list[list[str]]
    #: rows (by index) that are annotations (item counts, chance) rather than results
    notes: set[int] = field(default_factory=set)
    caption: str = ""


# ---------------------------------------------------------------------------- tables


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _span(values: Sequence[int]) -> str:
    """One count when all runs agree, else the range (runs on different data stand out)."""
    if not values:
        return "–"
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}–{hi}"


def accuracy_table(evals: Sequence[EvalRun]) -> Table:
    """The reference report's Table 2: per-subset accuracy, then the two means with CIs."""
    subsets = all_subsets(evals)
    header = ["run", *subsets, "arithmetic mean", "weighted mean"]
    counts = ["*items*"]
    for s in subsets:
        counts.append(_span([e.metrics["subsets"][s].get("n", 0) for e in evals
                             if s in e.metrics.get("subsets", {})]))
    counts += [f"{len(subsets)} subsets",
               _span([e.metrics.get("weighted_mean", {}).get("n", e.metrics.get("n_labelled", 0))
                      for e in evals])]
    rows = [counts]
    for e in evals:
        subs = e.metrics.get("subsets", {})
        row = [e.name] + [pct(subs.get(s, {}).get("accuracy")) for s in subsets]
        for key in ("arithmetic_mean", "weighted_mean"):
            m = e.metrics.get(key, {})
            ci = ci_text(m.get("ci95"))
            row.append(f"{pct(m.get('value'))} {ci}".strip())
        rows.append(row)
    notes = {0}
    chance = ["*chance*"]
    for s in subsets:
        vals = [_num(e.metrics["subsets"][s].get("chance")) for e in evals
                if s in e.metrics.get("subsets", {})]
        vals = [v for v in vals if v is not None]
        chance.append(pct(sum(vals) / len(vals)) if vals else "–")
    for key in ("arithmetic_mean", "weighted_mean"):
        vals = [v for v in (_num(e.metrics.get(key, {}).get("chance")) for e in evals) if v is not None]
        chance.append(pct(sum(vals) / len(vals)) if vals else "–")
    if any(c != "–" for c in chance[1:]):
        notes.add(len(rows))
        rows.append(chance)
    return Table("Accuracy (%)", header, rows, notes,
                 "Accuracy in percent. Arithmetic mean: the mean of the per-subset accuracies; "
                 "weighted mean: pooled over all labelled questions; brackets: 95% percentile "
                 "bootstrap interval (stratified by subset for the arithmetic mean). "
                 "Unparseable answers count as wrong; unlabelled items are excluded. "
                 "Chance: the mean of 1/(number of options).")


def details_table(evals: Sequence[EvalRun], ece: dict[str, float]) -> Table:
    header = ["run", "items", "unparsed", "unlabelled", "option orders K", "agreement",
              "all same", "right under all orders", "ECE"]
    rows = []
    for e in evals:
        m = e.metrics
        sh = m.get("shuffles") or {}
        rows.append([e.name, str(m.get("n", "–")), str(m.get("n_unparsed", "–")),
                     str(m.get("n_unlabelled", "–")), str(sh.get("k", "–")),
                     pct(sh.get("agreement")), pct(sh.get("all_same")), pct(sh.get("all_correct")),
                     pct(ece.get(e.name))])
    return Table("Details", header, rows, caption=(
        "Agreement: the mean share of option orders that chose the most common option; all same: "
        "items where every order chose the same option; right under all orders: labelled items "
        "answered right under every order (all in %). ECE: expected calibration error of the "
        f"predicted option's probability, {N_CALIBRATION_BINS} bins (%)."))


def question_type_table(evals: Sequence[EvalRun]) -> Table | None:
    types = sorted({t for e in evals for t in e.metrics.get("question_types", {})})
    if not types:
        return None
    rows = []
    for t in types:
        cells = [e.metrics.get("question_types", {}).get(t) for e in evals]
        n = _span([c["n"] for c in cells if c])
        rows.append([t, n] + [pct(c.get("accuracy")) if c else "–" for c in cells])
    return Table("Accuracy by question type (%)", ["question type", "items", *[e.name for e in evals]], rows)


def contribution_table(evals: Sequence[EvalRun]) -> Table | None:
    """For evaluations run without the audio (`aqa eval --audio silence --reference ...`): per
    subset, accuracy with the audio, without it, and the mean audio contribution per item."""
    rows = []
    for e in evals:
        table = e.metrics.get("audio_contribution")
        for subset, c in (table or {}).items():
            rows.append([e.name, subset, str(c["n"]), pct(c["accuracy_with_audio"]), pct(c["accuracy_without"]),
                         pct(c["contribution"])])
    if not rows:
        return None
    return Table("Audio contribution (%)", ["run", "subset", "items", "with audio", "without", "contribution"],
                 rows, caption="Contribution: per item, correct with the audio minus correct without it, "
                               "averaged (points of accuracy that come from listening).")


def training_table(trains: Sequence[TrainRun], plots: dict[str, str]) -> Table:
    rows = []
    for t in trains:
        steps = [_num(r.get("step")) for r in t.log]
        losses = [v for v in (_num(r.get("loss")) for r in t.log) if v is not None]
        rewards = [v for v in (_num(r.get("reward")) for r in t.log) if v is not None]
        last_step = max((s for s in steps if s is not None), default=None)
        rows.append([t.name, "–" if last_step is None else str(int(last_step)),
                     f"{losses[-1]:.4g}" if losses else "–",
                     f"{rewards[-1]:.4g}" if rewards else "–", plots.get(t.name, "–")])
    return Table("Training runs", ["run", "last step", "last loss", "last reward", "plot"], rows)


def _md_cell(s: str) -> str:
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def table_markdown(t: Table) -> str:
    lines = [f"## {t.title}", "", "| " + " | ".join(_md_cell(h) for h in t.header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(t.header) - 1)) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    if t.caption:
        lines += ["", t.caption]
    return "\n".join(lines) + "\n"


def table_html(t: Table) -> str:
    e = html.escape
    out = [f"<h2>{e(t.title)}</h2>", "<table>", "<thead><tr>"
           + "".join(f"<th>{e(h)}</th>" for h in t.header) + "</tr></thead>", "<tbody>"]
    for i, row in enumerate(t.rows):
        cls = ' class="note"' if i in t.notes else ""
        cells = [c.strip("*") if i in t.notes and j == 0 else c for j, c in enumerate(row)]
        out.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    if t.caption:
        out.append(f'<p class="caption">{e(t.caption)}</p>')
    return "\n".join(out)


# ---------------------------------------------------------------------------- plots


def _figure(width: float, height: float, nrows: int = 1):
    """A figure on the Agg canvas directly: no pyplot, so no global backend state to clash
    with a caller's, and safe to use without a display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, 1, i + 1) for i in range(nrows)]
    return fig, axes


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(path, buf.getvalue())


def plot_accuracy(evals: Sequence[EvalRun], path: Path) -> Path:
    """Grouped bars per subset (then the two means), one bar per run, 95% CI whiskers,
    and a dashed chance line per group."""
    subsets = all_subsets(evals)
    groups = [*subsets, "arithmetic mean", "weighted mean"]
    n = max(len(evals), 1)
    width = 0.8 / n
    fig, (ax,) = _figure(max(6.0, 1.1 * len(groups) + 0.25 * len(groups) * n), 4.5)
    from matplotlib import colormaps

    cmap = colormaps["tab10"]

    def stat(e: EvalRun, g: str) -> dict:
        if g == "arithmetic mean":
            return e.metrics.get("arithmetic_mean", {})
        if g == "weighted mean":
            return e.metrics.get("weighted_mean", {})
        s = e.metrics.get("subsets", {}).get(g, {})
        return {"value": s.get("accuracy"), "ci95": s.get("ci95"), "chance": s.get("chance")}

    for i, e in enumerate(evals):
        xs, ys, lo, hi = [], [], [], []
        for gi, g in enumerate(groups):
            st = stat(e, g)
            v = _num(st.get("value"))
            if v is None:
                continue
            xs.append(gi - 0.4 + width * (i + 0.5))
            ys.append(100 * v)
            ci = st.get("ci95") or [v, v]
            lo.append(max(0.0, 100 * (v - ci[0])))
            hi.append(max(0.0, 100 * (ci[1] - v)))
        ax.bar(xs, ys, width * 0.95, yerr=[lo, hi], capsize=2, label=e.name, color=cmap(i % 10),
               error_kw={"elinewidth": 0.8})
    chance_label = "chance"
    for gi, g in enumerate(groups):
        vals = [v for v in (_num(stat(e, g).get("chance")) for e in evals) if v is not None]
        if vals:
            ax.hlines(100 * sum(vals) / len(vals), gi - 0.45, gi + 0.45, colors="black",
                      linestyles="dashed", linewidth=1, label=chance_label)
            chance_label = "_nolegend_"
    ax.set_xticks(range(len(groups)), groups, rotation=20 if len(groups) > 6 else 0)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy per subset (95% bootstrap CI)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def plot_training(run: TrainRun, path: Path) -> Path | None:
    """Loss against step, and reward in a second panel when the log has it (GRPO)."""
    def series(key: str) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for i, r in enumerate(run.log):
            y = _num(r.get(key))
            if y is not None:
                x = _num(r.get("step"))
                xs.append(x if x is not None else float(i))
                ys.append(y)
        return xs, ys

    panels = [(k, *series(k)) for k in ("loss", "reward")]
    panels = [p for p in panels if p[1]]
    if not panels:
        log.warning("%s: no loss or reward values; no plot", run.path / TRAIN_LOG)
        return None
    fig, axes = _figure(6.5, 2.6 * len(panels) + 0.6, nrows=len(panels))
    for ax, (key, xs, ys) in zip(axes, panels):
        ax.plot(xs, ys, linewidth=1, marker="." if len(xs) < 60 else None)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    axes[0].set_title(f"Training: {run.name}")
    return _save(fig, path)


def plot_calibration(curves: dict[str, dict], path: Path) -> Path:
    """Reliability diagram: accuracy against confidence per bin, one line per run."""
    fig, (ax,) = _figure(5.5, 5.0)
    ax.plot([0, 1], [0, 1], linestyle="dashed", color="grey", linewidth=1, label="perfect calibration")
    for name, c in curves.items():
        ax.plot(c["confidence"], c["accuracy"], marker="o", markersize=3,
                label=f"{name} (ECE {100 * c['ece']:.1f}%)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence of the predicted option")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability ({N_CALIBRATION_BINS} bins)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    return _save(fig, path)


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


# ---------------------------------------------------------------------------- the report


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0}th,td{border:1px solid #ccc;padding:4px 8px}
td{text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}
tr.note td{color:#666;font-style:italic}.caption{color:#555;font-size:0.9em;max-width:60em}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}code{background:#f6f6f6}"""


def build_report(dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 names: Sequence[str] | None = None, *, n_boot: int = 1000,
                 seed: int = 0) -> dict[str, Any]:
    """Write report.md, report.html and the plots to `out_dir`.

    Returns {"markdown": Path, "html": Path, "plots": [Path, ...], "files": [every Path
    written], "runs": [row names in table order], "training_runs": [names]}.
    `n_boot` and `seed` apply only to eval dirs whose metrics.json has to be computed.
    """
    evals, trains = discover(dirs, names, n_boot=n_boot, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots: list[Path] = []
    figures: list[tuple[str, str]] = []  # (caption, file name)

    if evals:
        p = plot_accuracy(evals, out / "accuracy_per_subset.png")
        plots.append(p)
        figures.append(("Accuracy per subset", p.name))

    train_plots: dict[str, str] = {}
    used: set[str] = {"accuracy_per_subset.png", "calibration.png"}
    for t in trains:
        fname = f"loss_{_safe_filename(t.name)}.png"
        k = 2
        while fname in used:  # two names that differ only in unsafe characters
            fname = f"loss_{_safe_filename(t.name)}_{k}.png"
            k += 1
        used.add(fname)
        p = plot_training(t, out / fname)
        if p is not None:
            plots.append(p)
            train_plots[t.name] = p.name
            figures.append((f"Training: {t.name}", p.name))

    curves = {e.name: c for e in evals if e.rows
              for c in [calibration_points(e.rows)] if c is not None}
    if curves:
        p = plot_calibration(curves, out / "calibration.png")
        plots.append(p)
        figures.append(("Calibration", p.name))

    tables: list[Table] = []
    if evals:
        tables.append(accuracy_table(evals))
        tables.append(details_table(evals, {k: c["ece"] for k, c in curves.items()}))
        for extra in (question_type_table(evals), contribution_table(evals)):
            if extra is not None:
                tables.append(extra)
    if trains:
        tables.append(training_table(trains, train_plots))
    sources = [(e.name, str(e.path)) for e in evals] + [(t.name, str(t.path)) for t in trains]

    md = ["# AQA report", "",
          f"{len(evals)} evaluated run(s), {len(trains)} training run(s).", ""]
    for t in tables:
        md += [table_markdown(t)]
    if figures:
        md += ["## Plots", ""] + [f"![{cap}]({quote(f)})\n" for cap, f in figures]
    md += ["## Sources", ""] + [f"- {_md_cell(n)}: `{p}`" for n, p in sources] + [""]
    md_path = atomic_write_text(out / "report.md", "\n".join(md))

    e = html.escape
    body = ["<h1>AQA report</h1>",
            f"<p>{len(evals)} evaluated run(s), {len(trains)} training run(s).</p>"]
    body += [table_html(t) for t in tables]
    if figures:
        body.append("<h2>Plots</h2>")
        body += [f'<figure><img src="{e(quote(f))}" alt="{e(cap)}"><figcaption>{e(cap)}'
                 "</figcaption></figure>" for cap, f in figures]
    body.append("<h2>Sources</h2><ul>"
                + "".join(f"<li>{e(n)}: <code>{e(p)}</code></li>" for n, p in sources) + "</ul>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>AQA report</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
    html_path = atomic_write_text(out / "report.html", page)

    return {"markdown": md_path, "html": html_path, "plots": plots,
            "files": [md_path, html_path, *plots], "runs": [e.name for e in evals],
            "training_runs": [t.name for t in trains],
            "table": table_markdown(tables[0]) if evals else ""}


# ---------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="Table-2-style accuracy table and plots from eval / training run dirs",
        description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("dirs", nargs="+", metavar="DIR",
                   help="eval dirs, training run dirs, or dirs holding eval/<name>/ dirs")
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="folder to write the report to")
    p.add_argument("--names", help="comma-separated display names, one per DIR")
    p.add_argument("--n-boot", type=int, default=1000,
                   help="bootstrap replicates where metrics.json must be computed (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    try:
        res = build_report(args.dirs, args.out, names, n_boot=args.n_boot, seed=args.seed)
    except ReportError as e:
        print(f"aqa report: error: {e}", file=sys.stderr)
        return 2
    if res["table"]:
        print(res["table"])
    print("wrote:")
    for p in res["files"]:
        print(f"  {p}")
    return 0
