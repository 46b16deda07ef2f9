"""`aqa demo` at toy sizes: every stage's files, the report, and resuming a finished demo."""

import dataclasses
import json
import shutil

import pytest

from aqa.demo import DemoConfig, run_demo

TOY = DemoConfig(clips=24, clip_seconds=2, dev_fraction=0.25, dev_questions=0, encoder_dim=32, encoder_layers=1,
                 decoder_dim=32, decoder_layers=1, num_mel_bins=32, encoder_steps=2, pretrain_steps=2, sft_steps=2,
                 sft_batch=4, grpo_steps=2, grpo_batch=4, grpo_group=2, eval_batch=8, lora_r=2, second_lora_r=2,
                 second_sft_steps=2, second_family="qwen2.5-omni")  # the cross-family ensemble


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy_demo(tmp_path_factory):
    """A finished toy demo folder and its first run's summary (a test that changes its stages
    copies it). One torch thread, as `one_thread` gives the tests: beside another demo on 2 cores
    the toy demo took 10 s so and 84 s with two threads (their spin-waits, README)."""
    import torch

    out = tmp_path_factory.mktemp("toy") / "demo"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return out, run_demo(out, TOY, progress=False)
    finally:
        torch.set_num_threads(n)


def test_demo_writes_every_stage_and_resumes(toy_demo, tmp_path, capsys):
    out, s = toy_demo
    assert set(s["pooled_dev_accuracy"]) == {"zero-shot", "zero-shot-generate", "sft", "sft-silence", "sft-b", "grpo",
                                             "ensemble"}
    silent = json.loads((out / "eval" / "sft-silence" / "metrics.json").read_text())
    assert "audio_contribution" in silent
    for stage in ("zero-shot", "sft", "sft-b", "grpo"):
        m = json.loads((out / "eval" / stage / "metrics.json").read_text())
        assert m["n"] > 0 and m["name"] == stage
    assert (out / "runs" / "sft" / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "runs" / "grpo" / "adapter" / "aqa_merge_first.json").is_file()
    # The ensemble crosses families: its second model is a Qwen2.5-Omni thinker, pretrained like the first.
    kinds = {m: json.loads((out / "models" / m / "config.json").read_text())["model_type"] for m in ("base", "base-b")}
    assert kinds == {"base": "qwen2_audio", "base-b": "qwen2_5_omni_thinker"}
    ens = json.loads((out / "eval" / "ensemble" / "metrics.json").read_text())
    assert "cross-fitted" in ens["fit"]
    md = (out / "report" / "report.md").read_text()
    assert all(name in md for name in ("zero-shot", "sft", "sft-b (qwen2.5-omni)", "grpo", "ensemble (cross-fitted)",
                                       "majority vote", "sft, silent audio", "Audio contribution",
                                       "zero-shot, generated answers"))
    # Which way each row read its answers.
    details = md.split("## Details")[1].split("\n## ")[0]
    assert "| zero-shot | letter scores |" in details and "| zero-shot, generated answers | generated text |" in details
    for png in ("accuracy_per_subset.png", "loss_sft.png"):
        assert (out / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Train and dev never share a clip.
    clips = {sp: {json.loads(x)["meta"]["segment_id"] for x in (out / "data" / f"{sp}.jsonl").read_text().splitlines()}
             for sp in ("train", "dev")}
    assert clips["train"] and clips["dev"] and not clips["train"] & clips["dev"]
    # A second run finds every stage done.
    again = run_demo(out, TOY, progress=False)
    assert again["stages"] == {} and again["pooled_dev_accuracy"] == s["pooled_dev_accuracy"]
    check_printed_table(out, capsys)
    check_bench_record(out, s, tmp_path)


def check_printed_table(out, capsys):
    """`aqa demo` ends with the report's accuracy table and where report.html is: one line per
    row with its pooled accuracy and 95% interval as in metrics.json, then chance."""
    from aqa.cli import main

    capsys.readouterr()
    assert main(["demo", "-o", str(out), *(f"{k}={v}" for k, v in dataclasses.asdict(TOY).items())]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report' / 'report.html'}" in printed
    lines = printed.splitlines()
    rows = {"zero-shot": "zero-shot", "zero-shot, generated answers": "zero-shot-generate", "sft": "sft",
            "sft, silent audio": "sft-silence", "sft-b (qwen2.5-omni)": "sft-b", "grpo": "grpo",
            "ensemble (cross-fitted)": "ensemble"}
    for shown, folder in rows.items():
        m = json.loads((out / "eval" / folder / "metrics.json").read_text())["weighted_mean"]
        line = next(x for x in lines if x.startswith(shown + "  "))
        lo, hi = m["ci95"]
        assert line.endswith(f"{100 * m['value']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"), line
    chance = json.loads((out / "eval" / "sft" / "metrics.json").read_text())["weighted_mean"]["chance"]
    assert next(x for x in lines if x.startswith("chance  ")).endswith(f"{100 * chance:.1f}")
    # Columns line up: the last column is right-aligned, so every line of the table is as wide.
    table = lines[lines.index("Accuracy (%)") + 1:]
    assert len({len(x) for x in table[:table.index("")]}) == 1


def test_a_moss_audio_second_model_on_a_finished_demos_first_model(toy_demo, tmp_path, capsys):
    """second_family=moss-audio: a tiny MOSS-Audio pretrained through its hooks, tuned, evaluated and
    ensembled with the first model, whose stages a finished demo already holds (kept: the demo
    resumes). The old second family's outputs are refused until deleted."""
    from aqa.cli import main

    out = tmp_path / "demo"
    shutil.copytree(toy_demo[0], out)
    moss = dataclasses.replace(TOY, second_family="moss-audio")
    saved = (out / "demo_config.yaml").read_text()
    assert main(["demo", "-o", str(out), *(f"{k}={v}" for k, v in dataclasses.asdict(moss).items())]) == 2
    err = capsys.readouterr().err
    assert f"{out} was made with second_family=qwen2.5-omni, not moss-audio: delete {out}/models/tiny-b" in err
    assert "Traceback" not in err and (out / "demo_config.yaml").read_text() == saved
    for stale in ("models/tiny-b", "models/base-b", "runs/sft-b", "eval/sft-b", "eval/ensemble"):
        shutil.rmtree(out / stale)
    s = run_demo(out, moss, progress=False)
    assert list(s["stages"]) == ["second tiny model", "second pretraining", "second LoRA SFT", "second SFT eval",
                                 "ensemble"]
    assert json.loads((out / "models" / "base-b" / "config.json").read_text())["model_type"] == "moss_audio"
    # The pretrained base keeps the release's layout: its tokenizer files, no tokenizer.json.
    assert {"vocab.json", "merges.txt", "processor_config.json", "generation_config.json"} <= {
        f.name for f in (out / "models" / "base-b").iterdir()}
    assert json.loads((out / "eval" / "sft-b" / "metrics.json").read_text())["n"] > 0
    assert "cross-fitted" in json.loads((out / "eval" / "ensemble" / "metrics.json").read_text())["fit"]
    md = (out / "report" / "report.md").read_text()
    assert "sft-b (moss-audio)" in md and "ensemble (cross-fitted)" in md


def test_an_unknown_family_is_refused_before_anything_runs(tmp_path, capsys):
    from aqa.cli import main

    assert main(["demo", "-o", str(tmp_path / "d"), "second_family=qwen9"]) == 2
    err = capsys.readouterr().err
    assert "command-line override: no tiny model for second_family=qwen9" in err and "qwen2.5-omni" in err
    assert not (tmp_path / "d").exists()


def check_bench_record(out, first, tmp_path):
    """bench/demo.py --read records a finished demo: its stage times (those of the run that did
    the work, kept in demo_summary.json by the first run only) and every claim with a verdict."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (out / "demo_summary.json").write_text(json.dumps(first))
    results = tmp_path / "RESULTS.md"
    r = subprocess.run([sys.executable, str(root / "bench" / "demo.py"), "--read", str(out), "--results", str(results)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0, r.stderr[-2000:]
    text = results.read_text()
    for stage in ("data", "pretraining", "LoRA SFT", "GRPO", "ensemble"):
        assert f"| {stage} | {first['stages'][stage]:.0f} |" in text
    verdicts = [x.rsplit("|", 2)[-2].strip() for x in text.splitlines() if x.startswith(("| SFT >=", "| ensemble >=",
                                                                                          "| GRPO >="))]
    assert len(verdicts) == 4 and set(verdicts) <= {"holds with margin", "holds", "fails"}
    # --profile: one row per piece of a step, a positive time for each.
    r = subprocess.run([sys.executable, str(root / "bench" / "demo.py"), "--profile", str(out), "--results",
                        str(results)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [x for x in results.read_text().split("step costs")[1].splitlines() if x.startswith("| ") and "---" not in x]
    assert [x.split(" | ")[0] for x in rows[1:]] == [
        "| collate 16 items (log-mels, tokens)", "| audio encoder forward", "| scoring forward (an eval batch)",
        "| SFT step, LoRA dropout 0.05", "| SFT step, LoRA dropout 0", "| GRPO step: rollouts + reference + update",
        "| pretraining: encoder step", "| pretraining: alignment step",
        "| SFT step, wall: LoRA dropout 0.05, 2 DataLoader workers",
        "| SFT step, wall: LoRA dropout 0, 2 DataLoader workers",
        "| SFT step, wall: LoRA dropout 0, 0 DataLoader workers"]
    assert all(float(x.strip(" |").rsplit("|", 1)[1]) > 0 for x in rows[1:])
