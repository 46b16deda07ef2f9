"""Experiment trackers (`report_to`) and the adapter's model card, on real runs of the tiny model:
TensorBoard's events read back against train_log.jsonl, a wandb run in offline mode, the
README.md loaded with huggingface_hub."""

import importlib.util
import json

import pytest

from aqa.io import UserError
from aqa.train.sft import SFTConfig, train

SECRET = "sk-test-not-a-real-key-0123456789"


def kw(tiny_model, synth_data, out, **more):
    return {**dict(model=str(tiny_model), train_data=[str(synth_data / "train.jsonl")], output_dir=str(out),
                   batch_size=4, micro_batch_size=4, max_steps=3, lr=1e-3, lora_r=2, device="cpu", num_workers=0),
            **more}


def log_rows(run):
    return [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]


def test_tensorboard_holds_train_log_values_and_the_card_describes_the_run(tiny_model, synth_data, tmp_path,
                                                                           monkeypatch):
    from huggingface_hub import ModelCard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # The run folder lies in the home folder: the card must not name it.
    monkeypatch.setenv("HOME", str(tmp_path))
    run = tmp_path / "runs" / "sft-a"
    train(SFTConfig(**kw(tiny_model, synth_data, run)))

    rows = log_rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == set(rows[0]) - {"step"}, tags
    for tag in tags:
        got = {e.step: e.value for e in events.Scalars(tag)}
        assert got == {r["step"]: pytest.approx(r[tag], rel=1e-6, abs=1e-9) for r in rows}, tag

    card_file = run / "adapter" / "README.md"
    card = ModelCard.load(card_file)
    assert card.data.base_model == tiny_model.name  # a local folder: its name, not its path
    assert card.data.library_name == "peft"
    assert card.data.tags == ["aqa", "lora", "sft", "audio-question-answering"]
    assert card.data.datasets == ["train.jsonl"]
    text = card_file.read_text()
    assert "lr: 0.001" in text and "output_dir: ~/runs/sft-a" in text
    assert str(tmp_path) not in text
    assert "## Final training metrics (step 3)" in text and f"| loss | {rows[-1]['loss']} |" in text
    assert "## Evaluation" not in text
    assert "More Information Needed" not in text  # peft's template is gone


def wandb_records(path):
    """The protobuf records of a wandb run file: wandb 0.31 ships no reader for it. The file is
    a 7-byte header, then LevelDB's log format (32 KiB blocks; records in chunks with a 7-byte
    header: crc32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, block, out, part = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        part += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(part)
            out.append(record)
            part = b""
    return out


def test_wandb_offline_run_holds_the_logged_keys_and_no_secret(tiny_model, synth_data, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="the `test` extra installs wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    run = tmp_path / "sft-wandb"
    # Started with TensorBoard alone; a resumed run may add a tracker (how it runs, not what).
    train(SFTConfig(**kw(tiny_model, synth_data, run, stop_after=1)))
    train(SFTConfig(**kw(tiny_model, synth_data, run, report_to=["tensorboard", "wandb"])))

    # wandb's service process writes the run file on its own time after run.finish(); a command
    # ends with the process, whose exit waits for it; a test goes on, so it waits here.
    wandb.teardown()
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    records = wandb_records(next(runs[0].glob("run-*.wandb")))
    (meta,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (meta.display_name, meta.project) == ("sft-wandb", "aqa")
    config = {u.key: json.loads(u.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for u in r.config.update}
    assert config["lora_r"] == 2 and config["report_to"] == "tensorboard,wandb"
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            history[int(row.pop("_step"))] = row
    rows = log_rows(run)
    assert sorted(history) == [2, 3]  # the resumed invocation's steps
    for r in rows[1:]:
        got = history[r["step"]]
        assert {k: got[k] for k in r if k != "step"} == pytest.approx({k: v for k, v in r.items() if k != "step"}), r
    for f in (tmp_path / "wb").rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
    assert SECRET not in (run / "adapter" / "README.md").read_text()


def test_unknown_and_missing_trackers_are_refused_in_one_line(tiny_model, synth_data, tmp_path, capsys):
    from aqa.cli import main

    args = ["sft", f"model={tiny_model}", f"train_data=[{synth_data / 'train.jsonl'}]", f"output_dir={tmp_path / 'r'}",
            "batch_size=4", "micro_batch_size=4", "max_steps=1", "device=cpu", "num_workers=0"]
    assert main([*args, "report_to=[tensorboard,neptune]"]) == 2
    assert capsys.readouterr().err.strip() == ("aqa: error: command-line override: report_to: unknown tracker(s) "
                                               "'neptune'; known: tensorboard, wandb, swanlab, mlflow")
    missing = next((t for t in ("swanlab", "mlflow") if importlib.util.find_spec(t) is None), None)
    if missing is None:
        pytest.skip("swanlab and mlflow are both installed")
    assert main([*args, f"report_to=[{missing}]"]) == 2
    assert capsys.readouterr().err.strip() == (f"aqa: error: report_to names {missing}, which is not installed: "
                                               f"pip install {missing}")
    assert not (tmp_path / "r").exists()


def test_card_eval_shows_the_eval_and_must_exist(tiny_model, synth_data, tmp_path):
    from aqa.eval.metrics import compute_metrics

    with pytest.raises(UserError, match=r"card_eval=.*nowhere: no metrics.json there"):
        train(SFTConfig(**kw(tiny_model, synth_data, tmp_path / "r", card_eval=str(tmp_path / "nowhere"))))
    ev = tmp_path / "eval-dev"
    ev.mkdir()
    rows = [{"subset": "dev", "choices": ["a", "b"], "answer": 0, "pred": p} for p in (0, 0, 0, 1)]
    (ev / "metrics.json").write_text(json.dumps(compute_metrics(rows, n_boot=0)))
    run = tmp_path / "r"
    train(SFTConfig(**kw(tiny_model, synth_data, run, max_steps=1, report_to=[], card_eval=str(ev))))
    text = (run / "adapter" / "README.md").read_text()
    assert "## Evaluation: `eval-dev`" in text and "| dev | 4 | 75.0 |" in text
    assert "| weighted mean | 4 | 75.0 |" in text
    assert not (run / "tensorboard").exists()  # report_to=[]: no tracker


def test_grpo_adapter_card_names_grpo_and_what_it_stands_on(tiny_model, synth_data, sft_adapter, tmp_path):
    from huggingface_hub import ModelCard

    from aqa.train.grpo import GRPOConfig
    from aqa.train.grpo import train as grpo

    run = tmp_path / "g"
    grpo(GRPOConfig(model=str(tiny_model), train_data=[str(synth_data / "train.jsonl")], output_dir=str(run),
                    sft_adapter=str(sft_adapter), batch_size=2, micro_batch_size=2, group_size=2, max_steps=1,
                    lora_r=2, device="cpu", num_workers=0))
    card = ModelCard.load(run / "adapter" / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == tiny_model.name
    assert card.data.tags == ["aqa", "lora", "grpo", "audio-question-answering"]
    assert "aqa_merge_first.json" in card.text and sft_adapter.parent.name in card.text
    assert "## Final training metrics (step 1)" in card.text and "| reward |" in card.text
