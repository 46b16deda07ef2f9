"""LoRA supervised fine-tuning (`aqa sft CONFIG.yaml [key=value ...]`).

Algorithm (reference report, section 2.3): minimise the cross-entropy of the answer tokens
given the audio and the prompt, L = -sum_t log P(x_t | x_<t, q), with a LoRA adapter on the
language model's linear layers (and on the audio encoder's if `lora_audio_tower`). The answer
is the option letter followed by the end-of-turn token; prompt tokens carry no loss.
Augmentation as in the report: the options are shuffled every time an item is sampled, and
SpecAugment masks bands of the log-mel input (frequency axis only).

Targets (`target`): `letter` (the default, the report's): the option letter then the end of
turn; on a checkpoint that reasons first (Qwen3-Omni-Thinking: `Backend.thinks`) after an empty
think block, as its chat template renders an answer with thinking switched off. `reasoning`:
the record's `rationale` inside the family's think delimiters, then the letter, then the end of
turn (`<think>\n{rationale}\n</think>\n\n{letter}<|im_end|>`, the layout Qwen3's template gives
an assistant turn with `reasoning_content`); the loss covers the whole assistant turn. Items
without a rationale are left out (`no_rationale=skip`) or answered after an empty think block
(`empty`), the count logged and in the summary. The adapter folder then says that the model
reasons first (aqa_reasoning.json), so `aqa eval` generates and reads it as a reasoning model.

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

from aqa.config import doc, recipe_config, recipe_default
from aqa.train.recipe import TrainConfig


@recipe_config
class SFTConfig(TrainConfig):
    output_dir: str = recipe_default("runs/sft")
    lora_audio_tower: bool = doc(False, help="also put LoRA on the audio encoder's linear layers")
    spec_augment_masks: int = doc(2, help="SpecAugment frequency masks per clip (0 disables); on Kimi-Audio "
                                          "they reach the Whisper features only, its speech tokens come from "
                                          "the clean audio")
    spec_augment_width: int = doc(12, help="widest frequency mask, in mel bins")
    adapter: str = doc("", help="an existing adapter to continue training (empty: a new one)")
    target: str = doc("letter", help="letter: the option letter (the report's); reasoning: the record's rationale "
                                     "in the family's think block, then the letter")
    no_rationale: str = doc("skip", help="target=reasoning, items without a rationale: skip (left out) or empty "
                                         "(answered after an empty think block)")

    def __post_init__(self):
        super().__post_init__()
        if self.target not in ("letter", "reasoning"):
            raise ValueError(f"target must be letter or reasoning, got {self.target!r}")
        if self.no_rationale not in ("skip", "empty"):
            raise ValueError(f"no_rationale must be skip or empty, got {self.no_rationale!r}")


def train(cfg: SFTConfig) -> dict:
    """Run SFT; returns a summary dict."""
    import torch

    from aqa.models.registry import find_adapter
    from aqa.train.recipe import setup

    # ---- setup -----------------------------------------------------------------------------
    # Before the run folder is made: a missing adapter said in one line, a run folder taken for its adapter/.
    adapter = find_adapter(cfg.adapter) if cfg.adapter else ""
    run = setup(cfg, name="sft", adapter=adapter, lora_audio_tower=cfg.lora_audio_tower, target=cfg.target,
                no_rationale=cfg.no_rationale)
    backend, module = run.backend, run.module

    # ---- loop ------------------------------------------------------------------------------
    for step, micros in run.batches(with_target=True):
        losses = []
        for mb in micros:  # this process's micro-batches of the step, collated ahead by the DataLoader
            masks = torch.Generator().manual_seed(mb.seed)
            batch = backend.spec_augment(mb.batch, cfg.spec_augment_masks, cfg.spec_augment_width, masks)
            with run.accumulate():
                logp, mask = module(batch)
                loss = -(logp.sum() / mask.sum())
                run.optimizer_step(loss)
            losses.append(loss.item())
        metrics = run.mean_over_processes({"loss": losses})
        if run.end_step(step + 1, metrics, {"loss": f"{metrics['loss']:.4f}"}):
            break

    # ---- save ------------------------------------------------------------------------------
    return run.finish()


def register(sub: argparse._SubParsersAction) -> None:
    from aqa.train.recipe import add_recipe_command

    add_recipe_command(sub, "sft", "LoRA supervised fine-tuning", __doc__, SFTConfig, train)
