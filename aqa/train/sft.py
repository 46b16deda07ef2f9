"""LoRA supervised fine-tuning (`aqa sft CONFIG.yaml [key=value ...]`).

Algorithm (reference report, section 2.3): minimise the cross-entropy of the answer tokens
given the audio and the prompt, L = -sum_t log P(x_t | x_<t, q), with a LoRA adapter on the
language model's linear layers (and on the audio encoder's if `lora_audio_tower`). The answer
is the option letter followed by the end-of-turn token; prompt tokens carry no loss.
Augmentation as in the report: the options are shuffled every time an item is sampled, and
SpecAugment masks bands of the log-mel input (frequency axis only).

Departures from the report: the loss is the mean over answer tokens (the report writes a sum;
with one-letter answers the two differ by a constant factor). Checkpoints hold only the
trainable weights, with optimizer, scheduler, step and RNG, so a resumed run ends with the
same adapter as an uninterrupted one.

Launch:
    aqa sft configs/qwen2_audio/sft_lora.yaml train_data=[data/train.jsonl] output_dir=runs/sft
    accelerate launch --config_file configs/accelerate/zero2.yaml -m aqa sft CONFIG.yaml ...
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass

from aqa.config import doc

log = logging.getLogger(__name__)


@dataclass
class SFTConfig:
    model: str = doc("", help="Hugging Face id or local folder of the base model")
    train_data: list[str] = doc([], help="AQA JSONL file(s) to train on")
    output_dir: str = doc("runs/sft", help="run folder: config.yaml, adapter/, checkpoints/, logs")
    lora_r: int = doc(8, help="LoRA rank (reference report: 8 for Qwen2-Audio, 16 for Kimi-Audio)")
    lora_alpha: int = doc(16, help="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = doc(0.05, help="dropout on the LoRA input")
    lora_audio_tower: bool = doc(False, help="also put LoRA on the audio encoder's linear layers")
    lr: float = doc(5e-5, help="peak learning rate (reference report: 5e-5)")
    weight_decay: float = doc(0.0, help="AdamW weight decay")
    batch_size: int = doc(32, help="effective batch: micro_batch_size x accumulation x processes")
    micro_batch_size: int = doc(4, help="items per forward pass on one process")
    epochs: float = doc(8.0, help="passes over the training data (reference report: 8)")
    max_steps: int = doc(0, help="optimizer steps; 0 derives them from epochs")
    warmup_ratio: float = doc(0.05, help="share of the steps with linear warmup")
    schedule: str = doc("cosine", help="decay after warmup: cosine, linear or constant")
    max_grad_norm: float = doc(1.0, help="gradient clipping norm (0 disables)")
    shuffle_options: bool = doc(True, help="shuffle the options each time an item is sampled")
    spec_augment_masks: int = doc(2, help="SpecAugment frequency masks per clip (0 disables)")
    spec_augment_width: int = doc(12, help="widest frequency mask, in mel bins")
    bf16: bool = doc(True, help="bf16 weights and autocast on GPU (CPU always runs fp32)")
    gradient_checkpointing: bool = doc(False, help="recompute activations to save memory")
    seed: int = doc(0, help="seed of the data order, option shuffles, masks and LoRA init")
    save_every: int = doc(100, help="checkpoint every N optimizer steps (and at the end)")
    keep_checkpoints: int = doc(2, help="how many checkpoints to keep")
    log_every: int = doc(1, help="log every N optimizer steps")
    resume: str = doc("auto", help="auto (latest checkpoint in output_dir), never, or a checkpoint folder")
    stop_after: int = doc(0, help="stop as if interrupted after N steps of this invocation (0: never)")
    adapter: str = doc("", help="an existing adapter to continue training (empty: a new one)")
    allow_outside_root: bool = doc(False, help="accept audio paths outside the data file's folder")
    trust_remote_code: bool = doc(False, help="let transformers run code shipped with the model")
    device: str = doc("", help="torch device; empty picks cuda when available, else cpu")

    def __post_init__(self):
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"schedule must be cosine, linear or constant, got {self.schedule!r}")
        if self.micro_batch_size < 1 or self.batch_size < self.micro_batch_size:
            raise ValueError("need 1 <= micro_batch_size <= batch_size")


def train(cfg: SFTConfig) -> dict:
    """Run SFT; returns a summary dict. Reads top to bottom: setup, loop, save."""
    import torch
    from tqdm.auto import tqdm

    from aqa.data.augment import freq_mask
    from aqa.data.records import load_records
    from aqa.models.base import BackendModule, load_backend
    from aqa.train.common import (RunDir, add_lora, count_params, lr_lambda, make_accelerator, resume, save_adapter,
                                  save_checkpoint, trainable_parameters)
    from aqa.train.data import QAItems, epoch_order, micro_seed

    # ---- setup -----------------------------------------------------------------------------
    if not cfg.model:
        raise ValueError("config key 'model' is empty: name a Hugging Face id or a local folder")
    if not cfg.train_data:
        raise ValueError("config key 'train_data' is empty: name at least one AQA JSONL file")
    run = RunDir(cfg.output_dir)

    def accumulation(world: int) -> int:
        if cfg.batch_size % (cfg.micro_batch_size * world):
            raise ValueError(f"batch_size {cfg.batch_size} is not a multiple of micro_batch_size "
                             f"{cfg.micro_batch_size} x {world} process(es)")
        return cfg.batch_size // (cfg.micro_batch_size * world)

    accelerator, world, accum, use_bf16 = make_accelerator(run, device=cfg.device, bf16=cfg.bf16,
                                                           accumulation=accumulation)
    torch.manual_seed(cfg.seed)
    if accelerator.is_main_process:
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config(cfg)
    backend = load_backend(cfg.model, device=str(accelerator.device), dtype="bf16" if use_bf16 else "fp32",
                           trust_remote_code=cfg.trust_remote_code,
                           adapter=cfg.adapter or None, is_trainable=bool(cfg.adapter))
    if not cfg.adapter:
        add_lora(backend, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                 audio_tower=cfg.lora_audio_tower)
    if cfg.gradient_checkpointing:
        backend.base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    backend.model.train()
    n_train, n_total = count_params(backend.model)
    records = [r for path in cfg.train_data for r in load_records(path, allow_outside_root=cfg.allow_outside_root)]
    items = QAItems(records, seed=cfg.seed, shuffle=cfg.shuffle_options, window_s=backend.audio_seconds)
    steps_per_epoch = len(items) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(items)} training items is fewer than one batch of {cfg.batch_size}")
    total = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_ratio * total)

    module = BackendModule(backend)
    params = trainable_parameters(module)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, total, cfg.schedule))
    module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    start = resume(run, cfg.resume, accelerator, module, optimizer, scheduler)
    accelerator.init_trackers("tensorboard")
    log.info("SFT: %d items, %d steps (%d per epoch), batch %d = %d x %d accumulation x %d process(es); "
             "%.2f M of %.1f M parameters trainable", len(items), total, steps_per_epoch, cfg.batch_size,
             cfg.micro_batch_size, accum, world, n_train / 1e6, n_total / 1e6)

    # ---- loop ------------------------------------------------------------------------------
    bar = tqdm(total=total, initial=start, desc="sft", disable=not accelerator.is_main_process)
    stopped_early = False
    t0, seen = time.time(), 0
    for step in range(start, total):
        epoch, pos = divmod(step, steps_per_epoch)
        order = epoch_order(len(items), cfg.seed, epoch)[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]
        losses = []
        for k in range(accum):
            lo = (k * world + accelerator.process_index) * cfg.micro_batch_size
            micro = [items.sample(int(i), epoch) for i in order[lo:lo + cfg.micro_batch_size]]
            batch = backend.collate([m.example for m in micro], with_target=True)
            if cfg.spec_augment_masks > 0:
                g = torch.Generator().manual_seed(micro_seed(cfg.seed, step, k, accelerator.process_index))
                batch["input_features"] = freq_mask(batch["input_features"].cpu(), cfg.spec_augment_masks,
                                                    cfg.spec_augment_width, g).to(accelerator.device)
            with accelerator.accumulate(module):
                logp, mask = module(batch)
                loss = -(logp.sum() / mask.sum())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = (accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                                 if cfg.max_grad_norm > 0 else torch.tensor(0.0))
                optimizer.step()  # accelerate skips it until the last micro-batch of the step
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            losses.append(loss.detach())
            seen += len(micro) * world
        done = step + 1
        mean_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
        if accelerator.is_main_process and (done % cfg.log_every == 0 or done == total):
            row = {"step": done, "epoch": round(done / steps_per_epoch, 4), "loss": mean_loss,
                   "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                   "samples_per_s": seen / max(time.time() - t0, 1e-9)}
            run.log(row)
            accelerator.log({k: v for k, v in row.items() if k != "step"}, step=done)
        bar.set_postfix(loss=f"{mean_loss:.4f}")
        bar.update(1)
        stop_now = cfg.stop_after and done - start >= cfg.stop_after and done < total
        if done % cfg.save_every == 0 or done == total or stop_now:
            save_checkpoint(run, accelerator, module, optimizer, scheduler, done,
                            {"epoch": done / steps_per_epoch, "processes": world, "accumulation": accum},
                            keep=cfg.keep_checkpoints)
        if stop_now:
            stopped_early = True
            break
    bar.close()

    # ---- save ------------------------------------------------------------------------------
    summary = {"run_dir": str(run.path), "steps": total, "items": len(items), "trainable_params": n_train,
               "skipped_audio": len(items.bad), "stopped_early": stopped_early}
    if stopped_early:
        log.warning("stopped after %d steps (stop_after); the same command resumes", cfg.stop_after)
        accelerator.end_training()
        return summary
    summary["adapter"] = str(save_adapter(run, accelerator, module))
    accelerator.end_training()  # also ends the process group: last
    if items.bad:
        log.warning("%d clip(s) could not be decoded and were skipped: %s", len(items.bad),
                    "; ".join(list(items.bad.values())[:5]))
    return summary


def register(sub: argparse._SubParsersAction) -> None:
    from aqa.train.common import add_recipe_command

    add_recipe_command(sub, "sft", "LoRA supervised fine-tuning", __doc__, SFTConfig, train)
