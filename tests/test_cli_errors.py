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
    import aqa.data.sources.dcase2026 as mod

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


# --------------------------------------------------------------------------- issue 21, item 5: adapters

def eval_args(model, adapter, tmp_path):
    return ["eval", "--model", str(model), "--adapter", str(adapter), "--data", str(data_file(tmp_path)),
            "-o", str(tmp_path / "ev"), "--device", "cpu"]


@pytest.mark.parametrize("name", ["absolute", "relative"])
def test_an_adapter_folder_that_does_not_exist_says_so_before_anything_loads(tiny_model, tmp_path, capsys,
                                                                             monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "runs" / "sft" / "adapter" if name == "absolute" else "runs/sft/adaptr"
    assert main(eval_args(tiny_model, missing, tmp_path)) == 2
    assert one_line(capsys) == (f"aqa: error: {missing}: no such adapter folder (and not a Hugging Face id, "
                                f"which is 'name' or 'owner/name')")
    assert not (tmp_path / "ev").exists()


def test_sft_on_an_adapter_that_does_not_exist_says_so_before_the_run_folder_is_made(tiny_model, tmp_path, capsys):
    missing = tmp_path / "runs" / "sft" / "adapter"
    assert main(["sft", "configs/qwen2_audio/sft_lora.yaml", f"model={tiny_model}",
                 f"train_data=[{data_file(tmp_path)}]", f"adapter={missing}", f"output_dir={tmp_path / 'run'}",
                 "device=cpu"]) == 2
    assert one_line(capsys) == (f"aqa: error: {missing}: no such adapter folder (and not a Hugging Face id, "
                                f"which is 'name' or 'owner/name')")
    assert not (tmp_path / "run").exists()


def test_a_folder_that_holds_no_adapter_is_named(tiny_model, tmp_path, capsys):
    unfinished = tmp_path / "run"
    (unfinished / "checkpoints").mkdir(parents=True)
    assert main(eval_args(tiny_model, unfinished, tmp_path)) == 2
    assert one_line(capsys) == (f"aqa: error: {unfinished}: a training run's folder without its final adapter "
                                f"(adapter/adapter_config.json is written when the run finishes; rerun the same "
                                f"command to resume it)")
    assert main(eval_args(tiny_model, tiny_model, tmp_path)) == 2  # the model's folder given as the adapter
    assert one_line(capsys) == (f"aqa: error: {tiny_model}: not a peft adapter folder (no adapter_config.json, "
                                f"and no adapter/ in it)")


def test_a_run_folder_given_as_the_adapter_uses_its_adapter(tiny_model, adapter, tmp_path, caplog):
    run = tmp_path / "runs" / "sft"
    shutil.copytree(adapter, run / "adapter")
    with caplog.at_level("INFO", logger="aqa.models.registry"):
        assert main(eval_args(tiny_model, run, tmp_path)) == 0
    assert f"{run} is a training run's folder: using its adapter, {run / 'adapter'}" in caplog.messages
    assert json.loads((tmp_path / "ev" / "eval_config.json").read_text())["adapter"] == str(run / "adapter")
    # The same adapter named either way is the same evaluation: the rerun resumes, nothing to redo.
    assert main(eval_args(tiny_model, run / "adapter", tmp_path)) == 0


@pytest.fixture(scope="module")
def resized(tmp_path_factory, synth_data):
    """The tiny Qwen2-Audio with a wider decoder (an adapter of the other one fits none of its
    layers), and with a deeper one (the adapter holds nothing for its third layer)."""
    from aqa.models.tiny.qwen2_audio import TinySpec, build_tiny
    from aqa.models.tiny.builder import corpus_from_records

    corpus = corpus_from_records(synth_data / "qa.jsonl")
    sizes = dict(audio_seconds=2, num_mel_bins=32, encoder_dim=32, decoder_dim=32, vocab_size=400)
    return {name: build_tiny(tmp_path_factory.mktemp(name) / f"model-{name}", TinySpec(**{**sizes, **change}), corpus)
            for name, change in (("wider", dict(decoder_dim=48)), ("deeper", dict(decoder_layers=3)))}


def test_an_adapter_of_another_model_is_refused_naming_both(tiny_model, resized, adapter, tmp_path, capsys):
    made_for = f"aqa: error: {adapter}: this adapter does not fit the model {{}} (made for {tiny_model}, says its " \
               f"adapter_config.json): "
    assert main(eval_args(resized["wider"], adapter, tmp_path)) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == made_for.format(resized["wider"]) + ("model.language_model.layers.0.self_attn.q_proj.lora_A is "
                                                        "[2, 32] in the adapter, [2, 48] in the model (and 27 more)")
    # Where peft only warns (and the third layer's LoRA would stay at its start, doing nothing).
    assert main(eval_args(resized["deeper"], adapter, tmp_path)) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(made_for.format(resized["deeper"]) + "this model has LoRA layers the adapter holds no "
                           "weights for (['base_model.model.model.language_model.layers.2.")


def test_an_adapter_whose_stack_is_gone_names_what_is_missing(tiny_model, adapter, tmp_path, capsys):
    from aqa.models.base import STACK_FILE

    grpo = tmp_path / "grpo-adapter"  # a GRPO adapter trained on top of an SFT adapter since deleted
    shutil.copytree(adapter, grpo)
    (grpo / STACK_FILE).write_text(json.dumps({"merge_first": [str(tmp_path / "sft" / "adapter")]}))
    assert main(eval_args(tiny_model, grpo, tmp_path)) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"aqa: error: {grpo / STACK_FILE}: names {tmp_path / 'sft' / 'adapter'}, the adapter this one was trained on "
        f"top of, which is not there any more; put it back, or train again")


def test_an_adapter_of_another_family_is_refused_even_where_shapes_agree(tiny_model, tiny_family, tmp_path, capsys):
    from aqa.models.registry import load_backend

    omni = tiny_family("qwen2.5-omni")  # the same sizes as tiny_model: peft alone would load it
    b = load_backend(str(omni), device="cpu", dtype="fp32")
    b.add_lora(r=2, alpha=4, dropout=0.0)
    b.model.save_pretrained(tmp_path / "omni-adapter", safe_serialization=True)
    assert main(eval_args(tiny_model, tmp_path / "omni-adapter", tmp_path)) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (f"aqa: error: {tmp_path / 'omni-adapter'}: this adapter does not fit the model {tiny_model} "
                    f"(made for {omni}, says its adapter_config.json): it adapts a "
                    f"Qwen2_5OmniThinkerForConditionalGeneration, this model is a Qwen2AudioForConditionalGeneration")


def test_an_adapter_made_for_a_model_of_another_name_loads_with_a_warning(tiny_model, adapter, tmp_path, caplog):
    from aqa.models.registry import load_backend

    other = tmp_path / "Qwen2-Audio-7B"
    shutil.copytree(tiny_model, other)
    with caplog.at_level("WARNING", logger="aqa.models.base"):
        assert load_backend(str(other), adapter=str(adapter), device="cpu").model is not None
    assert caplog.messages == [f"{adapter} was made for {tiny_model} (its adapter_config.json), and is loaded on "
                               f"{other}: it fits, but is this the model it was trained on?"]
    caplog.clear()
    hub_cache = tmp_path / "hub" / "models--someone--model" / "snapshots" / "0123abc"
    shutil.copytree(tiny_model, hub_cache)  # the same name as tiny_model's folder, "model": no warning
    with caplog.at_level("WARNING", logger="aqa.models.base"):
        load_backend(str(hub_cache), adapter=str(adapter), device="cpu")
    assert not caplog.messages


# --------------------------------------------------------------------------- issue 21, item 5: pipes

@pytest.mark.parametrize("command, unbuffered", [
    ("export", "1"), ("export", ""),  # ./run sets PYTHONUNBUFFERED: each print meets the closed pipe
    ("import", "1"), ("check", "1"), ("check-fails", ""),
])
def test_a_reader_that_stops_listening_is_no_error(tmp_path, command, unbuffered):
    """`aqa data export ... | head -1`: once head has its line, the pipe is closed. Here it is
    closed before the command starts, so that every write meets it. A command that ran to its
    end keeps its own exit code (a check that fails, its output buffered till the end)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    data = data_file(tmp_path)
    swift = tmp_path / "swift.jsonl"
    assert main(["data", "export", str(data), "-o", str(swift)]) == 0
    args = {"export": ["data", "export", str(data), "--format", "llamafactory", "-o", str(tmp_path / "lf.jsonl")],
            "import": ["data", "import", str(swift), "-o", str(tmp_path / "back.jsonl")],
            "check": ["data", "check", str(data)], "check-fails": ["data", "check", str(data), "--strict"]}[command]
    if command == "check-fails":
        (tmp_path / "a.wav").unlink()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": unbuffered}
    read, write = os.pipe()
    os.close(read)
    try:
        r = subprocess.run([sys.executable, "-m", "aqa", *args], stdout=write, stderr=subprocess.PIPE, text=True,
                           env=env, cwd=root, timeout=120)
    finally:
        os.close(write)
    assert "Broken pipe" not in r.stderr and "BrokenPipeError" not in r.stderr, r.stderr
    assert r.returncode == (1 if command == "check-fails" else 0)
    if command in ("export", "import"):
        assert Path(args[-1]).is_file()  # the work is done; only its report went unread


def test_pickled_adapter_weights_are_one_line_from_the_command(tiny_model, adapter, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(adapter, pickled)
    torch.save(load_file(pickled / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()
    assert main(eval_args(tiny_model, pickled, tmp_path)) == 2
    assert one_line(capsys).startswith(f"aqa: error: {pickled}: weights only as pickle files (adapter_model.bin)")


@pytest.mark.parametrize("config, problem", [
    ({"model_type": "qwen2"}, "model type 'qwen2' has no aqa backend (supported: qwen2_audio, "),
    ({"architectures": ["X"]}, "cannot read model_type ('model_type')"),
], ids=["text-only", "no-type"])
def test_a_model_of_no_family_is_one_line(tmp_path, capsys, config, problem):
    model = tmp_path / "Qwen2-7B"  # a text-only model, or a config without its type
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    assert main(["eval", "--model", str(model), "--data", str(data_file(tmp_path)), "-o", str(tmp_path / "ev")]) == 2
    line = one_line(capsys)
    where = model if "model_type" in config else model / "config.json"
    assert line.startswith(f"aqa: error: {where}: {problem}")
