"""The benchmark scripts still run (on tiny models; their numbers are not checked)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--shapes", "tiny", "--repeats", "1", "--batch", "2"]


@pytest.mark.parametrize("script, args, rows, check", [
    ("speed.py", ["--clip-seconds", "2", "--new-tokens", "2"],
     ["LoRA SFT step", "scoring eval", "generate eval", "GRPO step, G=6"], "scoring paths agree to"),
    ("kimi_audio.py", ["--clip-seconds", "2", "--new-tokens", "2"],
     ["GLM-4-Voice tokens", "Whisper features", "one prompt at a time", "aqa batched", "greedy generation"],
     "answer logits agree to"),
    ("pipeline.py", ["--clip-seconds", "2", "--clips", "2", "--steps", "1", "--workers", "1"],
     ["Qwen2-Audio: decode, resample, shuffle, collate (one worker) | 2 s",
      "Kimi-Audio: GLM-4-Voice tokens (training process, first epoch only)", "batches from memory",
      "| Kimi-Audio |"], "44.1 kHz stereo FLAC"),
])
def test_bench_runs_and_appends_a_table(tmp_path, script, args, rows, check):
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n")
    # This checkout's aqa, whatever an installed one points at.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / script), *TINY, *args, "--results", str(results)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    text = results.read_text()
    for row in rows:
        assert row in text
    assert check in text and "Command:" in text


def test_load_memory_bench_runs_and_appends_a_table(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "load_memory.py"), "--shapes", "tiny", "--families",
                        "qwen2-audio", "--scenarios", "meta-bf16-of-fp32", "--threads", "1", "--results", str(results)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    text = results.read_text()
    for row in ("| qwen2-audio | fp32 file -> meta, bf16 | aqa's GPU default on an fp32 checkpoint |",
                "| CPU, then moved |", "| straight to device |"):
        assert row in text
    assert "Command:" in text


def gpu_check(tmp_path, *flags, timeout=60):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--out", str(tmp_path / "gc"), *flags],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_gpu_check_commands_parse(tmp_path):
    """No GPU here: the script's syntax, and every aqa command it runs parses (recipe keys, eval
    flags); the helpers' arguments are those gpu_check.py takes."""
    import shlex

    from aqa.cli import build_parser
    from aqa.config import load_config
    from aqa.train.grpo import GRPOConfig
    from aqa.train.sft import SFTConfig

    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_check.sh")]).returncode == 0
    r = gpu_check(tmp_path, "--dry-run")
    assert r.returncode == 0, r.stderr
    cmds = [shlex.split(line[2:]) for line in r.stdout.splitlines() if line.startswith("+ ")]
    seen = set()
    for cmd in cmds:
        if "aqa" in cmd and cmd[cmd.index("aqa") - 1] == "-m":
            args = cmd[cmd.index("aqa") + 1:]
            if args[0] in ("sft", "grpo"):
                path = args[1] if args[1].endswith(".yaml") else None
                cfg = load_config({"sft": SFTConfig, "grpo": GRPOConfig}[args[0]], path, args[1 + bool(path):])
                assert cfg.device == "cuda" and cfg.bf16
                cfg.accumulation(int(cmd[cmd.index("--num_processes") + 1]) if "--num_processes" in cmd else 1)
            else:
                build_parser().parse_args(args)
            seen.add(args[0])
        elif cmd[1:3] == ["-m", "pytest"]:
            seen.add("pytest")
            assert all((ROOT / t).is_file() for t in cmd if t.startswith("tests/"))
        elif cmd[1] == "bench/gpu_check.py":
            seen.add(cmd[2])
            assert "--device" in cmd and cmd[cmd.index("--device") + 1] == "cuda"
        elif cmd[1] == "bench/speed.py":
            seen.add("speed")
            assert cmd[cmd.index("--shapes") + 1] == "7b" and cmd[cmd.index("--device") + 1] == "cuda"
    assert {"sft", "grpo", "eval", "speed", "kimi-forward", "pytest"} <= seen, seen
    # ZeRO-2: five families' SFT, one run stopped then resumed, the shipped GRPO config on 8 processes.
    launches = [c for c in cmds if "accelerate.commands.launch" in c]
    assert len(launches) == 8 and "configs/qwen2_audio/grpo.yaml" in launches[-1]
    families = {c[c.index("--family") + 1] for c in cmds if "--family" in c} | {"kimi-audio" for c in cmds
                                                                               if "tiny-kimi-audio" in c}
    assert families == {"kimi-audio", "qwen2.5-omni", "qwen3-omni", "audio-flamingo3", "voxtral"}


@pytest.mark.slow
def test_gpu_check_runs_every_stage_on_the_cpu(tmp_path):
    """--cpu: every stage at tiny shapes, one table with every check passed."""
    r = gpu_check(tmp_path, "--cpu", timeout=1800)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    table = (tmp_path / "gc" / "gpu_check.md").read_text()
    assert "| check | result | seconds | details |" in table and "FAILED" not in table
    for row in ("tests: bf16 x 6 families", "fp32 LoRA SFT", "GRPO, choice", "GRPO, generate", "fp32 eval",
                "audio-flamingo3: fp32 LoRA SFT, ZeRO-2", "voxtral: fp32 eval", "ZeRO-2, 1 process, resumed",
                "shipped GRPO config, ZeRO-2, 2 process(es)", "speed, Qwen2-Audio", "Kimi-Audio tiny forward"):
        assert row in table, row
    assert "ZeRO optimizer shard(s)" in table and "logits finite: True" in table


def test_gpu_check_builds_the_kimi_audio_7b_layout_at_small_sizes(monkeypatch, capsys):
    """The 7B-shape forward of gpu_check, its sizes shrunk to fit a CPU test: the modules it
    swaps in around the tiny model's tokenizer score a batch."""
    import argparse
    import json

    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check

    monkeypatch.setattr(gpu_check, "KIMI_7B", {**gpu_check.KIMI_7B, "hidden_size": 64, "intermediate_size": 128,
                                               "num_hidden_layers": 2, "num_attention_heads": 4,
                                               "num_key_value_heads": 2, "kimia_adaptor_input_dim": 4 * 32})
    small = dict(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64)
    monkeypatch.setattr(gpu_check, "WHISPER_LARGE", {**gpu_check.WHISPER_LARGE, **small})
    monkeypatch.setattr(gpu_check, "GLM4_VOICE", {**gpu_check.GLM4_VOICE, "pooling_position": 1,
                                                  "quantize_position": 2})
    args = argparse.Namespace(device="cpu", shapes="7b", batch=2, clip_seconds=2.0)
    assert gpu_check.kimi_forward(args) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # 2 x 168,448 x 64 parameters: the 7B vocabulary is kept.
    assert r["finite"] and r["batch"] == 2 and r["params_b"] >= 0.02


def grpo_bench(tiny_model, sft_adapter, synth_data, tmp_path, *args):
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "grpo_policy.py"), "--model", str(tiny_model),
                        "--sft-adapter", str(sft_adapter),
                        "--train", str(synth_data / "train.jsonl"), "--dev", str(synth_data / "dev.jsonl"),
                        "-o", str(tmp_path / "cmp"), "--results", str(results), *args, "--set",
                        "max_steps=2", "batch_size=2", "micro_batch_size=2", "group_size=2", "lora_r=2",
                        "lora_alpha=4", "lr=1e-3", "device=cpu", "num_workers=0"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return results.read_text()


def test_grpo_policy_bench_runs_both_policies(tiny_model, sft_adapter, synth_data, tmp_path):
    text = grpo_bench(tiny_model, sft_adapter, synth_data, tmp_path, "--seeds", "1")
    assert "GRPO variants after one SFT adapter" in text
    assert "| policy=new | 1 |" in text and "| policy=sft | 1 |" in text
    assert '"lr": 0.001' in text  # overrides are read as typed config values


def test_grpo_bench_variants_override_the_common_settings(tiny_model, sft_adapter, synth_data, tmp_path):
    text = grpo_bench(tiny_model, sft_adapter, synth_data, tmp_path, "--seeds", "1,2", "--train-eval", "4",
                      "--variants", "lr=1e-4", "temperature=2.0,beta=0.5")
    runs = {p.name for p in (tmp_path / "cmp").iterdir() if p.name.startswith("grpo-")}
    assert runs == {f"grpo-{v}-s{seed}" for v in ("lr1e-4", "temperature2.0_beta0.5") for seed in (1, 2)}
    import yaml

    cfg = yaml.safe_load((tmp_path / "cmp" / "grpo-temperature2.0_beta0.5-s2" / "config.yaml").read_text())
    assert (cfg["temperature"], cfg["beta"], cfg["lr"], cfg["seed"]) == (2.0, 0.5, 1e-3, 2)
    assert "| **lr=1e-4** | mean |" in text and "train accuracy (SFT" in text
