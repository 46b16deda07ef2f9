"""The report's tables, as rows of text cells: accuracy per subset (the reference report's
Table 2), details, accuracy by question type, audio contribution, training runs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from aqa.eval.metrics import ci_text, pct
from aqa.eval.report.calibration import N_CALIBRATION_BINS
from aqa.eval.report.data import MEANS, EvalRun, TrainRun, all_subsets, finite
from aqa.eval.report.document import Table

NONE = "–"


def report_tables(evals: Sequence[EvalRun], trains: Sequence[TrainRun], ece: dict[str, float],
                  train_plots: dict[str, str]) -> list[Table]:
    """Every table of the report, in report order; the optional ones only when they have rows."""
    tables: list[Table | None] = []
    if evals:
        # The accuracy table first: build_report returns it as the report's headline table.
        tables += [accuracy_table(evals), suite_table(evals), details_table(evals, ece), reasoning_table(evals),
                   question_type_table(evals), contribution_table(evals), sensitivity_table(evals)]
    if trains:
        tables += [training_table(trains, train_plots), completions_table(trains)]
    return [t for t in tables if t is not None]


def suite_table(evals: Sequence[EvalRun]) -> Table | None:
    """One row per suite run (`aqa eval --suite`), a column per benchmark (weighted-mean accuracy
    with its 95% interval) and the mean over the benchmarks, as papers print them."""
    import json

    suites: dict = {}
    for e in evals:
        folder = e.path.parent.parent
        if e.path.parent.name == "eval" and (folder / "suite.json").is_file():
            suites.setdefault(folder, {})[e.path.name] = e
    if not suites:
        return None
    columns: list[str] = []
    for folder in suites:
        columns += [b for b in json.loads((folder / "suite.json").read_text())["benchmarks"] if b not in columns]
    rows = []
    for folder, runs in suites.items():
        accs = {b: finite(runs[b].metrics.get("weighted_mean", {}).get("value")) for b in columns if b in runs}
        cells = [f"{pct(accs[b])} {ci_text(runs[b].metrics['weighted_mean'].get('ci95'))}".strip()
                 if accs.get(b) is not None else NONE for b in columns]
        have = [v for v in accs.values() if v is not None]
        mean = pct(sum(have) / len(have)) if len(have) == len(columns) else NONE
        rows.append([folder.name, *cells, mean])
    return Table(["suite run", *columns, "mean"], rows, title="Benchmarks (%)",
                 caption="Each benchmark's accuracy over its labelled questions (95% bootstrap interval) and the "
                         "mean over the benchmarks (shown when every benchmark was evaluated), from aqa eval --suite.")


def accuracy_table(evals: Sequence[EvalRun]) -> Table:
    """The reference report's Table 2: per-subset accuracy, then the two means with CIs."""
    subsets = all_subsets(evals)
    rows = [_counts_row(evals, subsets)] + [_accuracy_row(e, subsets) for e in evals]
    notes = {0}
    chance = _chance_row(evals, subsets)
    if any(c != NONE for c in chance[1:]):
        notes.add(len(rows))
        rows.append(chance)
    return Table(["run", *subsets, *MEANS], rows, notes, title="Accuracy (%)", caption=(
        "Accuracy in percent. Arithmetic mean: the mean of the per-subset accuracies; "
        "weighted mean: pooled over all labelled questions; brackets: 95% percentile "
        "bootstrap interval (stratified by subset for the arithmetic mean). "
        "Unparseable answers count as wrong; unlabelled items are excluded. "
        "Chance: the mean of 1/(number of options)."))


def _subset_stats(evals: Sequence[EvalRun], subset: str) -> list[dict]:
    """The subset's metrics of each run that has it."""
    return [e.metrics["subsets"][subset] for e in evals if subset in e.metrics.get("subsets", {})]


def _counts_row(evals: Sequence[EvalRun], subsets: Sequence[str]) -> list[str]:
    pooled = [e.metrics.get("weighted_mean", {}).get("n", e.metrics.get("n_labelled", 0)) for e in evals]
    return ["items", *(_span([s.get("n", 0) for s in _subset_stats(evals, sub)]) for sub in subsets),
            f"{len(subsets)} subsets", _span(pooled)]


def _accuracy_row(e: EvalRun, subsets: Sequence[str]) -> list[str]:
    subs = e.metrics.get("subsets", {})
    row = [e.name] + [pct(subs.get(s, {}).get("accuracy")) for s in subsets]
    for key in MEANS.values():
        m = e.metrics.get(key, {})
        row.append(f"{pct(m.get('value'))} {ci_text(m.get('ci95'))}".strip())
    return row


def _chance_row(evals: Sequence[EvalRun], subsets: Sequence[str]) -> list[str]:
    row = ["chance"]
    row += [_mean_pct(s.get("chance") for s in _subset_stats(evals, sub)) for sub in subsets]
    row += [_mean_pct(e.metrics.get(key, {}).get("chance") for e in evals) for key in MEANS.values()]
    return row


def _mean_pct(values: Iterable) -> str:
    """The mean of the finite values, in %; a dash when there is none."""
    vals = [v for v in map(finite, values) if v is not None]
    return pct(sum(vals) / len(vals)) if vals else NONE


def _span(values: Sequence[int]) -> str:
    """One count when all runs agree, else the range (runs on different data stand out)."""
    if not values:
        return NONE
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}–{hi}"


#: How an eval read each answer (its `mode`), in words.
ANSWER_MODES = {"score": "letter scores", "generate": "generated text",
                "reason-then-score": "letter scores after the reasoning"}


def details_table(evals: Sequence[EvalRun], ece: dict[str, float]) -> Table:
    """Counts, consistency across option orders, and calibration error per run."""
    header = ["run", "answer read from", "items", "unparsed", "unlabelled", "skipped", "audio truncated",
              "option orders K", "agreement", "all same", "right under all orders", "ECE"]
    rows = []
    for e in evals:
        m = e.metrics
        sh = m.get("shuffles") or {}
        rows.append([e.name, ANSWER_MODES.get(m.get("mode"), NONE), str(m.get("n", NONE)), _unparsed(m),
                     str(m.get("n_unlabelled", NONE)), _skipped(m), _truncated(m), str(sh.get("k", NONE)),
                     pct(sh.get("agreement")), pct(sh.get("all_same")), pct(sh.get("all_correct")),
                     pct(ece.get(e.name))])
    return Table(header, rows, title="Details", caption=(
        "Answer read from: the option letters' probabilities at the answer position (score), or "
        "the generated text through the answer parser (generate), which also credits \"(A)\", "
        "\"The answer is ...\" or the option's text, as published zero-shot numbers do. Agreement: the mean share of option orders that chose the most common option; all same: "
        "items where every order chose the same option; right under all orders: labelled items "
        "answered right under every order (all in %). ECE: expected calibration error of the "
        f"predicted option's probability, {N_CALIBRATION_BINS} bins (%). Skipped: items not answered, by "
        "reason (skipped.jsonl: audio that cannot be decoded, prompt_too_long for a prompt longer than the "
        "model takes); audio truncated: items whose clip was longer than the model hears, answered from its "
        "first seconds up to that limit. Unparsed: answers that name no option; a model that reasons adds the "
        "items whose reasoning the token budget cut (unfinished), counted apart."))


def reasoning_table(evals: Sequence[EvalRun]) -> Table | None:
    """For evaluations of a model that reasons: accuracy beside the share of items whose
    reasoning was finished and the mean length of those reasonings; None when none reasons."""
    rows = []
    for e in evals:
        r = e.metrics.get("reasoning")
        if not r:
            continue
        words = r.get("mean_words")
        rows.append([e.name, ANSWER_MODES.get(e.metrics.get("mode"), NONE), str(r["n"]),
                     pct(e.metrics.get("weighted_mean", {}).get("value")), pct(r.get("finished")),
                     NONE if words is None else f"{words:.1f}", str(e.metrics.get("max_new_tokens", NONE))])
    if not rows:
        return None
    return Table(["run", "answer read from", "items", "accuracy (%)", "finished (%)", "mean words", "token budget"],
                 rows, title="Reasoning", caption=(
                     "Finished: items whose think block the model closed within the token budget (a reasoning "
                     "the budget cut, or an answer with no think block, is not finished); mean words: the mean "
                     "length of the finished reasonings, in words. Accuracy: pooled over the labelled items."))


def _unparsed(m: dict) -> str:
    n = str(m.get("n_unparsed", NONE))
    return n if "n_unfinished" not in m else f"{n} (+{m['n_unfinished']} unfinished)"


def _skipped(m: dict) -> str:
    n = m.get("n_skipped")
    if not n:
        return NONE if n is None else "0"
    kinds = m.get("skipped") or {}
    return f"{n} ({', '.join(f'{k} {c}' for k, c in kinds.items())})" if kinds else str(n)


def _truncated(m: dict) -> str:
    t = m.get("audio_truncated")
    if not t:
        return NONE
    return f"{t['n']} (to {t['limit_s']:g} s)" if t["n"] else "0"


def question_type_table(evals: Sequence[EvalRun]) -> Table | None:
    """One row per question type, one column per run; None when no run has question types."""
    types = sorted({t for e in evals for t in e.metrics.get("question_types", {})})
    if not types:
        return None
    rows = []
    for t in types:
        cells = [e.metrics.get("question_types", {}).get(t) for e in evals]
        n = _span([c["n"] for c in cells if c])
        rows.append([t, n] + [pct(c.get("accuracy")) if c else NONE for c in cells])
    return Table(["question type", "items", *[e.name for e in evals]], rows,
                 title="Accuracy by question type (%)")


def contribution_table(evals: Sequence[EvalRun]) -> Table | None:
    """For evaluations run without the audio (`aqa eval --audio silence --reference ...`): per
    subset, accuracy with the audio, without it, and the mean audio contribution per item."""
    rows = []
    for e in evals:
        for subset, c in (e.metrics.get("audio_contribution") or {}).items():
            rows.append([e.name, subset, str(c["n"]), pct(c["accuracy_with_audio"]),
                         pct(c["accuracy_without"]), pct(c["contribution"])])
    if not rows:
        return None
    return Table(["run", "subset", "items", "with audio", "without", "contribution"], rows,
                 title="Audio contribution (%)",
                 caption="Contribution: per item, correct with the audio minus correct without it, "
                         "averaged (points of accuracy that come from listening).")


def sensitivity_table(evals: Sequence[EvalRun]) -> Table | None:
    """Audio sensitivity as DCASE 2026 measures it (arXiv 2609.04637, as the task states it):
    accuracy with the real audio minus the mean of the silent-audio and mismatched-audio
    accuracies, per subset, for each pair of a silence and a mismatched evaluation made with
    the same `--reference`; the silent contribution beside it."""
    by_ref: dict[tuple[str, str], EvalRun] = {}
    for e in evals:
        if e.metrics.get("audio") in ("silence", "mismatched") and e.metrics.get("reference"):
            by_ref[(e.metrics["reference"], e.metrics["audio"])] = e
    rows = []
    for (ref, mode), silent in by_ref.items():
        other = by_ref.get((ref, "mismatched"))
        if mode != "silence" or other is None:
            continue
        # A metrics.json written by hand or by an older aqa may lack the per-subset breakdown.
        s, m = (silent.metrics.get("audio_contribution") or {}), (other.metrics.get("audio_contribution") or {})
        for subset in [k for k in s if k in m]:
            with_audio = s[subset]["accuracy_with_audio"]
            without = (s[subset]["accuracy_without"] + m[subset]["accuracy_without"]) / 2
            rows.append([f"{silent.name} + {other.name}", subset, str(min(s[subset]["n"], m[subset]["n"])),
                         pct(with_audio), pct(s[subset]["accuracy_without"]), pct(m[subset]["accuracy_without"]),
                         pct(with_audio - without), pct(s[subset]["contribution"])])
    if not rows:
        return None
    return Table(["runs", "subset", "items", "with audio", "silent", "mismatched", "sensitivity",
                  "silent contribution"], rows, title="Audio sensitivity (%)",
                 caption="Sensitivity: accuracy with the real audio minus the mean of the accuracies with silent "
                         "audio and with another item's clip (aqa eval --audio silence / mismatched, both with "
                         "--reference to the run with the audio), as DCASE 2026's audio-dependence measure.")


def training_table(trains: Sequence[TrainRun], plots: dict[str, str]) -> Table:
    """Last step, loss and reward of each training run, and its plot's file name."""
    rows = []
    for t in trains:
        steps, losses, rewards = t.values("step"), t.values("loss"), t.values("reward")
        rows.append([t.name, str(int(max(steps))) if steps else NONE,
                     f"{losses[-1]:.4g}" if losses else NONE,
                     f"{rewards[-1]:.4g}" if rewards else NONE, plots.get(t.name, NONE)])
    return Table(["run", "last step", "last loss", "last reward", "plot"], rows, title="Training runs")


#: Completions the report shows per step, and the steps it shows them for.
COMPLETIONS_PER_STEP, COMPLETION_STEPS, COMPLETION_CHARS = 2, 3, 80


def completions_table(trains: Sequence[TrainRun]) -> Table | None:
    """A few of GRPO's sampled completions at the first, middle and last step of each run that
    logged them: what the policy said, what each reward made of it, its advantage."""
    rows = []
    for t in trains:
        steps = sorted({int(c["step"]) for c in t.completions if "step" in c})
        shown = sorted({steps[round(i * (len(steps) - 1) / max(COMPLETION_STEPS - 1, 1))]
                        for i in range(COMPLETION_STEPS)}) if steps else []
        for step in shown:
            for c in [c for c in t.completions if c.get("step") == step][:COMPLETIONS_PER_STEP]:
                text = str(c.get("completion", "")).replace("\n", " ")
                text = text if len(text) <= COMPLETION_CHARS else text[:COMPLETION_CHARS - 1] + "…"
                parts = ", ".join(f"{k} {v:.3g}" for k, v in (c.get("rewards") or {}).items())
                rows.append([t.name, str(step), str(c.get("id", NONE)), text or NONE,
                             f"{c['reward']:.3g}" if finite(c.get("reward")) is not None else NONE, parts or NONE,
                             f"{c['advantage']:+.3g}" if finite(c.get("advantage")) is not None else NONE])
    if not rows:
        return None
    return Table(["run", "step", "question", "completion", "reward", "each reward", "advantage"], rows,
                 title="GRPO completions (samples)",
                 caption=f"Up to {COMPLETIONS_PER_STEP} sampled answers at the first, middle and last step, from "
                         f"the run's completions.jsonl (every answer of every step is there).")
