import json
import os

import pytest

from aqa.data.records import AQARecord, RecordError, read_records, write_records


def rec(**kw):
    d = {"id": "r1", "audio": "a.wav", "question": "Q?", "choices": ["x", "y", "z"], "answer": 1,
         "subset": "tsqa", "question_type": "t", "source": "s", "split": "dev", "meta": {}}
    d.update(kw)
    return d


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_roundtrip(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"x")
    p = write_lines(tmp_path / "d.jsonl", [rec(), rec(id="r2", answer=0)])
    recs, errs = read_records(p)
    assert not errs and [r.id for r in recs] == ["r1", "r2"]
    assert recs[0].audio_path == (tmp_path / "a.wav").resolve()
    out = tmp_path / "sub" / "copy.jsonl"
    write_records(out, recs, relative_to=out.parent)
    again, errs = read_records(out, root=tmp_path)
    assert not errs and [r.to_dict() | {"audio": ""} for r in again] == [r.to_dict() | {"audio": ""} for r in recs]
    assert again[0].audio == os.path.join("..", "a.wav")


@pytest.mark.parametrize("bad,field", [
    (rec(answer=3), "answer"),
    (rec(answer="B"), "answer"),
    (rec(answer=None), "answer"),
    (rec(choices=["only"]), "choices"),
    (rec(choices=["a", "a"]), "choices"),
    ({k: v for k, v in rec().items() if k != "question"}, "question"),
    (rec(meta=[1]), "meta"),
    (rec(rationale=["I hear", "a dog"]), "rationale"),
    (rec(rationale=3), "rationale"),
])
def test_errors_name_file_line_field(tmp_path, bad, field):
    p = write_lines(tmp_path / "d.jsonl", [rec(id="ok"), bad])
    recs, errs = read_records(p)
    assert [r.id for r in recs] == ["ok"]
    (e,) = errs
    assert e.line == 2 and e.field == field and e.path == str(p)
    assert str(p) in str(e) and f"'{field}'" in str(e)


def test_bad_json_line_is_reported_and_skipped(tmp_path):
    p = write_lines(tmp_path / "d.jsonl", [rec(), "{not json", rec(id="r3")])
    recs, errs = read_records(p)
    assert [r.id for r in recs] == ["r1", "r3"] and errs[0].line == 2


def test_null_answer_only_on_unlabelled_split(tmp_path):
    p = write_lines(tmp_path / "d.jsonl", [rec(answer=None, split="eval"), rec(id="r2", answer=None)])
    recs, errs = read_records(p)
    assert [r.id for r in recs] == ["r1"] and not recs[0].labelled
    assert errs[0].field == "answer"
    recs, errs = read_records(p, require_answer=False)
    assert len(recs) == 2


def test_paths_outside_root_refused(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    outside = tmp_path / "secret.wav"
    outside.write_bytes(b"x")
    (root / "link.wav").symlink_to(outside)
    p = write_lines(root / "d.jsonl", [rec(id="a", audio="../../../etc/passwd"), rec(id="b", audio="link.wav"),
                                       rec(id="c", audio=str(outside)), rec(id="d", audio="in.wav")])
    recs, errs = read_records(p)
    assert [r.id for r in recs] == ["d"]
    assert [e.record_id for e in errs] == ["a", "b", "c"] and all(e.field == "audio" for e in errs)
    assert "outside the dataset root" in str(errs[0])
    recs, errs = read_records(p, allow_outside_root=True)
    assert len(recs) == 4 and not errs


def test_from_dict_direct():
    r = AQARecord.from_dict(rec())
    assert r.choices[r.answer] == "y"
    with pytest.raises(RecordError):
        AQARecord.from_dict("nope")


def test_rationale_is_optional_and_written_only_when_present(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"x")
    old = write_lines(tmp_path / "old.jsonl", [rec(), rec(id="r2")])
    recs, errs = read_records(old)
    assert not errs and [r.rationale for r in recs] == [None, None]
    # A file written before rationales existed is written back byte for byte.
    write_records(tmp_path / "again.jsonl", recs)
    assert (tmp_path / "again.jsonl").read_bytes() == old.read_bytes()

    p = write_lines(tmp_path / "d.jsonl", [rec(rationale="A dog barks twice.\nSo: 2."), rec(id="r2"),
                                           rec(id="r3", rationale=None)])
    recs, errs = read_records(p)
    assert not errs and [r.rationale for r in recs] == ["A dog barks twice.\nSo: 2.", None, None]
    out = write_records(tmp_path / "out.jsonl", recs)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["rationale"] == "A dog barks twice.\nSo: 2."
    assert "rationale" not in rows[1] and "rationale" not in rows[2]
    again, _ = read_records(out)
    assert [r.rationale for r in again] == [r.rationale for r in recs]

