"""The skeleton every training recipe shares, so that a recipe file holds only what is its own.

- `TrainConfig`: the config fields common to all recipes, declared once; a recipe's config
  subclasses it, adds its own fields and changes a default with `recipe_default` (the help
  text stays the one written here).
- `setup(cfg, ...)`: accelerator, run folder, backend with its LoRA adapter, training items,
  optimizer and schedule, resume. Returns a `TrainRun`.
- `TrainRun`: what the loop works with, and the pieces of a step every recipe makes the same
  way: the step's micro-batches (`batches`, prepared by DataLoader workers), the optimizer
  step inside gradient accumulation, and the step tail (log, progress bar, checkpoint,
  `stop_after`), then `finish` (the adapter).
- `add_recipe_command`: `aqa NAME CONFIG.yaml [key=value ...]`.

One meaning of batch size in every recipe: `batch_size` items (GRPO: questions) per optimizer
step, all processes together, = micro_batch_size x accumulation x processes; the accumulation
follows from the other three (`TrainConfig.accumulation`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aqa.config import doc
from aqa.io import UserError

log = logging.getLogger(__name__)


#: The trackers `report_to` may name (accelerate's), each with the package it needs.
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "swanlab": "swanlab", "mlflow": "mlflow"}
#: The project (mlflow: experiment, unless MLFLOW_EXPERIMENT_NAME says) of every run in wandb,
#: swanlab and mlflow; the run's name, its folder's, tells the runs apart.
TRACKER_PROJECT = "aqa"


@dataclass
class TrainConfig:
    """Fields every recipe has. Defaults are the reference report's SFT values (section 3.1);
    a recipe changes them with `recipe_default`."""

    model: str = doc("", help="Hugging Face id or local folder of the base model")
    batch_size: int = doc(32, help="items (GRPO: questions) per optimizer step, all processes together; "
                                   "= micro_batch_size x gradient accumulation x processes")
    micro_batch_size: int = doc(4, help="items (GRPO: questions) per forward pass on one process")
    train_data: list[str] = doc([], help="AQA JSONL file(s) to train on")
    output_dir: str = doc("runs/train", help="run folder: config.yaml, adapter/, checkpoints/, logs")
    lora_r: int = doc(8, help="LoRA rank (reference report: 8 for Qwen2-Audio, 16 for Kimi-Audio)")
    lora_alpha: int = doc(16, help="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = doc(0.05, help="dropout on the LoRA input")
    lr: float = doc(5e-5, help="peak learning rate (reference report: 5e-5 for SFT, 5e-6 for GRPO)")
    weight_decay: float = doc(0.0, help="AdamW weight decay")
    epochs: float = doc(8.0, help="passes over the training data (reference report: 8 for SFT, 3 for GRPO)")
    max_steps: int = doc(0, help="optimizer steps; 0 derives them from epochs")
    warmup_ratio: float = doc(0.05, help="share of the steps with linear warmup")
    schedule: str = doc("cosine", help="decay after warmup: cosine, linear or constant")
    max_grad_norm: float = doc(1.0, help="gradient clipping norm (0 disables)")
    shuffle_options: bool = doc(True, help="shuffle the options each time an item is sampled")
    bf16: bool = doc(True, help="bf16 weights and autocast on GPU (CPU always runs fp32)")
    gradient_checkpointing: bool = doc(False, help="recompute activations to save memory")
    seed: int = doc(0, help="seed of the data order, option shuffles, masks, rollouts and LoRA init; with the "
                            "process's rank, of its LoRA dropout")
    save_every: int = doc(100, help="checkpoint every N optimizer steps (and at the end)")
    keep_checkpoints: int = doc(2, help="how many checkpoints to keep")
    log_every: int = doc(1, help="log every N optimizer steps")
    resume: str = doc("auto", help="auto (latest checkpoint in output_dir), never, or a checkpoint folder")
    stop_after: int = doc(0, help="stop as if interrupted after N steps of this invocation (0: never)")
    allow_outside_root: bool = doc(False, help="accept audio paths outside the data file's folder")
    trust_remote_code: bool = doc(False, help="let transformers run code shipped with the model")
    device: str = doc("", help="torch device; empty picks cuda when available, else cpu")
    num_workers: int = doc(2, help="DataLoader processes that decode, shuffle and collate the micro-batches "
                                   "(0: the training process does it); results do not depend on it")
    prefetch: int = doc(2, help="micro-batches each DataLoader worker prepares ahead")
    cache_dir: str = doc("", help="folder for work that depends only on a clip (Kimi-Audio's speech tokens), "
                                  "done once and reused; empty: OUTPUT_DIR/cache")
    compile: bool = doc(False, help="run the decoder through torch.compile")
    allow_pickle: bool = doc(False, help="load model and adapter weights saved as pickles (.bin/.pt), which can "
                                         "run code: only for files you trust; safetensors otherwise")
    max_prompt_tokens: int = doc(0, help="leave out items whose prompt and answer are longer than this many tokens "
                                         "(0: the model's context, max_position_embeddings)")
    thinking: str = doc("auto", help="whether the model reasons first: auto (its chat template mentions <think> or "
                                     "enable_thinking, or an adapter it starts from was trained with "
                                     "target=reasoning), on, off. A model that reasons answers after a think block: "
                                     "letter targets and scored letters come after an empty one")
    report_to: list[str] = doc(["tensorboard"], help="experiment trackers that get train_log.jsonl's rows: "
                                                     "tensorboard, wandb, swanlab, mlflow ([]: none); their keys "
                                                     "come from the environment")
    card_eval: str = doc("", help="an eval folder whose metrics.json the adapter's README.md (model card) shows")

    #: Keys a resumed run may change: how it runs, not what it computes.
    RESUMABLE_CHANGES = ("resume", "stop_after", "device", "num_workers", "prefetch", "cache_dir", "log_every",
                         "save_every", "keep_checkpoints", "compile", "allow_pickle", "output_dir", "report_to",
                         "card_eval")

    def __post_init__(self):
        bad = [f"{k}={getattr(self, k)}" for k in ("lora_r", "lora_alpha", "batch_size", "micro_batch_size")
               if getattr(self, k) < 1]
        bad += [f"{k}={getattr(self, k)}" for k in ("max_steps", "lora_dropout", "weight_decay", "warmup_ratio",
                                                     "max_grad_norm", "stop_after") if getattr(self, k) < 0]
        bad += [f"{k}={getattr(self, k)}" for k in ("lr", "epochs") if not getattr(self, k) > 0
                and (k == "lr" or self.max_steps == 0)]
        if bad:
            raise ValueError(f"out of range: {', '.join(bad)} (ranks and batches >= 1, rates and epochs > 0, "
                             f"step counts and fractions >= 0)")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"schedule must be cosine, linear or constant, got {self.schedule!r}")
        if self.micro_batch_size < 1 or self.batch_size < self.micro_batch_size:
            raise ValueError(f"need 1 <= micro_batch_size <= batch_size, got micro_batch_size "
                             f"{self.micro_batch_size} and batch_size {self.batch_size}")
        if self.num_workers < 0 or self.prefetch < 1:
            raise ValueError("need num_workers >= 0 and prefetch >= 1")
        if self.thinking not in ("auto", "on", "off"):
            raise ValueError(f"thinking must be auto, on or off, got {self.thinking!r}")
        unknown = [t for t in self.report_to if t not in TRACKERS]
        if unknown:
            raise ValueError(f"report_to: unknown tracker(s) {', '.join(map(repr, unknown))}; known: "
                             f"{', '.join(TRACKERS)}")

    def accumulation(self, world: int) -> int:
        """Micro-batches per optimizer step on each process, so that batch_size =
        micro_batch_size x accumulation x `world` processes."""
        per_round = self.micro_batch_size * world
        if self.batch_size % per_round:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size "
                             f"{self.micro_batch_size} x {world} process(es) = {per_round}; change batch_size "
                             f"or micro_batch_size")
        return self.batch_size // per_round


def lr_lambda(warmup: int, total: int, schedule: str):
    """Linear warmup, then cosine or linear decay to zero, or constant."""
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def deepspeed_batch(cfg: TrainConfig, world: int) -> dict:
    """What `make_accelerator` writes into DeepSpeed's config for `world` processes.
    prepare() gets no DataLoader to read the micro-batch from; the launcher's config would
    otherwise leave "auto" (refused) or its own accumulation and clipping."""
    return dict(train_micro_batch_size_per_gpu=cfg.micro_batch_size,
                gradient_accumulation_steps=cfg.accumulation(world), gradient_clipping=cfg.max_grad_norm,
                train_batch_size=cfg.batch_size)


def make_accelerator(folder, cfg: TrainConfig):
    """The run's Accelerator: bf16 only on GPU, TensorBoard logs in the run folder, the
    gradient accumulation that `cfg.batch_size` asks for on this many processes, and under
    DeepSpeed the micro-batch, accumulation and clipping of `cfg`.
    Returns (accelerator, processes, accumulation steps, bf16 in use)."""
    import os

    import torch
    from accelerate import Accelerator, PartialState

    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    on_cpu = cfg.device == "cpu" or not torch.cuda.is_available()
    if deepspeed and on_cpu:
        if torch.cuda.is_available():
            raise ValueError("device=cpu under DeepSpeed on a machine with GPUs: DeepSpeed takes the GPUs; "
                             "leave device empty, or launch without DeepSpeed")
        # accelerate starts DeepSpeed only when not told cpu=True, and without a GPU it then finds
        # no backend and makes every process think it is alone; DeepSpeed's CPU accelerator
        # speaks gloo, so name it.
        state = PartialState(cpu=False, backend="gloo")
    else:
        state = PartialState(cpu=cfg.device == "cpu")
    world = state.num_processes
    accum = cfg.accumulation(world)
    use_bf16 = cfg.bf16 and torch.cuda.is_available() and cfg.device != "cpu"
    # The recipe steps the schedule once per optimizer step; accelerate would step it once per
    # process per optimizer step (it assumes a per-process batch that grows with the processes).
    acc = Accelerator(gradient_accumulation_steps=accum, mixed_precision="bf16" if use_bf16 else "no",
                      log_with=trackers(folder, cfg) or None, project_dir=str(folder.path),
                      cpu=cfg.device == "cpu" and not deepspeed,
                      step_scheduler_with_optimizer=False)
    plugin = acc.state.deepspeed_plugin
    if plugin is not None:
        plugin.deepspeed_config.update(deepspeed_batch(cfg, world))
    return acc, world, accum, use_bf16


def check_trackers(cfg: TrainConfig) -> None:
    """Refuse a tracker whose package is missing: accelerate would leave it out without a word."""
    import importlib.util

    for name in cfg.report_to:
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise UserError(f"report_to names {name}, which is not installed: pip install {TRACKERS[name]}")


def trackers(folder, cfg: TrainConfig) -> list:
    """accelerate's `log_with` for `cfg.report_to`. TensorBoard as a tracker object, so that its
    events stay in RUN/tensorboard/ while the other trackers get the project name."""
    from accelerate.tracking import TensorBoardTracker

    return [TensorBoardTracker("tensorboard", str(folder.path)) if t == "tensorboard" else t
            for t in dict.fromkeys(cfg.report_to)]


def tracker_config(cfg: TrainConfig) -> dict:
    """The run's config as trackers store it: TensorBoard's hparams take only scalars and text."""
    return {k: v if isinstance(v, (bool, int, float, str)) else ",".join(map(str, v))
            for k, v in dataclasses.asdict(cfg).items()}


def start_trackers(accelerator, folder, cfg: TrainConfig) -> None:
    """Start the trackers with the run's config and name (its folder's). API keys are theirs to
    read from the environment (WANDB_API_KEY, ...); no config field holds one. wandb writes into
    the run folder unless WANDB_DIR says where."""
    import os

    name = folder.path.resolve().name
    wandb_kw = {"name": name} if os.environ.get("WANDB_DIR") else {"name": name, "dir": str(folder.path)}
    accelerator.init_trackers(TRACKER_PROJECT, config=tracker_config(cfg),
                              init_kwargs={"wandb": wandb_kw, "swanlab": {"experiment_name": name},
                                           "mlflow": {"run_name": name}})


@dataclass
class TrainRun:
    """A recipe's run as `setup` made it; the loop reads top to bottom around these."""

    cfg: TrainConfig
    folder: Any  # RunDir
    accelerator: Any
    world: int  # processes
    accum: int  # micro-batches per optimizer step on each process
    backend: Any  # aqa.models.base.Backend
    items: Any  # aqa.train.data.QAItems
    module: Any  # BackendModule, prepared by accelerate
    params: list
    optimizer: Any
    scheduler: Any
    plan: Any  # aqa.train.data.StepPlan: which items each micro-batch takes
    per_step: int  # items per optimizer step, all processes together
    steps_per_epoch: int
    steps: int  # loop steps
    start: int  # the step a resumed run starts at
    n_trainable: int
    bar: Any = None
    grad_norm: float = 0.0
    t0: float = field(default_factory=time.time)
    stopped_early: bool = False
    merged: list[str] = field(default_factory=list)  # adapters merged into the weights, in order
    recipe: str = ""  # sft, grpo: the model card's tag
    #: What the model's limits did to the data: audio_truncated (clips heard cut to the model's
    #: window) and prompt_too_long (items left out), counted once at setup.
    limits: dict = field(default_factory=dict)
    #: The adapter makes a model that reasons first (trained with target=reasoning, or on such an
    #: adapter): its folder says so (REASONING_FILE), and `aqa eval` reads it.
    reasoning: bool = False

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    def batches(self, *, with_target: bool, answer_position: bool = False):
        """(step, this process's `accum` MicroBatches of the step, each on the device) for every
        step from `start` on. DataLoader workers (`num_workers`) decode, shuffle and collate
        them ahead of the loop; which items, option orders and masks a micro-batch gets depends
        only on (seed, step, micro-batch), never on the workers or the processes. With
        `answer_position` the prompts run to where the letter goes (`Backend.answer_batch`)."""
        from aqa.train.data import MicroBatches, micro_batch_loader

        cfg = self.cfg
        dataset = MicroBatches(self.plan, self.items, rank=self.rank, start=self.start, steps=self.steps,
                               backend=self.backend, with_target=with_target, workers=cfg.num_workers,
                               answer_position=answer_position)
        loader = iter(micro_batch_loader(dataset, num_workers=cfg.num_workers, prefetch=cfg.prefetch,
                                         pin_memory=self.accelerator.device.type == "cuda"))
        for step in range(self.start, self.steps):
            micros = [next(loader) for _ in range(self.accum)]
            for mb in micros:
                # A worker found these clips bad and replaced them; the run reports them at the end.
                self.items.bad.update(mb.bad)
                mb.batch = self.backend.to_device(mb.batch) if mb.on_host else mb.batch
            yield step, micros

    def accumulate(self):
        """The context of one micro-batch's forward and `optimizer_step`."""
        return self.accelerator.accumulate(self.module)

    def optimizer_step(self, loss) -> None:
        """Backward; on the last micro-batch of a step also clip, step and advance the
        schedule (accelerate skips the optimizer step until then)."""
        acc = self.accelerator
        acc.backward(loss)  # under DeepSpeed also the clipping and, on the last micro-batch, the step
        if acc.sync_gradients and self.cfg.max_grad_norm > 0:
            self.grad_norm = float(acc.clip_grad_norm_(self.params, self.cfg.max_grad_norm) or 0.0)
        self.optimizer.step()
        if acc.sync_gradients:
            self.scheduler.step()
        self.optimizer.zero_grad()

    def sum_over_processes(self, value: float) -> float:
        import torch

        acc = self.accelerator
        return acc.reduce(torch.tensor(float(value), device=acc.device), "sum").item()

    def mean_over_processes(self, values: dict[str, list[float]]) -> dict[str, float]:
        import torch

        acc = self.accelerator
        return {k: acc.reduce(torch.tensor(float(sum(v) / len(v)), device=acc.device), "mean").item()
                for k, v in values.items()}

    def end_step(self, done: int, metrics: dict[str, float], postfix: dict[str, str]) -> bool:
        """Log, advance the bar, checkpoint when due; True when the loop must stop here
        (`stop_after`)."""
        cfg, acc = self.cfg, self.accelerator
        if acc.is_main_process and (done % cfg.log_every == 0 or done == self.steps):
            elapsed = max(time.time() - self.t0, 1e-9)
            row = {"step": done, "epoch": round(done / self.steps_per_epoch, 4), **metrics,
                   "lr": self.scheduler.get_last_lr()[0], "grad_norm": self.grad_norm,
                   "samples_per_s": (done - self.start) * self.per_step / elapsed, "seconds": round(elapsed, 2)}
            self.folder.log(row)
            acc.log({k: v for k, v in row.items() if k != "step"}, step=done)
        self.bar.set_postfix(postfix)
        self.bar.update(1)
        stop_now = bool(cfg.stop_after) and done - self.start >= cfg.stop_after and done < self.steps
        if done % cfg.save_every == 0 or done == self.steps or stop_now:
            from aqa.train.checkpoint import save_checkpoint

            save_checkpoint(self.folder, acc, self.module, self.optimizer, self.scheduler, done,
                            {"epoch": done / self.steps_per_epoch, "processes": self.world,
                             "accumulation": self.accum}, keep=cfg.keep_checkpoints)
        self.stopped_early = stop_now
        return stop_now

    def card(self) -> str:
        """The adapter's README.md (aqa.train.card); only the main process, which saves, builds it."""
        from aqa.train.card import model_card

        if not self.accelerator.is_main_process:
            return ""
        cfg = self.cfg
        return model_card(recipe=self.recipe, model=cfg.model, train_data=cfg.train_data,
                          config_yaml=(self.folder.path / "config.yaml").read_text(), log_file=self.folder.log_file,
                          merged=self.merged, eval_dir=cfg.card_eval)

    def finish(self, **summary: Any) -> dict:
        """Close the bar, save the adapter unless stopped early; returns the run's summary."""
        from aqa.train.checkpoint import save_adapter

        self.bar.close()
        out = {"run_dir": str(self.folder.path), "steps": self.steps, "items": len(self.items),
               "trainable_params": self.n_trainable, "skipped_audio": len(self.items.bad),
               "stopped_early": self.stopped_early, **self.limits, **summary}
        if self.stopped_early:
            log.warning("stopped after %d steps (stop_after); the same command resumes", self.cfg.stop_after)
        else:
            adapter = save_adapter(self.folder, self.accelerator, self.module, card=self.card())
            if self.merged and self.accelerator.is_main_process:
                from aqa.io import write_json
                from aqa.models.base import STACK_FILE

                # Loading this adapter must merge the adapters under it first.
                write_json(adapter / STACK_FILE, {"merge_first": self.merged})
            if self.reasoning and self.accelerator.is_main_process:
                from aqa.io import write_json
                from aqa.models.base import REASONING_FILE

                fmt = self.backend.think_format
                write_json(adapter / REASONING_FILE, {"open": fmt.open, "close": fmt.close})
            out["adapter"] = str(adapter)
        if self.items.bad:
            log.warning("%d clip(s) could not be decoded and were skipped: %s", len(self.items.bad),
                        "; ".join(list(self.items.bad.values())[:5]))
        self.accelerator.end_training()  # also ends the process group: last
        return out


def check_resume_settings(folder, cfg: TrainConfig) -> None:
    """A run folder that holds checkpoints resumes only with the settings it was started with
    (those that change what is computed): anything else would silently mix two runs."""
    import yaml

    old_file = folder.path / "config.yaml"
    if cfg.resume == "never" or not old_file.is_file() or folder.latest_checkpoint() is None:
        return
    old = yaml.safe_load(old_file.read_text()) or {}
    changed = {k: (old[k], v) for k, v in dataclasses.asdict(cfg).items()
               if k in old and k not in cfg.RESUMABLE_CHANGES and old[k] != v}
    if changed:
        diff = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise UserError(f"{old_file}: this run was started with other settings ({diff}); resume with the same "
                        f"ones, choose another output_dir, or start over with resume=never")


def fit_to_model(records: list, backend, cfg: TrainConfig, rationale: bool = False) -> tuple[list, dict]:
    """The records whose prompt and answer the model takes (`max_prompt_tokens`; with
    `rationale`, answers that start with the record's rationale), and the counts of what its
    limits do: each said once here, not per item as batches are drawn. Cheap: text tokenisation
    and the clips' header durations, no decoding."""
    from aqa.data.audio import header_duration
    from aqa.data.records import NoRecords

    # Keyed by object: two training files may repeat an id.
    seconds = {id(r): header_duration(r.audio_path or r.audio) for r in records}
    window = backend.audio_seconds
    cut = sum(window is not None and s > window + 1e-6 for s in seconds.values())
    if cut:
        log.warning("%d of %d training clip(s) are longer than the model's %g s: truncated to it", cut,
                    len(records), window)
    limit = cfg.max_prompt_tokens or backend.max_prompt_tokens
    over = backend.too_long(records, lambda r: seconds[id(r)], limit=limit, with_target=True, rationale=rationale)
    if over:
        gone = {id(r) for r, _ in over}
        log.warning("%d training item(s) left out: prompt and answer longer than the %d tokens the model takes "
                    "(%s)", len(over), limit, ", ".join(f"{r.id}: {n}" for r, n in over[:5])
                    + (", ..." if len(over) > 5 else ""))
        records = [r for r in records if id(r) not in gone]
        if not records:
            raise NoRecords(f"{', '.join(cfg.train_data)}: no records: every item's prompt is longer than the "
                            f"{limit} tokens the model takes (max_prompt_tokens)")
    return records, {"audio_truncated": cut, "prompt_too_long": len(over)}


#: A rationale that names an option by its letter ("option B", "(B)", "answer is B"): a shuffled
#: order of the options makes the letter name another option.
_LETTER_IN_RATIONALE = re.compile(r"(?:\b(?:option|choice|answer)\s*(?:is\s*)?\(?[A-Z]\)?(?![A-Za-z]))|\([A-Z]\)")


def with_rationales(records: list, no_rationale: str, cfg: TrainConfig) -> tuple[list, dict]:
    """The records for target=reasoning: those without a rationale left out (`no_rationale=skip`)
    or answered after an empty think block (`empty`), with the count logged and returned."""
    from aqa.data.records import NoRecords

    missing = [r for r in records if not (getattr(r, "rationale", None) or "").strip()]
    if missing and no_rationale == "skip":
        log.warning("target=reasoning: %d of %d item(s) have no rationale and are left out (no_rationale=skip)",
                    len(missing), len(records))
        gone = {id(r) for r in missing}
        records = [r for r in records if id(r) not in gone]
        if not records:
            raise NoRecords(f"{', '.join(cfg.train_data)}: no record has a rationale, which target=reasoning "
                            f"trains on; add \"rationale\" to the records, or set no_rationale=empty")
    elif missing:
        log.warning("target=reasoning: %d of %d item(s) have no rationale and are answered after an empty think "
                    "block (no_rationale=empty)", len(missing), len(records))
    named = sum(1 for r in records if _LETTER_IN_RATIONALE.search(getattr(r, "rationale", None) or ""))
    if named and cfg.shuffle_options:
        log.warning("target=reasoning: %d rationale(s) name an option by its letter, which the shuffled option "
                    "orders (shuffle_options) make name another option; write rationales that name options by "
                    "their text, or set shuffle_options=false", named)
    return records, {"no_rationale": len(missing), "no_rationale_policy": no_rationale}


def setup(cfg: TrainConfig, *, name: str, adapter: str = "", merge: str = "", lora_audio_tower: bool = False,
          steps_factor: int = 1, target: str = "letter", no_rationale: str = "skip") -> TrainRun:
    """Everything before a recipe's loop.

    `adapter`: continue training this adapter instead of adding a new one; `merge`: merge this
    adapter (and those it was trained on) into the weights first, then add a new one. The
    schedule spans `steps_factor` optimizer steps per loop step (GRPO's ppo_epochs). `target`:
    letter, or reasoning (each answer starts with the record's rationale in the family's think
    block; records without one are left out, or get an empty block, as `no_rationale` says)."""
    import torch
    from tqdm.auto import tqdm

    from aqa.data.records import load_records
    from aqa.models.base import BackendModule, adapter_reasons, adapter_stack
    from aqa.models.registry import load_backend
    from aqa.train.checkpoint import RunDir, resume
    from aqa.train.data import QAItems, StepPlan

    if not cfg.model:
        raise UserError("config key 'model' is empty: name a Hugging Face id or a local folder")
    if not cfg.train_data:
        raise UserError("config key 'train_data' is empty: name at least one AQA JSONL file")
    folder = RunDir(cfg.output_dir)
    check_resume_settings(folder, cfg)
    check_trackers(cfg)
    if cfg.card_eval and not (Path(cfg.card_eval) / "metrics.json").is_file():
        # Said now, not after the training the card comes at the end of.
        raise UserError(f"card_eval={cfg.card_eval}: no metrics.json there; name a folder that aqa eval wrote")
    accelerator, world, accum, use_bf16 = make_accelerator(folder, cfg)
    torch.manual_seed(cfg.seed)
    if accelerator.is_main_process:
        folder.path.mkdir(parents=True, exist_ok=True)
        folder.write_config(cfg)

    backend = load_backend(cfg.model, device=str(accelerator.device), dtype="bf16" if use_bf16 else "fp32",
                           trust_remote_code=cfg.trust_remote_code, adapter=adapter or None,
                           is_trainable=bool(adapter), allow_pickle=cfg.allow_pickle)
    # What a trained adapter stands on: the adapters merged into the weights first, in order.
    merged = (backend.merge_adapters(merge, allow_pickle=cfg.allow_pickle) if merge
              else adapter_stack(adapter) if adapter else [])
    if adapter:
        backend.set_lora_dropout(cfg.lora_dropout)
    else:
        backend.add_lora(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, audio_tower=lora_audio_tower)
    reasoning = target == "reasoning" or adapter_reasons(adapter) or adapter_reasons(merge)
    backend.set_thinking({"on": True, "off": False}.get(cfg.thinking, True if reasoning else None))
    if cfg.gradient_checkpointing:
        backend.enable_gradient_checkpointing()
    if cfg.compile:
        backend.compile_decoder()
    backend.set_cache_dir(cfg.cache_dir or folder.path / "cache")
    backend.model.train()
    trainable = [p for p in backend.model.parameters() if p.requires_grad]
    n_trainable, n_total = sum(p.numel() for p in trainable), sum(p.numel() for p in backend.model.parameters())

    records = [r for path in cfg.train_data for r in load_records(path, allow_outside_root=cfg.allow_outside_root)]
    rationale_counts = {}
    if target == "reasoning":
        records, rationale_counts = with_rationales(records, no_rationale, cfg)
    records, limits = fit_to_model(records, backend, cfg, rationale=target == "reasoning")
    limits.update(rationale_counts)
    items = QAItems(records, seed=cfg.seed, shuffle=cfg.shuffle_options, window_s=backend.audio_seconds,
                    reasoning=target == "reasoning")
    n_step = cfg.batch_size
    steps_per_epoch = len(items) // n_step
    if steps_per_epoch == 0:
        raise UserError(f"{len(items)} training items is fewer than one step's {n_step}")
    steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    total = steps * steps_factor

    module = BackendModule(backend)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(int(cfg.warmup_ratio * total), total,
                                                                       cfg.schedule))
    module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    # The processes built the same adapter from the same seed above. From here on the global RNG
    # draws LoRA dropout (the data, masks and choice rollouts have generators of their own;
    # generate rollouts reseed it per micro-batch), so each process gets a stream of its own, or
    # all would drop the same units; process 0 keeps the seed's, which single-process runs
    # always drew. A resumed run restores every process's from its checkpoint.
    if accelerator.process_index:
        torch.manual_seed(hash((cfg.seed, accelerator.process_index)) & (2**63 - 1))
    start = resume(folder, cfg.resume, accelerator, module, optimizer, scheduler)
    start_trackers(accelerator, folder, cfg)
    log.info("%s: %d items, %d steps (%d per epoch), %d items per step = %d process(es) x %d accumulation x %d "
             "per micro-batch; %.2f M of %.1f M parameters trainable", name, len(items), steps, steps_per_epoch, n_step,
             world, accum, cfg.micro_batch_size, n_trainable / 1e6, n_total / 1e6)
    plan = StepPlan(n_items=len(items), seed=cfg.seed, per_step=n_step, steps_per_epoch=steps_per_epoch,
                    accum=accum, world=world, micro=cfg.micro_batch_size)
    run = TrainRun(cfg=cfg, folder=folder, accelerator=accelerator, world=world, accum=accum, backend=backend,
                   items=items, module=module, params=params, optimizer=optimizer, scheduler=scheduler, plan=plan,
                   per_step=n_step, steps_per_epoch=steps_per_epoch, steps=steps, start=start,
                   n_trainable=n_trainable, merged=merged, limits=limits, reasoning=reasoning or backend.thinks,
                   recipe=name.split()[0])
    run.bar = tqdm(total=steps, initial=start, desc=name, disable=not accelerator.is_main_process)
    return run


def add_recipe_command(sub: argparse._SubParsersAction, name: str, help: str, doc_text: str, cfg_cls,
                       train_fn) -> None:
    """`aqa NAME CONFIG.yaml [key=value ...]` for a recipe with a config dataclass."""
    from aqa.config import describe, load_config

    def run(args) -> int:
        if args.help_config:
            print(describe(cfg_cls))
            return 0
        overrides, path = list(args.overrides), args.config
        if path and "=" in path and not path.endswith((".yaml", ".yml")):
            overrides.insert(0, path)
            path = None
        summary = train_fn(load_config(cfg_cls, path, overrides))
        if not summary.get("stopped_early"):
            print(f"wrote {summary['run_dir']}/ (config.yaml, adapter/ with its README.md, checkpoints/, "
                  f"train_log.jsonl, tensorboard/)")
        return 0

    p = sub.add_parser(name, help=help, description=doc_text, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML config (see --help-config)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--help-config", action="store_true", help="list every config key")
    p.set_defaults(func=run)
