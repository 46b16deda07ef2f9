"""`aqa report`: a Table-2-style accuracy table and plots from eval dirs and training run dirs.

    aqa report runs/zs/eval runs/sft runs/grpo -o report/ --names zero-shot,sft,grpo

Each DIR is one of:

- an eval dir (`metrics.json` and/or `predictions.jsonl`): one table row. When metrics.json is
  missing it is computed in memory from the predictions; the input dir is never written to.
- a training run dir (`train_log.jsonl`): a loss (and reward) plot, and one table row per
  eval dir under `eval/<name>/`, named `<run>/<name>`.
- any other dir with eval dirs under `eval/<name>/` (e.g. a demo dir): one row per eval dir.

Written to OUT: `report.md`, `report.html` (self-contained apart from the PNGs beside it,
which it references by relative path, and the clips its item browser links to;
`--embed-audio N` puts N of them in the page), `accuracy_per_subset.png`, `loss_<run>.png` per
training run (the run's name made safe for a file name), and `calibration.png` when any eval
dir has per-option probabilities.

The package: `data` finds and loads the inputs, `calibration` bins the predicted options'
probabilities, `tables` and `plots` make the tables and the figures, and `document` is the
document model that the report is built as, once, with its two renderers: Markdown and HTML.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aqa.eval.report.browser import MAX_ITEMS, browser_data, browser_html
from aqa.eval.report.calibration import calibration_curves, calibration_points
from aqa.eval.report.data import EvalRun, ReportError, TrainRun, discover
from aqa.eval.report.document import (
    BulletList, Code, Document, Heading, HtmlSection, Image, Paragraph, Table, markdown_blocks, text_table, to_html,
    to_markdown)
from aqa.eval.report.plots import Plot, write_plots
from aqa.eval.report.tables import report_tables
from aqa.io import atomic_write_text

__all__ = ["ReportError", "EvalRun", "TrainRun", "build_report", "calibration_points", "discover",
           "register", "report_document", "run"]


def build_report(dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 names: Sequence[str] | None = None, *, n_boot: int = 1000,
                 seed: int = 0, max_items: int = MAX_ITEMS, embed_audio: int = 0) -> dict[str, Any]:
    """Write report.md, report.html and the plots to `out_dir`.

    Returns {"markdown": Path, "html": Path, "plots": [Path, ...], "files": [every Path
    written], "runs": [row names in table order], "training_runs": [names], "table": the
    accuracy table in Markdown, "table_text": the same in aligned plain text for a terminal,
    both "" when there is no eval dir}.
    `n_boot` and `seed` apply only to eval dirs whose metrics.json has to be computed.
    `max_items` and `embed_audio` shape report.html's item browser (aqa.eval.report.browser).
    """
    evals, trains = discover(dirs, names, n_boot=n_boot, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves = calibration_curves(evals)
    plots, train_plots = write_plots(evals, trains, curves, out)
    tables = report_tables(evals, trains, {k: c["ece"] for k, c in curves.items()}, train_plots)
    doc = report_document(evals, trains, tables, plots,
                          browser_data(evals, out, max_items=max_items, embed_audio=embed_audio))
    md_path = atomic_write_text(out / "report.md", to_markdown(doc))
    html_path = atomic_write_text(out / "report.html", to_html(doc))
    pngs = [p.path for p in plots]
    return {"markdown": md_path, "html": html_path, "plots": pngs,
            "files": [md_path, html_path, *pngs], "runs": [e.name for e in evals],
            "training_runs": [t.name for t in trains],
            "table": markdown_blocks([tables[0]]) if evals else "",
            "table_text": text_table(tables[0]) if evals else ""}


def report_document(evals: Sequence[EvalRun], trains: Sequence[TrainRun], tables: Sequence[Table],
                    plots: Sequence[Plot], browser: dict | None = None) -> Document:
    """The report: a summary line, the tables, the plots, the item browser (`browser_data`;
    in report.md one line pointing to it), and the folder each run came from."""
    blocks = [Paragraph(f"{len(evals)} evaluated run(s), {len(trains)} training run(s)."), *tables]
    if plots:
        blocks += [Heading("Plots"), *(Image(p.path.name, p.caption) for p in plots)]
    if browser is not None:
        blocks.append(HtmlSection(browser_html(browser), (
            f"Item browser ({len(browser['items'])} items, with filters and audio players): "
            "in report.html.")))
    sources = [(f"{r.name}: ", Code(str(r.path))) for r in [*evals, *trains]]
    blocks += [Heading("Sources"), BulletList(sources)]
    return Document("AQA report", blocks)


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
    p.add_argument("--max-items", type=int, default=MAX_ITEMS, metavar="N",
                   help=f"items in report.html's item browser, at most (default {MAX_ITEMS})")
    p.add_argument("--embed-audio", type=int, default=0, metavar="N",
                   help="embed N clips in report.html (the first items some run got wrong, then "
                        "others), so that it plays them without the dataset; the rest are linked")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    try:
        res = build_report(args.dirs, args.out, names, n_boot=args.n_boot, seed=args.seed,
                           max_items=args.max_items, embed_audio=args.embed_audio)
    except ReportError as e:
        print(f"aqa report: error: {e}", file=sys.stderr)
        return 2
    if res["table"]:
        print(res["table"])
    print("wrote:")
    for p in res["files"]:
        print(f"  {p}")
    return 0
