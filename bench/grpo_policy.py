"""GRPO after SFT, one SFT adapter and several GRPO variants: for each (variant, seed) the dev
accuracy after GRPO and its paired difference from SFT's (the same dev questions, a bootstrap
interval over them), the calibration error (ECE), the mean training reward over the first and
the last 10 steps, the greedy training accuracy, the last KL to the reference and, with
--train-eval N, the accuracy on the first N training questions (over-fitting: the gap between
training and dev accuracy, against SFT's). Per variant it also gives the share of GRPO groups
expected to carry no signal at the start: from SFT's probabilities on those training questions,
the chance that all G answers sampled at the variant's temperature are right, or all wrong (the
advantages of such a group are zero, so only its KL term acts). Appends the table to
bench/RESULTS.md.

A variant is a set of GRPO config overrides on top of the common ones (`--set`), written
`key=value,key=value`; the default compares `policy=new` with `policy=sft`.

On an `aqa demo` folder (its base model, SFT adapter, data and GRPO settings):

    python bench/grpo_policy.py --demo runs/demo --seeds 1,2,3 --variants lr=5e-5 lr=2e-4,beta=0.3 --train-eval 493

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
N_BOOT = 2000


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


def evaluate_on(paths: dict, adapter: Path, data: str, ev: dict, out: Path, limit: int = 0) -> tuple[dict, list]:
    """(metrics.json, prediction rows) of the model with `adapter` on `data` (its first `limit`
    questions; eval folder `out`, resumed)."""
    from aqa.eval.metrics import load_predictions
    from aqa.eval.run import EvalSettings, evaluate

    m = evaluate(EvalSettings(str(paths["model"]), str(adapter), str(data), seed=ev["seed"], batch_size=ev["batch_size"],
                              name=out.name, progress=False, limit=limit), out)
    return m, load_predictions(out)


def paired_difference(rows: list[dict], base: list[dict], seed: int = 0) -> tuple[float, list[float]]:
    """Accuracy of `rows` minus that of `base` on the same questions, with a 95% percentile
    bootstrap interval that resamples questions (both models answer the same ones)."""
    import numpy as np

    right = {r["id"]: r["pred"] == r["answer"] for r in base}
    d = np.array([float(r["pred"] == r["answer"]) - right[r["id"]] for r in rows if r["id"] in right])
    reps = np.random.default_rng(seed).choice(d, size=(N_BOOT, len(d))).mean(1)
    return float(d.mean()), [float(np.quantile(reps, 0.025)), float(np.quantile(reps, 0.975))]


def zero_signal_share(rows: list[dict], group: int, temperature: float) -> float:
    """Expected share of groups whose G answers, sampled at `temperature` from these
    predictions' option probabilities, are all right or all wrong."""
    shares = []
    for r in rows:
        p = [max(float(x), 1e-30) ** (1 / temperature) for x in r["probs"]]
        right = p[r["answer"]] / sum(p)
        shares.append(right ** group + (1 - right) ** group)
    return statistics.mean(shares)


def ece(rows: list[dict]) -> float:
    from aqa.eval.report import calibration_points

    return calibration_points(rows)["ece"]


def run_one(paths: dict, grpo: dict, ev: dict, variant: str, seed: int, out: Path, sft: dict) -> dict:
    from aqa.train.grpo import GRPOConfig, train

    tag = variant.replace("=", "").replace(",", "_").replace(" ", "") or "common"
    run = out / f"grpo-{tag}-s{seed}"
    train(GRPOConfig(model=str(paths["model"]), sft_adapter=str(paths["sft_adapter"]),
                     train_data=[str(paths["train"])], output_dir=str(run), seed=seed, **grpo))
    m, rows = evaluate_on(paths, run / "adapter", paths["dev"], ev, out / f"eval-{tag}-s{seed}")
    diff, diff_ci = paired_difference(rows, sft["dev_rows"])
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines() if x.strip()]
    reward, acc = [x["reward"] for x in log], [x["accuracy"] for x in log]
    k = min(FIRST_LAST, len(log))
    res = dict(variant=variant or "(common)", seed=seed, dev=m["weighted_mean"]["value"], n=m["weighted_mean"]["n"],
               diff=diff, diff_ci=diff_ci, ece=ece(rows), reward_first=statistics.mean(reward[:k]),
               reward_last=statistics.mean(reward[-k:]), acc_first=statistics.mean(acc[:k]),
               acc_last=statistics.mean(acc[-k:]), kl=log[-1]["kl"])
    if sft.get("train_rows"):
        tm, trows = evaluate_on(paths, run / "adapter", paths["train"], ev, out / f"train-{tag}-s{seed}",
                                limit=len(sft["train_rows"]))
        res["train"] = tm["weighted_mean"]["value"]
        res["zero_after"] = zero_signal_share(trows, grpo.get("group_size", 6), grpo.get("temperature", 1.0))
    return res


def table(rows: list[dict], sft: dict, zero: dict[str, float]) -> list[str]:
    has_train = "train" in rows[0]
    head = (f"| variant | seed | dev accuracy (SFT {100 * sft['dev']:.1f}%) | minus SFT, paired [95% CI] | "
            f"ECE (SFT {100 * sft['ece']:.1f}%) | reward, first {FIRST_LAST} steps -> last {FIRST_LAST} | "
            f"greedy train accuracy, first -> last | KL at the end | groups without signal, start")
    head += f" -> end | train accuracy (SFT {100 * sft['train']:.1f}%) |" if has_train else " |"
    lines = [head, "|---|---|" + "---:|" * (7 + has_train)]

    def line(variant, seed, group):
        mean = {k: statistics.mean(r[k] for r in group) for k in group[0] if isinstance(group[0][k], float)}
        ci = f" [{100 * group[0]['diff_ci'][0]:+.1f}, {100 * group[0]['diff_ci'][1]:+.1f}]" if len(group) == 1 else ""
        out = (f"| {variant} | {seed} | {100 * mean['dev']:.1f}% | {100 * mean['diff']:+.1f}{ci} | "
               f"{100 * mean['ece']:.1f}% | {mean['reward_first']:.3f} -> {mean['reward_last']:.3f} "
               f"({mean['reward_last'] - mean['reward_first']:+.3f}) | {mean['acc_first']:.3f} -> "
               f"{mean['acc_last']:.3f} | {mean['kl']:.3f} | {100 * zero[group[0]['variant']]:.0f}%")
        if has_train:
            return out + f" -> {100 * mean['zero_after']:.0f}% | {100 * mean['train']:.1f}% |"
        return out + " |"

    for r in rows:
        lines.append(line(r["variant"], r["seed"], [r]))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        group = [r for r in rows if r["variant"] == variant]
        if len(group) > 1:
            lines.append(line(f"**{variant}**", "mean", group))
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", help="an `aqa demo` folder (its SFT stage done)")
    ap.add_argument("--model")
    ap.add_argument("--sft-adapter")
    ap.add_argument("--train")
    ap.add_argument("--dev")
    ap.add_argument("--set", nargs="*", default=[], help="GRPO config key=value overrides common to every variant")
    ap.add_argument("--variants", nargs="*", default=["policy=new", "policy=sft"],
                    help="GRPO variants, each key=value[,key=value...] on top of --set ('' for --set alone)")
    ap.add_argument("--seeds", default="1,2", help="GRPO seeds, comma-separated")
    ap.add_argument("--train-eval", type=int, default=0,
                    help="also evaluate SFT and every run on the first N training questions (0: no)")
    ap.add_argument("-o", "--output", help="folder for the runs (default: DEMO/grpo-policy)")
    ap.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args(argv)
    from aqa.config import from_dict, parse_overrides
    from aqa.train.grpo import GRPOConfig

    if args.demo:
        paths, common, ev = demo_settings(Path(args.demo))
    else:
        if not all((args.model, args.sft_adapter, args.train, args.dev)):
            ap.error("give --demo, or all of --model, --sft-adapter, --train and --dev")
        paths = dict(model=args.model, sft_adapter=args.sft_adapter, train=args.train, dev=args.dev)
        common, ev = dict(rollout="choice"), dict(batch_size=8, seed=0)
    common.update(parse_overrides(args.set))

    def typed(overrides: dict) -> dict:
        # Typed once (YAML reads "1e-3" as text), so the runs and the table's header agree.
        cfg = from_dict(GRPOConfig, {**overrides, "model": "-", "sft_adapter": "-", "train_data": ["-"],
                                     "output_dir": "-"}, source="--set/--variants")
        return {k: getattr(cfg, k) for k in overrides}

    common = typed(common)
    variants = {v: typed({**common, **parse_overrides([x for x in v.split(",") if x])}) for v in args.variants}
    out = Path(args.output or Path(args.demo or ".") / "grpo-policy")
    t0 = time.time()
    sft_m, sft_rows = evaluate_on(paths, paths["sft_adapter"], paths["dev"], ev, out / "eval-sft")
    sft = dict(dev=sft_m["weighted_mean"]["value"], dev_rows=sft_rows, ece=ece(sft_rows))
    # The share of groups without signal is estimated on training questions: what GRPO samples.
    probe_m, probe = evaluate_on(paths, paths["sft_adapter"], paths["train"], ev, out / "train-sft",
                                 limit=args.train_eval or 493)
    if args.train_eval:
        sft.update(train=probe_m["weighted_mean"]["value"], train_rows=probe)
    zero = {v or "(common)": zero_signal_share(probe, g.get("group_size", 6), g.get("temperature", 1.0))
            for v, g in variants.items()}
    rows = [run_one(paths, g, ev, v, int(seed), out, sft) for v, g in variants.items()
            for seed in args.seeds.split(",")]
    lines = table(rows, sft, zero)
    head = (f"\n## {time.strftime('%Y-%m-%d')}, {platform.machine()}, GRPO variants after one SFT adapter\n\n"
            f"Command: `bench/grpo_policy.py {' '.join(argv if argv is not None else sys.argv[1:])}`; "
            f"common GRPO settings {json.dumps(common)}; dev: {rows[0]['n']} questions; "
            f"{time.time() - t0:.0f} s.\n\n")
    print(head + "\n".join(lines))
    with open(args.results, "a", encoding="utf-8") as f:
        f.write(head + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
