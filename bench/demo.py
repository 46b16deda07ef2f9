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

--profile DIR [DIR ...]: where a step's time goes, for the model and settings of each demo folder
(its pretrained base): CPU seconds of one torch thread (the minimum of 3 after a warm-up, which
other processes on the cores barely move, unlike wall time) for one batch of 16 training items:
collating, the audio encoder's forward, a scoring forward, an SFT step with and without LoRA
dropout, a GRPO step's passes, and the two pretraining steps; then wall seconds per SFT step
through the recipe itself with the torch threads as they are, with and without DataLoader
workers and LoRA dropout (steps 3 to 12).

    python bench/demo.py -o /tmp/demo
    python bench/demo.py -o /tmp/demo-old --config old.yaml --baseline /tmp/demo
    python bench/demo.py --profile /tmp/demo-old /tmp/demo
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
             f"load average (1 min) {load[0]:.1f} at the start, {load[1]:.1f} at the end (the demo's own threads "
             f"count in it); {total:.0f} s in all.\n"]
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


def cpu_seconds(fn, repeats: int = 3) -> float:
    """The least CPU time of this thread over `repeats` calls of `fn`, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.thread_time()
        fn()
        times.append(time.thread_time() - t)
    return min(times)


def step_costs(demo: Path) -> dict[str, float]:
    """CPU seconds (one torch thread) of each piece of the demo's steps, on one batch of 16
    training items with the demo folder's base model and settings."""
    import torch

    from aqa.config import load_config
    from aqa.data.events import read_labels
    from aqa.data.records import load_records
    from aqa.demo import DemoConfig
    from aqa.models.registry import load_backend
    from aqa.train.data import QAItems
    from aqa.train.pretrain import encoder_output_shape

    cfg = load_config(DemoConfig, demo / "demo_config.yaml")
    base = str(demo / "models" / "base")
    items = QAItems(load_records(demo / "data" / "train.jsonl")[:16], seed=cfg.seed, shuffle=False,
                    window_s=float(cfg.clip_seconds))
    examples = [items.get(i, 0).example for i in range(len(items))]
    n_options = [len(items.records[i].choices) for i in range(len(items))]
    out = {}
    be = load_backend(base, device="cpu")
    out["collate 16 items (log-mels, tokens)"] = cpu_seconds(lambda: be.collate(examples, with_target=True))
    batch = be.collate(examples, with_target=True)
    with torch.no_grad():
        out["audio encoder forward"] = cpu_seconds(
            lambda: be.audio_embeddings(batch["input_features"], batch["feature_attention_mask"]))
        out["scoring forward (an eval batch)"] = cpu_seconds(lambda: be.option_logits(batch, n_options))

    def trainer(params):
        opt = torch.optim.AdamW(params, lr=1e-4)

        def step(loss_of):
            def run():
                loss_of().backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad()
            return run
        return step

    def sft_loss(backend):
        logp, mask = backend.target_logprobs(batch)
        return -(logp.sum() / mask.sum())

    for dropout in (0.05, 0.0):
        lb = load_backend(base, device="cpu")
        lb.add_lora(r=cfg.lora_r, alpha=2 * cfg.lora_r, dropout=dropout)
        lb.model.train()
        step = trainer([p for p in lb.model.parameters() if p.requires_grad])
        out[f"SFT step, LoRA dropout {dropout:g}"] = cpu_seconds(step(lambda: sft_loss(lb)))
    # A choice-rollout GRPO step: the rollouts' and the reference's forwards without gradients, then
    # the policy's forward and backward (lb: the last adapter above, without dropout).
    with torch.no_grad():
        rollout = cpu_seconds(lambda: lb.option_logits(batch, n_options))
        with lb.without_adapter():
            reference = cpu_seconds(lambda: lb.option_logits(batch, n_options))
    update = cpu_seconds(step(lambda: lb.option_logits(batch, n_options).logsumexp(-1).mean()))
    out["GRPO step: rollouts + reference + update"] = rollout + reference + update
    pb = load_backend(base, device="cpu", is_trainable=True)
    encoder = pb.audio_encoder()
    feats = pb.encoder_inputs([e.audio for e in examples])
    frames, width = encoder_output_shape(pb, feats)
    classes = len(read_labels(demo / "data" / "synth" / "labels.tsv"))
    head = torch.nn.Linear(width, classes)
    targets = torch.zeros(len(examples), frames, classes)
    step = trainer(list(encoder.parameters()) + list(head.parameters()))
    out["pretraining: encoder step"] = cpu_seconds(step(
        lambda: torch.nn.functional.binary_cross_entropy_with_logits(head(pb.encoder_states(feats)), targets)))
    encoder.requires_grad_(False)
    step = trainer([p for p in pb.model.parameters() if p.requires_grad])
    out["pretraining: alignment step"] = cpu_seconds(step(lambda: sft_loss(pb)))
    return out


def sft_wall(demo: Path, steps: int = 12) -> dict[str, float]:
    """Wall seconds per SFT step (steps 3 to `steps`) through the recipe, the demo's SFT with
    LoRA dropout and DataLoader workers as named."""
    import dataclasses
    import tempfile

    from aqa.config import load_config
    from aqa.demo import DemoConfig, sft_config
    from aqa.train.sft import train

    cfg = load_config(DemoConfig, demo / "demo_config.yaml")
    out = {}
    for dropout, workers in ((0.05, 2), (0.0, 2), (0.0, 0)):
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "sft"
            train(dataclasses.replace(sft_config(cfg, demo / "models" / "base", demo / "data" / "train.jsonl", run),
                                      max_steps=steps, lora_dropout=dropout, num_workers=workers, save_every=steps))
            log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
        out[f"SFT step, wall: LoRA dropout {dropout:g}, {workers} DataLoader workers"] = (
            (log[-1]["seconds"] - log[2]["seconds"]) / (len(log) - 3))
    return out


def profile_section(demos: list[Path], command: str) -> str:
    import torch

    load = os.getloadavg()[0]
    threads = torch.get_num_threads()
    walls = [sft_wall(d) for d in demos]
    torch.set_num_threads(1)
    costs = [step_costs(d) for d in demos]
    torch.set_num_threads(threads)

    def sizes(d: Path) -> str:
        from aqa.config import load_config
        from aqa.demo import DemoConfig

        c = load_config(DemoConfig, d / "demo_config.yaml")
        return f"{d.name}: {c.encoder_dim} wide, {c.encoder_layers} encoder layers, {c.clip_seconds} s clips"

    lines = [f"\n## {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPU cores, "
             f"`aqa demo` step costs\n",
             f"Command: `{command}`; torch {torch.__version__}; CPU seconds of one torch thread, the least of 3 "
             f"after a warm-up, one batch of 16 training items; wall seconds per SFT step with {threads} torch "
             f"threads through the recipe (steps 3 to 12); load average (1 min) {load:.1f} at the start, "
             f"{os.getloadavg()[0]:.1f} at the end.\n",
             "| piece | " + " | ".join(sizes(d) for d in demos) + " |", "|---|" + "---:|" * len(demos)]
    for key in [*costs[0], *walls[0]]:
        lines.append(f"| {key} | " + " | ".join(f"{c[key]:.3f}" for c in (costs if key in costs[0] else walls))
                     + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", help="demo folder to run into (must not hold a finished demo)")
    ap.add_argument("--read", help="a finished demo folder: record it without running")
    ap.add_argument("--config", help="demo YAML config (default: configs/demo.yaml)")
    ap.add_argument("--baseline", help="another finished demo folder whose stage times go beside these")
    ap.add_argument("--profile", nargs="+", metavar="DIR", help="finished demo folders: where a step's time goes")
    ap.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the demo config")
    args = ap.parse_args(argv)
    from aqa.config import load_config
    from aqa.demo import DEFAULT_CONFIG, DemoConfig, run_demo

    command = f"bench/demo.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    if args.profile:
        text = profile_section([Path(d) for d in args.profile], command)
        print(text)
        with open(args.results, "a", encoding="utf-8") as f:
            f.write(text)
        return 0
    if bool(args.output) == bool(args.read):
        ap.error("give -o DIR (run the demo), --read DIR (a finished one) or --profile DIR ...")
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
