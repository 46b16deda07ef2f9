"""The DCASE 2025 Task 5 converter on a small folder in the official layout that holds every
defect the real data has."""

import json
from pathlib import Path

import pytest

from aqa.cli import main
from aqa.data.audio import load_audio
from aqa.data.convert import sniff_audio_format
from aqa.data.sources.dcase2025 import convert_dcase2025, locate_questions, subset_for_audio
from aqa.data.records import read_records
from conftest import audio_bytes, tone, write_audio

QDIR = "dcase_2025_question_path"
ADIR = "local_audio_path"

# file stem -> (question JSON, how its audio is made: "wav", "mp3", "text", None = no file)
DEV = {
    "q01": ({"id": "dev_0001", "question": "How many barks?", "choice": ["A. 1", "B. 2", "C. 3", "D. 4"],
             "answer": "B. 2", "audio_url": "fold1-a-0001.wav", "question_type": "counting"}, "wav"),
    "q02": ({"id": "dev_0002", "question": "What sound?",
             "choice": ["A. dog barking,", "B. cat", "C. rain", "D. wind"],
             "answer": "A. dog barking", "audio_url": "audio-0001.wav", "question_type": "cqa"}, "wav"),
    "q03": ({"id": "dev_0003", "question": "Is a bird singing?", "choice": ["A. yes", "B. no"],
             "answer": "B. no", "audio_url": "bird_0001.wav", "question_type": "bqa"}, "wav"),
    "q04": ({"id": "dev_0004", "question": "Which?", "choice": ["A. x", "B. y", "C. z"],
             "answer": "C. z", "audio_url": "audio-0002.wav", "question_type": "cqa"}, "wav"),
    # letter says B, text is C's
    "q05": ({"id": "dev_0005", "question": "How many?", "choice": ["A. one", "B. two", "C. three"],
             "answer": "B. three", "audio_url": "fold2-b-0002.wav", "question_type": "counting"}, "wav"),
    # names no option at all: skipped
    "q06": ({"id": "dev_0006", "question": "What?", "choice": ["A. dog", "B. cat"],
             "answer": "E. thunder", "audio_url": "audio-0003.wav", "question_type": "cqa"}, "wav"),
    # MP3 bytes in a file named .wav
    "q07": ({"id": "dev_0007", "question": "Loud?", "choice": ["A. yes", "B. no"],
             "answer": "A. yes", "audio_url": "audio-0004.wav", "question_type": "cqa"}, "mp3"),
    "q08": ({"id": "dev_0008", "question": "Missing?", "choice": ["A. yes", "B. no"],
             "answer": "A. yes", "audio_url": "fold3-c-0003.wav", "question_type": "counting"}, None),
    # leaves the dataset root
    "q09": ({"id": "dev_0009", "question": "Outside?", "choice": ["A. yes", "B. no"],
             "answer": "A. yes", "audio_url": "../../../outside.wav", "question_type": "x"}, None),
    # a text file named .wav: only decoding (--check-audio) tells
    "q10": ({"id": "dev_0010", "question": "Text?", "choice": ["A. yes", "B. no"],
             "answer": "B. no", "audio_url": "whale_0001.wav", "question_type": "bqa"}, "text"),
    # the letter names an option, the text none: kept with the letter's index, flagged
    "q11": ({"id": "dev_0011", "question": "Which?", "choice": ["A. owl", "B. crow"],
             "answer": "A. eagle", "audio_url": "owl_0001.wav", "question_type": "bqa"}, "wav"),
}
EVAL = {
    "e1": ({"id": "eval_0002", "question": "Q?", "choice": ["A. a", "B. b", "C. c"],
            "audio_url": "fold9-a-0001.wav", "question_type": "t"}, "wav"),
    "e2": ({"id": "eval_0001", "question": "Q?", "choice": ["A. a", "B. b"], "answer": None,
            "audio_url": "audio-9.wav", "question_type": "t"}, "wav"),
}
FLAGGED = {"dev_0005", "dev_0008", "dev_0011"}


def build(base: Path) -> Path:
    root = base / "ds"
    for split, items in (("dev", DEV), ("eval", EVAL)):
        qdir = root / QDIR / split
        qdir.mkdir(parents=True)
        for stem, (obj, kind) in items.items():
            obj = dict(obj)
            url = obj["audio_url"]
            if not url.startswith(".."):
                obj["audio_url"] = f"../../{ADIR}/{split}/{url}"
            (qdir / f"{stem}.json").write_text(json.dumps(obj))
            target = root / ADIR / split / url
            if kind == "wav":
                write_audio(target)
            elif kind == "mp3":
                write_audio(target, tone(1.0, 16000), 16000, fmt="MP3")
            elif kind == "text":
                target.write_text("not audio\n" * 50)
    (root / QDIR / "dev" / "q99_broken.json").write_text('{"id": "dev_0099", "question": ')
    write_audio(base / "outside.wav")
    return root


@pytest.fixture
def root(tmp_path) -> Path:
    return build(tmp_path)


def by_id(records):
    return {r.id: r for r in records}


def test_subset_from_file_name():
    assert [subset_for_audio(n) for n in ("fold1-a.wav", "x/audio-3.wav", "Fold2.wav", "bird.wav",
                                          "../y/foldx.wav")] == ["tsqa", "cqa", "tsqa", "bqa", "tsqa"]


def test_sniff_audio_format():
    assert sniff_audio_format(audio_bytes(tone(0.1), 16000, "WAV")[:16]) == "wav"
    assert sniff_audio_format(audio_bytes(tone(0.1), 16000, "MP3")[:16]) == "mp3"
    assert sniff_audio_format(audio_bytes(tone(0.1), 16000, "FLAC")[:16]) == "flac"
    assert sniff_audio_format(b"not audio at all") is None


def test_convert_dev(root):
    rep = convert_dcase2025(root, "dev", show_progress=False)
    recs = by_id(rep.records)
    assert list(recs) == sorted(recs)
    assert set(recs) == {f"dev_{i:04d}" for i in (1, 2, 3, 4, 5, 7, 8, 10, 11)}
    assert {i: r.subset for i, r in recs.items()} == {
        "dev_0001": "tsqa", "dev_0002": "cqa", "dev_0003": "bqa", "dev_0004": "cqa", "dev_0005": "tsqa",
        "dev_0007": "cqa", "dev_0008": "tsqa", "dev_0010": "bqa", "dev_0011": "bqa"}
    assert all(r.source == "dcase2025" and r.split == "dev" for r in rep.records)

    r = recs["dev_0001"]
    assert r.choices == ["1", "2", "3", "4"] and r.answer == 1 and r.question_type == "counting"
    assert "defects" not in r.meta and "notes" not in r.meta

    r = recs["dev_0002"]  # stray comma
    assert r.choices == ["dog barking", "cat", "rain", "wind"] and r.answer == 0
    assert r.meta["original_choices"][0] == "A. dog barking," and r.meta["original_answer"] == "A. dog barking"
    assert r.meta["notes"] == ["stray-trailing-punctuation"] and "defects" not in r.meta

    assert len(recs["dev_0003"].choices) == 2 and recs["dev_0003"].answer == 1
    assert recs["dev_0004"].choices == ["x", "y", "z"] and recs["dev_0004"].answer == 2

    r = recs["dev_0005"]  # letter/text disagreement: flagged, letter's index kept, both candidates
    assert r.answer == 1 and r.meta["defects"] == ["answer-letter-text-mismatch"]
    assert r.meta["answer_candidates"] == {"letter": 1, "text": 2}

    r = recs["dev_0007"]  # MP3 named .wav
    assert r.meta["audio_format"] == "mp3" and "audio-format-mismatch" in r.meta["notes"]
    assert "defects" not in r.meta and load_audio(r.audio_path).format == "MP3"

    assert recs["dev_0008"].meta["defects"] == ["audio-missing"] and rep.missing_audio == ["dev_0008"]
    assert "defects" not in recs["dev_0010"].meta  # no decoding by default
    assert recs["dev_0011"].answer == 0 and recs["dev_0011"].meta["defects"] == ["answer-text-matches-no-choice"]

    errors = {e["kind"]: e for e in rep.errors}
    assert set(errors) == {"answer-matches-no-choice", "audio-outside-root", "bad-json"}
    assert errors["answer-matches-no-choice"]["id"] == "dev_0006"
    assert errors["audio-outside-root"]["id"] == "dev_0009"
    assert errors["bad-json"]["file"].endswith("q99_broken.json")
    assert rep.inputs == 12 and rep.flagged() == len(FLAGGED)
    assert rep.defect_counts() == {"answer-letter-text-mismatch": 1, "answer-text-matches-no-choice": 1,
                                   "audio-missing": 1}


def test_check_audio_decodes(root):
    recs = by_id(convert_dcase2025(root, "dev", check_audio=True, show_progress=False).records)
    assert recs["dev_0010"].meta["defects"] == ["audio-not-audio"]
    assert "defects" not in recs["dev_0007"].meta  # MP3 content decodes fine


def test_allow_outside_root(root):
    rep = convert_dcase2025(root, "dev", allow_outside_root=True, show_progress=False)
    r = by_id(rep.records)["dev_0009"]
    assert r.audio_path == (root.parent / "outside.wav").resolve() and "defects" not in r.meta
    assert "audio-outside-root" not in {e["kind"] for e in rep.errors}


def test_root_may_be_the_question_folder(root):
    a = convert_dcase2025(root, "dev", show_progress=False)
    b = convert_dcase2025(root / QDIR, "dev", show_progress=False)
    c = convert_dcase2025(root / QDIR / "dev", "dev", show_progress=False)
    assert [r.to_dict() for r in a.records] == [r.to_dict() for r in b.records] == [r.to_dict() for r in c.records]
    assert locate_questions(root / QDIR, "dev") == (root / QDIR / "dev", root)
    with pytest.raises(FileNotFoundError):
        locate_questions(root, "train")


def test_eval_has_no_answers(root):
    rep = convert_dcase2025(root, "eval", show_progress=False)
    assert [r.id for r in rep.records] == ["eval_0001", "eval_0002"]
    assert all(r.answer is None and r.split == "eval" for r in rep.records)
    assert [r.subset for r in rep.records] == ["cqa", "tsqa"] and not rep.errors


def test_duplicate_ids_reported(root):
    obj = dict(DEV["q01"][0], audio_url=f"../../{ADIR}/dev/fold1-a-0001.wav")
    (root / QDIR / "dev" / "q00_dup.json").write_text(json.dumps(obj))
    rep = convert_dcase2025(root, "dev", show_progress=False)
    assert [r.id for r in rep.records].count("dev_0001") == 1
    (dup,) = [e for e in rep.errors if e["kind"] == "duplicate-id"]
    assert dup["file"].endswith("q01.json")  # the first file by path is kept


def test_cli_writes_readable_deterministic_output(root, tmp_path, capsys):
    out = tmp_path / "out" / "dev.jsonl"
    assert main(["data", "dcase2025", str(root), "--split", "dev", "-o", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "9 records" in text and "tsqa 3" in text and "answer-letter-text-mismatch 1" in text
    assert "bad-json 1" in text and "audio missing: 1" in text and str(out) in text
    first = out.read_bytes()
    recs, errs = read_records(out, root=tmp_path)
    assert not errs and len(recs) == 9
    assert all(not Path(r.audio).is_absolute() and r.audio.startswith("..") for r in recs)
    assert by_id(recs)["dev_0002"].audio_path == (root / ADIR / "dev" / "audio-0001.wav").resolve()
    report = json.loads(out.with_name("dev.report.json").read_text())
    assert report["records"] == 9 and report["skipped"]["bad-json"] == 1
    assert report["missing_audio_ids"] == ["dev_0008"]

    assert main(["data", "dcase2025", str(root), "--split", "dev", "-o", str(out), "--no-progress"]) == 0
    assert out.read_bytes() == first


def test_cli_drop_flagged(root, tmp_path, capsys):
    out = tmp_path / "dev_clean.jsonl"
    assert main(["data", "dcase2025", str(root), "--split", "dev", "-o", str(out), "--drop-flagged",
                 "--no-progress"]) == 0
    assert "dropped (--drop-flagged): 3" in capsys.readouterr().out
    recs, errs = read_records(out, root=tmp_path)
    assert not errs and {r.id for r in recs} == {f"dev_{i:04d}" for i in (1, 2, 3, 4, 7, 10)}
    assert not FLAGGED & {r.id for r in recs}


def test_cli_eval_and_errors(root, tmp_path, capsys):
    out = tmp_path / "eval.jsonl"
    assert main(["data", "dcase2025", str(root / QDIR), "--split", "eval", "-o", str(out),
                 "--no-progress"]) == 0
    recs, errs = read_records(out, root=tmp_path)
    assert not errs and [r.answer for r in recs] == [None, None]
    assert main(["data", "dcase2025", str(tmp_path / "nowhere"), "--split", "dev", "-o", str(out)]) == 2
    assert "no question folder" in capsys.readouterr().out
