"""`aqa demo`'s time per stage and its claims, on this machine.

Runs the demo (configs/demo.yaml and key=value overrides) into a folder that must not hold a
finished demo, or reads a finished one (--read), and appends to bench/RESULTS.md: machine, date,
command, torch threads, the load average at the demo's start and end, seconds per stage with its share, and the
dev accuracy of every row with its 95% interval. Then the demo's claims, each against a baseline
from the same run, with the bootstrap interval of the paired difference (the same dev questions):

- SFT at least 20 points above zero-shot, and at least 25 above chance;
- the ensemble no more than 0.5 points below the better of the two tuned models;
- GRPO not below SFT.

A claim "holds with margin" when its whole interval clears the threshold. --baseline DIR puts
another finished demo's stage times beside these (the settings before a change, say).

    python bench/demo.py -o /tmp/demo
    python bench/demo.py -o /tmp/demo-old --config old.yaml --baseline /tmp/demo
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

N_BOOT = 2000


def paired(rows: list[dict], base: list[dict], seed: int = 0) -> tuple[float, float, float]:
    """Accuracy of `rows` minus that of `base` on their common questions, and the 95%
    percentile bootstrap interval of that difference (questions resampled)."""
    import numpy as np

    right = {r["id"]: r["pred"] == r["answer"] for r in base}
    d = np.array([float(r["pred"] == r["answer"]) - right[r["id"]] for r in rows if r["id"] in right])
    reps = np.random.default_rng(seed).choice(d, size=(N_BOOT, len(d))).mean(1)
    return float(d.mean()), float(np.quantile(reps, 0.025)), float(np.quantile(reps, 0.975))


def claims(evals: Path) -> list[tuple[str, str, str]]:
    """(claim, measured, verdict) for each claim whose rows this demo has."""
    from aqa.eval.metrics import load_predictions

    have = {p.name for p in evals.iterdir() if (p / "metrics.json").is_file()}
    pred = {n: load_predictions(evals / n) for n in have}
    metrics = {n: json.loads((evals / n / "metrics.json").read_text())["weighted_mean"] for n in have}

    def verdict(lo: float, point: float, threshold: float) -> str:
        return "holds with margin" if lo >= threshold else "holds" if point >= threshold else "fails"

    def gap(a: str, b: str, threshold: float, claim: str) -> tuple[str, str, str]:
        d, lo, hi = paired(pred[a], pred[b])
        return (claim, f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] points", verdict(lo, d, threshold))

    out = []
    if {"sft", "zero-shot"} <= have:
        out.append(gap("sft", "zero-shot", 0.20, "SFT >= zero-shot + 20 points"))
    if "sft" in have:
        m = metrics["sft"]
        above, lo = m["value"] - m["chance"], m["ci95"][0] - m["chance"]
        out.append(("SFT >= chance + 25 points", f"{100 * above:+.1f} [{100 * lo:+.1f}, "
                    f"{100 * (m['ci95'][1] - m['chance']):+.1f}] points above chance {100 * m['chance']:.1f}%",
                    verdict(lo, above, 0.25)))
    if {"ensemble", "sft", "sft-b"} <= have:
        best = max(("sft", "sft-b"), key=lambda n: metrics[n]["value"])
        out.append(gap("ensemble", best, -0.005, f"ensemble >= the better single model ({best}) - 0.5 points"))
    if {"grpo", "sft"} <= have:
        out.append(gap("grpo", "sft", 0.0, "GRPO >= SFT"))
    return out


def section(demo: Path, command: str, baseline: Path | None) -> str:
    import torch

    summary = json.loads((demo / "demo_summary.json").read_text())
    stages, total, load = summary["stages"], summary["seconds"], summary.get("load_average", [float("nan")] * 2)
    lines = [f"\n## {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPU cores, `aqa demo`\n",
             f"Command: `{command}`; torch {torch.__version__}, {torch.get_num_threads()} torch threads"
             f"{', OMP_NUM_THREADS=' + os.environ['OMP_NUM_THREADS'] if 'OMP_NUM_THREADS' in os.environ else ''}; "
             f"load average (1 min) {load[0]:.1f} at the start, {load[1]:.1f} at the end (above 0 other "
             f"processes share the cores); {total:.0f} s in all.\n"]
    base = json.loads((baseline / "demo_summary.json").read_text())["stages"] if baseline else None
    head = "| stage | seconds | share |" + (f" baseline ({baseline.name}) |" if base else "")
    lines += [head, "|---|---:|---:|" + ("---:|" if base else "")]
    for name, s in [*stages.items(), ("all stages", sum(stages.values()))]:
        row = f"| {name} | {s:.0f} | {100 * s / max(total, 1e-9):.0f}% |"
        if base:
            b = sum(base.values()) if name == "all stages" else base.get(name)
            row += f" {b:.0f} |" if b is not None else " – |"
        lines.append(row)
    lines += ["", "```", summary["table"].rstrip(), "```", ""]
    lines += ["| claim | measured, paired [95% CI] | verdict |", "|---|---|---|"]
    lines += [f"| {c} | {m} | {v} |" for c, m, v in claims(demo / "eval")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", help="demo folder to run into (must not hold a finished demo)")
    ap.add_argument("--read", help="a finished demo folder: record it without running")
    ap.add_argument("--config", help="demo YAML config (default: configs/demo.yaml)")
    ap.add_argument("--baseline", help="another finished demo folder whose stage times go beside these")
    ap.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the demo config")
    args = ap.parse_args(argv)
    from aqa.config import load_config
    from aqa.demo import DEFAULT_CONFIG, DemoConfig, run_demo

    if bool(args.output) == bool(args.read):
        ap.error("give -o DIR (run the demo) or --read DIR (a finished one)")
    command = f"bench/demo.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    if args.read:
        demo = Path(args.read)
    else:
        demo = Path(args.output)
        if (demo / "demo_summary.json").is_file():
            ap.error(f"{demo} holds a finished demo: its stages would not run again (use --read)")
        run_demo(demo, load_config(DemoConfig, args.config or DEFAULT_CONFIG, args.overrides))
    text = section(demo, command, Path(args.baseline) if args.baseline else None)
    print(text)
    with open(args.results, "a", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
