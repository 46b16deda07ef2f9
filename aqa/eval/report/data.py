"""What the report shows, found on disk and loaded: eval dirs (metrics.json, predictions.jsonl)
and training run dirs (train_log.jsonl). Nothing here formats anything."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aqa.eval.metrics import METRICS, PREDICTIONS, compute_metrics, load_predictions, order_subsets
from aqa.io import iter_jsonl, read_json

# the package's logger, so that the command's warnings keep one name whichever module logs them
log = logging.getLogger(__package__)

TRAIN_LOG = "train_log.jsonl"
#: GRPO's sampled completions (aqa.train.grpo), a line each.
COMPLETIONS = "completions.jsonl"
#: the two headline means, by column label, and their keys in metrics.json
MEANS = {"arithmetic mean": "arithmetic_mean", "weighted mean": "weighted_mean"}


class ReportError(ValueError):
    """An input the report cannot use (the CLI prints it and exits with status 2)."""


@dataclass
class EvalRun:
    """One table row: an eval dir's metrics, and its predictions when they exist."""

    name: str
    path: Path
    metrics: dict
    rows: list[dict] | None = None


@dataclass
class TrainRun:
    """One training run: its log lines, for the loss plot, and GRPO's sampled completions."""

    name: str
    path: Path
    log: list[dict] = field(default_factory=list)
    completions: list[dict] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        """The finite values of `key`, in log order (lines without one are skipped)."""
        return [v for v in (finite(r.get(key)) for r in self.log) if v is not None]

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of `key`; a line without a step is placed at its line index."""
        xs, ys = [], []
        for i, r in enumerate(self.log):
            y = finite(r.get(key))
            if y is not None:
                x = finite(r.get("step"))
                xs.append(x if x is not None else float(i))
                ys.append(y)
        return xs, ys


def finite(x: Any) -> float | None:
    """A number as a float, or None for anything else (missing, bool, NaN, infinite)."""
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    return float(x) if ok else None


def all_subsets(evals: Sequence[EvalRun]) -> list[str]:
    """Every subset any run has, in table order."""
    return order_subsets(s for e in evals for s in e.metrics.get("subsets", {}))


def discover(dirs: Sequence[str | os.PathLike], names: Sequence[str] | None = None, *,
             n_boot: int = 1000, seed: int = 0) -> tuple[list[EvalRun], list[TrainRun]]:
    """Turn the given dirs into table rows and training runs, in the order given."""
    if names is not None and len(names) != len(dirs):
        raise ReportError(f"{len(names)} names given for {len(dirs)} dirs; give one name per dir")
    evals: list[EvalRun] = []
    trains: list[TrainRun] = []
    for i, d in enumerate(dirs):
        _discover_dir(Path(d), names[i] if names is not None else None, evals, trains, n_boot, seed)
    _dedupe(evals)
    _dedupe(trains)
    return evals, trains


def _discover_dir(path: Path, given: str | None, evals: list[EvalRun], trains: list[TrainRun],
                  n_boot: int, seed: int) -> None:
    if not path.is_dir():
        raise ReportError(f"{path}: no such directory")
    subs = _eval_subdirs(path)
    is_train = (path / TRAIN_LOG).is_file()
    if not (is_train or subs or _is_eval_dir(path)):
        raise ReportError(f"{path}: neither an eval dir ({METRICS} or {PREDICTIONS}), a training "
                          f"run dir ({TRAIN_LOG}) nor a dir with eval/<name>/ dirs")
    run_name = given or path.resolve().name
    if _is_eval_dir(path):
        evals.append(_load_eval(path, given, n_boot, seed))
    if is_train:
        trains.append(TrainRun(run_name, path, _load_train_log(path), _load_jsonl(path / COMPLETIONS)))
    # rows of a training run carry the run's name, since several runs often share
    # eval names such as "dev"; a plain container adds its name only when given one
    prefix = f"{run_name}/" if is_train or given else ""
    for sub in subs:
        evals.append(_load_eval(sub, f"{prefix}{sub.name}", n_boot, seed))


def _is_eval_dir(p: Path) -> bool:
    return (p / METRICS).is_file() or (p / PREDICTIONS).is_file()


def _eval_subdirs(path: Path) -> list[Path]:
    if not (path / "eval").is_dir():
        return []
    subs = (p for p in (path / "eval").glob("*") if p.is_dir() and _is_eval_dir(p))
    return sorted(subs, key=lambda p: _natural_key(p.name))


def _natural_key(s: str) -> list:
    # so that eval/step-200 sorts before eval/step-1000
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _load_eval(path: Path, name: str | None, n_boot: int, seed: int) -> EvalRun:
    rows = load_predictions(path) if (path / PREDICTIONS).is_file() else None
    metrics = _read_metrics(path, can_recompute=rows is not None)
    if metrics is None:
        # computed in memory: the input dir is never written to
        metrics = compute_metrics(rows or [], n_boot=n_boot, seed=seed)
    label = name or metrics.get("name") or path.resolve().name
    return EvalRun(str(label), path, metrics, rows)


def _read_metrics(path: Path, can_recompute: bool) -> dict | None:
    """The dir's metrics.json, or None when it is missing, or broken but recomputable."""
    if not (path / METRICS).is_file():
        return None
    try:
        return read_json(path / METRICS)
    except ValueError as e:
        if not can_recompute:
            raise ReportError(f"{path / METRICS}: not valid JSON ({e})") from None
        log.warning("%s: not valid JSON; recomputed from %s", path / METRICS, PREDICTIONS)
        return None


def _load_train_log(path: Path) -> list[dict]:
    return _load_jsonl(path / TRAIN_LOG)


def _load_jsonl(path: Path) -> list[dict]:
    """The object lines of a JSON Lines file (none when it does not exist)."""
    if not path.is_file():
        return []
    return [obj for _, obj in iter_jsonl(path, skip_bad=True) if isinstance(obj, dict)]


def _dedupe(runs: Sequence[EvalRun | TrainRun]) -> None:
    """Number repeated names, "name (2)", "name (3)", so that every row can be told apart."""
    seen: dict[str, int] = {}
    for r in runs:
        if r.name in seen:
            seen[r.name] += 1
            r.name = f"{r.name} ({seen[r.name]})"
        else:
            seen[r.name] = 1
