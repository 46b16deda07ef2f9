import json
import shutil

import pytest

from aqa.cli import main
from aqa.data.check import EXIT_HARD, EXIT_OK, EXIT_UNREADABLE, check_records
from conftest import tone, write_audio


def rec(id, audio, question="What sound is it?", **kw):
    d = {"id": id, "audio": audio, "question": question, "choices": ["dog", "cat", "car"], "answer": 0,
         "subset": "bqa", "question_type": "species", "source": "test", "split": "dev", "meta": {}}
    d.update(kw)
    return d


def write_lines(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def dataset(tmp_path):
    """A dev file with one of every problem, and a train file that leaks into it."""
    d = tmp_path / "ds"
    a = write_audio(d / "audio" / "a.wav", tone(1.0, freq=440))
    write_audio(d / "audio" / "b.wav", tone(1.0, freq=660))
    write_audio(d / "audio" / "mp3_named.wav", tone(1.0, freq=880), fmt="MP3")
    shutil.copy(a, d / "audio" / "a_copy.wav")
    write_audio(d / "audio" / "long.wav", tone(31.0, 8000, freq=200), 8000)
    (d / "audio" / "notes.wav").write_bytes(b"plain text, not audio\n" * 10)
    dev = write_lines(d / "dev.jsonl", [
        rec("r1", "audio/a.wav"),
        rec("r2", "audio/b.wav", question="How many times does it bark?", subset="tsqa",
            question_type="counting", meta={"defects": ["trailing-comma: option 2 'cat,'"]}),
        rec("r3", "audio/mp3_named.wav", meta={"defects": [{"kind": "answer-mismatch", "detail": "B vs C"}]}),
        rec("r4", "audio/a_copy.wav", question="Is it a dog?"),
        rec("r5", "audio/long.wav", subset="cqa", question_type=""),
        rec("r6", "audio/notes.wav"),
        rec("r7", "audio/gone.wav"),
        rec("r1", "audio/b.wav", question="Another question"),
        rec("r8", "audio/a.wav", answer=5),
        "{broken json",
        rec("r9", "audio/a.wav", question="what  sound is IT?"),
    ])
    (d / "train_audio").mkdir()
    shutil.copy(d / "audio" / "b.wav", d / "train_audio" / "renamed.wav")
    write_audio(d / "train_audio" / "fresh.wav", tone(1.0, freq=330))
    train = write_lines(d / "train.jsonl", [
        rec("t1", "train_audio/renamed.wav", question="How many times does it bark?"),
        rec("t2", "train_audio/renamed.wav", question="What animal is it?"),
        rec("t3", "train_audio/fresh.wav"),
    ])
    clean = write_lines(d / "clean.jsonl", [rec("c1", "audio/a.wav"), rec("c2", "audio/b.wav", answer=None,
                                                                           split="eval")])
    return {"dir": d, "dev": dev, "train": train, "clean": clean}


def test_report_finds_every_problem(dataset):
    d = dataset["dir"]
    rep = check_records(dataset["dev"], against=dataset["train"])
    assert rep.n_records == 9 and rep.n_labelled == 9
    # Invalid lines, with file and line: the out-of-range answer and the broken JSON.
    assert [(e["line"], e["field"]) for e in rep.invalid] == [(9, "answer"), (10, None)]
    assert all(e["file"] == str(dataset["dev"]) for e in rep.invalid)
    assert rep.duplicate_ids == {"r1": [1, 8]}
    assert rep.hard_errors == 3
    assert rep.subsets == {"bqa": 7, "cqa": 1, "tsqa": 1}
    assert rep.question_types["tsqa"] == {"counting": 1} and rep.question_types["cqa"] == {"": 1}
    assert rep.n_choices == {"3": 9} and rep.answer_letters == {"A": 9}
    # Both spellings of a converter's defect list.
    assert rep.defects == {"answer-mismatch": ["r3"], "trailing-comma": ["r2"]}
    assert {x["id"] for x in rep.defect_details} == {"r2", "r3"}
    # Undecodable audio, by file and AudioError kind; the MP3 named .wav decodes fine.
    errs = {e["file"].rsplit("/", 1)[-1]: e for e in rep.audio_errors}
    assert set(errs) == {"notes.wav", "gone.wav"}
    assert errs["notes.wav"]["kind"] == "not-audio" and errs["notes.wav"]["ids"] == ["r6"]
    assert errs["gone.wav"]["kind"] == "missing"
    assert [(c["ids"], c["duration"]) for c in rep.long_clips] == [(["r5"], pytest.approx(31.0))]
    # a.wav and a_copy.wav are the same bytes under two names.
    (dup,) = rep.duplicate_audio
    assert [f.rsplit("/", 1)[-1] for f in dup["files"]] == ["a.wav", "a_copy.wav"]
    assert sorted(dup["ids"]) == ["r1", "r4", "r9"]
    # r9 asks r1's question (modulo case and spaces) about the same clip.
    assert [sorted(g["ids"]) for g in rep.duplicate_items] == [["r1", "r9"]]
    # Leakage: b.wav was copied into train under another name; one question repeats.
    (leak,) = rep.leaked_audio
    assert leak["other_files"] == [str((d / "train_audio" / "renamed.wav").resolve())]
    assert sorted(leak["ids"]) == ["r1", "r2"] and leak["other_ids"] == ["t1", "t2"]
    assert [(g["ids"], g["other_ids"]) for g in rep.leaked_questions] == [(["r2"], ["t1"])]
    assert rep.exit_code() == EXIT_HARD


def test_clean_file_and_unlabelled_split(dataset):
    rep = check_records(dataset["clean"])
    assert rep.hard_errors == 0 and rep.warnings == 0 and rep.n_labelled == 1
    assert rep.exit_code(strict=True) == EXIT_OK


def test_cli_exit_codes_and_json(dataset, tmp_path, capsys):
    out = tmp_path / "reports" / "dev.json"
    rc = main(["data", "check", str(dataset["dev"]), "--against", str(dataset["train"]), "--json", str(out)])
    assert rc == EXIT_HARD
    text = capsys.readouterr().out
    assert "duplicate ids" in text and "r1: lines 1, 8" in text and "not-audio" in text
    assert "trailing-comma (1): r2" in text and "audio shared by content: 1 clip(s)" in text
    assert f"{dataset['dev']}:9: field 'answer'" in text
    rep = json.loads(out.read_text())
    assert rep["hard_errors"] == 3 and rep["duplicate_ids"] == {"r1": [1, 8]}
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, nothing left behind

    assert main(["data", "check", str(dataset["clean"])]) == EXIT_OK
    assert main(["data", "check", str(dataset["dir"] / "nope.jsonl")]) == EXIT_UNREADABLE


def test_warnings_only_pass_unless_strict(dataset):
    d = dataset["dir"]
    warn = write_lines(d / "warn.jsonl", [rec("w1", "audio/a.wav"), rec("w2", "audio/a_copy.wav"),
                                          rec("w3", "audio/notes.wav", meta={"defects": ["odd"]})])
    assert main(["data", "check", str(warn)]) == EXIT_OK
    assert main(["data", "check", str(warn), "--strict"]) == EXIT_HARD


def test_no_audio_hashes_but_does_not_decode(dataset):
    rep = check_records(dataset["dev"], decode_audio=False)
    assert not rep.decoded_audio and rep.long_clips == []
    assert [e["kind"] for e in rep.audio_errors] == ["missing"]  # notes.wav is only hashed
    assert len(rep.duplicate_audio) == 1  # hashing still finds the copy


def test_an_empty_file_is_not_ok(tmp_path, capsys):
    from aqa.cli import main

    p = tmp_path / "empty.jsonl"
    p.write_text("\n")
    assert main(["data", "check", str(p)]) == 1
    out = capsys.readouterr().out
    assert "no usable record in the file" in out and "FAILED: 1 hard error(s)" in out


# --------------------------------------------------------------------------- issue 22, item 1
# A training rationale that repeats an evaluation item's reference reasoning.

def words(prefix: str, n: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


SHARED = words("shared", 25)
TEMPLATE = words("stock", 22)  # a stock opening, as a reasoning style repeats it


@pytest.fixture
def rationale_files(tmp_path):
    d = tmp_path / "rat"
    for i in range(10):
        write_audio(d / "audio" / f"{i}.wav", tone(0.5, freq=200 + 50 * i))
    for i in range(4):  # the evaluation file's own clips: no audio leak beside the rationales
        write_audio(d / "audio" / f"e{i}.wav", tone(0.5, freq=1000 + 50 * i))
    train = write_lines(d / "train.jsonl", [
        rec("t1", "audio/0.wav", rationale="I hear a DOG, barking twice!"),
        rec("t2", "audio/1.wav", rationale=f"{words('tra', 7)} {SHARED} {words('trb', 9)}"),
        rec("t3", "audio/2.wav", rationale=f"{words('trc', 3)} {words('shared', 19)} {words('trd', 3)}"),
        rec("t4", "audio/3.wav"),
        *(rec(f"s{i}", f"audio/{4 + i}.wav", rationale=f"{TEMPLATE} {words(f'own{i}x', 5)}") for i in range(6)),
    ])
    ev = write_lines(d / "eval.jsonl", [
        rec("e1", "audio/e0.wav", question="Other question", rationale="i hear a dog barking twice"),
        # An evaluation converter keeps the item's reasoning in meta, out of any target.
        rec("e2", "audio/e1.wav", question="Other question",
            meta={"reference_reasoning": f"{words('eva', 4)} {SHARED} {words('evb', 30)}"}),
        rec("e3", "audio/e2.wav", question="Other question", rationale=f"{words('evc', 2)} {words('shared', 19)}"),
        # The template, then the word s0 has after it: one word past a template is no leak.
        rec("e4", "audio/e3.wav", question="Other question", rationale=f"{TEMPLATE} own0x0 {words('eve', 8)}"),
    ])
    return train, ev


def test_against_flags_repeated_rationales(rationale_files):
    train, ev = rationale_files
    rep = check_records(train, against=ev, decode_audio=False)
    found = {(x["id"], x["other_id"]): x for x in rep.leaked_rationales}
    # Same text once case, punctuation and spacing are set aside; a 25-word passage in common.
    # 19 words in common (t3/e3) and the template six training rationales share (s*/e4), even
    # with the word after it (s0/e4), are not leaks.
    assert sorted(found) == [("t1", "e1"), ("t2", "e2")]
    assert found["t1", "e1"]["kind"] == "same"
    assert found["t2", "e2"]["kind"] == "passage" and found["t2", "e2"]["words"] == 25
    assert found["t2", "e2"]["passage"] == SHARED
    # Each pair is a warning, as the same question on the same audio is; nothing else is wrong here.
    assert not rep.leaked_audio and rep.hard_errors == 0 and rep.warnings == 2


def test_a_template_in_few_rationales_is_still_a_passage(rationale_files, tmp_path):
    train, ev = rationale_files
    few = write_lines(tmp_path / "few.jsonl", [json.loads(x) for x in train.read_text().splitlines()
                                               if json.loads(x)["id"] in ("s0", "s1")])
    rep = check_records(few, against=ev, decode_audio=False)
    assert {(x["id"], x["other_id"], x["words"]) for x in rep.leaked_rationales} == {("s0", "e4", 23), ("s1", "e4", 22)}


def test_cli_names_both_files_and_ids_per_pair(rationale_files, tmp_path, capsys):
    train, ev = rationale_files
    out = tmp_path / "report.json"
    assert main(["data", "check", str(train), "--against", str(ev), "--no-audio", "--json", str(out)]) == EXIT_OK
    text = capsys.readouterr().out
    assert "rationale repeating a reference reasoning there: 2 pair(s)" in text
    assert f"{train}: t1 ~ {ev}: e1: same rationale" in text
    assert f"{train}: t2 ~ {ev}: e2: 25 words in common" in text
    rep = json.loads(out.read_text())
    assert len(rep["leaked_rationales"]) == 2 and rep["warnings"] == 2
    assert main(["data", "check", str(train), "--against", str(ev), "--no-audio", "--strict"]) == EXIT_HARD
