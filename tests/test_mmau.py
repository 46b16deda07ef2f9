"""The MMAU converter on the real test-mini file and on small hand-made items."""

import json
from collections import Counter

import pytest

from aqa.cli import main
from aqa.data.sources.mmau import audio_location, convert_mmau
from aqa.data.records import read_records
from aqa.data.text import normalise_option
from conftest import MMAU_JSON, write_audio

pytestmark = pytest.mark.skipif(not MMAU_JSON.is_file(), reason=f"{MMAU_JSON} not present")


@pytest.fixture(scope="module")
def items() -> list[dict]:
    return json.loads(MMAU_JSON.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return convert_mmau(MMAU_JSON, tmp_path_factory.mktemp("audio"), show_progress=False)


def test_all_items_convert(items, report):
    assert len(items) == 1000 and report.inputs == 1000
    assert len(report.records) == 1000 and not report.errors
    assert report.subset_counts() == {"mmau-music": 334, "mmau-sound": 333, "mmau-speech": 333}
    assert [r.id for r in report.records] == sorted(x["id"] for x in items)
    assert all(r.source == "mmau" and r.split == "test-mini" for r in report.records)


def test_answer_index_points_at_answer_text(items, report):
    src = {x["id"]: x for x in items}
    for r in report.records:
        x = src[r.id]
        assert r.choices[r.answer] == normalise_option(x["answer"])
        # Every original option equal to the answer lands on the stored answer index.
        index_of = r.meta.get("choice_index_of", list(range(len(x["choices"]))))
        hits = [index_of[i] for i, c in enumerate(x["choices"]) if c == x["answer"]]
        assert hits and set(hits) == {r.answer}
        assert 2 <= len(r.choices) <= 8 and len(set(r.choices)) == len(r.choices)


def test_meta_keeps_source_fields(items, report):
    src = {x["id"]: x for x in items}
    for r in report.records:
        x = src[r.id]
        assert r.subset == f"mmau-{x['task']}"
        assert r.meta["original_id"] == x["id"] and r.meta["audio_id"] == x["audio_id"]
        assert r.meta["original_choices"] == x["choices"] and r.meta["original_answer"] == x["answer"]
        assert r.meta["difficulty"] == x["difficulty"] and r.meta["dataset"] == x["dataset"]
        assert r.meta["sub-category"] == x["sub-category"] == r.question_type
        cat = x["category"]
        assert r.meta["category"] == (cat[0] if isinstance(cat, list) else cat)
        assert r.question == r.question.strip()


def test_traps_of_the_real_file(report):
    notes = report.note_counts()
    assert notes["duplicate-choices-merged"] == 27 and notes["category-was-list"] == 13
    recs = {r.id: r for r in report.records}
    r = recs["93c1c06a-ef2f-4112-8ffe-7c7f3154dcde"]  # ["five", "one", "five", "zero"], answer "one"
    assert r.choices == ["five", "one", "zero"] and r.answer == 1 and r.meta["choice_index_of"] == [0, 1, 0, 2]
    # "F. Scott Fitzgerald" is an option's text, never option F.
    assert any("F. Scott Fitzgerald" in r.choices for r in report.records)
    # Where only the answer lacked a sentence period, no option keeps one now.
    for r in report.records:
        if r.meta["original_answer"] == "Sexual harassment and assault":
            assert not any(c.endswith(".") for c in r.choices)
    assert any("Washington D.C." in r.choices for r in report.records)


def test_missing_audio_reported_not_fatal(report):
    assert len(report.missing_audio) == 1000 and report.missing_audio == sorted(report.missing_audio)
    assert "audio missing: 1000 (e.g. " in report.summary()
    assert not report.flagged()  # absent audio is reported, never a record flag


def test_audio_root_forms(tmp_path):
    audio_id = "./test-mini-audios/x.wav"
    assert audio_location(audio_id, tmp_path) == "test-mini-audios/x.wav"
    assert audio_location(audio_id, tmp_path / "test-mini-audios") == "x.wav"
    write_audio(tmp_path / "flat" / "x.wav")
    assert audio_location(audio_id, tmp_path / "flat") == "x.wav"


def small(tmp_path, items):
    p = tmp_path / "mini.json"
    p.write_text(json.dumps(items))
    return p


ITEM = {"id": "a1", "audio_id": "./test-mini-audios/a1.wav", "question": " What? ", "choices": ["x", "y"],
        "answer": "y", "dataset": "d", "task": "sound", "split": "test-mini", "category": "c",
        "sub-category": "s", "difficulty": "easy"}


def test_bad_items_skipped_and_audio_present(tmp_path):
    write_audio(tmp_path / "audio" / "test-mini-audios" / "a1.wav")
    bad = [dict(ITEM, id="b1", answer="z"), dict(ITEM, id="b2", choices=["x", "x"], answer="x"),
           {k: v for k, v in ITEM.items() if k != "question"} | {"id": "b3"},
           dict(ITEM, id="b4", audio_id="../../etc/passwd"), "not an object"]
    rep = convert_mmau(small(tmp_path, [ITEM, *bad]), tmp_path / "audio", show_progress=False)
    assert [r.id for r in rep.records] == ["a1"] and rep.records[0].question == "What?"
    assert not rep.missing_audio and "defects" not in rep.records[0].meta
    assert Counter(e["kind"] for e in rep.errors) == {
        "answer-matches-no-choice": 1, "too-few-choices": 1, "missing-field": 1, "audio-outside-root": 1,
        "not-an-object": 1}


def test_cli(tmp_path, capsys):
    out = tmp_path / "data" / "mmau.jsonl"
    audio = tmp_path / "audio"
    audio.mkdir()
    assert main(["data", "mmau", str(MMAU_JSON), "--audio-root", str(audio), "-o", str(out),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "1000 records" in text and "mmau-music 334" in text and "audio missing: 1000" in text
    assert str(out) in text
    recs, errs = read_records(out, root=tmp_path)
    assert not errs and len(recs) == 1000
    assert recs[0].audio_path.parent == (audio / "test-mini-audios").resolve()
    first = out.read_bytes()
    assert main(["data", "mmau", str(MMAU_JSON), "--audio-root", str(audio), "-o", str(out),
                 "--no-progress"]) == 0
    assert out.read_bytes() == first
    report = json.loads((out.parent / "mmau.report.json").read_text())
    assert report["records"] == 1000 and report["missing_audio"] == 1000
    assert main(["data", "mmau", str(tmp_path / "none.json"), "-o", str(out)]) == 2


def test_a_non_utf8_byte_names_the_file_and_offset(tmp_path, capsys):
    p = tmp_path / "mini.json"
    p.write_bytes(json.dumps([ITEM]).encode().replace(b"What?", b"Wh\xe9t?"))
    assert main(["data", "mmau", str(p), "-o", str(tmp_path / "o.jsonl")]) == 2
    out = capsys.readouterr().out
    assert f"{p}: not valid UTF-8 (byte 0xe9 at offset" in out
