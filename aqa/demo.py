"""`aqa demo`: the method end to end on a tiny model, offline, on CPU, in minutes.

Stages (each skipped when its output already exists, so an interrupted demo resumes):
1. data: synthetic soundscapes and their QA (`aqa data synth`), train and dev splits that
   share no clip; the question type is the subset, so the report has one column per type.
2. models: a tiny random Qwen2-Audio (`aqa model tiny`), pretrained from the training clips'
   strong labels (`aqa model pretrain`) so that, like a real base, it can hear and knows the
   answer format, but has never seen a question about audio in that format.
3. zero-shot evaluation on dev, LoRA SFT on train, evaluation of the tuned model, then GRPO
   from the SFT adapter (choice rollouts) and its evaluation.
4. the report: a Table-2-style table, accuracy per subset, the training loss curve.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from aqa.config import doc, dump_yaml, load_config
from aqa.io import atomic_write_text, write_json

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


@dataclass
class DemoConfig:
    clips: int = doc(1200, help="synthetic clips to make (train and dev together)")
    clip_seconds: int = doc(5, help="length of each clip, and the tiny model's audio window")
    dev_fraction: float = doc(0.15, help="share of the clips held out for dev")
    dev_questions: int = doc(400, help="dev questions evaluated (the first N; 0: all)")
    seed: int = doc(1, help="seed of the data, the model and the training")
    encoder_dim: int = doc(192, help="tiny model: audio encoder width")
    encoder_layers: int = doc(4, help="tiny model: audio encoder layers")
    decoder_dim: int = doc(192, help="tiny model: language model width")
    decoder_layers: int = doc(4, help="tiny model: language model layers")
    num_mel_bins: int = doc(64, help="tiny model: mel bins")
    encoder_steps: int = doc(200, help="pretraining: encoder event-detection steps")
    pretrain_steps: int = doc(250, help="pretraining: caption and drill steps")
    sft_steps: int = doc(150, help="LoRA SFT optimizer steps")
    sft_batch: int = doc(16, help="LoRA SFT batch size")
    sft_lr: float = doc(1e-3, help="LoRA SFT learning rate (tiny models want more than 7B ones)")
    lora_r: int = doc(16, help="LoRA rank")
    grpo_steps: int = doc(40, help="GRPO optimizer steps after SFT (0 skips the stage)")
    grpo_lr: float = doc(2e-4, help="GRPO learning rate")
    grpo_batch: int = doc(16, help="GRPO questions per step")
    grpo_group: int = doc(6, help="GRPO answers sampled per question (G)")
    eval_batch: int = doc(16, help="evaluation batch size")


def run_demo(out: str | Path, cfg: DemoConfig, *, progress: bool = True) -> dict:
    from aqa.data.records import load_records, write_records
    from aqa.data.synth import synthesize
    from aqa.eval.report import build_report
    from aqa.eval.run import EvalSettings, evaluate
    from aqa.models.tiny import TinySpec, build_tiny, corpus_from_records
    from aqa.train.pretrain import pretrain
    from aqa.train.grpo import GRPOConfig
    from aqa.train.grpo import train as grpo_train
    from aqa.train.sft import SFTConfig, train

    t0 = time.time()
    out = Path(out)
    data, models, evals = out / "data", out / "models", out / "eval"
    timings: dict[str, float] = {}

    def stage(name: str, done: bool, fn) -> None:
        if done:
            log.info("demo: %s already done, kept", name)
            return
        log.info("demo: %s ...", name)
        t = time.time()
        fn()
        timings[name] = round(time.time() - t, 1)

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "demo_config.yaml", dump_yaml(cfg))

    # ---- 1. data -----------------------------------------------------------------------------
    synth_dir = data / "synth"

    def make_data():
        synthesize(synth_dir, n=cfg.clips, seed=cfg.seed, duration=float(cfg.clip_seconds),
                   dev_fraction=cfg.dev_fraction, progress=progress)
        for split in ("train", "dev"):
            recs = load_records(synth_dir / f"{split}.jsonl")
            for r in recs:
                r.subset = r.question_type  # one report column per question type
            if split == "dev" and cfg.dev_questions:
                recs = recs[:cfg.dev_questions]
            write_records(data / f"{split}.jsonl", recs, relative_to=data)

    stage("data", (data / "dev.jsonl").is_file(), make_data)
    train_clips = {r.meta["segment_id"] for r in load_records(data / "train.jsonl")}
    dev_clips = {r.meta["segment_id"] for r in load_records(data / "dev.jsonl")}
    assert not train_clips & dev_clips, "train and dev share clips"

    # ---- 2. models ---------------------------------------------------------------------------
    tiny, base = models / "tiny", models / "base"
    spec = TinySpec(audio_seconds=cfg.clip_seconds, num_mel_bins=cfg.num_mel_bins, encoder_dim=cfg.encoder_dim,
                    encoder_layers=cfg.encoder_layers, decoder_dim=cfg.decoder_dim,
                    decoder_layers=cfg.decoder_layers, vocab_size=1000, seed=cfg.seed)
    stage("tiny model", (tiny / "config.json").is_file(),
          lambda: build_tiny(tiny, spec, corpus_from_records(synth_dir / "qa.jsonl")))
    stage("pretraining", (base / "config.json").is_file(),
          lambda: pretrain(tiny, synth_dir / "strong.tsv", synth_dir / "labels.tsv", synth_dir / "wav", base,
                           encoder_steps=cfg.encoder_steps, steps=cfg.pretrain_steps, seed=cfg.seed,
                           clip_ids=train_clips, progress=progress))

    # ---- 3. zero-shot, SFT, tuned ------------------------------------------------------------
    def ev(name: str, adapter: Path | None):
        evaluate(EvalSettings(str(base), str(adapter) if adapter else None, str(data / "dev.jsonl"),
                              seed=cfg.seed), evals / name, batch_size=cfg.eval_batch, name=name,
                 progress=progress)

    stage("zero-shot eval", (evals / "zero-shot" / "metrics.json").is_file(), lambda: ev("zero-shot", None))
    sft_run = out / "runs" / "sft"
    sft_cfg = SFTConfig(model=str(base), train_data=[str(data / "train.jsonl")], output_dir=str(sft_run),
                        lora_r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lr=cfg.sft_lr, batch_size=cfg.sft_batch,
                        micro_batch_size=cfg.sft_batch, max_steps=cfg.sft_steps, warmup_ratio=0.1,
                        save_every=50, seed=cfg.seed, spec_augment_width=8)
    stage("LoRA SFT", (sft_run / "adapter" / "adapter_config.json").is_file(), lambda: train(sft_cfg))
    stage("SFT eval", (evals / "sft" / "metrics.json").is_file(), lambda: ev("sft", sft_run / "adapter"))
    rows, runs = ["zero-shot", "sft"], [sft_run]
    if cfg.grpo_steps:
        grpo_run = out / "runs" / "grpo"
        grpo_cfg = GRPOConfig(model=str(base), sft_adapter=str(sft_run / "adapter"),
                              train_data=[str(data / "train.jsonl")], output_dir=str(grpo_run), rollout="choice",
                              group_size=cfg.grpo_group, lr=cfg.grpo_lr, batch_size=cfg.grpo_batch, grad_accum=1,
                              max_steps=cfg.grpo_steps, lora_r=cfg.lora_r, lora_alpha=2 * cfg.lora_r,
                              save_every=20, seed=cfg.seed)
        stage("GRPO", (grpo_run / "adapter" / "adapter_config.json").is_file(), lambda: grpo_train(grpo_cfg))
        stage("GRPO eval", (evals / "grpo" / "metrics.json").is_file(), lambda: ev("grpo", grpo_run / "adapter"))
        rows.append("grpo")
        runs.append(grpo_run)

    # ---- 4. report ---------------------------------------------------------------------------
    rep = build_report([evals / r for r in rows] + runs, out / "report", names=rows + [p.name for p in runs])
    metrics = {n: json.loads((evals / n / "metrics.json").read_text()) for n in rows}
    summary = {"seconds": round(time.time() - t0, 1), "stages": timings,
               "pooled_dev_accuracy": {n: m["weighted_mean"]["value"] for n, m in metrics.items()},
               "chance": metrics["sft"]["weighted_mean"].get("chance"),
               "report": str(rep["markdown"])}
    write_json(out / "demo_summary.json", summary)
    return summary


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole method on a tiny model, offline, on CPU", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", default="runs/demo", help="demo folder (resumed if it exists)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="demo YAML config")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the demo config")
    p.set_defaults(func=_run)


def _run(args) -> int:
    cfg = load_config(DemoConfig, args.config if Path(args.config).is_file() else None, args.overrides)
    s = run_demo(args.output, cfg)
    acc = s["pooled_dev_accuracy"]
    stages = ", ".join(f"{k} {100 * v:.1f}%" for k, v in acc.items())
    print(f"\ndemo finished in {s['seconds']:.0f} s: pooled dev accuracy {stages} (chance {100 * (s['chance'] or 0):.1f}%)")
    print(f"report: {s['report']} (and report.html, plots beside it)")
    return 0
