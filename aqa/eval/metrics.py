"""Accuracy metrics for an eval dir's `predictions.jsonl`, written to `metrics.json`.

The two headline numbers follow the reference report's Table 2:

- arithmetic mean: the mean of the per-subset accuracies (the challenge's "domain average"),
  so a small subset such as BQA weighs as much as CQA;
- weighted mean: the pooled accuracy over every labelled question.

Rules every number here obeys:

- an item whose `answer` is null is unlabelled: it is counted (`n_unlabelled`) and excluded
  from every accuracy;
- an item whose `pred` is null was unparseable or unanswered: it counts as wrong;
- an item whose reasoning the token budget cut (`unfinished`, evaluations of a thinking model)
  is counted apart (`n_unfinished`), not among the unparsed; without an answer it counts as wrong;
- an evaluation that reasons also gets `reasoning`: the share of items whose think block was
  closed (`finished`) and the mean length in words of those reasonings (`mean_words`; words,
  not tokens, so that models with different tokenizers compare), from predictions.jsonl's text;
- 95% intervals are percentile bootstrap intervals, deterministic for a seed. The arithmetic
  mean resamples within each subset (stratified), because the subset sizes are fixed by the
  benchmark's design, not drawn at random; the weighted mean resamples items from the pool.

Resampling n items with replacement from n right/wrong outcomes of which k are right yields a
count of right answers that is exactly Binomial(n, k/n), so the bootstrap draws that count
directly instead of materialising index arrays: the same distribution, far less work.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aqa.io import iter_jsonl, write_json

log = logging.getLogger(__name__)

#: Subsets with a fixed place in tables; any other subset follows them alphabetically.
CANONICAL_SUBSETS = ("bqa", "tsqa", "cqa", "mmau-sound", "mmau-music", "mmau-speech", "temporal")
#: Bumped when a key of metrics.json changes meaning, so readers can tell old files apart.
METRICS_VERSION = 1
PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
#: Rows without a subset are still counted somewhere rather than dropped.
UNKNOWN_SUBSET = "unknown"


def order_subsets(names: Iterable[str]) -> list[str]:
    """Unique subset names in table order: the canonical ones first, then the rest by name."""
    names = set(names)
    known = [s for s in CANONICAL_SUBSETS if s in names]
    return known + sorted(names - set(CANONICAL_SUBSETS))


def _is_correct(row: dict) -> bool | None:
    """True/False for a labelled row, None for an unlabelled one.

    Correctness is recomputed from `pred` and `answer` rather than trusted from `correct`, so
    that a metrics file can never disagree with the predictions it summarises; `correct` is
    only used by rows that carry no `answer` key at all.
    """
    if "answer" not in row:
        c = row.get("correct")
        return bool(c) if isinstance(c, bool) else None
    answer, pred = row["answer"], row.get("pred")
    if answer is None:
        return None
    try:
        return pred is not None and int(pred) == int(answer)
    except (TypeError, ValueError):  # a malformed prediction is a wrong one, not a crash
        return False


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def _interval(reps: np.ndarray) -> list[float]:
    lo, hi = np.quantile(reps, [0.025, 0.975])
    return [_round(lo), _round(hi)]


def _bootstrap_counts(rng: np.random.Generator, n: int, k: int, n_boot: int) -> np.ndarray:
    """Bootstrap replicates of the accuracy of n items with k right (see the module docstring)."""
    return rng.binomial(n, k / n, size=n_boot) / n


def _chance(rows: Sequence[dict]) -> float | None:
    """Expected accuracy of uniform guessing: the mean of 1/len(choices)."""
    inv = [1.0 / len(r["choices"]) for r in rows if isinstance(r.get("choices"), list) and r["choices"]]
    return _round(sum(inv) / len(inv)) if inv else None


def _group_stats(rows: Sequence[dict], rng: np.random.Generator | None,
                 n_boot: int) -> tuple[dict, np.ndarray | None]:
    """Counts, accuracy and interval of one group; also the replicates for stratified means."""
    flags = [_is_correct(r) for r in rows]
    labelled = [f for f in flags if f is not None]
    n, k = len(labelled), sum(labelled)
    stats: dict[str, Any] = {
        "n": n,
        "correct": k,
        "accuracy": _round(k / n) if n else None,
        "ci95": None,
        "n_unparsed": sum(1 for r in rows if r.get("pred") is None and not r.get("unfinished")),
        "n_unlabelled": len(flags) - n,
        "chance": _chance([r for r, f in zip(rows, flags) if f is not None]),
    }
    if any("unfinished" in r for r in rows):  # an evaluation that reasons
        stats["n_unfinished"] = sum(1 for r in rows if r.get("unfinished"))
    reps = None
    if n and rng is not None and n_boot > 0:
        reps = _bootstrap_counts(rng, n, k, n_boot)
        stats["ci95"] = _interval(reps)
    return stats, reps


def reasoning_stats(rows: Sequence[dict]) -> dict | None:
    """Of an evaluation that reasons (rows with `unfinished`): how many items, how many closed
    their think block (an item that opened none has no reasoning, so it is not finished
    either), that share, and the mean words of the closed reasonings. None for other rows."""
    rows = [r for r in rows if "unfinished" in r]
    if not rows:
        return None
    done = [r["reasoning"] for r in rows if isinstance(r.get("reasoning"), str) and not r.get("unfinished")]
    words = [len(t.split()) for t in done]
    return {"n": len(rows), "n_finished": len(done), "finished": _round(len(done) / len(rows)),
            "mean_words": _round(sum(words) / len(words)) if words else None}


def _shuffle_stats(rows: Sequence[dict]) -> dict | None:
    """Consistency of the chosen option across K option orders (None when no row has K > 1).

    An order whose answer was unparseable (null) never counts as agreeing with another one:
    a model that fails under every order has no consistent answer.
    """
    agreement, same, all_correct, n_lab, k_max, n = 0.0, 0, 0, 0, 0, 0
    pair_consistency, mean_accuracy = 0.0, 0.0
    for r in rows:
        preds = r.get("shuffle_preds")
        if not isinstance(preds, list) or len(preds) < 2:
            continue
        n += 1
        k = len(preds)
        k_max = max(k_max, k)
        votes = Counter(int(p) for p in preds if p is not None)
        top = votes.most_common(1)[0][1] if votes else 0
        agreement += top / k
        same += top == k
        # Over all k(k-1)/2 pairs of orders, the share that chose the same option.
        pair_consistency += sum(c * (c - 1) / 2 for c in votes.values()) / (k * (k - 1) / 2)
        answer = r.get("answer")
        if answer is not None:
            n_lab += 1
            all_correct += votes.get(int(answer), 0) == k
            mean_accuracy += votes.get(int(answer), 0) / k
    if not n:
        return None
    return {
        "k": k_max,
        "n": n,
        "agreement": _round(agreement / n),
        "all_same": _round(same / n),
        # the strict score: right under every order (as in circular evaluation)
        "all_correct": _round(all_correct / n_lab) if n_lab else None,
        # accuracy of one order, averaged over the K orders
        "mean_accuracy": _round(mean_accuracy / n_lab) if n_lab else None,
        "pair_consistency": _round(pair_consistency / n),
    }


def compute_metrics(rows: list[dict], *, n_boot: int = 1000, seed: int = 0,
                    extra: dict | None = None) -> dict:
    """Summarise prediction rows into the content of `metrics.json`.

    `extra` (e.g. {"name": ..., "model": ...}) is stored at the top level; it may not reuse a
    key that is computed here. `n_boot=0` skips the intervals (their values are null).
    """
    by_subset: dict[str, list[dict]] = {}
    by_type: dict[str, list[dict]] = {}
    for r in rows:
        by_subset.setdefault(r.get("subset") or UNKNOWN_SUBSET, []).append(r)
        qt = r.get("question_type")
        if qt:
            by_type.setdefault(str(qt), []).append(r)

    # independent streams per statistic, so that e.g. adding question types to the rows
    # leaves the subset and mean intervals unchanged
    ss = np.random.SeedSequence(seed)
    rng_sub, rng_pool, rng_type = (np.random.default_rng(s) for s in ss.spawn(3))
    boot = n_boot > 0

    subsets: dict[str, dict] = {}
    strata: list[np.ndarray] = []
    for name in order_subsets(by_subset):
        stats, reps = _group_stats(by_subset[name], rng_sub if boot else None, n_boot)
        subsets[name] = stats
        if reps is not None:
            strata.append(reps)

    scored = [s for s in subsets.values() if s["n"]]
    arith = {
        "value": _round(sum(s["correct"] / s["n"] for s in scored) / len(scored)) if scored else None,
        "ci95": _interval(np.mean(strata, axis=0)) if strata else None,
        "n_subsets": len(scored),
        "chance": (_round(sum(s["chance"] for s in scored) / len(scored))
                   if scored and all(s["chance"] is not None for s in scored) else None),
    }
    pooled, _ = _group_stats(rows, rng_pool if boot else None, n_boot)
    weighted = {"value": pooled["accuracy"], "ci95": pooled["ci95"], "n": pooled["n"],
                "chance": pooled["chance"]}

    qtypes = {}
    for name in sorted(by_type):
        stats, _ = _group_stats(by_type[name], rng_type if boot else None, n_boot)
        qtypes[name] = {k: stats[k] for k in ("n", "correct", "accuracy", "ci95")}

    out: dict[str, Any] = {
        "metrics_version": METRICS_VERSION,
        "n": len(rows),
        "n_labelled": pooled["n"],
        "n_unlabelled": pooled["n_unlabelled"],
        "n_unparsed": pooled["n_unparsed"],
        **({"n_unfinished": pooled["n_unfinished"]} if "n_unfinished" in pooled else {}),
        "subsets": subsets,
        "arithmetic_mean": arith,
        "weighted_mean": weighted,
        "question_types": qtypes,
        "bootstrap": {"n_boot": n_boot, "seed": seed, "method": "percentile",
                      "arithmetic_mean": "stratified by subset", "weighted_mean": "items pooled"},
    }
    shuffles = _shuffle_stats(rows)
    if shuffles is not None:
        out["shuffles"] = shuffles
    reasoning = reasoning_stats(rows)
    if reasoning is not None:
        out["reasoning"] = reasoning
    if extra:
        clash = sorted(set(extra) & set(out))
        if clash:
            raise ValueError(f"extra metrics keys clash with computed ones: {clash}")
        out = {**extra, **out}
    return out


def _predictions_path(eval_dir: str | os.PathLike) -> Path:
    p = Path(eval_dir)
    return p if p.is_file() else p / PREDICTIONS


def load_predictions(eval_dir: str | os.PathLike) -> list[dict]:
    """Read an eval dir's predictions (or a predictions file given directly).

    A partial last line, left by a run killed mid-write, is skipped with a warning. When an id
    occurs more than once (an eval resumed over lines already written) the last line wins,
    kept at the place of the first, so that an item is never counted twice.
    """
    path = _predictions_path(eval_dir)
    rows: dict[Any, dict] = {}
    anonymous: list[tuple[int, dict]] = []
    order: dict[Any, int] = {}
    dupes = 0
    for lineno, obj in iter_jsonl(path, skip_bad=True):
        if not isinstance(obj, dict):
            log.warning("%s:%d: not a JSON object; line skipped", path, lineno)
            continue
        rid = obj.get("id")
        if rid is None:
            anonymous.append((lineno, obj))
            continue
        if rid in rows:
            dupes += 1
        else:
            order[rid] = lineno
        rows[rid] = obj
    if dupes:
        log.warning("%s: %d repeated ids; the last line of each was kept", path, dupes)
    merged = [(order[rid], r) for rid, r in rows.items()] + anonymous
    return [r for _, r in sorted(merged, key=lambda t: t[0])]


def write_metrics(eval_dir: str | os.PathLike, rows: list[dict] | None = None, **kw: Any) -> dict:
    """Compute metrics (from `rows`, or from the dir's predictions when None) and write
    `eval_dir/metrics.json` atomically; returns the metrics. `kw` goes to `compute_metrics`."""
    eval_dir = Path(eval_dir)
    if rows is None:
        rows = load_predictions(eval_dir)
    metrics = compute_metrics(rows, **kw)
    write_json(eval_dir / METRICS, metrics)
    return metrics


def pct(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage string, or a dash when there is no value."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def ci_text(ci: Sequence[float] | None, digits: int = 1) -> str:
    return "" if not ci else f"[{pct(ci[0], digits)}, {pct(ci[1], digits)}]"


def format_summary(metrics: dict) -> str:
    """A short table for the terminal: one line per subset, then the two means."""
    name_w = max([len("weighted mean")] + [len(s) for s in metrics.get("subsets", {})])
    head = f"{'subset':<{name_w}}  {'n':>6}  {'acc %':>6}  95% CI"
    lines = [head, "-" * len(head)]
    for name, s in metrics.get("subsets", {}).items():
        lines.append(f"{name:<{name_w}}  {s.get('n', 0):>6}  {pct(s.get('accuracy')):>6}  "
                     f"{ci_text(s.get('ci95'))}")
    lines.append("-" * len(head))
    a, w = metrics.get("arithmetic_mean", {}), metrics.get("weighted_mean", {})
    lines.append(f"{'arithmetic mean':<{name_w}}  {a.get('n_subsets', ''):>6}  "
                 f"{pct(a.get('value')):>6}  {ci_text(a.get('ci95'))}")
    lines.append(f"{'weighted mean':<{name_w}}  {w.get('n', ''):>6}  "
                 f"{pct(w.get('value')):>6}  {ci_text(w.get('ci95'))}")
    notes = [f"{metrics.get('n', 0)} items", f"{metrics.get('n_unparsed', 0)} unparsed (counted wrong)"]
    if "n_unfinished" in metrics:
        notes.append(f"{metrics['n_unfinished']} with the reasoning cut by the token budget (unfinished)")
    if metrics.get("n_unlabelled"):
        notes.append(f"{metrics['n_unlabelled']} unlabelled (excluded)")
    lines.append("; ".join(notes))
    sh = metrics.get("shuffles")
    if sh:
        lines.append(f"option orders K={sh['k']}: agreement {pct(sh['agreement'])}%, "
                     f"all same {pct(sh['all_same'])}%, right under all {pct(sh.get('all_correct'))}%")
    return "\n".join(lines)
