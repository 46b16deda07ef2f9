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
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aqa.eval.metrics import ci_text, pct
from aqa.eval.report.calibration import N_CALIBRATION_BINS, calibration_curves, calibration_points
from aqa.eval.report.data import EvalRun, ReportError, TrainRun, all_subsets, discover
from aqa.eval.report.plots import write_plots
from aqa.io import atomic_write_text


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
    curves = calibration_curves(evals)
    figures, train_plots = write_plots(evals, trains, curves, out)
    plots = [f.path for f in figures]
    shown = [(f.caption, f.path.name) for f in figures]

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
    if shown:
        md += ["## Plots", ""] + [f"![{cap}]({quote(f)})\n" for cap, f in shown]
    md += ["## Sources", ""] + [f"- {_md_cell(n)}: `{p}`" for n, p in sources] + [""]
    md_path = atomic_write_text(out / "report.md", "\n".join(md))

    e = html.escape
    body = ["<h1>AQA report</h1>",
            f"<p>{len(evals)} evaluated run(s), {len(trains)} training run(s).</p>"]
    body += [table_html(t) for t in tables]
    if shown:
        body.append("<h2>Plots</h2>")
        body += [f'<figure><img src="{e(quote(f))}" alt="{e(cap)}"><figcaption>{e(cap)}'
                 "</figcaption></figure>" for cap, f in shown]
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
