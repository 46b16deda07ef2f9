"""`aqa data filter`: keep the questions that silent audio does not answer.

Rule (AudioMCQ's, for its audio-contribution split): a question is weak, and dropped, if at
least k of the n given models answer it correctly with the audio replaced by silence; the
default is 2 of 3. Each given folder is an `aqa eval --audio silence` (or `--audio none`) dir.
"""

# The command sits under `aqa data` because it writes a records file; the module sits in
# aqa.eval because it reads evaluation outputs, which the data layer must not depend on.

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from aqa.data.records import load_records, write_records

log = logging.getLogger(__name__)


def weak_ids(silent_dirs: list[str | Path], min_correct: int = 2) -> tuple[set[str], dict[str, int]]:
    """Ids that at least `min_correct` silent evaluations answered correctly, and each id's count."""
    # Here, not at the top: `aqa data` imports this module to build its parser, and metrics
    # brings numpy.
    from aqa.eval.metrics import load_predictions

    if not 1 <= min_correct <= len(silent_dirs):
        raise ValueError(f"min_correct must be between 1 and the {len(silent_dirs)} evaluation(s) given")
    counts: dict[str, int] = {}
    for d in silent_dirs:
        for r in load_predictions(d):
            counts[r["id"]] = counts.get(r["id"], 0) + int(bool(r.get("correct")))
    return {i for i, c in counts.items() if c >= min_correct}, counts


def filter_records(data: str | Path, silent_dirs: list[str | Path], out: str | Path, *, min_correct: int = 2,
                   allow_outside_root: bool = False) -> dict:
    records = load_records(data, allow_outside_root=allow_outside_root, require_answer=False)
    weak, counts = weak_ids(silent_dirs, min_correct)
    unseen = [r.id for r in records if r.id not in counts]
    if unseen:
        log.warning("%d question(s) were in none of the silent evaluations and are kept (e.g. %s)",
                    len(unseen), ", ".join(unseen[:3]))
    keep = [r for r in records if r.id not in weak]
    write_records(out, keep, relative_to=Path(out).parent)
    return {"questions": len(records), "kept": len(keep), "dropped": len(records) - len(keep), "unseen": len(unseen)}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("filter", help="drop questions that silent audio answers", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="AQA JSONL")
    p.add_argument("--silent", nargs="+", required=True, help="eval dirs made with --audio silence (one per model)")
    p.add_argument("--min-correct", type=int, default=2, help="weak if at least this many answer it on silence")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--allow-outside-root", action="store_true")
    p.set_defaults(func=_run)


def _run(args) -> int:
    s = filter_records(args.data, args.silent, args.output, min_correct=args.min_correct,
                       allow_outside_root=args.allow_outside_root)
    print(f"kept {s['kept']} of {s['questions']} questions ({s['dropped']} answered on silence by at least "
          f"{args.min_correct} of {len(args.silent)} models); wrote {args.output}")
    return 0
