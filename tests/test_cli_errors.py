"""A user's mistake reaches `aqa` as one line on stderr naming the file and the problem, exit 2;
a failure of the machine (a full disk) exits 1; `--debug` shows the traceback (issue 16,
item 8)."""

import errno
import json
import shutil

import pytest

from aqa.cli import main
from conftest import write_audio


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def data_file(tmp_path):
    write_audio(tmp_path / "a.wav")
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"id": "r1", "audio": "a.wav", "question": "Q?", "choices": ["x", "y"],
                             "answer": 0, "subset": "s", "split": "dev"}) + "\n")
    return p


def test_missing_config_file(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["sft", str(missing)]) == 2
    assert one_line(capsys) == f"aqa: error: {missing}: No such file or directory"


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "sft", str(tmp_path / "nope.yaml")])


def test_broken_yaml_config_names_the_file(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("model: [unclosed\n")
    assert main(["sft", str(p)]) == 2
    assert one_line(capsys).startswith(f"aqa: error: {p}: not a valid YAML file (")


def test_unknown_key_on_the_command_line_blames_the_command_line(capsys):
    assert main(["sft", "configs/qwen2_audio/sft_lora.yaml", "lora_rank=4"]) == 2
    line = one_line(capsys)
    assert line.startswith("aqa: error: command-line override: unknown config key(s) 'lora_rank' for SFTConfig")


def test_unknown_key_in_the_file_blames_the_file(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("model: x\nlearning_rate: 1e-4\n")
    assert main(["sft", str(p), "lr=1e-4"]) == 2
    assert one_line(capsys).startswith(f"aqa: error: {p}: unknown config key(s) 'learning_rate'")


def test_bad_value_on_the_command_line_blames_the_command_line(capsys):
    assert main(["sft", "configs/qwen2_audio/sft_lora.yaml", "lora_r=four"]) == 2
    assert one_line(capsys) == ("aqa: error: command-line override: config key 'lora_r': expected an "
                                "integer, got 'four'")


def test_missing_data_file(tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    assert main(["eval", "--model", str(tmp_path / "m"), "--data", str(missing), "-o", str(tmp_path / "ev")]) == 2
    assert one_line(capsys) == f"aqa: error: {missing}: No such file or directory"


def test_empty_data_file_is_not_zero_items(tmp_path, capsys):
    p = tmp_path / "empty.jsonl"
    p.write_text("")
    assert main(["eval", "--model", str(tmp_path / "m"), "--data", str(p), "-o", str(tmp_path / "ev")]) == 2
    assert one_line(capsys) == f"aqa: error: {p}: no records: the file is empty"


@pytest.mark.parametrize("model", ["/no/such/model", "./runs/sft", "runs/../x"])
def test_missing_model_folder_says_so(tmp_path, capsys, model):
    d = data_file(tmp_path)
    assert main(["eval", "--model", model, "--data", str(d), "-o", str(tmp_path / "ev")]) == 2
    line = one_line(capsys)
    assert line == (f"aqa: error: {model}: no such model folder (and not a Hugging Face id, which is "
                    f"'name' or 'owner/name')")
    assert "Repo id must be" not in line


def test_a_hub_like_name_that_cannot_be_fetched_says_both(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise OSError("We couldn't connect to the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    d = data_file(tmp_path)
    assert main(["eval", "--model", "runs/sft", "--data", str(d), "-o", str(tmp_path / "ev")]) == 2
    assert one_line(capsys) == ("aqa: error: runs/sft: no such model folder, and as a Hugging Face id its "
                                "config.json could not be fetched (We couldn't connect to the Hub)")


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    from aqa.models.registry import load_backend

    b = load_backend(str(tiny_model), device="cpu", dtype="fp32")
    b.add_lora(r=2, alpha=4, dropout=0.0)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    b.model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.mark.parametrize("damage, name, what", [
    ("truncate", "adapter_model.safetensors", "corrupted or truncated weights file"),
    ("json", "adapter_config.json", "corrupted or truncated JSON file"),
])
def test_corrupted_adapter_names_the_file(tiny_model, adapter, tmp_path, capsys, damage, name, what):
    bad = tmp_path / "adapter"
    shutil.copytree(adapter, bad)
    f = bad / name
    f.write_bytes(f.read_bytes()[:100] if damage == "truncate" else b"{\n")
    d = data_file(tmp_path)
    assert main(["eval", "--model", str(tiny_model), "--adapter", str(bad), "--data", str(d),
                 "-o", str(tmp_path / "ev"), "--device", "cpu"]) == 2
    # The weights' progress bar comes first; the error is the last line, and one line.
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"aqa: error: {f}: {what} (")


def test_full_disk_is_a_failure_naming_the_output(tmp_path, capsys, monkeypatch):
    import aqa.io

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(aqa.io.os, "fsync", full)
    from test_dcase2026 import item, write_lines

    write_audio(tmp_path / "dev_audios" / "1.wav")
    write_lines(tmp_path / "dev.jsonl", [item(1, "rain")])
    out = tmp_path / "out.jsonl"
    assert main(["data", "dcase2026", str(tmp_path / "dev.jsonl"), "-o", str(out), "--no-progress"]) == 1
    assert capsys.readouterr().err.strip() == f"aqa: error: {out}: No space left on device"
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl.*"))


def test_a_bug_still_shows_its_traceback(monkeypatch):
    import aqa.data.dcase2026 as mod

    def bug(args):
        raise KeyError("a bug")

    monkeypatch.setattr(mod, "run_dcase2026", bug)
    with pytest.raises(KeyError):
        main(["data", "dcase2026", "x.jsonl", "-o", "y.jsonl"])


def test_deepspeeds_cpu_notice_does_not_reach_stdout():
    """DeepSpeed's import prints "Setting accelerator to CPU ..." to stdout on a machine without a
    GPU; once `aqa` has started, the same import prints nothing there."""
    import subprocess
    import sys

    pytest.importorskip("deepspeed")
    probe = "import deepspeed"
    after_main = ("from aqa.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
                  "print('---')\nimport deepspeed")
    plain = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    ours = subprocess.run([sys.executable, "-c", after_main], capture_output=True, text=True, timeout=120)
    assert plain.returncode == ours.returncode == 0, (plain.stderr[-2000:], ours.stderr[-2000:])
    import torch

    if not torch.cuda.is_available():  # the test can tell: DeepSpeed says it wherever it finds no GPU
        assert "Setting accelerator to CPU" in plain.stdout
    assert "Setting accelerator to CPU" not in ours.stdout.split("---")[1] + ours.stderr
