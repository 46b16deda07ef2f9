"""GRPO reinforcement learning after SFT (`aqa grpo CONFIG.yaml [key=value ...]`).

Algorithm (reference report, section 2.4; DeepSeekMath's GRPO): for each question, G answers
are sampled from the policy as it stands (pi_old); each earns reward 1 if it names the right
option, else 0; advantages are the rewards normalised within the group; the policy maximises
the clipped ratio objective minus beta times the k3 estimate of KL(pi_theta || pi_ref), each
answer's token terms averaged over its length, then over the answers (aqa.train.grpo_loss).

Reference = the SFT model. The SFT adapter is merged into the base weights in memory; the
policy trains a new LoRA adapter on top, and the reference log-probs come from the same
weights with that adapter disabled, so no second copy of the model is held.

Rollouts:
- `choice` (default): the G answers are option letters sampled from the policy's
  distribution over the letters at the answer position (renormalised over the options, at
  `temperature`). One forward pass per question serves all G samples; exact for one-token
  answers, which is what SFT teaches.
- `generate`: G completions sampled with `generate` (temperature, max_new_tokens); the reward
  is read by the same answer parser as `aqa eval` (aqa.prompts.parse_answer).

Departures: with `ppo_epochs` = 1 (the default, as in TRL) each batch of rollouts feeds one
optimizer step, so pi_old equals pi_theta at the step and the ratio is 1 in value (its gradient
is still the policy gradient); clipping acts from `ppo_epochs` = 2 on. The advantage uses the
sample standard deviation, and a group whose rewards are all equal contributes only its KL term.

The saved adapter folder names the adapters it was trained on top of (aqa_merge_first.json),
so `aqa eval --adapter RUN/adapter` merges the SFT adapter first by itself.

Launch:
    aqa grpo configs/qwen2_audio/grpo.yaml sft_adapter=runs/sft/adapter train_data=[data/train.jsonl]
    accelerate launch --config_file configs/accelerate/zero2.yaml -m aqa grpo CONFIG.yaml ...
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from aqa.config import doc

log = logging.getLogger(__name__)


@dataclass
class GRPOConfig:
    model: str = doc("", help="Hugging Face id or local folder of the base model")
    sft_adapter: str = doc("", help="the SFT adapter (merged in memory; also the reference policy)")
    train_data: list[str] = doc([], help="AQA JSONL file(s) to train on")
    output_dir: str = doc("runs/grpo", help="run folder: config.yaml, adapter/, checkpoints/, logs")
    rollout: str = doc("choice", help="choice: sample option letters; generate: sample completions")
    group_size: int = doc(6, help="G, answers sampled per question (reference report: 6)")
    temperature: float = doc(1.0, help="sampling temperature of the rollouts")
    max_new_tokens: int = doc(16, help="generate rollouts: longest completion")
    eps: float = doc(0.2, help="ratio clipping threshold (reference report: 0.2)")
    beta: float = doc(0.1, help="weight of the KL penalty to the reference (reference report: 0.1)")
    ppo_epochs: int = doc(1, help="optimizer steps per batch of rollouts (1: pi_old = pi_theta)")
    lora_r: int = doc(8, help="rank of the new LoRA adapter")
    lora_alpha: int = doc(16, help="LoRA scaling numerator")
    lora_dropout: float = doc(0.0, help="dropout on the LoRA input (0 keeps old and new log-probs comparable)")
    lr: float = doc(5e-6, help="learning rate (reference report: 5e-6)")
    weight_decay: float = doc(0.0, help="AdamW weight decay")
    batch_size: int = doc(8, help="questions per micro-batch on one process (reference report: 8)")
    grad_accum: int = doc(5, help="micro-batches per optimizer step (reference report: 5)")
    epochs: float = doc(3.0, help="passes over the training data (reference report: 3)")
    max_steps: int = doc(0, help="optimizer steps; 0 derives them from epochs")
    warmup_ratio: float = doc(0.0, help="share of the steps with linear warmup")
    schedule: str = doc("constant", help="cosine, linear or constant")
    max_grad_norm: float = doc(1.0, help="gradient clipping norm (0 disables)")
    shuffle_options: bool = doc(True, help="shuffle the options each time a question is sampled")
    bf16: bool = doc(True, help="bf16 weights and autocast on GPU (CPU always runs fp32)")
    seed: int = doc(0, help="seed of the data order, option shuffles and rollouts")
    save_every: int = doc(50, help="checkpoint every N optimizer steps (and at the end)")
    keep_checkpoints: int = doc(2, help="how many checkpoints to keep")
    resume: str = doc("auto", help="auto (latest checkpoint in output_dir), never, or a checkpoint folder")
    stop_after: int = doc(0, help="stop as if interrupted after N steps of this invocation (0: never)")
    allow_outside_root: bool = doc(False, help="accept audio paths outside the data file's folder")
    trust_remote_code: bool = doc(False, help="let transformers run code shipped with the model")
    device: str = doc("", help="torch device; empty picks cuda when available, else cpu")

    def __post_init__(self):
        if self.rollout not in ("choice", "generate"):
            raise ValueError(f"rollout must be choice or generate, got {self.rollout!r}")
        if self.group_size < 2:
            raise ValueError("group_size must be at least 2 (advantages compare answers within a group)")


def rollout_choice(module, backend, items, cfg, generator):
    """Sample G option letters per question. Returns the batch of prompts, samples (Q, G) and
    rewards (Q, G)."""
    import torch

    batch = backend.collate([it.example for it in items])
    n = [len(it.order) for it in items]
    with torch.no_grad():
        logits = module(batch, "option_logits", n_options=n)  # (Q, n_max)
    probs = torch.softmax(logits / cfg.temperature, -1).cpu()
    samples = torch.multinomial(probs, cfg.group_size, replacement=True, generator=generator)  # (Q, G)
    answers = torch.tensor([it.answer for it in items])
    rewards = (samples == answers[:, None]).float()
    greedy = (logits.argmax(-1).cpu() == answers).float().mean().item()
    return batch, n, samples, rewards, greedy


def choice_logprobs(module, batch, n, samples, temperature):
    """(Q*G, 1) log-probs of the sampled letters under the option distribution, and its
    entropy per question."""
    import torch

    logits = module(batch, "option_logits", n_options=n) / temperature  # (Q, n_max)
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(1, samples.to(logits.device))  # (Q, G)
    p = logp_all.exp()
    entropy = -(torch.where(p > 0, p * logp_all, torch.zeros_like(p))).sum(-1)
    return logp.reshape(-1, 1), entropy


def train(cfg: GRPOConfig) -> dict:
    """Run GRPO; returns a summary dict. Reads top to bottom: setup, loop, save."""
    import numpy as np
    import torch
    from peft import PeftModel
    from tqdm.auto import tqdm

    from aqa.data.records import load_records
    from aqa.io import write_json
    from aqa.models.base import STACK_FILE, BackendModule, Example, load_backend
    from aqa.prompts import parse_answer
    from aqa.train.common import (RunDir, add_lora, count_params, lr_lambda, make_accelerator, resume, save_adapter,
                                  save_checkpoint, trainable_parameters)
    from aqa.train.data import QAItems, epoch_order, micro_seed
    from aqa.train.grpo_loss import grpo_loss, group_advantages

    # ---- setup -----------------------------------------------------------------------------
    if not cfg.model or not cfg.train_data:
        raise ValueError("config keys 'model' and 'train_data' must be set")
    run = RunDir(cfg.output_dir)
    accelerator, world, _, use_bf16 = make_accelerator(run, device=cfg.device, bf16=cfg.bf16,
                                                       accumulation=lambda world: cfg.grad_accum)
    torch.manual_seed(cfg.seed)
    if accelerator.is_main_process:
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config(cfg)
    backend = load_backend(cfg.model, device=str(accelerator.device), dtype="bf16" if use_bf16 else "fp32",
                           trust_remote_code=cfg.trust_remote_code)
    below = []
    if cfg.sft_adapter:
        # Merge the SFT adapter (and whatever it stood on): the merged weights are the reference.
        stack = Path(cfg.sft_adapter) / STACK_FILE
        below = (json.loads(stack.read_text())["merge_first"] if stack.is_file() else []) + [
            str(Path(cfg.sft_adapter).resolve())]
        for path in below:
            backend.model = PeftModel.from_pretrained(backend.model, path).merge_and_unload()
    add_lora(backend, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, audio_tower=False)
    backend.model.train()
    n_train, n_total = count_params(backend.model)
    records = [r for p in cfg.train_data for r in load_records(p, allow_outside_root=cfg.allow_outside_root)]
    items = QAItems(records, seed=cfg.seed, shuffle=cfg.shuffle_options, window_s=backend.audio_seconds)
    per_step = cfg.batch_size * cfg.grad_accum * world
    steps_per_epoch = len(items) // per_step
    if steps_per_epoch == 0:
        raise ValueError(f"{len(items)} training items is fewer than one step's {per_step} questions")
    rollout_steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    total = rollout_steps * cfg.ppo_epochs
    module = BackendModule(backend)
    params = trainable_parameters(module)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(int(cfg.warmup_ratio * total), total,
                                                                       cfg.schedule))
    module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    peft_model = accelerator.unwrap_model(module).model
    start = resume(run, cfg.resume, accelerator, module, optimizer, scheduler)
    accelerator.init_trackers("tensorboard")
    log.info("GRPO (%s rollouts, G=%d): %d questions, %d steps, %d questions per step; %.2f M of %.1f M "
             "parameters trainable", cfg.rollout, cfg.group_size, len(items), rollout_steps, per_step,
             n_train / 1e6, n_total / 1e6)

    # ---- loop ------------------------------------------------------------------------------
    bar = tqdm(total=rollout_steps, initial=start, desc=f"grpo ({cfg.rollout})",
               disable=not accelerator.is_main_process)
    stopped_early = False
    t0 = time.time()
    for step in range(start, rollout_steps):
        epoch, pos = divmod(step, steps_per_epoch)
        order = epoch_order(len(items), cfg.seed, epoch)[pos * per_step:(pos + 1) * per_step]
        stats = {"loss": [], "reward": [], "accuracy": [], "kl": [], "clip_fraction": [], "entropy": []}
        # -- rollouts for every micro-batch of this step, from pi_old (the policy as it stands)
        rolls = []
        for k in range(cfg.grad_accum):
            lo = (k * world + accelerator.process_index) * cfg.batch_size
            micro = [items.sample(int(i), epoch) for i in order[lo:lo + cfg.batch_size]]
            seed = micro_seed(cfg.seed, step, k, accelerator.process_index)
            if cfg.rollout == "choice":
                batch, n, samples, rewards, greedy = rollout_choice(module, backend, micro, cfg,
                                                                    torch.Generator().manual_seed(seed))
            else:
                torch.manual_seed(seed)  # generate() samples from the global RNG
                prompts = backend.collate([m.example for m in micro])
                n, samples = [len(m.order) for m in micro], None
                with torch.no_grad():
                    greedy_pick = module(prompts, "option_logits", n_options=n).argmax(-1).cpu()
                    seqs = backend.generate_ids(prompts, max_new_tokens=cfg.max_new_tokens, do_sample=True,
                                                temperature=cfg.temperature, num_return_sequences=cfg.group_size)
                greedy = float(np.mean([int(g) == m.answer for g, m in zip(greedy_pick, micro)]))
                texts = backend.tokenizer.batch_decode(seqs, skip_special_tokens=True)
                G = cfg.group_size
                rewards = torch.tensor([[float(parse_answer(texts[q * G + g], [m.record.choices[o] for o in m.order])
                                               == m.answer) for g in range(G)] for q, m in enumerate(micro)])
                # An empty completion (max_new_tokens 0) still needs one token to score.
                batch = backend.collate([Example(m.example.audio, m.example.text,
                                                 target_ids=seqs[q * G + g] or backend.end_ids)
                                         for q, m in enumerate(micro) for g in range(G)], with_target=True)
            with torch.no_grad(), peft_model.disable_adapter():  # the reference: new adapter off
                ref = (choice_logprobs(module, batch, n, samples, cfg.temperature)[0] if cfg.rollout == "choice"
                       else module(batch)[0])
            rolls.append({"batch": batch, "n": n, "samples": samples, "rewards": rewards, "greedy": greedy,
                          "adv": group_advantages(rewards).reshape(-1).to(accelerator.device), "ref": ref,
                          "old": None})
        # -- ppo_epochs passes over the rollouts, one optimizer step each
        for ppo_epoch in range(cfg.ppo_epochs):
            for r in rolls:
                with accelerator.accumulate(module):
                    if cfg.rollout == "choice":
                        logp, ent = choice_logprobs(module, r["batch"], r["n"], r["samples"], cfg.temperature)
                        mask = torch.ones_like(logp)
                    else:
                        logp, mask, ent = module(r["batch"], "target_logprobs_entropy")
                        ent = (ent * mask).sum(1) / mask.sum(1).clamp_min(1)
                    if r["old"] is None:  # first pass: the weights that sampled the rollouts
                        r["old"] = logp.detach()
                    loss, s = grpo_loss(logp, r["old"], r["ref"], mask, r["adv"], eps=cfg.eps, beta=cfg.beta)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                    if accelerator.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad()
                if ppo_epoch == cfg.ppo_epochs - 1:
                    stats["loss"].append(loss.item())
                    stats["reward"].append(r["rewards"].mean().item())
                    stats["accuracy"].append(r["greedy"])
                    stats["kl"].append(s["kl"])
                    stats["clip_fraction"].append(s["clip_fraction"])
                    stats["entropy"].append(ent.detach().mean().item())
        done = step + 1
        row = {k: accelerator.reduce(torch.tensor(float(np.mean(v)), device=accelerator.device), "mean").item()
               for k, v in stats.items()}
        if accelerator.is_main_process:
            row = {"step": done, "epoch": round(done / steps_per_epoch, 4), **row, "lr": scheduler.get_last_lr()[0],
                   "seconds": round(time.time() - t0, 2)}
            run.log(row)
            accelerator.log({k: v for k, v in row.items() if k != "step"}, step=done)
        bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.4f}")
        bar.update(1)
        stop_now = cfg.stop_after and done - start >= cfg.stop_after and done < rollout_steps
        if done % cfg.save_every == 0 or done == rollout_steps or stop_now:
            save_checkpoint(run, accelerator, module, optimizer, scheduler, done,
                            {"epoch": done / steps_per_epoch, "processes": world}, keep=cfg.keep_checkpoints)
        if stop_now:
            stopped_early = True
            break
    bar.close()

    # ---- save ------------------------------------------------------------------------------
    summary = {"run_dir": str(run.path), "steps": rollout_steps, "questions": len(items),
               "trainable_params": n_train, "skipped_audio": len(items.bad), "stopped_early": stopped_early}
    if not stopped_early:
        adapter = save_adapter(run, accelerator, module)
        if accelerator.is_main_process and below:
            write_json(adapter / STACK_FILE, {"merge_first": below})
        summary["adapter"] = str(adapter)
    accelerator.end_training()
    return summary


def register(sub: argparse._SubParsersAction) -> None:
    from aqa.train.common import add_recipe_command

    add_recipe_command(sub, "grpo", "GRPO reinforcement learning after SFT", __doc__, GRPOConfig, train)
