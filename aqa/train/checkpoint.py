"""A training run's folder and its exact checkpoints: config.yaml, the step log, checkpoints
with adapter, optimizer, scheduler, step and RNG (a resumed run ends exactly where an
uninterrupted one would), and the final adapter in peft's format."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from aqa.config import dump_yaml
from aqa.io import append_jsonl, atomic_write_text, ordinary_modes, write_json

log = logging.getLogger(__name__)

CKPT_PREFIX = "step-"


class RunDir:
    """A training run's folder: config.yaml, train_log.jsonl, checkpoints/, adapter/, logs/."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.ckpts = self.path / "checkpoints"
        self.log_file = self.path / "train_log.jsonl"
        #: GRPO's sampled completions, a line each, with their step.
        self.completions_file = self.path / "completions.jsonl"

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
        """Drop the log's and the completions' lines past `step`, written after the checkpoint
        a run resumes from."""
        for f in (self.log_file, self.completions_file):
            if not f.is_file():
                continue
            keep = []
            for line in f.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= step:
                        keep.append(line)
                except json.JSONDecodeError:
                    continue
            atomic_write_text(f, "".join(k + "\n" for k in keep))


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
        # through accelerate; the module's frozen weights stay out (a 7B base is 15 GB).
        accelerator.save_state(str(tmp / "accelerate"), exclude_frozen_parameters=True)
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
        ordinary_modes(tmp)  # safetensors' save_file leaves its file 0600
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
        # Not strict: the checkpoint holds the trainable weights only; the frozen ones are loaded.
        accelerator.load_state(str(ckpt / "accelerate"), load_module_strict=False)
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


def save_adapter(run: RunDir, accelerator, model, name: str = "adapter", card: str = "") -> Path:
    """The final adapter in peft's format (loadable with PeftModel.from_pretrained), with `card`
    as its README.md in place of peft's empty template."""
    out = run.path / name
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        tmp = run.path / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped.model.save_pretrained(tmp, safe_serialization=True)
        if card:
            atomic_write_text(tmp / "README.md", card)
        shutil.rmtree(out, ignore_errors=True)
        ordinary_modes(tmp)  # save_pretrained leaves adapter_model.safetensors 0600
        tmp.rename(out)
    accelerator.wait_for_everyone()
    return out


def resume(run: RunDir, how: str, accelerator, module, optimizer, scheduler) -> int:
    """Restore the checkpoint `how` names (auto: the latest) and return its step, or 0."""
    ckpt = resolve_resume(run, how)
    step = 0 if ckpt is None else load_checkpoint(ckpt, accelerator, module, optimizer, scheduler)["step"]
    if accelerator.is_main_process:
        run.truncate_log(step)  # a fresh start keeps no line of an earlier run in this folder
    if ckpt is not None:
        log.info("resumed from %s at step %d", ckpt, step)
    return step


def resolve_resume(run: RunDir, resume: str) -> Path | None:
    if resume == "never":
        return None
    if resume == "auto":
        return run.latest_checkpoint()
    p = Path(resume)
    if not (p / "state.json").is_file():
        raise FileNotFoundError(f"resume={resume}: not a checkpoint folder (no state.json)")
    return p
