"""MMAR: the converter on a fixture in MMAR-meta.jsonl's format, and the export for its scorer."""

import json
from collections import Counter

import pytest

from aqa.cli import main
from aqa.data.sources.mmar import convert_mmar
from aqa.data.records import REFERENCE_REASONING
from aqa.export import export_mmar, mmar_match
from bench_helpers import eval_dir
from conftest import write_audio


def row(id, choices, answer, modality="sound", **kw):
    """One line with MMAR-meta.jsonl's fields (ddlBoJack/MMAR at 3bce090)."""
    return {"id": id, "audio_path": f"./audio/{id}.wav", "question": f"Question {id}?", "choices": choices,
            "answer": answer, "modality": modality, "category": "Perception Layer", "sub-category": "Counting",
            "language": None, "source": "youtube", "url": "https://example.org/v", "timestamp": "00:00:00,00:00:10",
            "thinking": f"Reasoning of {id}: the far sound fades in.", "cue": ["cue"],
            "rubric": [{"name": "r", "scoring_point": "p", "note": "n", "choices": [0, 1]}], **kw}


GOOD = [row("a1", ["dog", "cat"], "cat"),
        row("order", ["From far to near", "From near to far", "Static"], "From far to near", modality="mix-sound-music"),
        row("empty-last", ["Entered", "Did not enter", ""], "Entered", modality="speech")]


def write_meta(tmp_path, rows, bad_lines=()):
    p = tmp_path / "MMAR-meta.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(b + "\n" for b in bad_lines))
    return p


def test_converter_keeps_reasoning_out_of_prompt_and_target(tmp_path):
    write_audio(tmp_path / "audio" / "a1.wav")
    bad = [row("b1", ["x", "y"], "z"), {k: v for k, v in row("b2", ["x", "y"], "x").items() if k != "question"},
           row("b3", "x or y", "x"), row("a1", ["p", "q"], "p")]
    p = write_meta(tmp_path, GOOD + bad, bad_lines=["{not json"])
    rep = convert_mmar(p, show_progress=False)
    assert [r.id for r in rep.records] == ["a1", "empty-last", "order"]
    assert rep.subset_counts() == {"mmar-mix-sound-music": 1, "mmar-sound": 1, "mmar-speech": 1}
    for r in rep.records:
        assert r.rationale is None and r.meta[REFERENCE_REASONING].startswith(f"Reasoning of {r.id}")
        assert "Reasoning" not in r.question and not any("Reasoning" in c for c in r.choices)
        assert r.meta["category"] == "Perception Layer" and r.meta["cue"] == ["cue"] and r.meta["rubric"]
    e = {r.id: r for r in rep.records}["empty-last"]
    assert e.choices == ["Entered", "Did not enter"] and e.meta["choice_index_of"] == [0, 1, -1]
    assert rep.missing_audio == ["empty-last", "order"]
    assert Counter(x["kind"] for x in rep.errors) == {"answer-matches-no-choice": 1, "missing-field": 2,
                                                     "bad-json": 1, "duplicate-id": 1}
    text = rep.summary()
    assert f"answer-matches-no-choice: {p}:4 (id b1): answer 'z' is none of" in text
    assert f"bad-json: {p}:8:" in text


def test_cli_writes_no_rationale(tmp_path, capsys):
    p = write_meta(tmp_path, GOOD)
    out = tmp_path / "mmar.jsonl"
    assert main(["data", "mmar", str(p), "-o", str(out), "--no-progress"]) == 0
    assert "3 records from 3 items" in capsys.readouterr().out
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert all("rationale" not in x and x["meta"][REFERENCE_REASONING] for x in lines)


# MMAR's string_match (code/evaluation.py at 3bce090): (answer, prediction, choices, credited).
MMAR_RULE = [
    ("cat", "cat", ["dog", "cat"], True),
    ("cat", "dog", ["dog", "cat"], False),
    ("From far to near", "From near to far", ["From far to near", "From near to far"], True),  # a wrong pick
    ("Guitar, Piano", "Piano, Guitar", ["Guitar, Piano", "Piano, Guitar", "Drums"], True),  # a wrong pick
    ("Dog barking", "dog, barking!", ["Dog barking", "Cat"], True),
    ("cat", "cat or dog", ["dog", "cat"], False),
    ("cat", "", ["dog", "cat"], False),
    ("one dog", "one", ["one dog", "two dogs"], False),
]


@pytest.mark.parametrize("answer,prediction,choices,credited", MMAR_RULE)
def test_mmar_rule(answer, prediction, choices, credited):
    assert mmar_match(answer, prediction, choices) is credited


def test_export_counts_wrong_picks_the_scorer_credits(tmp_path, capsys):
    p = write_meta(tmp_path, GOOD)
    data = tmp_path / "mmar.jsonl"
    assert main(["data", "mmar", str(p), "-o", str(data), "--no-progress"]) == 0
    # order: the reversed option (wrong); a1: right; empty-last: no prediction.
    picks = {"order": 1, "a1": 1, "empty-last": None}
    d, _ = eval_dir(tmp_path, data, lambda r: picks[r.id])
    res = export_mmar(d, p, tmp_path / "out.jsonl")
    items = {x["id"]: x for x in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert items["order"]["answer_prediction"] == "From near to far" and items["empty-last"]["answer_prediction"] == ""
    assert items["a1"]["thinking"] and set(items["a1"]) >= {"answer", "choices", "modality", "category"}
    assert (res.scored, res.aqa_correct, res.scorer_correct, res.credited_wrong, res.empty) == (3, 1, 2, 1, 1)
    metrics = json.loads(res.metrics_path.read_text())
    assert metrics["credited_wrong"] == 1 and metrics["scorer_accuracy"] == pytest.approx(2 / 3)
    assert main(["export", "mmar", str(d), "--questions", str(p), "-o", str(tmp_path / "out.json")]) == 0
    text = capsys.readouterr().out
    assert "credits 1 wrong pick(s)" in text and "aqa 33.33%" in text
    assert isinstance(json.loads((tmp_path / "out.json").read_text()), list)


def test_data_check_against_mmar_flags_training_rationales_that_repeat_its_reasoning(tmp_path, capsys):
    p = write_meta(tmp_path, GOOD)
    ev = tmp_path / "mmar.jsonl"
    assert main(["data", "mmar", str(p), "-o", str(ev), "--no-progress"]) == 0
    (tmp_path / "t.wav").write_bytes(b"x")
    train = tmp_path / "train.jsonl"
    rows = [{"id": "t1", "audio": "t.wav", "question": "Which way?", "choices": ["a", "b"], "answer": 0, "subset": "s",
             "rationale": "Reasoning of order: the far sound fades in."},
            {"id": "t2", "audio": "t.wav", "question": "Which way?", "choices": ["a", "b"], "answer": 1, "subset": "s",
             "rationale": "The bark comes first."}]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    main(["data", "check", str(train), "--against", str(ev), "--no-audio"])
    text = capsys.readouterr().out
    assert f"{train}: t1 ~ {ev}: order: same rationale" in text and "t2 ~" not in text
