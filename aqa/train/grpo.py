"""GRPO reinforcement learning after SFT (`aqa grpo CONFIG.yaml [key=value ...]`).

Algorithm (reference report, section 2.4; DeepSeekMath's GRPO): for each question, G answers
are sampled from the policy as it stands (pi_old); each earns reward 1 if it names the right
option, else 0; advantages are the rewards normalised within the group; the policy maximises
the clipped ratio objective minus beta times the k3 estimate of KL(pi_theta || pi_ref), each
answer's token terms averaged over its length, then over the answers (aqa.train.grpo_loss).

Reference = the SFT model. With `policy=new` (the default) the SFT adapter is merged into the
base weights in memory, the policy trains a new LoRA adapter on top (its B starts at zero, so
the policy starts as the SFT model), and the reference log-probs come from the same weights
with that adapter disabled. With `policy=sft` the SFT adapter itself trains on; its saved
weights are read once at setup into a second copy of the adapter (not of the model) on the
device, and each reference pass swaps them in place of the trained ones and back
(`Backend.adapter_weights_from`: the parameters' storage exchanged, nothing copied or read per
pass). Either way no second copy of the model is held.

Rollouts (aqa.train.rollouts): `choice` (default) samples the G answers as option letters
from the policy's distribution over the letters at the answer position, one forward pass per
question; `generate` samples G completions: on a model that reasons first (Qwen3-Omni-Thinking,
or after SFT with target=reasoning) a reasoning and then the answer, which `accuracy` reads only
after the think block and `format` checks for one closed think block then one named option.
Rewards (aqa.train.rewards) read either through the answer parser of `aqa eval`; `rewards` names those used (default: accuracy alone), with
`reward_weights`; `advantage` says how several become one advantage (grpo: weighted sum, then
normalised in the group, the report's; gdpo: each normalised in its group, the weighted sum
normalised over the step) and `loss_type` how token terms are averaged (grpo, the report's;
dapo; dr_grpo): aqa.train.grpo_loss. Every step's sampled completions, with each reward and
the advantage, go to completions.jsonl (`log_completions`).

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

import logging

from aqa.config import doc, recipe_config, recipe_default
from aqa.train.recipe import TrainConfig

log = logging.getLogger(__name__)


@recipe_config
class GRPOConfig(TrainConfig):
    output_dir: str = recipe_default("runs/grpo")
    lora_dropout: float = recipe_default(0.0)  # 0 keeps old and new log-probs comparable
    lr: float = recipe_default(5e-6)
    epochs: float = recipe_default(3.0)
    warmup_ratio: float = recipe_default(0.0)
    schedule: str = recipe_default("constant")
    save_every: int = recipe_default(50)
    # The reference report's 8 questions per micro-batch x 5 accumulated = 40 per step.
    batch_size: int = recipe_default(40)
    micro_batch_size: int = recipe_default(8)
    sft_adapter: str = doc("", help="the SFT adapter: the reference policy, and where the policy starts")
    policy: str = doc("new", help="new: a fresh LoRA adapter (B = 0) on the SFT weights merged in memory; "
                                  "sft: keep training the SFT adapter itself")
    rollout: str = doc("choice", help="choice: sample option letters; generate: sample completions")
    rewards: list[str] = doc(["accuracy"], help="reward functions (aqa.train.rewards: accuracy, format, overlong)")
    reward_weights: list[float] = doc([], help="one weight per reward, in order (empty: 1 each)")
    advantage: str = doc("grpo", help="grpo: weighted reward sum normalised in its group (the report's); gdpo: each "
                                      "reward normalised in its group, the weighted sum normalised over the step")
    loss_type: str = doc("grpo", help="grpo: each answer's tokens averaged, then the answers (the report's); dapo: "
                                      "the step's token sum over its token count; dr_grpo: over answers x max_new_tokens")
    overlong_buffer: float = doc(0.2, help="overlong reward: the share of max_new_tokens before it over which the "
                                           "penalty grows from 0 to -1 (DAPO: 0.2)")
    log_completions: bool = doc(True, help="write every step's sampled completions and rewards to completions.jsonl")
    group_size: int = doc(6, help="G, answers sampled per question (reference report: 6)")
    temperature: float = doc(1.0, help="sampling temperature of the rollouts")
    max_new_tokens: int = doc(16, help="generate rollouts: longest completion")
    eps: float = doc(0.2, help="ratio clipping threshold (reference report: 0.2)")
    beta: float = doc(0.1, help="weight of the KL penalty to the reference (reference report: 0.1)")
    ppo_epochs: int = doc(1, help="optimizer steps per batch of rollouts (1: pi_old = pi_theta)")

    def __post_init__(self):
        from aqa.train.grpo_loss import LOSS_TYPES
        from aqa.train.rewards import REWARDS

        super().__post_init__()
        if self.policy not in ("new", "sft"):
            raise ValueError(f"policy must be new or sft, got {self.policy!r}")
        if self.policy == "sft" and not self.sft_adapter:
            raise ValueError("policy=sft trains the SFT adapter further: set sft_adapter")
        if self.rollout not in ("choice", "generate"):
            raise ValueError(f"rollout must be choice or generate, got {self.rollout!r}")
        if self.group_size < 2:
            raise ValueError("group_size must be at least 2 (advantages compare answers within a group)")
        unknown = [r for r in self.rewards if r not in REWARDS]
        if unknown or not self.rewards:
            raise ValueError(f"rewards must name at least one of {', '.join(REWARDS)}; got {self.rewards}")
        if self.reward_weights and len(self.reward_weights) != len(self.rewards):
            raise ValueError(f"reward_weights needs one weight per reward ({len(self.rewards)}: {self.rewards}), "
                             f"got {self.reward_weights}")
        if self.advantage not in ("grpo", "gdpo"):
            raise ValueError(f"advantage must be grpo or gdpo, got {self.advantage!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}")
        if not 0 <= self.overlong_buffer <= 1:
            raise ValueError(f"overlong_buffer must be within [0, 1], got {self.overlong_buffer}")


def train(cfg: GRPOConfig) -> dict:
    """Run GRPO; returns a summary dict."""
    from aqa.models.registry import find_adapter
    from aqa.train.grpo_loss import grpo_loss
    from aqa.train.recipe import setup
    from aqa.train.rewards import RewardSpec
    from aqa.train.rollouts import normalize_over_step, policy_logprobs, rollout_choice, rollout_generate

    # ---- setup -----------------------------------------------------------------------------
    continued = cfg.policy == "sft"
    # Before the run folder is made: a missing adapter said in one line, a run folder taken for its adapter/.
    sft_adapter = find_adapter(cfg.sft_adapter) if cfg.sft_adapter else ""
    run = setup(cfg, name=f"grpo ({cfg.rollout})", adapter=sft_adapter if continued else "",
                merge="" if continued else sft_adapter, steps_factor=cfg.ppo_epochs)
    module, backend = run.module, run.backend
    # The reference is the SFT model: the new adapter switched off, or the SFT adapter's saved
    # weights, read once here (after prepare and resume) and swapped in for each reference pass.
    reference = (backend.adapter_weights_from(sft_adapter, allow_pickle=cfg.allow_pickle).swapped_in
                 if continued else backend.without_adapter)
    sample = {"choice": rollout_choice, "generate": rollout_generate}[cfg.rollout]
    extra = {"max_new_tokens": cfg.max_new_tokens} if cfg.rollout == "generate" else {}
    if cfg.rollout == "generate" and backend.thinks and cfg.max_new_tokens < 256:
        log.warning("the model reasons first and max_new_tokens is %d: most completions will be cut inside the "
                    "reasoning, with no answer to reward (set max_new_tokens to a reasoning's length)",
                    cfg.max_new_tokens)
    spec = RewardSpec(cfg.rewards, cfg.reward_weights, cfg.advantage, cfg.max_new_tokens, cfg.overlong_buffer)
    max_len = cfg.max_new_tokens if cfg.rollout == "generate" else 1

    # ---- loop ------------------------------------------------------------------------------
    # choice: the prompts run to where the letter goes (after an empty think block on a model
    # that reasons first); generate: the model writes its reasoning from the prompt.
    for step, micros in run.batches(with_target=False, answer_position=cfg.rollout == "choice"):
        # Rollouts for every micro-batch of this step, from pi_old (the policy as it stands); the
        # DataLoader collated their prompts ahead.
        rolls = [sample(module, backend, reference, mb.items, batch=mb.batch, group_size=cfg.group_size,
                        temperature=cfg.temperature, rewards=spec, seed=mb.seed, **extra)
                 for mb in micros]
        if cfg.advantage == "gdpo":
            normalize_over_step(rolls, run.accelerator.gather)
        # dapo: the step's tokens on every process, per micro-batch loss (see grpo_loss).
        tokens = (run.sum_over_processes(sum(max(n, 1) for r in rolls for n in r.lengths)) / (run.accum * run.world)
                  if cfg.loss_type == "dapo" else None)
        if cfg.log_completions:
            log_completions(run, step + 1, micros, rolls, cfg.group_size)
        # ppo_epochs passes over the rollouts, one optimizer step each.
        for ppo_epoch in range(cfg.ppo_epochs):
            stats = {"loss": [], "reward": [], "accuracy": [], "kl": [], "clip_fraction": [], "entropy": []}
            stats.update({f"reward_{name}": [] for name in cfg.rewards})
            for r in rolls:
                with run.accumulate():
                    logp, mask, ent = policy_logprobs(module, r, cfg.temperature)
                    if r.old_logp is None:  # first pass: the weights that sampled the rollouts
                        r.old_logp = logp.detach()
                    loss, s = grpo_loss(logp, r.old_logp, r.ref_logp, mask, r.advantages, eps=cfg.eps,
                                        beta=cfg.beta, loss_type=cfg.loss_type, tokens=tokens, max_len=max_len)
                    run.optimizer_step(loss)
                for key, value in [("loss", loss.item()), ("reward", r.rewards.mean().item()),
                                   ("accuracy", r.greedy_accuracy), ("kl", s["kl"]),
                                   ("clip_fraction", s["clip_fraction"]), ("entropy", ent.detach().mean().item()),
                                   *((f"reward_{n}", sum(v) / len(v)) for n, v in r.reward_parts.items())]:
                    if value is not None:
                        stats[key].append(value)
        metrics = run.mean_over_processes({k: v for k, v in stats.items() if v})  # the last pass's
        if run.end_step(step + 1, metrics, {"reward": f"{metrics['reward']:.3f}", "kl": f"{metrics['kl']:.4f}"}):
            break

    # ---- save ------------------------------------------------------------------------------
    return run.finish(questions=len(run.items))


def log_completions(run, step: int, micros, rolls, group_size: int) -> None:
    """Append the step's sampled completions (every process's) to RUN/completions.jsonl: the
    question, the answer as text, its length, each reward, the total and the advantage."""
    from accelerate.utils import gather_object

    from aqa.io import append_jsonl

    rows = []
    for mb, r in zip(micros, rolls):
        adv = r.advantages.tolist()
        for i, text in enumerate(r.completions):
            rows.append({"step": step, "id": mb.items[i // group_size].record.id, "completion": text,
                         "length": r.lengths[i], "reward": float(r.rewards.reshape(-1)[i]),
                         "rewards": {k: v[i] for k, v in r.reward_parts.items()}, "advantage": adv[i]})
    rows = gather_object(rows) if run.world > 1 else rows
    if run.accelerator.is_main_process:
        append_jsonl(run.folder.completions_file, rows)


def register(sub: argparse._SubParsersAction) -> None:
    from aqa.train.recipe import add_recipe_command

    add_recipe_command(sub, "grpo", "GRPO reinforcement learning after SFT", __doc__, GRPOConfig, train)
