"""The report's figures, written as PNGs: accuracy per subset, one training curve per
training run, and the reliability diagram."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aqa.eval.report.calibration import N_CALIBRATION_BINS
from aqa.eval.report.data import MEANS, TRAIN_LOG, EvalRun, TrainRun, all_subsets, finite
from aqa.io import atomic_write_bytes, safe_name

# the package's logger, so that the command's warnings keep one name whichever module logs them
log = logging.getLogger(__package__)

ACCURACY_PNG = "accuracy_per_subset.png"
CALIBRATION_PNG = "calibration.png"


@dataclass
class Plot:
    """A written figure and the caption the report gives it."""

    caption: str
    path: Path


def write_plots(evals: Sequence[EvalRun], trains: Sequence[TrainRun], curves: dict[str, dict],
                out: Path) -> tuple[list[Plot], dict[str, str]]:
    """Every figure of the report, in report order; and the file name of each training run's
    plot, by run name (a run whose log has nothing to plot has none)."""
    plots: list[Plot] = []
    if evals:
        plots.append(Plot("Accuracy per subset", plot_accuracy(evals, out / ACCURACY_PNG)))
    by_run: dict[str, str] = {}
    for t, fname in zip(trains, training_plot_names(trains)):
        p = plot_training(t, out / fname)
        if p is not None:
            plots.append(Plot(f"Training: {t.name}", p))
            by_run[t.name] = p.name
    if curves:
        plots.append(Plot("Calibration", plot_calibration(curves, out / CALIBRATION_PNG)))
    return plots, by_run


def training_plot_names(trains: Sequence[TrainRun]) -> list[str]:
    """`loss_<run>.png` per run, made unique: two names can differ only in characters that
    a file name cannot keep."""
    used = {ACCURACY_PNG, CALIBRATION_PNG}
    names = []
    for t in trains:
        stem = f"loss_{safe_name(t.name)}"
        fname, k = f"{stem}.png", 2
        while fname in used:
            fname, k = f"{stem}_{k}.png", k + 1
        used.add(fname)
        names.append(fname)
    return names


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
    from matplotlib import colormaps

    groups = [*all_subsets(evals), *MEANS]
    n = max(len(evals), 1)
    width = 0.8 / n
    fig, (ax,) = _figure(max(6.0, 1.1 * len(groups) + 0.25 * len(groups) * n), 4.5)
    cmap = colormaps["tab10"]
    for i, e in enumerate(evals):
        xs, ys, lo, hi = _bars(e, groups, i, width)
        ax.bar(xs, ys, width * 0.95, yerr=[lo, hi], capsize=2, label=e.name, color=cmap(i % 10),
               error_kw={"elinewidth": 0.8})
    _chance_lines(ax, evals, groups)
    ax.set_xticks(range(len(groups)), groups, rotation=20 if len(groups) > 6 else 0)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy per subset (95% bootstrap CI)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def _group_stat(e: EvalRun, group: str) -> dict:
    """value, ci95 and chance of one bar group: a subset, or one of the two means."""
    if group in MEANS:
        return e.metrics.get(MEANS[group], {})
    s = e.metrics.get("subsets", {}).get(group, {})
    return {"value": s.get("accuracy"), "ci95": s.get("ci95"), "chance": s.get("chance")}


def _bars(e: EvalRun, groups: Sequence[str], i: int, width: float):
    """x, height and CI whisker lengths (in %) of run number `i`'s bars; groups without a
    value get no bar."""
    xs, ys, lo, hi = [], [], [], []
    for gi, g in enumerate(groups):
        st = _group_stat(e, g)
        v = finite(st.get("value"))
        if v is None:
            continue
        xs.append(gi - 0.4 + width * (i + 0.5))
        ys.append(100 * v)
        ci = st.get("ci95") or [v, v]
        lo.append(max(0.0, 100 * (v - ci[0])))
        hi.append(max(0.0, 100 * (ci[1] - v)))
    return xs, ys, lo, hi


def _chance_lines(ax, evals: Sequence[EvalRun], groups: Sequence[str]) -> None:
    label = "chance"  # one legend entry for all the groups' lines
    for gi, g in enumerate(groups):
        vals = [v for v in (finite(_group_stat(e, g).get("chance")) for e in evals) if v is not None]
        if vals:
            ax.hlines(100 * sum(vals) / len(vals), gi - 0.45, gi + 0.45, colors="black",
                      linestyles="dashed", linewidth=1, label=label)
            label = "_nolegend_"


def plot_training(run: TrainRun, path: Path) -> Path | None:
    """Loss against step, and reward in a second panel when the log has it (GRPO): the total,
    and each named reward's own mean (`reward_<name>`) when there are several."""
    panels = [(k, *run.series(k)) for k in ("loss", "reward")]
    panels = [p for p in panels if p[1]]
    if not panels:
        log.warning("%s: no loss or reward values; no plot", run.path / TRAIN_LOG)
        return None
    parts = sorted({k for r in run.log for k in r if k.startswith("reward_")})
    fig, axes = _figure(6.5, 2.6 * len(panels) + 0.6, nrows=len(panels))
    for ax, (key, xs, ys) in zip(axes, panels):
        marker = "." if len(xs) < 60 else None
        ax.plot(xs, ys, linewidth=1, marker=marker, label="total" if key == "reward" and len(parts) > 1 else None)
        if key == "reward" and len(parts) > 1:
            for part in parts:
                ax.plot(*run.series(part), linewidth=1, marker=marker, label=part[len("reward_"):])
            ax.legend(fontsize=7)
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
