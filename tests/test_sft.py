"""LoRA SFT end to end on the tiny model: exact resume, one process vs two, bad input."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from aqa.cli import main
from aqa.config import ConfigError, load_config
from aqa.train.sft import SFTConfig, train


def cfg(tiny_model, synth_data, out, **kw):
    base = dict(model=str(tiny_model), train_data=[str(synth_data / "train.jsonl")], output_dir=str(out),
                batch_size=4, micro_batch_size=2, max_steps=4, lr=1e-3, save_every=100, seed=1,
                lora_r=4, lora_alpha=8, device="cpu")
    base.update(kw)
    return SFTConfig(**base)


def adapter(run):
    return load_file(os.path.join(run, "adapter", "adapter_model.safetensors"))


def test_resume_ends_with_the_same_adapter(tiny_model, synth_data, tmp_path):
    full = train(cfg(tiny_model, synth_data, tmp_path / "full"))
    assert full["steps"] == 4 and not full["stopped_early"]
    part = train(cfg(tiny_model, synth_data, tmp_path / "part", stop_after=2))
    assert part["stopped_early"] and not (tmp_path / "part" / "adapter").exists()
    assert (tmp_path / "part" / "checkpoints" / "step-2" / "optimizer.pt").is_file()
    train(cfg(tiny_model, synth_data, tmp_path / "part"))  # resume=auto
    a, b = adapter(tmp_path / "full"), adapter(tmp_path / "part")
    assert a.keys() == b.keys() and all("lora_" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(x) for x in (tmp_path / "part" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    ref = [json.loads(x) for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == [r["loss"] for r in ref]
    # The LoRA B matrices start at zero: training moved them.
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)


def test_adapter_loads_with_peft_and_changes_outputs(tiny_model, synth_data, tmp_path):
    from peft import PeftModel
    from transformers import Qwen2AudioForConditionalGeneration

    train(cfg(tiny_model, synth_data, tmp_path / "r", lr=1e-2))
    base = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_model)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = PeftModel.from_pretrained(base, tmp_path / "r" / "adapter")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        out_tuned = tuned(input_ids=ids).logits
        with tuned.disable_adapter():
            out_base = tuned(input_ids=ids).logits
    assert not torch.allclose(out_tuned, out_base)
    # Only the language model's linear layers carry LoRA; the frozen base is untouched.
    names = [n for n, _ in tuned.named_modules() if n.endswith("lora_A")]
    assert names and all(".language_model." in n for n in names)
    for k, v in tuned.get_base_model().state_dict().items():
        if "lora_" not in k:
            assert torch.equal(v, before[k.replace(".base_layer", "")]), k


def test_bad_audio_is_skipped_and_counted(tiny_model, synth_data, tmp_path):
    rows = [json.loads(x) for x in (synth_data / "train.jsonl").read_text().splitlines()]
    d = tmp_path / "ds"
    shutil.copytree(synth_data / "wav", d / "wav")
    (d / "wav" / "broken.wav").write_bytes(b"RIFF....not audio")
    rows[0]["audio"] = "wav/broken.wav"
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = train(cfg(tiny_model, synth_data, tmp_path / "r", train_data=[str(d / "train.jsonl")], max_steps=0,
                  epochs=1.0))
    assert s["skipped_audio"] == 1 and (tmp_path / "r" / "adapter").is_dir()


def test_unknown_config_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: x\nlearning_rate: 1e-4\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(SFTConfig, p)
    with pytest.raises(ConfigError, match="lora_rank"):
        load_config(SFTConfig, None, ["lora_rank=4"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(SFTConfig, None, ["lora_r=four"])
    c = load_config(SFTConfig, "configs/qwen2_audio/sft_lora.yaml", ["lr=1e-4", "train_data=[a.jsonl,b.jsonl]"])
    assert (c.lr, c.train_data, c.lora_r, c.batch_size, c.epochs) == (1e-4, ["a.jsonl", "b.jsonl"], 8, 32, 8.0)


def test_two_processes_match_one_with_accumulation(tiny_model, synth_data, tmp_path):
    """2 processes x 1 micro-batch == 1 process x 2 accumulated micro-batches."""
    common = [f"model={tiny_model}", f"train_data=[{synth_data / 'train.jsonl'}]", "batch_size=4",
              "micro_batch_size=2", "max_steps=2", "lr=1e-3", "lora_dropout=0", "spec_augment_masks=0",
              "device=cpu", "lora_r=4"]
    one = tmp_path / "one"
    assert main(["sft", *common, f"output_dir={one}"]) == 0
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # torchrun's environment is what accelerate reads on CPU (gloo); `accelerate launch --cpu`
    # would start a single process.
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", "29517", "-m", "aqa", "sft", *common, f"output_dir={two}"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads((two / "checkpoints" / "step-2" / "state.json").read_text())
    assert (state["processes"], state["accumulation"]) == (2, 1)
    # The mean loss over all processes at each step: step 1 matches only if the processes see
    # the accumulated micro-batches' items, step 2 only if step 1's gradients were averaged.
    loss = lambda run: [json.loads(x)["loss"] for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert loss(one) == pytest.approx(loss(two), rel=1e-5)
    # Gradients summed in another order leave the adapters a few float roundings apart, not bit
    # for bit; a learning-rate schedule stepped once per process per step (accelerate's default)
    # would leave them about lr apart.
    a, b = adapter(one), adapter(two)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), (k, (a[k] - b[k]).abs().max())
