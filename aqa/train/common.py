"""Pieces every training recipe shares: the run folder, LoRA setup, the learning-rate
schedule, exact checkpoints (adapter, optimizer, scheduler, step, RNG) and the step log."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from aqa.config import dump_yaml
from aqa.io import append_jsonl, atomic_write_text, write_json

log = logging.getLogger(__name__)

CKPT_PREFIX = "step-"


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


def add_lora(backend, *, r: int, alpha: int, dropout: float, audio_tower: bool, adapter_name: str = "default"):
    """Wrap the backend's model with a new trainable LoRA adapter; the base stays frozen."""
    from peft import LoraConfig, PeftModel, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                     target_modules=backend.lora_target_modules(audio_tower))
    if isinstance(backend.model, PeftModel):
        backend.model.add_adapter(adapter_name, cfg)
        backend.model.set_adapter(adapter_name)
    else:
        backend.model = get_peft_model(backend.model, cfg, adapter_name=adapter_name)
    return backend.model


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def count_params(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in trainable_parameters(model)), total


class RunDir:
    """A training run's folder: config.yaml, train_log.jsonl, checkpoints/, adapter/, logs/."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.ckpts = self.path / "checkpoints"
        self.log_file = self.path / "train_log.jsonl"

    def write_config(self, cfg) -> None:
        atomic_write_text(self.path / "config.yaml", dump_yaml(cfg))

    def latest_checkpoint(self) -> Path | None:
        done = [p for p in self.ckpts.glob(f"{CKPT_PREFIX}*") if (p / "state.json").is_file()]
        if not done:
            return None
        return max(done, key=lambda p: int(p.name[len(CKPT_PREFIX):]))

    def log(self, row: dict[str, Any]) -> None:
        append_jsonl(self.log_file, [row])

    def truncate_log(self, step: int) -> None:
        """Drop log lines past `step`, written after the checkpoint a run resumes from."""
        if not self.log_file.is_file():
            return
        keep = []
        for line in self.log_file.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue
        atomic_write_text(self.log_file, "".join(k + "\n" for k in keep))


def _sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def save_checkpoint(run: RunDir, accelerator, model, optimizer, scheduler, step: int, extra: dict,
                    keep: int = 2) -> Path:
    """Write checkpoints/step-N atomically (a temp folder renamed at the end). Holds the
    trainable weights only, not the frozen base, so a 7B checkpoint stays small."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    final = run.ckpts / f"{CKPT_PREFIX}{step}"
    tmp = run.ckpts / f".tmp-{CKPT_PREFIX}{step}"
    rank = accelerator.process_index
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    # Every process saves its own torch RNG, which LoRA dropout draws from; the data order,
    # option shuffles and SpecAugment masks are derived from (seed, step) and need no state.
    torch.save({"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
               tmp / f"rng-{rank}.pt")
    if _sharded(accelerator):
        # ZeRO partitions the optimizer state over the processes: every process saves its part
        # through accelerate (which also writes the module's weights, frozen ones included).
        accelerator.save_state(str(tmp / "accelerate"))
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unwrapped.model).items()}
        save_file(weights, tmp / "adapter.safetensors")
        if not _sharded(accelerator):
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        write_json(tmp / "state.json", {"step": step, "time": time.time(), **extra})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        old = sorted((p for p in run.ckpts.glob(f"{CKPT_PREFIX}*") if p != final),
                     key=lambda p: int(p.name[len(CKPT_PREFIX):]))
        for p in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(ckpt: Path, accelerator, model, optimizer, scheduler) -> dict:
    """Restore what save_checkpoint wrote; returns its state.json."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if (ckpt / "accelerate").is_dir():
        accelerator.load_state(str(ckpt / "accelerate"))
    else:
        unwrapped = accelerator.unwrap_model(model)
        set_peft_model_state_dict(unwrapped.model, load_file(ckpt / "adapter.safetensors"))
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
        scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng_file = ckpt / f"rng-{accelerator.process_index}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((ckpt / "state.json").read_text())


def save_adapter(run: RunDir, accelerator, model, name: str = "adapter") -> Path:
    """The final adapter in peft's format (loadable with PeftModel.from_pretrained)."""
    out = run.path / name
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        tmp = run.path / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped.model.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    accelerator.wait_for_everyone()
    return out


def make_accelerator(run: RunDir, *, device: str, bf16: bool, accumulation):
    """The run's Accelerator: bf16 only on GPU, TensorBoard logs in the run folder.
    `accumulation(world)` gives the gradient accumulation steps for the number of processes.
    Returns (accelerator, processes, accumulation steps, bf16 in use)."""
    from accelerate import Accelerator, PartialState

    world = PartialState(cpu=device == "cpu").num_processes
    accum = accumulation(world)
    use_bf16 = bf16 and torch.cuda.is_available() and device != "cpu"
    acc = Accelerator(gradient_accumulation_steps=accum, mixed_precision="bf16" if use_bf16 else "no",
                      log_with="tensorboard", project_dir=str(run.path), cpu=device == "cpu")
    return acc, world, accum, use_bf16


def resume(run: RunDir, how: str, accelerator, module, optimizer, scheduler) -> int:
    """Restore the checkpoint `how` names (auto: the latest) and return its step, or 0."""
    ckpt = resolve_resume(run, how)
    if ckpt is None:
        return 0
    step = load_checkpoint(ckpt, accelerator, module, optimizer, scheduler)["step"]
    if accelerator.is_main_process:
        run.truncate_log(step)
    log.info("resumed from %s at step %d", ckpt, step)
    return step


def add_recipe_command(sub, name: str, help: str, doc: str, cfg_cls, train_fn) -> None:
    """`aqa NAME CONFIG.yaml [key=value ...]` for a recipe with a config dataclass."""
    import argparse

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
            print(f"wrote {summary['run_dir']}/ (config.yaml, adapter/, checkpoints/, train_log.jsonl, tensorboard/)")
        return 0

    p = sub.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML config (see --help-config)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--help-config", action="store_true", help="list every config key")
    p.set_defaults(func=run)


def resolve_resume(run: RunDir, resume: str) -> Path | None:
    if resume == "never":
        return None
    if resume == "auto":
        return run.latest_checkpoint()
    p = Path(resume)
    if not (p / "state.json").is_file():
        raise FileNotFoundError(f"resume={resume}: not a checkpoint folder (no state.json)")
    return p
