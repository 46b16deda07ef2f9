"""Calibration of the predicted option's probability: reliability bins and the expected
calibration error (ECE), from an eval dir's prediction rows."""

from __future__ import annotations

import math
from collections.abc import Sequence

from aqa.eval.report.data import EvalRun

N_CALIBRATION_BINS = 10


def calibration_points(rows: Sequence[dict], bins: int = N_CALIBRATION_BINS) -> dict | None:
    """Per confidence bin: mean confidence of the predicted option, accuracy and count; and
    the expected calibration error. None when no labelled row has usable probabilities."""
    conf, hit = _confidences(rows)
    if not conf:
        return None
    sums = [[0.0, 0.0, 0] for _ in range(bins)]
    for c, h in zip(conf, hit):
        b = min(int(c * bins), bins - 1)
        sums[b][0] += c
        sums[b][1] += h
        sums[b][2] += 1
    pts = [(s[0] / s[2], s[1] / s[2], s[2]) for s in sums if s[2]]
    ece = sum(n * abs(a - c) for c, a, n in pts) / len(conf)
    return {"confidence": [p[0] for p in pts], "accuracy": [p[1] for p in pts],
            "count": [p[2] for p in pts], "ece": ece, "n": len(conf)}


def calibration_curves(evals: Sequence[EvalRun]) -> dict[str, dict]:
    """calibration_points per run, for the runs whose predictions carry probabilities."""
    return {e.name: c for e in evals if e.rows
            for c in [calibration_points(e.rows)] if c is not None}


def _confidences(rows: Sequence[dict]) -> tuple[list[float], list[bool]]:
    """The predicted option's probability and whether it was right, per usable labelled row."""
    conf, hit = [], []
    for r in rows:
        probs, pred, answer = r.get("probs"), r.get("pred"), r.get("answer")
        if answer is None or pred is None or not isinstance(probs, list):
            continue
        try:
            p = [float(x) for x in probs]
            pred, answer = int(pred), int(answer)
        except (TypeError, ValueError):
            continue
        total = sum(p)
        if not (0 <= pred < len(p)) or not math.isfinite(total) or total <= 0:
            continue
        conf.append(p[pred] / total)  # normalised, in case a producer stored raw scores
        hit.append(pred == answer)
    return conf, hit
