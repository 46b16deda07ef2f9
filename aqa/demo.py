"""`aqa demo`: the method end to end on a tiny model, offline, on CPU, in minutes.

Stages (each skipped when its output already exists, so an interrupted demo resumes):
1. data: synthetic soundscapes (`aqa data synth`), train and dev splits that share no clip,
   and three question types whose options come in a fixed order: how many different sounds
   (1-4), which sound is heard first (all ten names), how many times a named sound occurs
   (once, twice, three times). The question type is the subset: one report column per type.
2. models: a tiny random Qwen2-Audio (`aqa model tiny`), pretrained from the training clips'
   strong labels (`aqa model pretrain`) so that, like a real base, it can hear and knows the
   answer format, but has never seen a question about audio in that format.
3. zero-shot evaluation on dev, LoRA SFT on train, evaluation of the tuned model, then GRPO
   from the SFT adapter (choice rollouts) and its evaluation; a second tuned model (its own
   seed and LoRA rank), and the learned logit ensemble of the two tuned models (cross-fitted
   on dev), beside the plain average of their probabilities and their majority vote. With
   `second_family=qwen2.5-omni` the second model is a tiny Qwen2.5-Omni thinker, built and
   pretrained the same way, so the ensemble crosses families as the reference report's does;
   that adds its pretraining and a slower SFT (about 2 minutes on 2 cores, measured), which is
   why the default keeps the second model in the first one's family and base;
   `second_family=moss-audio` does the same with a tiny MOSS-Audio (149 s for its stages, README).
   A folder is not resumed over the models of another family (`check_family_outputs`). The tuned
   model is also evaluated with every clip replaced by silence of the same length, so the
   report shows how much of its accuracy comes from listening.
4. with `reasoning=true`, the reasoning path after them: every training question gets an exact
   rationale from its clip's labels (what is heard when, then the conclusion: "beep at 0.5 s,
   twice; then knocking at 2.0 s, once. So 2 different sounds are heard."; the tiny tokenizer
   learns their words), a LoRA SFT from the same pretrained base learns to write it in a think
   block before the letter (target=reasoning), its answers are read from the generated text and
   as letter scores after its own reasoning (reason-then-score), and GRPO samples reasonings
   from it (generate rollouts, accuracy and format rewards, GDPO advantages) before its own
   evaluation. The report's Reasoning table gives each of these rows' share of finished
   reasonings and their mean length. Off by default: it adds minutes, and its tokenizer (with
   the rationales' words) changes the other stages' numbers a little.
5. the report: a Table-2-style table, accuracy per subset, the training loss curve; the
   terminal gets each stage's seconds, the same accuracy table and the path of report.html.

Where the demo departs from the method: options keep a fixed order and are not shuffled in
training. A real 7B base arrives able to find the option that matches what it heard among
options in any order; a model of a few million parameters trained for minutes cannot learn
that look-up (measured here: text-only "which option is X" drills stayed at chance after 400
steps of 64 drills, and LoRA SFT on shuffled options stayed at chance after 150 steps), so its
questions are the kind that look-up is not needed for. GRPO samples 12 answers per question
with a KL weight of 0.3 (the report: 6 and 0.1): on this model GRPO bets on the majority answer
of the questions it cannot hear, which a stronger pull to the SFT model restrains, and choice
rollouts make the larger group free (bench/RESULTS.md). Everything else runs as on the real
models.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    dev_questions: int = doc(0, help="dev questions evaluated (the first N; 0: all)")
    seed: int = doc(1, help="seed of the data, the model and the training")
    encoder_dim: int = doc(128, help="tiny model: audio encoder width")
    encoder_layers: int = doc(2, help="tiny model: audio encoder layers")
    decoder_dim: int = doc(128, help="tiny model: language model width")
    decoder_layers: int = doc(4, help="tiny model: language model layers")
    num_mel_bins: int = doc(64, help="tiny model: mel bins")
    encoder_steps: int = doc(150, help="pretraining: encoder event-detection steps")
    pretrain_steps: int = doc(200, help="pretraining: caption and drill steps")
    sft_steps: int = doc(300, help="LoRA SFT optimizer steps")
    sft_batch: int = doc(16, help="LoRA SFT batch size")
    sft_lr: float = doc(1e-3, help="LoRA SFT learning rate (tiny models want more than 7B ones)")
    sft_lora_dropout: float = doc(0.0, help="LoRA SFT dropout on the LoRA input (0: its random masks cost a fifth of "
                                              "a step on CPU and did not change dev accuracy here)")
    lora_r: int = doc(16, help="LoRA rank")
    family: str = doc("qwen2-audio", help="the tuned model's family (`aqa model tiny --family`)")
    second_family: str = doc("qwen2-audio", help="the second tuned model for the ensemble: its family; another "
                             "one (qwen2.5-omni) crosses families as the reference report does, at about 2 more "
                             "minutes on 2 cores (moss-audio: 149 s for its stages against the default's 60 s, 47.9% "
                             "for sft-b)")
    second_lora_r: int = doc(8, help="the second tuned model for the ensemble: its LoRA rank (0 skips it)")
    second_sft_steps: int = doc(150, help="the second tuned model: LoRA SFT optimizer steps")
    grpo_steps: int = doc(40, help="GRPO optimizer steps after SFT (0 skips the stage)")
    grpo_lr: float = doc(2e-4, help="GRPO learning rate")
    grpo_batch: int = doc(16, help="GRPO questions per step")
    grpo_group: int = doc(12, help="GRPO answers sampled per question (G)")
    grpo_beta: float = doc(0.3, help="GRPO weight of the KL penalty to the SFT model")
    grpo_temperature: float = doc(1.0, help="GRPO sampling temperature of the rollouts")
    eval_batch: int = doc(16, help="evaluation batch size")
    num_workers: int = doc(0, help="DataLoader workers of the SFT and GRPO stages (0: the training process "
                                   "collates, 4% of a step here, leaving the cores to the step)")
    reasoning: bool = doc(False, help="then the reasoning path: SFT on exact rationales, GRPO on generated "
                                      "reasonings, evals that read them (a few more minutes)")
    reasoning_sft_steps: int = doc(600, help="reasoning path: LoRA SFT optimizer steps (target=reasoning)")
    reasoning_tokens: int = doc(96, help="reasoning path: token budget of a generated reasoning and its answer")
    reasoning_grpo_steps: int = doc(20, help="reasoning path: GRPO optimizer steps (0 skips the stage)")
    reasoning_grpo_batch: int = doc(8, help="reasoning path: GRPO questions per step")
    reasoning_grpo_group: int = doc(6, help="reasoning path: GRPO completions sampled per question (G)")
    reasoning_temperature: float = doc(0.7, help="reasoning path: GRPO sampling temperature (at 1.0 over 40% of the tiny "
                                                 "model's sampled reasonings were malformed)")

    def __post_init__(self):
        from aqa.models.tiny import FAMILIES

        bad = [f"{k}={getattr(self, k)}" for k in ("family", "second_family") if getattr(self, k) not in FAMILIES]
        if bad:
            raise ValueError(f"no tiny model for {', '.join(bad)} (families: {', '.join(FAMILIES)})")


#: Fixed option lists of the demo's questions (see the module docstring for why fixed).
COUNTS = ["1", "2", "3", "4"]
TIMES = ["once", "twice", "three times"]
#: Onsets closer than this make "which is first" a matter of milliseconds: no question then.
FIRST_GAP_S = 0.3


def half_seconds(t: float) -> float:
    """`t` to the nearest half second (halves round up, unlike round()'s to-even)."""
    import math

    return math.floor(2 * t + 0.5) / 2


def rationale(heard: dict[str, tuple[float, int]], names: dict[str, str], conclusion: str) -> str:
    """The exact reasoning behind an answer, from the clip's labels: what is heard when (each
    sound in order of first onset, its onset to the half second and how often it occurs), then
    `conclusion`: 'beep at 0.5 s, twice; then knocking at 2.0 s, once. So 2 different sounds
    are heard.' Short, because the tiny model has to write it on CPU (about 40 tokens)."""
    from aqa.data.spoken import format_times

    heard_when = "; then ".join(f"{names[m]} at {half_seconds(onset):.1f} s, {format_times(n)}"
                                for m, (onset, n) in heard.items())
    return f"{heard_when}. So {conclusion}."


def fixed_order_questions(clip_ids, clips, names, wav_dir: Path, split: str, seed: int,
                          rationales: bool = False) -> list:
    """The demo's three question types for each clip, options in a fixed order; with
    `rationales`, each with the exact reasoning from the clip's labels (`rationale`)."""
    import numpy as np

    from aqa.data.events import onsets_and_counts
    from aqa.data.records import AQARecord
    from aqa.data.spoken import format_times

    all_names = sorted(names.values())
    out = []
    for cid in clip_ids:
        heard = onsets_and_counts(clips[cid])  # label -> (first onset, occurrences), by first onset
        order = list(heard)
        common = dict(audio=str(wav_dir / f"{cid}.wav"), source="synth", split=split, meta={"segment_id": cid})

        def add(kind: str, question: str, choices: list[str], answer: str, conclusion: str) -> None:
            r = AQARecord(id=f"{cid}-{kind.replace(' ', '-')}", question=question, choices=choices,
                          answer=choices.index(answer), subset=kind, question_type=kind, **common,
                          rationale=rationale(heard, names, conclusion) if rationales else None)
            r.meta = dict(r.meta)
            r.audio_path = wav_dir / f"{cid}.wav"
            out.append(r)

        n = len(order)
        if 1 <= n <= len(COUNTS):
            add("counting", "How many different sounds are in the audio clip?", COUNTS, str(n),
                f"{n} different sounds are heard" if n > 1 else "1 sound is heard")
        if n == 1 or heard[order[1]][0] - heard[order[0]][0] >= FIRST_GAP_S:
            add("first sound", "Which sound is heard first?", all_names, names[order[0]],
                f"{names[order[0]]} is heard first")
        rng = np.random.default_rng([seed, int(cid.rsplit("_", 1)[-1])])
        label = order[int(rng.integers(n))]
        if heard[label][1] <= len(TIMES):
            times = format_times(heard[label][1])
            add("frequency", f"How many times does the {names[label]} sound occur?", TIMES, times,
                f"the {names[label]} occurs {times}")
    return out


@dataclass
class Demo:
    """A demo folder, its config and what the stages have done so far: the eval dirs that
    become report rows, the training runs whose curves the report plots, and each stage's time."""

    out: Path
    cfg: DemoConfig
    progress: bool = True
    timings: dict = dataclasses.field(default_factory=dict)
    rows: list = dataclasses.field(default_factory=list)  # eval dir names under eval/, in report order
    runs: list = dataclasses.field(default_factory=list)  # training run folders
    extras: list = dataclasses.field(default_factory=list)  # (eval dir, row name): the ensemble's baselines
    #: The 1-minute load average at the start: stage times mean little when other work shares the cores.
    load_at_start: float = dataclasses.field(default_factory=lambda: load_average())

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def synth(self) -> Path:
        return self.out / "data" / "synth"

    @property
    def models(self) -> Path:
        return self.out / "models"

    @property
    def evals(self) -> Path:
        return self.out / "eval"

    def stage(self, name: str, done: bool, fn) -> None:
        """Run `fn` unless `done` (its output exists: the demo resumes), timing it."""
        if done:
            log.info("demo: %s already done, kept", name)
            return
        log.info("demo: %s ...", name)
        t = time.time()
        fn()
        self.timings[name] = round(time.time() - t, 1)

    def eval_stage(self, stage: str, name: str, model: Path, adapter: Path | None = None, *, audio: str = "normal",
                   mode: str = "score", reference: Path | None = None, max_new_tokens: int | None = None) -> None:
        """`aqa eval` of `model` (+ `adapter`) on dev into eval/<name>, unless it is there."""
        from aqa.eval.run import EvalSettings, evaluate

        cfg = self.cfg
        settings = EvalSettings(str(model), str(adapter) if adapter else None, str(self.data / "dev.jsonl"),
                                seed=cfg.seed, audio=audio, mode=mode, batch_size=cfg.eval_batch, name=name,
                                progress=self.progress, reference=None if reference is None else str(reference),
                                max_new_tokens=max_new_tokens)
        self.stage(stage, (self.evals / name / "metrics.json").is_file(),
                   lambda: evaluate(settings, self.evals / name))


def sft_config(cfg: DemoConfig, base: Path, train: Path, run: Path) -> "SFTConfig":
    """The demo's LoRA SFT of `base` on `train` into `run` (also what bench scripts rerun)."""
    from aqa.train.sft import SFTConfig

    return SFTConfig(model=str(base), train_data=[str(train)], output_dir=str(run), lora_r=cfg.lora_r,
                     lora_alpha=2 * cfg.lora_r, lora_dropout=cfg.sft_lora_dropout, lr=cfg.sft_lr,
                     batch_size=cfg.sft_batch, micro_batch_size=cfg.sft_batch, max_steps=cfg.sft_steps,
                     warmup_ratio=0.1, save_every=50, seed=cfg.seed, spec_augment_width=8, shuffle_options=False,
                     num_workers=cfg.num_workers)


def grpo_config(cfg: DemoConfig, base: Path, sft_adapter: Path, train: Path, run: Path) -> "GRPOConfig":
    """The demo's GRPO from `sft_adapter` on `train` into `run` (also what bench scripts rerun)."""
    from aqa.train.grpo import GRPOConfig

    return GRPOConfig(model=str(base), sft_adapter=str(sft_adapter), train_data=[str(train)], output_dir=str(run),
                      rollout="choice", group_size=cfg.grpo_group, lr=cfg.grpo_lr, batch_size=cfg.grpo_batch,
                      micro_batch_size=cfg.grpo_batch, max_steps=cfg.grpo_steps, beta=cfg.grpo_beta,
                      temperature=cfg.grpo_temperature, lora_r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, save_every=20,
                      seed=cfg.seed, shuffle_options=False, num_workers=cfg.num_workers)


def make_data(demo: Demo) -> None:
    """Stage 1: synthetic clips, then train and dev questions on clips they do not share."""
    from aqa.data.events import read_labels, read_strong_tsv
    from aqa.data.records import load_records, write_records
    from aqa.data.synth import synthesize

    cfg, synth = demo.cfg, demo.synth

    def make():
        synthesize(synth, n=cfg.clips, seed=cfg.seed, duration=float(cfg.clip_seconds),
                   dev_fraction=cfg.dev_fraction, progress=demo.progress)
        clips, names = read_strong_tsv(synth / "strong.tsv"), read_labels(synth / "labels.tsv")
        for split in ("train", "dev"):
            ids = sorted({r.meta["segment_id"] for r in load_records(synth / f"{split}.jsonl")})
            recs = fixed_order_questions(ids, clips, names, synth / "wav", split, cfg.seed)
            if split == "dev" and cfg.dev_questions:
                recs = recs[:cfg.dev_questions]
            write_records(demo.data / f"{split}.jsonl", recs, relative_to=demo.data)

    demo.stage("data", (demo.data / "dev.jsonl").is_file(), make)
    train_clips, dev_clips = (question_clips(demo.data / f"{split}.jsonl") for split in ("train", "dev"))
    assert not train_clips & dev_clips, "train and dev share clips"


#: The reasoning path's training questions (with rationales), under the demo's data/.
REASONING_TRAIN = "train-reasoning.jsonl"


def reasoning_data(demo: Demo) -> None:
    """Stage 1b (reasoning path): the training questions again, each with its exact rationale,
    in data/train-reasoning.jsonl; train.jsonl stays as the other stages read it."""
    from aqa.data.events import read_labels, read_strong_tsv
    from aqa.data.records import write_records

    cfg, synth, path = demo.cfg, demo.synth, demo.data / REASONING_TRAIN

    def make():
        clips, names = read_strong_tsv(synth / "strong.tsv"), read_labels(synth / "labels.tsv")
        ids = sorted(question_clips(demo.data / "train.jsonl"))
        recs = fixed_order_questions(ids, clips, names, synth / "wav", "train", cfg.seed, rationales=True)
        write_records(path, recs, relative_to=demo.data)

    demo.stage("reasoning data", path.is_file(), make)


def tokenizer_corpus(demo: Demo) -> list[str]:
    """The texts the tiny tokenizer is trained on: the synthetic QA's questions and options, and
    with the reasoning path the think blocks of its rationales, so that a rationale takes about
    half the tokens (fewer to generate, and to learn) and the delimiters a few. A demo folder
    first made without the path keeps its tokenizer when resumed with it: its rationales then
    take about 60 tokens with the think block, still within `reasoning_tokens`."""
    from aqa.io import iter_jsonl
    from aqa.models.tiny.builder import corpus_from_records
    from aqa.prompts import ThinkFormat

    corpus = corpus_from_records(demo.synth / "qa.jsonl")
    if demo.cfg.reasoning:
        think = ThinkFormat()
        corpus += [think.block(r["rationale"]) for _, r in iter_jsonl(demo.data / REASONING_TRAIN)]
    return corpus


def question_clips(path: Path) -> set[str]:
    """The clips a question file asks about."""
    from aqa.data.records import load_records

    return {r.meta["segment_id"] for r in load_records(path)}


def base_model(demo: Demo, family: str, name: str, seed: int, what: str = "") -> Path:
    """Stage 2: a tiny random `family` model pretrained on the training clips: models/base<name>."""
    from aqa.models.tiny import build_tiny_family
    from aqa.train.pretrain import pretrain

    cfg, synth = demo.cfg, demo.synth
    sizes = dict(audio_seconds=cfg.clip_seconds, num_mel_bins=cfg.num_mel_bins, encoder_dim=cfg.encoder_dim,
                 encoder_layers=cfg.encoder_layers, decoder_dim=cfg.decoder_dim, decoder_layers=cfg.decoder_layers,
                 vocab_size=1000)
    tiny, base = demo.models / f"tiny{name}", demo.models / f"base{name}"
    demo.stage(f"{what}tiny model", (tiny / "config.json").is_file(),
               lambda: build_tiny_family(family, tiny, tokenizer_corpus(demo), seed=seed, **sizes))
    demo.stage(f"{what}pretraining", (base / "config.json").is_file(),
               lambda: pretrain(tiny, synth / "strong.tsv", synth / "labels.tsv", synth / "wav", base,
                                encoder_steps=cfg.encoder_steps, steps=cfg.pretrain_steps, seed=seed,
                                clip_ids=question_clips(demo.data / "train.jsonl"), progress=demo.progress))
    return base


def zero_shot(demo: Demo, base: Path) -> None:
    """Stage 3: the pretrained base on dev, before any tuning."""
    demo.eval_stage("zero-shot eval", "zero-shot", base)
    # Published zero-shot numbers read generated answers ("(A)", "The answer is ..."), which
    # letter scores cannot see: the same model read that way, beside it.
    demo.eval_stage("zero-shot eval, generated answers", "zero-shot-generate", base, mode="generate")
    demo.rows += ["zero-shot", "zero-shot-generate"]


def tune(demo: Demo, base: Path) -> Path:
    """Stage 4: LoRA SFT, its evaluation, and the same model on silent clips; returns the run."""
    from aqa.train.sft import train

    run = demo.out / "runs" / "sft"
    cfg = sft_config(demo.cfg, base, demo.data / "train.jsonl", run)
    demo.stage("LoRA SFT", (run / "adapter" / "adapter_config.json").is_file(), lambda: train(cfg))
    demo.eval_stage("SFT eval", "sft", base, run / "adapter")
    # How much of the tuned model's accuracy comes from listening: the same model, silent clips.
    demo.eval_stage("SFT eval on silence", "sft-silence", base, run / "adapter", audio="silence",
                    reference=demo.evals / "sft")
    demo.rows += ["sft", "sft-silence"]
    demo.runs.append(run)
    return run


def second_model(demo: Demo, base: Path) -> None:
    """Stage 5: a second tuned model for the ensemble (its own seed and rank): on the same base,
    or of another family on a base of its own."""
    from aqa.train.sft import train

    cfg = demo.cfg
    if not cfg.second_lora_r:
        return
    base_b = base if cfg.second_family == cfg.family else base_model(demo, cfg.second_family, "-b", cfg.seed + 1,
                                                                     what="second ")
    run = demo.out / "runs" / "sft-b"
    b_cfg = dataclasses.replace(sft_config(cfg, base_b, demo.data / "train.jsonl", run), seed=cfg.seed + 1,
                                lora_r=cfg.second_lora_r, lora_alpha=2 * cfg.second_lora_r,
                                max_steps=cfg.second_sft_steps)
    demo.stage("second LoRA SFT", (run / "adapter" / "adapter_config.json").is_file(), lambda: train(b_cfg))
    demo.eval_stage("second SFT eval", "sft-b", base_b, run / "adapter")
    demo.rows.append("sft-b")


def reinforce(demo: Demo, base: Path, sft_run: Path) -> None:
    """Stage 6: GRPO from the SFT adapter, and its evaluation."""
    from aqa.train.grpo import train

    if not demo.cfg.grpo_steps:
        return
    run = demo.out / "runs" / "grpo"
    cfg = grpo_config(demo.cfg, base, sft_run / "adapter", demo.data / "train.jsonl", run)
    demo.stage("GRPO", (run / "adapter" / "adapter_config.json").is_file(), lambda: train(cfg))
    demo.eval_stage("GRPO eval", "grpo", base, run / "adapter")
    demo.rows.append("grpo")
    demo.runs.append(run)


def ensemble(demo: Demo) -> None:
    """Stage 7: the learned logit ensemble of the two tuned models, cross-fitted on dev, with
    the plain average and the majority vote beside it."""
    from aqa.ensemble import run_fit
    from aqa.io import safe_name

    if not demo.cfg.second_lora_r:
        return
    ens = demo.evals / "ensemble"
    demo.stage("ensemble", (ens / "metrics.json").is_file(),
               lambda: run_fit([str(demo.evals / "sft"), str(demo.evals / "sft-b")], ens, names=["sft", "sft-b"]))
    demo.rows.append("ensemble")
    for n in ("average of probabilities", "majority vote"):
        demo.extras.append((ens / "baselines" / safe_name(n), f"sft + sft-b, {n}"))


def reason(demo: Demo, base: Path) -> None:
    """Stage 8 (reasoning path): LoRA SFT with target=reasoning on the exact rationales, from the
    same pretrained base; its answers read from the generated text and as letter scores after
    its own reasoning; GRPO on generated reasonings (accuracy and format rewards, GDPO
    advantages) from that adapter, and its answers read from the generated text."""
    from aqa.train.grpo import train as grpo_train
    from aqa.train.sft import train as sft_train

    cfg = demo.cfg
    train = demo.data / REASONING_TRAIN
    run = demo.out / "runs" / "sft-reasoning"
    s_cfg = dataclasses.replace(sft_config(cfg, base, train, run), target="reasoning", max_steps=cfg.reasoning_sft_steps)
    demo.stage("reasoning SFT", (run / "adapter" / "adapter_config.json").is_file(), lambda: sft_train(s_cfg))
    # The adapter says it reasons (aqa_reasoning.json): eval generates its think block first.
    demo.eval_stage("reasoning SFT eval, generated answers", "sft-reasoning", base, run / "adapter",
                    mode="generate", max_new_tokens=cfg.reasoning_tokens)
    demo.eval_stage("reasoning SFT eval, letters scored after the reasoning", "sft-reasoning-rts", base,
                    run / "adapter", mode="reason-then-score", max_new_tokens=cfg.reasoning_tokens)
    demo.rows += ["sft-reasoning", "sft-reasoning-rts"]
    demo.runs.append(run)
    if not cfg.reasoning_grpo_steps:
        return
    g_run = demo.out / "runs" / "grpo-reasoning"
    g_cfg = dataclasses.replace(grpo_config(cfg, base, run / "adapter", train, g_run), rollout="generate",
                                rewards=["accuracy", "format"], advantage="gdpo", max_new_tokens=cfg.reasoning_tokens,
                                max_steps=cfg.reasoning_grpo_steps, batch_size=cfg.reasoning_grpo_batch,
                                micro_batch_size=cfg.reasoning_grpo_batch, group_size=cfg.reasoning_grpo_group,
                                temperature=cfg.reasoning_temperature, save_every=10)
    demo.stage("reasoning GRPO", (g_run / "adapter" / "adapter_config.json").is_file(), lambda: grpo_train(g_cfg))
    demo.eval_stage("reasoning GRPO eval, generated answers", "grpo-reasoning", base, g_run / "adapter",
                    mode="generate", max_new_tokens=cfg.reasoning_tokens)
    demo.rows.append("grpo-reasoning")
    demo.runs.append(g_run)


def report(demo: Demo, t0: float) -> dict:
    """Stage 9 (8 without the reasoning path): report.md and report.html over every row and
    training run; the summary."""
    from aqa.eval.report import build_report

    cfg = demo.cfg
    shown = {"ensemble": "ensemble (cross-fitted)", "sft-silence": "sft, silent audio",
             "zero-shot-generate": "zero-shot, generated answers",
             "sft-reasoning": "sft reasoning, generated answers",
             "sft-reasoning-rts": "sft reasoning, letters scored after it",
             "grpo-reasoning": "grpo reasoning, generated answers",
             "sft-b": f"sft-b ({cfg.second_family})" if cfg.second_family != cfg.family else "sft-b"}
    names = [shown.get(r, r) for r in demo.rows] + [n for _, n in demo.extras] + [p.name for p in demo.runs]
    rep = build_report([demo.evals / r for r in demo.rows] + [d for d, _ in demo.extras] + demo.runs,
                       demo.out / "report", names=names)
    metrics = {n: json.loads((demo.evals / n / "metrics.json").read_text()) for n in demo.rows}
    summary = {"seconds": round(time.time() - t0, 1), "stages": demo.timings,
               "load_average": [demo.load_at_start, load_average()],
               "pooled_dev_accuracy": {n: m["weighted_mean"]["value"] for n, m in metrics.items()},
               "chance": metrics["sft"]["weighted_mean"].get("chance"),
               **({"reasoning": {n: m["reasoning"] for n, m in metrics.items() if "reasoning" in m}}
                  if demo.cfg.reasoning else {}),
               "report": str(rep["markdown"]), "html": str(rep["html"]), "table": rep["table_text"]}
    write_json(demo.out / "demo_summary.json", summary)
    return summary


def load_average() -> float:
    """The 1-minute load average (NaN where the system has none)."""
    import os

    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")


#: What each family setting's models made: a resumed demo keeps any stage whose output exists,
#: so after a change of family these would stand in for the new family's models unnoticed.
FAMILY_OUTPUTS = {"family": ("models", "runs", "eval"),
                  "second_family": ("models/tiny-b", "models/base-b", "runs/sft-b", "eval/sft-b", "eval/ensemble")}


def check_family_outputs(out: Path, cfg: DemoConfig) -> None:
    """Refuse to resume a demo folder over the outputs of another `family` or `second_family`
    (demo_config.yaml says which made them), naming what to delete to rerun those stages."""
    from aqa.config import read_yaml_mapping
    from aqa.io import UserError

    saved = out / "demo_config.yaml"
    if not saved.is_file():
        return
    old = read_yaml_mapping(saved)
    for key, paths in FAMILY_OUTPUTS.items():
        before = old.get(key, getattr(cfg, key))
        stale = [p for p in paths if (out / p).exists()]
        if before != getattr(cfg, key) and stale:
            raise UserError(f"{out} was made with {key}={before}, not {getattr(cfg, key)}: delete "
                             f"{', '.join(str(out / p) for p in stale)} to rerun those stages, or use another folder")


def run_demo(out: str | Path, cfg: DemoConfig, *, progress: bool = True) -> dict:
    """Every stage in order, each skipped when its output exists; returns the summary."""
    t0 = time.time()
    demo = Demo(Path(out), cfg, progress)
    check_family_outputs(demo.out, cfg)
    demo.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(demo.out / "demo_config.yaml", dump_yaml(cfg))
    make_data(demo)
    if cfg.reasoning:  # before the tiny model: its tokenizer learns the rationales' words
        reasoning_data(demo)
    base = base_model(demo, cfg.family, "", cfg.seed)
    zero_shot(demo, base)
    sft_run = tune(demo, base)
    second_model(demo, base)
    reinforce(demo, base, sft_run)
    ensemble(demo)
    if cfg.reasoning:
        reason(demo, base)
    return report(demo, t0)


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
    print(f"\ndemo finished in {s['seconds']:.0f} s" + (f" ({stage_times(s['stages'])})" if s["stages"] else ""))
    print(f"\n{s['table']}")
    for name, r in s.get("reasoning", {}).items():
        words = "-" if r["mean_words"] is None else f"{r['mean_words']:.1f}"
        print(f"{name}: {100 * r['finished']:.1f}% of the reasonings finished, {words} words on average")
    print(f"report: {s['html']} (report.md and the plots beside it)")
    return 0


def stage_times(timings: dict[str, float]) -> str:
    """'data 9 s, pretraining 150 s, ...': where this invocation's time went."""
    return ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
