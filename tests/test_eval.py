"""`aqa eval` on the tiny model: files, option orders mapped back, resume, bad audio."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from aqa.cli import main
from aqa.data.audio import load_audio
from aqa.data.records import load_records
from aqa.eval.run import EvalSettings, evaluate
from aqa.eval.score import Query, option_orders, score_queries
from aqa.io import write_jsonl
from aqa.models.base import Example
from aqa.models.registry import load_backend
from aqa.prompts import question_text


@pytest.fixture(scope="module")
def backend(tiny_model):
    return load_backend(str(tiny_model))


def rows(d):
    return [json.loads(x) for x in (d / "predictions.jsonl").read_text().splitlines()]


def test_score_files_and_metrics(tiny_model, synth_data, tmp_path, backend):
    out = tmp_path / "ev"
    m = evaluate(EvalSettings(str(tiny_model), None, str(synth_data / "dev.jsonl"), progress=False), out,
                 backend=backend)
    rs = rows(out)
    recs = load_records(synth_data / "dev.jsonl")
    assert [r["id"] for r in rs] == [r.id for r in recs]
    for r, rec in zip(rs, recs):
        assert r["choices"] == rec.choices and r["answer"] == rec.answer
        assert len(r["probs"]) == len(rec.choices) and abs(sum(r["probs"]) - 1) < 1e-4
        assert r["pred"] == int(np.argmax(r["probs"])) and r["correct"] == (r["pred"] == rec.answer)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["n"] == len(recs) and saved["weighted_mean"]["value"] == m["weighted_mean"]["value"]
    assert abs(m["weighted_mean"]["value"] - np.mean([r["correct"] for r in rs])) < 1e-6


def test_shuffled_orders_are_mapped_back(tiny_model, synth_data, tmp_path, backend):
    out = tmp_path / "ev"
    s = EvalSettings(str(tiny_model), None, str(synth_data / "dev.jsonl"), shuffles=3)
    evaluate(replace(s, limit=4, progress=False), out, backend=backend)
    rec = load_records(synth_data / "dev.jsonl")[0]
    row = rows(out)[0]
    orders = option_orders(rec, 3, 0)
    assert orders[0] == list(range(len(rec.choices))) and len({tuple(o) for o in orders}) > 1
    audio = load_audio(rec.audio_path, max_seconds=backend.audio_seconds).samples
    per = []
    for o in orders:  # one query at a time, by hand
        shown = [rec.choices[j] for j in o]
        (p,) = score_queries(backend, [Query(0, o, shown, Example(audio, question_text(rec.question, shown)))])
        per.append(p)
        # The probability of an option travels with its text, not its position.
        q = score_queries(backend, [Query(0, list(range(len(o))), shown,
                                          Example(audio, question_text(rec.question, shown)))])[0]
        assert np.allclose(p, [q[o.index(i)] for i in range(len(o))], atol=1e-6)
    assert np.allclose(row["probs"], np.mean(np.exp(per), axis=0), atol=1e-5)
    assert np.allclose(np.exp(row["logprobs"]), np.mean(np.exp(per), axis=0), atol=1e-9)
    assert row["shuffle_preds"] == [int(np.argmax(p)) for p in per]
    assert "shuffles" in json.loads((out / "metrics.json").read_text())


def test_resume_skips_done_items(tiny_model, synth_data, tmp_path, backend):
    out = tmp_path / "ev"
    s = EvalSettings(str(tiny_model), None, str(synth_data / "dev.jsonl"))
    evaluate(replace(s, limit=3, progress=False), out, backend=backend)
    first = rows(out)
    # A run killed mid-write leaves a partial line; the resume drops it.
    with open(out / "predictions.jsonl", "a") as fh:
        fh.write('{"id": "half')
    evaluate(replace(s, progress=False), out, backend=backend)
    again = rows_tolerant(out)
    ids = [r["id"] for r in again]
    assert len(ids) == len(set(ids)) == len(load_records(synth_data / "dev.jsonl"))
    assert again[:3] == first
    with pytest.raises(ValueError, match="other settings"):
        evaluate(EvalSettings(str(tiny_model), None, str(synth_data / "dev.jsonl"), mode="generate", progress=False),
                 out, backend=backend)


def rows_tolerant(d):
    from aqa.eval.metrics import load_predictions

    return load_predictions(d)


def test_generate_mode_and_bad_audio(tiny_model, synth_data, tmp_path):
    d = tmp_path / "ds"
    shutil.copytree(synth_data / "wav", d / "wav")
    recs = [json.loads(x) for x in (synth_data / "dev.jsonl").read_text().splitlines()][:4]
    (d / "wav" / "empty.wav").write_bytes(b"")
    recs[1]["audio"] = "wav/empty.wav"
    (d / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(tiny_model), "--data", str(d / "dev.jsonl"), "-o", str(out),
                 "--mode", "generate", "--max-new-tokens", "3"]) == 0
    rs = rows(out)
    assert len(rs) == 3 and all("raw" in r and r["probs"] is None for r in rs)
    skipped = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert skipped[0]["id"] == recs[1]["id"] and skipped[0]["kind"] == "empty"
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_skipped"] == 1
    unparsed = [json.loads(x) for x in (out / "unparsed.jsonl").read_text().splitlines()]
    assert {u["id"] for u in unparsed} == {r["id"] for r in rs if r["pred"] is None}


def test_grouping_by_length_changes_no_prediction(tiny_model, synth_data, tmp_path, backend):
    import numpy as np

    from aqa.data.audio import write_wav

    # Clips of different lengths, listed longest-short-long so that grouping reorders them.
    d = tmp_path / "ds"
    recs = [json.loads(x) for x in (synth_data / "dev.jsonl").read_text().splitlines()][:6]
    for i, r in enumerate(recs):
        a = load_audio(synth_data / r["audio"]).samples
        cut = [2.0, 0.4, 1.7, 0.6, 1.9, 0.3][i]
        write_wav(d / f"c{i}.wav", a[: int(cut * 16000)] + np.float32(0))
        r["audio"] = f"c{i}.wav"
    write_jsonl(d / "dev.jsonl", recs)
    s = EvalSettings(str(tiny_model), None, str(d / "dev.jsonl"))
    evaluate(replace(s, progress=False, batch_size=2, group_by_length=True), tmp_path / "g", backend=backend)
    evaluate(replace(s, progress=False, batch_size=2, group_by_length=False), tmp_path / "u", backend=backend)
    g, u = rows(tmp_path / "g"), rows(tmp_path / "u")
    assert [r["id"] for r in g] != [r["id"] for r in u]  # the order of work changed ...
    by_id = {r["id"]: r for r in u}
    for r in g:  # ... the answers did not
        assert np.allclose(r["probs"], by_id[r["id"]]["probs"], atol=1e-5) and r["pred"] == by_id[r["id"]]["pred"]


@pytest.fixture
def mixed_lengths(synth_data, tmp_path):
    """Dev items with clips of many lengths (so grouping by length reorders them) and one bad clip."""
    from aqa.data.audio import write_wav

    d = tmp_path / "ds"
    recs = [json.loads(x) for x in (synth_data / "dev.jsonl").read_text().splitlines()][:14]
    for i, r in enumerate(recs):
        a = load_audio(synth_data / r["audio"]).samples
        write_wav(d / f"c{i}.wav", a[: int((0.3 + (i * 7 % 10) / 6) * 16000)] + np.float32(0))
        r["audio"] = f"c{i}.wav"
    (d / "bad.wav").write_bytes(b"RIFF....not audio")
    recs[5]["audio"] = "bad.wav"
    write_jsonl(d / "dev.jsonl", recs)
    return d / "dev.jsonl"


def same_eval(a, b):
    """The same predictions, skipped items and metrics (the row name aside). The full-precision
    `logprobs` may differ in the last bits where an item was answered in another batch (a
    resumed shard redoes part of a batch): within 1e-6; everything else exactly."""
    ra, rb = rows(a), rows(b)
    assert [r["id"] for r in ra] == [r["id"] for r in rb]
    for x, y in zip(ra, rb):
        assert {k: v for k, v in x.items() if k != "logprobs"} == {k: v for k, v in y.items() if k != "logprobs"}
        assert np.allclose(x.get("logprobs") or [], y.get("logprobs") or [], atol=1e-6)
    assert (a / "skipped.jsonl").read_text() == (b / "skipped.jsonl").read_text()
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert {k: v for k, v in ma.items() if k != "name"} == {k: v for k, v in mb.items() if k != "name"}


def test_shards_resume_on_their_own_and_merge_to_the_one_process_run(tiny_model, mixed_lengths, tmp_path, backend):
    s = EvalSettings(str(tiny_model), None, str(mixed_lengths), shuffles=2, progress=False, batch_size=4)
    evaluate(s, tmp_path / "one", backend=backend)
    out = tmp_path / "sharded"
    for i in range(3):
        r = evaluate(replace(s, shard=(i, 3)), out, backend=backend)
        assert r["shard"] == [i, 3] and not (out / "predictions.jsonl").exists()
    # Shard 1 was killed mid-write after its first batch: it redoes only what it lacks.
    f = out / "shards" / "predictions-1-of-3.jsonl"
    first, *rest = f.read_text().splitlines(keepends=True)
    assert rest
    f.write_text(first + rest[0][:20])
    r = evaluate(replace(s, shard=(1, 3)), out, backend=backend)
    assert r["answered"] == 1 + len(rest)
    assert sum(len(_lines(p)) for p in (out / "shards").glob("predictions-*")) == len(rows(tmp_path / "one"))
    evaluate(s, out, backend=backend)  # nothing left: merges
    same_eval(tmp_path / "one", out)
    with pytest.raises(ValueError, match="other settings"):
        evaluate(replace(s, shuffles=3, shard=(0, 3)), out, backend=backend)


def _lines(p):
    return [x for x in p.read_text().splitlines() if x.strip()]


def test_two_processes_shard_and_merge_like_one(tiny_model, mixed_lengths, tmp_path):
    """torchrun with 2 CPU processes: each answers its shard, shard 0 merges; predictions and
    metrics equal one process's."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    args = ["-m", "aqa", "eval", "--model", str(tiny_model), "--data", str(mixed_lengths), "--shuffles", "2",
            "--batch-size", "4", "--device", "cpu"]
    r = subprocess.run([sys.executable, *args, "-o", str(tmp_path / "one")], env=env, cwd=root, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(port), *args, "-o", str(tmp_path / "two")], env=env, cwd=root, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    shards = sorted(p.name for p in (tmp_path / "two" / "shards").iterdir())
    # The bad clip's header reads as 0 s: the first batch, shard 0's.
    assert shards == ["predictions-0-of-2.jsonl", "predictions-1-of-2.jsonl", "skipped-0-of-2.jsonl"], shards
    same_eval(tmp_path / "one", tmp_path / "two")


def test_duplicate_ids_are_refused_before_any_folder_is_made(tiny_model, synth_data, tmp_path):
    from aqa.io import UserError

    rows = [json.loads(x) for x in (synth_data / "dev.jsonl").read_text().splitlines()]
    data = synth_data / "dup_ids.jsonl"
    write_jsonl(data, rows + rows[:2])
    try:
        with pytest.raises(UserError, match=rf"dup_ids.jsonl: 2 id\(s\) appear more than once \({rows[0]['id']}"):
            evaluate(EvalSettings(str(tiny_model), None, str(data), progress=False), tmp_path / "e")
        assert not (tmp_path / "e").exists()
    finally:
        data.unlink()


def test_a_second_eval_into_the_same_folder_is_refused_while_one_runs(tiny_model, synth_data, tmp_path, backend):
    import fcntl

    from aqa.io import UserError

    out = tmp_path / "e"
    out.mkdir()
    with open(out / ".lock-0", "w") as held:  # what a running `aqa eval` holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError, match="another aqa eval is writing this folder"):
            evaluate(EvalSettings(str(tiny_model), None, str(synth_data / "dev.jsonl"), progress=False), out,
                     backend=backend)
    m = evaluate(EvalSettings(str(tiny_model), None, str(synth_data / "dev.jsonl"), progress=False, n_boot=50),
                 out, backend=backend)
    assert m["n"] > 0  # released: the next one runs


def test_eval_takes_its_flags_from_a_config_file(tiny_model, synth_data, tmp_path, capsys):
    """`aqa eval --config FILE`: the file's keys are flags, and flags on the command line win."""
    import yaml

    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"model: {tiny_model}\nshuffles: 2\nbatch_size: 4\nseed: 3\ncompile: false\n")
    out = tmp_path / "ev"
    assert main(["eval", "--config", str(cfg), "--data", str(synth_data / "dev.jsonl"), "-o", str(out),
                 "--limit", "4", "--seed", "5"]) == 0
    settings = json.loads((out / "eval_config.json").read_text())
    assert settings["model"] == str(tiny_model) and settings["shuffles"] == 2 and settings["seed"] == 5
    # The shipped per-family files hold only keys `aqa eval` knows, and name the family's checkpoint.
    from pathlib import Path

    from aqa.cli import build_parser, expand_config_flags

    configs = Path(__file__).parent.parent / "configs"
    files = sorted(configs.glob("*/eval.yaml"))
    # Every family with recipes has its eval flags too (seven with MOSS-Audio).
    assert {p.parent.name for p in files} == {p.parent.name for p in configs.glob("*/sft_lora.yaml")}
    assert len(files) >= 7
    for f in files:
        args = build_parser().parse_args(expand_config_flags(build_parser(), ["eval", "--config", str(f), "--data",
                                                                             "d.jsonl", "-o", "o"]))
        assert args.model == yaml.safe_load(f.read_text())["model"] and args.dtype == "bf16"
    # A key `aqa eval` does not know: one line naming the file, exit 2.
    cfg.write_text("batch_sise: 4\n")
    assert main(["eval", "--config", str(cfg), "--data", "d.jsonl", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: unknown key 'batch_sise' for aqa eval" in err and "batch_size" in err and "help" not in err
    assert main(["eval", "--config", str(tmp_path / "none.yaml"), "--data", "d.jsonl", "-o", str(tmp_path / "x")]) == 2
    assert "none.yaml: No such file or directory" in capsys.readouterr().err
