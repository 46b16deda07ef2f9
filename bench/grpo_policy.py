"""GRPO after SFT: a fresh adapter on the merged SFT weights (`policy=new`) against training
the SFT adapter on (`policy=sft`), from the same SFT adapter with the same settings and seeds.
Prints one row per (policy, seed) and the mean per policy: dev accuracy after GRPO, the mean
training reward over the first and the last 10 steps, the greedy training accuracy, the last
KL to the reference; appends the table to bench/RESULTS.md.

On an `aqa demo` folder (its base model, SFT adapter, data and GRPO settings):

    python bench/grpo_policy.py --demo runs/demo --seeds 1,2

or on any model: --model M --sft-adapter RUN/adapter --train T.jsonl --dev D.jsonl, with the
GRPO settings as key=value overrides (`--set max_steps=40 lr=2e-4 ...`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

FIRST_LAST = 10  # steps averaged at each end of the training curve


def demo_settings(demo: Path) -> tuple[dict, dict, dict]:
    """(paths, GRPO settings, eval options) of an `aqa demo` folder, as the demo's own GRPO and
    eval stages use them (`aqa.demo.grpo_config`)."""
    import dataclasses

    from aqa.config import load_config
    from aqa.demo import DemoConfig, grpo_config
    from aqa.train.grpo import GRPOConfig

    cfg = load_config(DemoConfig, demo / "demo_config.yaml")
    paths = dict(model=demo / "models" / "base", sft_adapter=demo / "runs" / "sft" / "adapter",
                 train=demo / "data" / "train.jsonl", dev=demo / "data" / "dev.jsonl")
    own = ("model", "sft_adapter", "train_data", "output_dir", "seed")
    demo_cfg = grpo_config(cfg, paths["model"], paths["sft_adapter"], paths["train"], demo / "runs" / "grpo")
    defaults = GRPOConfig()
    # Only what the demo sets apart from GRPOConfig's defaults, so the table's header stays short.
    grpo = {k: v for k, v in dataclasses.asdict(demo_cfg).items() if k not in own and v != getattr(defaults, k)}
    return paths, grpo, dict(batch_size=cfg.eval_batch, seed=cfg.seed)


def dev_metrics(paths: dict, adapter: Path, ev: dict, out: Path) -> dict:
    """metrics.json of the model with `adapter` on the dev file (eval folder `out`, resumed)."""
    from aqa.eval.run import EvalSettings, evaluate

    return evaluate(EvalSettings(str(paths["model"]), str(adapter), str(paths["dev"]), seed=ev["seed"]), out,
                    batch_size=ev["batch_size"], name=out.name, progress=False)


def run_one(paths: dict, grpo: dict, ev: dict, policy: str, seed: int, out: Path) -> dict:
    from aqa.train.grpo import GRPOConfig, train

    run = out / f"grpo-{policy}-s{seed}"
    train(GRPOConfig(model=str(paths["model"]), sft_adapter=str(paths["sft_adapter"]),
                     train_data=[str(paths["train"])], output_dir=str(run), seed=seed, policy=policy, **grpo))
    m = dev_metrics(paths, run / "adapter", ev, out / f"eval-{policy}-s{seed}")
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines() if x.strip()]
    reward, acc = [x["reward"] for x in log], [x["accuracy"] for x in log]
    k = min(FIRST_LAST, len(log))
    return dict(policy=policy, seed=seed, dev=m["weighted_mean"]["value"], n=m["weighted_mean"]["n"],
                reward_first=statistics.mean(reward[:k]), reward_last=statistics.mean(reward[-k:]),
                acc_first=statistics.mean(acc[:k]), acc_last=statistics.mean(acc[-k:]), kl=log[-1]["kl"])


def table(rows: list[dict], sft_dev: float) -> list[str]:
    lines = [f"| policy | seed | dev accuracy (SFT {100 * sft_dev:.1f}%) | reward, first {FIRST_LAST} steps | "
             f"reward, last {FIRST_LAST} | reward gain | greedy train accuracy, first -> last | KL at the end |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]

    def line(policy, seed, group):
        mean = {k: statistics.mean(r[k] for r in group) for k in ("dev", "reward_first", "reward_last", "acc_first",
                                                                  "acc_last", "kl")}
        return (f"| {policy} | {seed} | {100 * mean['dev']:.1f}% | {mean['reward_first']:.3f} | "
                f"{mean['reward_last']:.3f} | {mean['reward_last'] - mean['reward_first']:+.3f} | "
                f"{mean['acc_first']:.3f} -> {mean['acc_last']:.3f} | {mean['kl']:.3f} |")

    for r in rows:
        lines.append(line(r["policy"], r["seed"], [r]))
    for policy in dict.fromkeys(r["policy"] for r in rows):
        group = [r for r in rows if r["policy"] == policy]
        if len(group) > 1:
            lines.append(line(f"**{policy}**", "mean", group))
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", help="an `aqa demo` folder (its SFT stage done)")
    ap.add_argument("--model")
    ap.add_argument("--sft-adapter")
    ap.add_argument("--train")
    ap.add_argument("--dev")
    ap.add_argument("--set", nargs="*", default=[], help="GRPO config key=value overrides")
    ap.add_argument("--seeds", default="1,2", help="GRPO seeds, comma-separated")
    ap.add_argument("-o", "--output", help="folder for the runs (default: DEMO/grpo-policy)")
    ap.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args(argv)
    from aqa.config import from_dict, parse_overrides
    from aqa.train.grpo import GRPOConfig

    if args.demo:
        paths, grpo, ev = demo_settings(Path(args.demo))
    else:
        if not all((args.model, args.sft_adapter, args.train, args.dev)):
            ap.error("give --demo, or all of --model, --sft-adapter, --train and --dev")
        paths = dict(model=args.model, sft_adapter=args.sft_adapter, train=args.train, dev=args.dev)
        grpo, ev = dict(rollout="choice"), dict(batch_size=8, seed=0)
    grpo.update(parse_overrides(args.set))
    # Typed once (YAML reads "1e-3" as text), so the runs and the table's header agree.
    typed = from_dict(GRPOConfig, {**grpo, "model": "-", "sft_adapter": "-", "train_data": ["-"], "output_dir": "-"},
                      source="--set")
    grpo = {k: getattr(typed, k) for k in grpo}
    out = Path(args.output or Path(args.demo or ".") / "grpo-policy")
    t0 = time.time()
    sft = dev_metrics(paths, paths["sft_adapter"], ev, out / "eval-sft")
    rows = [run_one(paths, grpo, ev, policy, int(seed), out) for policy in ("new", "sft")
            for seed in args.seeds.split(",")]
    lines = table(rows, sft["weighted_mean"]["value"])
    head = (f"\n## {time.strftime('%Y-%m-%d')}, {platform.machine()}, GRPO policy=new vs policy=sft\n\n"
            f"Command: `bench/grpo_policy.py {' '.join(argv if argv is not None else sys.argv[1:])}`; "
            f"GRPO {json.dumps(grpo)}; dev: {rows[0]['n']} questions; {time.time() - t0:.0f} s.\n\n")
    print(head + "\n".join(lines))
    with open(args.results, "a", encoding="utf-8") as f:
        f.write(head + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
