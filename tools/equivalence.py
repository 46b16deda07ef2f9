"""What the equivalence checkers share (tools/check_kimi_equivalence.py,
tools/check_moss_equivalence.py): the test clips, the comparison of aqa's numbers with
upstream's, the verdict. Each checker names its own exact and thresholded measures."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np


def clip(seconds: float, seed: int, period: float) -> np.ndarray:
    """Noise with tones switching on and off every `period` (+ k) seconds, so that the audio
    tokens differ along the clip."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    x = 0.05 * rng.standard_normal(t.size)
    for k, f in enumerate((440.0, 880.0, 1250.0)):
        x += 0.2 * np.sin(2 * np.pi * f * t) * ((t // (period + k)) % 2 == 0)
    return x.astype(np.float32)


def max_abs_diff(a, b) -> float:
    """inf when the shapes differ, nan when either side has a nan (both fail any threshold)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max()) if a.shape == b.shape and a.size else float("inf")


def first_difference(a, b) -> int | None:
    """Index of the first differing token (the shorter length when one is a prefix), or None."""
    a, b = list(np.asarray(a).tolist()), list(np.asarray(b).tolist())
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def compare(mine: dict, ref, *, exact: tuple[str, ...], tolerances: dict[str, float], logits: str) -> dict:
    """One row of the table: each measure of `mine` (aqa) against `ref` (upstream): the `exact`
    ones equal, the `tolerances` ones within their threshold; the `logits` measure's scale,
    argmax agreement and, where `mine` names the answer `letters`, those logits at the last
    position (what score mode reads, held to the logits' threshold). `failures` lists the
    measures that fail (empty: equivalent)."""
    row, failures = {}, []
    for k in exact:
        same = np.asarray(mine[k]).shape == np.asarray(ref[k]).shape and bool(np.array_equal(mine[k], ref[k]))
        row[f"same_{k}"] = same
        if not same:
            failures.append(k)
    row["generated_first_difference"] = first_difference(mine["generated"], ref["generated"])
    row["generated_upstream"] = np.asarray(ref["generated"]).tolist()
    for k, tol in tolerances.items():
        d = max_abs_diff(mine[k], ref[k])
        row[f"{k}_max_abs_diff"] = d
        if not d < tol:  # also catches nan
            failures.append(k)
    a, r = np.asarray(mine[logits]), np.asarray(ref[logits])
    row["logits_scale"] = float(np.abs(r).max())
    row["argmax_agree"] = float((a.argmax(-1) == r.argmax(-1)).mean()) if a.shape == r.shape else 0.0
    if "letters" in mine and a.shape == r.shape:
        d = max_abs_diff(a[-1, mine["letters"]], r[-1, mine["letters"]])
        row["answer_logits_max_abs_diff"] = d
        if not d < tolerances[logits]:
            failures.append("answer_logits")
    row["positions"] = int(r.shape[0])
    row["failures"] = failures
    return row


def verdict(rows: list[dict]) -> bool:
    """True when no row has a failure (and there is at least one row)."""
    return bool(rows) and not any(r["failures"] for r in rows)


def git_commit(folder: Path) -> str | None:
    r = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None
