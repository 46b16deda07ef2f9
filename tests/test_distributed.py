"""Several processes on the CPU: DeepSpeed ZeRO-2 through `accelerate launch` with the shipped
configs/accelerate/zero2.yaml, and plain DDP through torchrun, each interrupted and resumed,
against one process with the same global batch; one LoRA initialisation but a dropout stream per
process, resumed exactly."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from aqa.train.grpo import GRPOConfig, train as grpo_train
from aqa.train.sft import SFTConfig, train as sft_train

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(kind: str, args: list[str], tmp_path: Path, program: tuple[str, ...] = ("-m", "aqa")) -> None:
    """`aqa ARGS` (or `program ARGS`) on 2 CPU processes: under ZeRO-2 (`accelerate launch`) or
    DDP (torchrun)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if kind == "zero2":
        cfg = yaml.safe_load((ROOT / "configs" / "accelerate" / "zero2.yaml").read_text())
        cfg.update(num_processes=2, mixed_precision="no")  # the shipped config, on this machine
        (tmp_path / "zero2_cpu.yaml").write_text(yaml.safe_dump(cfg))
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "zero2_cpu.yaml"),
               "--main_process_port", str(free_port()), *program, *args]
    else:
        # torchrun's environment is what accelerate reads on CPU (gloo); `accelerate launch --cpu`
        # would start a single process.
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), *program, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-4000:]


def log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]


def adapter(run: Path) -> dict:
    return load_file(run / "adapter" / "adapter_model.safetensors")


#: Losses agree to float rounding; Adam steps move each weight by about lr, so gradients summed
#: in another order (over processes and buckets) leave the adapters this close, measured at
#: about 2e-8 for 4 steps at lr 1e-3.
ADAPTER_ATOL = 1e-6


@pytest.mark.parametrize("kind, recipe", [
    ("zero2", "sft"),
    pytest.param("zero2", "grpo", marks=pytest.mark.slow),
    pytest.param("ddp", "sft", marks=pytest.mark.slow),  # tests/test_sft.py has a fast one without resume
    pytest.param("ddp", "grpo", marks=pytest.mark.slow),
    # policy=sft: the reference weights swapped in and out of the wrapped module's parameters.
    pytest.param("zero2", "grpo-sft", marks=pytest.mark.slow),
    pytest.param("ddp", "grpo-sft", marks=pytest.mark.slow),
])
def test_two_processes_resume_and_match_one(kind, recipe, tiny_model, synth_data, sft_adapter, tmp_path):
    """2 processes x 1 item per micro-batch x 2 accumulated == 1 process x 4 accumulated, with
    SpecAugment (SFT) or rollouts (GRPO) drawn per micro-batch of the step, the run stopped
    after 2 of 4 steps and resumed from its checkpoint (a ZeRO checkpoint under DeepSpeed)."""
    recipe, _, policy = recipe.partition("-")
    if kind == "zero2":
        pytest.importorskip("deepspeed")
    common = dict(model=str(tiny_model), train_data=[str(synth_data / "train.jsonl")], batch_size=4,
                  micro_batch_size=1, max_steps=4, lr=1e-3, device="cpu", lora_r=4, seed=3)
    if recipe == "sft":
        common.update(lora_dropout=0.0)  # dropout draws from each process's own RNG
        cfg_cls, train = SFTConfig, sft_train
    else:
        common.update(sft_adapter=str(sft_adapter), group_size=3, policy=policy or "new")
        cfg_cls, train = GRPOConfig, grpo_train
    one = tmp_path / "one"
    train(cfg_cls(output_dir=str(one), **common))
    two = tmp_path / "two"
    args = [recipe, *(f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in common.items()),
            f"output_dir={two}"]
    launch(kind, [*args, "stop_after=2"], tmp_path)
    assert not (two / "adapter").exists() and (two / "checkpoints" / "step-2").is_dir()
    launch(kind, args, tmp_path)

    state = json.loads((two / "checkpoints" / "step-4" / "state.json").read_text())
    assert (state["processes"], state["accumulation"]) == (2, 2)
    if kind == "zero2":
        # Each process saved its part of the optimizer state; the frozen base stayed out.
        shards = sorted(p.name for p in (two / "checkpoints" / "step-4" / "accelerate").rglob("*optim_states.pt"))
        assert len(shards) == 2, shards
        (weights,) = (two / "checkpoints" / "step-4" / "accelerate").rglob("mp_rank_00_model_states.pt")
        assert weights.stat().st_size < (tiny_model / "model.safetensors").stat().st_size / 2
    a, b = log(one), log(two)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    key = "loss" if recipe == "sft" else "reward"
    # Step 1 matches only if the processes take the accumulated micro-batches' items and draws;
    # later steps only if the gradients were averaged, the schedule stepped once per step and
    # the resume restored everything.
    assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-5)
    assert [r["lr"] for r in b] == [r["lr"] for r in a]
    x, y = adapter(one), adapter(two)
    assert x.keys() == y.keys()
    for k in x:
        assert torch.allclose(x[k], y[k], rtol=0, atol=ADAPTER_ATOL), (k, (x[k] - y[k]).abs().max())
    assert any(v.abs().sum() > 0 for k, v in y.items() if "lora_B" in k)


def probe_setup(model: str, data: str, out: str) -> None:
    """Run on each process by `test_processes_start_from_one_adapter_and_drop_their_own_units`:
    the recipe's setup, then this process's LoRA weights and one mask its LoRA dropout draws."""
    from aqa.train.recipe import setup

    cfg = SFTConfig(model=model, train_data=[data], output_dir=out, batch_size=2, micro_batch_size=1, max_steps=1,
                    lora_r=4, lora_dropout=0.5, seed=3, device="cpu", num_workers=0)
    run = setup(cfg, name="probe")
    named = dict(run.backend.model.named_modules())
    drop = next(m for n, m in named.items() if ".lora_dropout." in f"{n}." and isinstance(m, torch.nn.Dropout))
    assert drop.training
    torch.save({"lora": {k: p.detach().clone() for k, p in run.backend.model.named_parameters() if p.requires_grad},
                "mask": drop(torch.ones(512)) != 0}, Path(out) / f"probe-{run.rank}.pt")
    run.accelerator.end_training()


def test_processes_start_from_one_adapter_and_drop_their_own_units(tiny_model, synth_data, tmp_path):
    """The seed makes the LoRA initialisation, the same on every process; after setup each
    process's LoRA dropout draws its own masks (the same masks everywhere would drop the same
    units of every micro-batch)."""
    out = tmp_path / "probe"
    launch("ddp", [str(tiny_model), str(synth_data / "train.jsonl"), str(out)], tmp_path,
           program=(__file__, "probe"))
    ranks = [torch.load(out / f"probe-{r}.pt") for r in (0, 1)]
    assert ranks[0]["lora"].keys() == ranks[1]["lora"].keys()
    assert all(torch.equal(ranks[0]["lora"][k], ranks[1]["lora"][k]) for k in ranks[0]["lora"])
    assert any(v.abs().sum() > 0 for k, v in ranks[0]["lora"].items() if "lora_A" in k)
    a, b = ranks[0]["mask"], ranks[1]["mask"]
    assert 0 < a.sum() < len(a) and 0 < b.sum() < len(b) and not torch.equal(a, b)


def test_two_processes_with_lora_dropout_resume_exactly(tiny_model, synth_data, tmp_path):
    """With LoRA dropout on, each process's own dropout stream is part of the checkpoint: a run
    resumed from step 1's checkpoint (what `stop_after=1` leaves) ends with the adapter of the
    run that went on."""
    common = [f"model={tiny_model}", f"train_data=[{synth_data / 'train.jsonl'}]", "batch_size=2",
              "micro_batch_size=1", "max_steps=2", "save_every=1", "lr=1e-2", "lora_r=4", "lora_dropout=0.5",
              "spec_augment_masks=0", "device=cpu", "num_workers=0", "seed=5"]
    launch("ddp", ["sft", *common, f"output_dir={tmp_path / 'full'}"], tmp_path)
    launch("ddp", ["sft", *common, f"output_dir={tmp_path / 'part'}",
                   f"resume={tmp_path / 'full' / 'checkpoints' / 'step-1'}"], tmp_path)
    a, b = adapter(tmp_path / "full"), adapter(tmp_path / "part")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in log(tmp_path / "part")] == [2]
    assert [r["loss"] for r in log(tmp_path / "part")] == [r["loss"] for r in log(tmp_path / "full")][1:]


if __name__ == "__main__" and sys.argv[1:2] == ["probe"]:
    probe_setup(*sys.argv[2:])
