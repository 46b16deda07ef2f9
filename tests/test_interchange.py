import json
import os

import pytest

from aqa.cli import main
from aqa.data.interchange import (LLAMAFACTORY_DATASET_INFO, export_records, from_interchange, import_file,
                                  parse_user_text, to_interchange)
from aqa.data.records import AQARecord, RecordError, read_records
from aqa.prompts import question_text
from conftest import write_audio


def rec(id, audio, **kw):
    d = {"id": id, "audio": audio, "question": "How many times does the dog bark?",
         "choices": ["1", "2", "3", "4"], "answer": 1, "subset": "tsqa", "question_type": "counting",
         "source": "test", "split": "dev", "meta": {"defects": ["x"]}}
    d.update(kw)
    return d


@pytest.fixture
def records_file(tmp_path):
    d = tmp_path / "ds"
    for name in ("a", "b", "c", "d"):
        write_audio(d / "audio" / f"{name}.wav")
    rows = [
        rec("r1", "audio/a.wav"),
        rec("r2", "audio/b.wav", question="Which sound comes first?\nListen to the start.",
            choices=["dog barking", "A car horn", "3. rain", "bird (song)", "siren", "whistle, loud"], answer=5,
            subset="cqa", question_type=""),
        rec("r3", "audio/c.wav", choices=["yes", "no"], answer=0, subset="bqa"),
        rec("r4", "audio/d.wav", answer=None, split="eval"),
    ]
    p = d / "records.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def essentials(r: AQARecord):
    return (r.id, r.question, r.choices, r.answer, r.subset, r.question_type, r.split, r.audio_path)


def test_export_layout(records_file):
    recs, _ = read_records(records_file)
    row = to_interchange(recs[0], "swift")
    assert row["messages"] == [
        {"role": "user", "content": "<audio>" + question_text(recs[0].question, recs[0].choices)},
        {"role": "assistant", "content": "B"}]
    assert row["audios"] == [str((records_file.parent / "audio" / "a.wav").resolve())]
    assert os.path.isabs(row["audios"][0])
    assert {k: row[k] for k in ("id", "subset", "question_type", "source", "split")} == {
        "id": "r1", "subset": "tsqa", "question_type": "counting", "source": "test", "split": "dev"}
    assert "meta" not in row
    # Unlabelled: no assistant turn for ms-swift; an empty one for LLaMA-Factory, which skips
    # odd-length conversations.
    assert [m["role"] for m in to_interchange(recs[3], "swift")["messages"]] == ["user"]
    assert to_interchange(recs[3], "llamafactory")["messages"][1] == {"role": "assistant", "content": ""}


@pytest.mark.parametrize("fmt", ["swift", "llamafactory"])
def test_round_trip(records_file, tmp_path, fmt):
    recs, _ = read_records(records_file)
    out, n = export_records(recs, tmp_path / "out" / "x.jsonl", fmt)
    assert n == 4
    back, errors = import_file(out)
    assert not errors
    assert [essentials(r) for r in back] == [essentials(r) for r in recs]
    assert back[3].answer is None and back[3].split == "eval"


def test_cli_round_trip_relative_paths(records_file, tmp_path, capsys):
    ex = records_file.parent / "export" / "lf.jsonl"
    assert main(["data", "export", str(records_file), "--format", "llamafactory", "-o", str(ex),
                 "--relative-paths"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {ex}" in out and "dataset_info.json" in out
    assert json.loads(ex.read_text().splitlines()[0])["audios"] == [os.path.join("..", "audio", "a.wav")]
    again = records_file.parent / "again.jsonl"
    assert main(["data", "import", str(ex), "-o", str(again), "--subset", "mine"]) == 0
    back, errors = read_records(again)  # audio under the output's folder: written relative
    assert not errors and [r.audio for r in back][0] == os.path.join("audio", "a.wav")
    orig, _ = read_records(records_file)
    assert [r.subset for r in back] == ["mine"] * 4
    assert [(r.question, r.choices, r.answer, r.audio_path) for r in back] == \
        [(r.question, r.choices, r.answer, r.audio_path) for r in orig]


def test_import_reports_bad_lines_and_skips_them(tmp_path, capsys):
    good = {"messages": [{"role": "user", "content": "<audio>What is it?\nOptions:\nA. dog\nB. cat\n"
                                                      "Answer with the option's letter from the given choices directly."},
                         {"role": "assistant", "content": "The answer is B"}],
            "audios": ["clip.wav"]}
    rows = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "messages": [{"role": "user", "content": "<audio>What is it? dog or cat"},
                                         {"role": "assistant", "content": "A"}]}),
        json.dumps({**good, "messages": [good["messages"][0], {"role": "assistant", "content": "a horse"}]}),
        json.dumps({**good, "audios": ["x.wav", "y.wav"]}),
        json.dumps({**good, "audios": []}),
        json.dumps({**good, "messages": [good["messages"][1], good["messages"][0]]}),
        json.dumps({**good, "split": "dev", "messages": good["messages"][:1]}),
    ]
    p = tmp_path / "in.jsonl"
    p.write_text("\n".join(rows) + "\n")
    recs, errors = import_file(p)
    assert [r.id for r in recs] == ["in-1"] and recs[0].answer == 1 and recs[0].choices == ["dog", "cat"]
    assert recs[0].audio_path == (tmp_path / "clip.wav").resolve() and recs[0].subset == "imported"
    assert [(e.line, e.field) for e in errors] == [
        (2, None), (3, "messages"), (4, "messages"), (5, "audios"), (6, "audios"), (7, "messages"), (8, "answer")]
    assert all(e.path == str(p) for e in errors)
    assert "a horse" in str(errors[2])

    out = tmp_path / "recs.jsonl"
    assert main(["data", "import", str(p), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{p}:3: field 'messages'" in err and f"{p}:5: field 'audios'" in err
    assert len(out.read_text().splitlines()) == 1
    assert main(["data", "import", str(p), "-o", str(out), "--strict"]) == 1
    assert main(["data", "import", str(tmp_path / "missing.jsonl"), "-o", str(out)]) == 2


def test_sharegpt_spelling_and_system_turn(tmp_path):
    row = {"conversations": [{"from": "system", "value": "be brief"},
                             {"from": "human", "value": "Which?\nA. x\nB. y\nC. z"},
                             {"from": "gpt", "value": "C. z"}],
           "audios": ["/data/clip.wav"]}
    r = from_interchange(row, path=tmp_path / "f.jsonl", line=3)
    assert (r.question, r.choices, r.answer, r.id) == ("Which?", ["x", "y", "z"], 2, "f-3")
    assert str(r.audio_path) == os.path.realpath("/data/clip.wav")
    with pytest.raises(RecordError):
        from_interchange({"messages": [{"role": "user", "content": "<audio><audio>Q\nA. x\nB. y"}],
                          "audios": ["a.wav"]})


def test_parse_user_text_takes_the_last_lettered_run():
    text = question_text("Listen.\nA. is not an option here\nWhat is it?", ["dog", "B. cat"])
    q, choices, tail = parse_user_text(text)
    assert q == "Listen.\nA. is not an option here\nWhat is it?" and choices == ["dog", "B. cat"]
    assert tail.startswith("Answer with")
    with pytest.raises(ValueError):
        parse_user_text("What?\nA. only one")


def test_llamafactory_info_matches_rows(records_file):
    recs, _ = read_records(records_file)
    row = to_interchange(recs[0], "llamafactory")
    cols, tags = LLAMAFACTORY_DATASET_INFO["columns"], LLAMAFACTORY_DATASET_INFO["tags"]
    assert cols["messages"] in row and cols["audios"] in row
    assert {m["role"] for m in row["messages"]} == {tags["user_tag"], tags["assistant_tag"]}
