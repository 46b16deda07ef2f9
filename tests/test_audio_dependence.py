"""Does the model listen? Silent and audio-free evaluation, audio contribution, the filter."""

import argparse
import json

import pytest

from aqa.data.records import load_records
from aqa.eval import filter as data_filter
from aqa.eval.filter import weak_ids
from aqa.eval.run import EvalSettings, evaluate
from aqa.io import write_jsonl
from aqa.models.registry import load_backend


@pytest.fixture(scope="module")
def backend(tiny_model):
    return load_backend(str(tiny_model))


def test_silence_changes_answers_and_contribution_is_reported(tiny_model, synth_data, tmp_path, backend):
    data = str(synth_data / "dev.jsonl")
    normal = evaluate(EvalSettings(str(tiny_model), None, data, progress=False), tmp_path / "n", backend=backend)
    silent = evaluate(EvalSettings(str(tiny_model), None, data, audio="silence", progress=False,
                                   reference=str(tmp_path / "n")), tmp_path / "s", backend=backend)
    none = evaluate(EvalSettings(str(tiny_model), None, data, audio="none", progress=False), tmp_path / "x",
                    backend=backend)
    rows = lambda d: [json.loads(x) for x in (tmp_path / d / "predictions.jsonl").read_text().splitlines()]
    # The audio reaches the model: its probabilities move when the clip is silenced or absent.
    assert any(a["probs"] != b["probs"] for a, b in zip(rows("n"), rows("s")))
    assert any(a["probs"] != b["probs"] for a, b in zip(rows("s"), rows("x")))
    contrib = silent["audio_contribution"]
    per_item = [json.loads(x) for x in (tmp_path / "s" / "contribution.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in rows("n")}
    for p, r in zip(per_item, rows("s")):
        assert p["contribution"] == int(by_id[r["id"]]["correct"]) - int(r["correct"])
    overall = contrib["all"]
    assert overall["accuracy_with_audio"] == pytest.approx(normal["weighted_mean"]["value"], abs=1e-6)
    assert overall["accuracy_without"] == pytest.approx(silent["weighted_mean"]["value"], abs=1e-6)
    assert overall["contribution"] == pytest.approx(overall["accuracy_with_audio"] - overall["accuracy_without"])
    assert none["n"] == normal["n"]


def test_mismatched_audio_is_another_items_clip_and_the_report_gives_sensitivity(tiny_model, synth_data, tmp_path,
                                                                                  backend):
    """--audio mismatched: every question is heard with a clip of another item of the set (never
    its own, also where questions share a clip), the same whatever the batch or a resume; with a
    silent run of the same reference, the report's audio sensitivity is with - (silent + mismatched) / 2."""
    from aqa.eval.report import build_report
    from aqa.eval.run import mismatched_clips

    data = str(synth_data / "dev.jsonl")
    recs = load_records(data)
    own = {r.id: str(r.audio_path) for r in recs}
    assert len(set(own.values())) < len(recs)  # several questions per clip: the case to get right
    heard = mismatched_clips(recs, 0, data)
    assert all(str(r.audio_path) != own[r.id] and str(r.audio_path) in own.values() for r in heard)
    assert [str(r.audio_path) for r in mismatched_clips(recs, 0, data)] == [str(r.audio_path) for r in heard]
    assert [str(r.audio_path) for r in mismatched_clips(recs, 1, data)] != [str(r.audio_path) for r in heard]
    with pytest.raises(ValueError, match="at least two different clips"):
        mismatched_clips([r for r in recs if str(r.audio_path) == own[recs[0].id]], 0, data)

    base = dict(progress=False, n_boot=20)
    normal = evaluate(EvalSettings(str(tiny_model), None, data, **base), tmp_path / "n", backend=backend)
    ref = str(tmp_path / "n")
    silent = evaluate(EvalSettings(str(tiny_model), None, data, audio="silence", reference=ref, **base),
                      tmp_path / "s", backend=backend)
    mis = evaluate(EvalSettings(str(tiny_model), None, data, audio="mismatched", reference=ref, batch_size=3, **base),
                   tmp_path / "m", backend=backend)
    rows = [json.loads(x) for x in (tmp_path / "m" / "predictions.jsonl").read_text().splitlines()]
    want = {r.id: str(r.audio_path) for r in heard}
    assert all(r["heard_clip"] == want[r["id"]] for r in rows) and len(rows) == normal["n"]
    md = build_report([tmp_path / "n", tmp_path / "s", tmp_path / "m"], tmp_path / "report")["markdown"].read_text()
    line = next(x for x in md.splitlines() if x.startswith("| s + m | all |"))
    w, s_, m_ = (silent["audio_contribution"]["all"]["accuracy_with_audio"],
                 silent["audio_contribution"]["all"]["accuracy_without"], mis["audio_contribution"]["all"]["accuracy_without"])
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert float(cells[6]) == pytest.approx(100 * (w - (s_ + m_) / 2), abs=0.06)


def test_filter_drops_questions_silence_answers(synth_data, tmp_path):
    recs = load_records(synth_data / "dev.jsonl")[:4]
    correct = {  # per model: which of the 4 questions it got right on silence
        "m1": [True, True, False, False], "m2": [True, False, True, False], "m3": [True, False, False, False]}
    dirs = []
    for m, ok in correct.items():
        write_jsonl(tmp_path / m / "predictions.jsonl",
                    [{"id": r.id, "subset": r.subset, "choices": r.choices, "answer": r.answer,
                      "pred": r.answer if c else (r.answer + 1) % len(r.choices), "correct": c}
                     for r, c in zip(recs, ok)])
        dirs.append(str(tmp_path / m))
    # counts: q0 3, q1 1, q2 1, q3 0 -> weak at 2 of 3: only q0
    weak, counts = weak_ids(dirs, 2)
    assert weak == {recs[0].id} and counts[recs[1].id] == 1
    assert weak_ids(dirs, 1)[0] == {recs[0].id, recs[1].id, recs[2].id}
    sub = [r.to_dict() for r in recs]
    write_jsonl(synth_data / "four.jsonl", sub)
    out = tmp_path / "kept.jsonl"
    # `aqa data filter`, parsed by the module's own register() as aqa.cli does.
    parser = argparse.ArgumentParser(prog="aqa data")
    data_filter.register(parser.add_subparsers(dest="data_command", required=True))
    args = parser.parse_args(["filter", str(synth_data / "four.jsonl"), "--silent", *dirs, "-o", str(out),
                              "--allow-outside-root"])
    assert args.func(args) == 0
    kept = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert kept == [r.id for r in recs[1:]]
