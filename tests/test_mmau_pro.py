"""MMAU-Pro: the converter on a test.parquet written in its format, and the export for its scorer."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aqa.cli import main
from aqa.data.sources.mmau_pro import convert_mmau_pro
from aqa.export import export_mmau_pro, mmau_pro_match
from bench_helpers import eval_dir
from conftest import write_audio


def row(id, category, choices, answer, audio=None, **kw):
    """One row with the columns the scorer (sonalkum/MMAUPro at 960e93a) and the loaders read."""
    return {"id": id, "audio_path": audio if audio is not None else [f"data/{id}.wav"], "question": f"Q {id}?",
            "choices": choices, "answer": answer, "category": category, "sub-cat": "counting",
            "perceptual_skills": ["counting"], "length_type": "short",
            "task_identifier": kw.get("task_identifier"), "kwargs": kw.get("kwargs")}


ROWS = [row("s1", "sound", ["dog", "cat", "cow"], "cat"),
        row("m1", "music", ["fast", "slow"], "slow "),  # the answer is an option only once stripped
        row("sp1", "speech", ["yes", "no"], "no"),
        row("o1", "open", [], "A long answer."),  # open-ended rows carry an empty choices array
        row("if1", "instruction following", [], None, task_identifier="length_constraints:number_words",
            kwargs='{"num_words": 10}'),
        row("mu1", "multi", ["first", "second"], "first", audio=["data/mu1a.wav", "data/mu1b.wav"]),
        row("one", "sound", ["only"], "only"),
        row("bad", "sound", ["dog", "cat"], "cow"),
        row(None, "sound", ["dog", "cat"], "dog")]


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([
        ("id", pa.string()), ("audio_path", pa.list_(pa.string())), ("question", pa.string()),
        ("choices", pa.list_(pa.string())), ("answer", pa.string()), ("category", pa.string()),
        ("sub-cat", pa.string()), ("perceptual_skills", pa.list_(pa.string())), ("length_type", pa.string()),
        ("task_identifier", pa.string()), ("kwargs", pa.string())])), path)
    return path


def test_multiple_choice_converted_others_counted_by_kind(tmp_path):
    write_audio(tmp_path / "data" / "s1.wav")
    p = write_parquet(tmp_path / "test.parquet", ROWS)
    rep = convert_mmau_pro(p, show_progress=False)
    assert [r.id for r in rep.records] == ["m1", "s1", "sp1"]
    assert rep.subset_counts() == {"mmau-pro-music": 1, "mmau-pro-sound": 1, "mmau-pro-speech": 1}
    assert rep.error_counts() == {"answer-matches-no-choice": 1, "instruction-following": 1, "missing-field": 1,
                                  "multi-audio": 1, "no-choices": 1, "open-ended": 1}
    m1 = {r.id: r for r in rep.records}["m1"]
    assert m1.answer == 1 and "answer-not-verbatim-option" in m1.meta["notes"]
    assert m1.meta["sub-cat"] == "counting" and m1.question_type == "counting"
    assert m1.meta["perceptual_skills"] == ["counting"] and "task_identifier" not in m1.meta
    assert rep.missing_audio == ["m1", "sp1"]
    assert f"multi-audio: {p}[row 5] (id mu1): 2 clips" in rep.summary()


def test_cli_and_an_unreadable_file(tmp_path, capsys):
    p = write_parquet(tmp_path / "test.parquet", ROWS)
    assert main(["data", "mmau-pro", str(p), "-o", str(tmp_path / "o.jsonl"), "--no-progress"]) == 0
    assert "3 records from 9 items" in capsys.readouterr().out
    (tmp_path / "bad.parquet").write_text("not parquet")
    assert main(["data", "mmau-pro", str(tmp_path / "bad.parquet"), "-o", str(tmp_path / "o2.jsonl")]) == 2
    assert "bad.parquet: not a readable parquet file" in capsys.readouterr().out


# The scorer's rule on an exported output (evaluate_mmau_pro_comprehensive.py at 960e93a):
# (answer, output, choices, credited; None: decided by NV-Embed-v2, not run here).
MMAU_PRO_RULE = [
    ("cat", "cat", ["dog", "cat"], True),
    ("cat", "dog", ["dog", "cat"], False),
    ("slow ", "slow", ["fast", "slow"], False),  # an answer that is no option's exact text is never credited
    ("cat", "", ["dog", "cat"], None),
    ("cat", "a cat", ["dog", "cat"], None),
]


@pytest.mark.parametrize("answer,output,choices,credited", MMAU_PRO_RULE)
def test_mmau_pro_rule(answer, output, choices, credited):
    assert mmau_pro_match(answer, output, choices) is credited


def test_export_writes_the_option_text_in_model_output(tmp_path, capsys):
    p = write_parquet(tmp_path / "test.parquet", ROWS)
    data = tmp_path / "pro.jsonl"
    assert main(["data", "mmau-pro", str(p), "-o", str(data), "--no-progress"]) == 0
    d, _ = eval_dir(tmp_path, data, lambda r: r.answer)  # every pick right
    out = tmp_path / "pred.parquet"
    res = export_mmau_pro(d, p, out)
    t = pq.read_table(out)
    assert t.column_names[:len(ROWS[0])] == list(ROWS[0]) and t.column_names[-1] == "model_output"
    outputs = dict(zip(t.column("id").to_pylist(), t.column("model_output").to_pylist()))
    assert outputs == {"s1": "cat", "m1": "slow", "sp1": "no", "o1": "", "if1": "", "mu1": "", "one": "", "bad": "",
                       None: ""}
    # m1: right by aqa, never by the scorer (its answer "slow " is no option's text); the
    # multi-audio item and the unconverted one are scored by the scorer by chance.
    assert (res.scored, res.aqa_correct, res.scorer_correct, res.uncredited_right, res.undecided) == (3, 3, 2, 1, 3)
    assert json.loads(res.metrics_path.read_text())["undecided"] == 3
    assert main(["export", "mmau-pro", str(d), "--questions", str(p), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 multiple-choice item(s) the scorer scores are written without a prediction" in text
    assert "1 item(s) have an answer that is no option's exact text" in text
