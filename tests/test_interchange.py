import json
import os

import pytest

from aqa.cli import main
from aqa.data.sources.interchange import (LLAMAFACTORY_DATASET_INFO, export_records, from_interchange, import_file,
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


# --------------------------------------------------------------------------- issue 16, items 12-14
# Each client example below is written by hand in the shape the client documents (the source
# is named beside it), with multiple-choice content so that it becomes a record.

MC_USER = "<audio>Which sound is heard?\nA. dog barking\nB. car horn\nC. rain"


def audio_folder(tmp_path):
    d = tmp_path / "client"
    write_audio(d / "clips" / "1.wav")
    write_audio(d / "clips" / "2.wav")
    return d


def client_examples(d):
    """(name, file name, content) per documented shape."""
    return [
        # ms-swift Custom-dataset.md, "Multimodal", Supervised Fine-tuning: messages + audios list.
        ("swift-messages", "swift.jsonl", [
            {"messages": [{"role": "user", "content": MC_USER}, {"role": "assistant", "content": "B"}],
             "audios": [str(d / "clips" / "1.wav")]},
            {"messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": MC_USER},
                          {"role": "assistant", "content": "C"}], "audios": [str(d / "clips" / "2.wav")]}]),
        # ms-swift: "audio" is accepted for "audios", and a lone string for a list.
        ("swift-audio-key", "swift_audio.jsonl", [
            {"messages": [{"role": "user", "content": MC_USER}, {"role": "assistant", "content": "A"}],
             "audio": "clips/1.wav"}]),
        # ms-swift Custom-dataset.md, "ShareGPT format": system + conversation of human/assistant pairs.
        ("swift-sharegpt", "swift_sharegpt.jsonl", [
            {"system": "You are helpful.", "conversation": [{"human": MC_USER, "assistant": "B"}],
             "audios": ["clips/2.wav"]}]),
        # LLaMA-Factory data/mllm_audio_demo.json: one JSON array, OpenAI-style role/content tags.
        ("llamafactory-openai", "mllm_audio.json", [
            {"messages": [{"content": MC_USER, "role": "user"}, {"content": "A", "role": "assistant"}],
             "audios": ["clips/1.wav"]},
            {"messages": [{"content": MC_USER, "role": "user"}, {"content": "C", "role": "assistant"}],
             "audios": ["clips/2.wav"]}]),
        # LLaMA-Factory data/README.md, "Sharegpt Format": conversations with from/value, human/gpt.
        ("llamafactory-sharegpt", "sharegpt.json", [
            {"conversations": [{"from": "human", "value": MC_USER}, {"from": "gpt", "value": "B"}],
             "system": "system prompt (optional)", "audios": ["clips/2.wav"]}]),
    ]


def write_example(d, fname, rows):
    p = d / fname
    if fname.endswith(".json"):
        p.write_text(json.dumps(rows, indent=2))  # a JSON array, as LLaMA-Factory's demo files are
    else:
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.mark.parametrize("name", [c[0] for c in client_examples(__import__("pathlib").Path("/x"))])
def test_client_example_round_trips(tmp_path, name):
    d = audio_folder(tmp_path)
    _, fname, rows = next(c for c in client_examples(d) if c[0] == name)
    p = write_example(d, fname, rows)
    recs, errors = import_file(p)
    assert not errors and len(recs) == len(rows)
    letters = {"A": 0, "B": 1, "C": 2}
    for r, row in zip(recs, rows):
        assert r.question == "Which sound is heard?" and r.choices == ["dog barking", "car horn", "rain"]
        turns = row.get("messages") or row.get("conversations") or row["conversation"]
        last = turns[-1]
        reply = last.get("content", last.get("value", last.get("assistant")))
        assert r.answer == letters[reply]
        assert r.audio_path.is_file()
    for fmt in ("swift", "llamafactory"):
        out, n = export_records(recs, tmp_path / f"{name}.{fmt}.jsonl", fmt)
        again, errors = import_file(out)
        assert not errors and [essentials(x)[1:] for x in again] == [essentials(x)[1:] for x in recs]


def test_import_cli_reads_a_json_array(tmp_path, capsys):
    d = audio_folder(tmp_path)
    _, fname, rows = next(c for c in client_examples(d) if c[0] == "llamafactory-openai")
    p = write_example(d, fname, rows)
    assert main(["data", "import", str(p), "-o", str(tmp_path / "out.jsonl")]) == 0
    assert "2 records" in capsys.readouterr().out


def test_import_errors_name_the_item_of_an_array(tmp_path):
    d = audio_folder(tmp_path)
    p = write_example(d, "x.json", [{"messages": [{"role": "user", "content": "<audio>no options"}],
                                     "audios": ["clips/1.wav"]}])
    recs, errors = import_file(p)
    assert not recs and str(errors[0]).startswith(f"{p}[0]: field 'messages'")


@pytest.mark.parametrize("content", ["", "\n", "not json\n", '{"messages": []}\n', "[]"])
def test_import_of_nothing_is_never_exit_0(tmp_path, capsys, content):
    p = tmp_path / "in.jsonl"
    p.write_text(content)
    assert main(["data", "import", str(p), "-o", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"aqa: error: {p}: no records") and not (tmp_path / "out.jsonl").exists()


def test_export_of_nothing_is_an_error(tmp_path, capsys):
    p = tmp_path / "in.jsonl"
    p.write_text("")
    assert main(["data", "export", str(p), "-o", str(tmp_path / "out.jsonl")]) == 2
    assert capsys.readouterr().err.strip() == f"aqa: error: {p}: no records: the file is empty"


def swift_resolves(path: str, cwd, env: dict) -> str | None:
    """ms-swift's rule (swift/template/vision_utils.py, _check_path): the path as given against
    the working directory, else joined to ROOT_IMAGE_DIR."""
    if os.path.exists(os.path.join(cwd, path)):
        return os.path.join(cwd, path)
    root = env.get("ROOT_IMAGE_DIR")
    full = os.path.join(cwd, os.path.join(root, path)) if root else None
    return full if full and os.path.exists(full) else None


def llamafactory_resolves(path: str, cwd, media_dir: str) -> str | None:
    """LLaMA-Factory's rule (src/llamafactory/data/converter.py, _find_medias): joined to
    media_dir when that is a file, else the path as given."""
    joined = os.path.join(cwd, media_dir, path)
    if os.path.isfile(joined):
        return joined
    return os.path.join(cwd, path) if os.path.isfile(os.path.join(cwd, path)) else None


@pytest.mark.parametrize("fmt", ["swift", "llamafactory"])
def test_relative_paths_resolve_from_another_folder_with_the_printed_setting(records_file, tmp_path, capsys,
                                                                            monkeypatch, fmt):
    out = tmp_path / "export" / "train.jsonl"
    assert main(["data", "export", str(records_file), "--format", fmt, "-o", str(out), "--relative-paths"]) == 0
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("relative audio paths: set "))
    setting = line.removeprefix("relative audio paths: set ").split()[0]
    elsewhere = tmp_path / "a" / "b" / "elsewhere"  # not the export's sibling: "../" must not find the data
    elsewhere.mkdir(parents=True)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    paths = [r["audios"][0] for r in rows]
    assert all(not os.path.isabs(p) for p in paths)
    if fmt == "swift":
        name, value = setting.split("=", 1)
        assert name == "ROOT_IMAGE_DIR"
        assert all(swift_resolves(p, elsewhere, {}) is None for p in paths)  # the flaw the setting fixes
        assert all(swift_resolves(p, elsewhere, {name: value}) for p in paths)
    else:
        assert setting == "media_dir:"
        value = line.split("media_dir: ", 1)[1].split()[0]
        assert all(llamafactory_resolves(p, elsewhere, "data") is None for p in paths)
        assert all(llamafactory_resolves(p, elsewhere, value) for p in paths)


def test_relative_paths_help_names_both_settings(capsys):
    with pytest.raises(SystemExit):
        main(["data", "export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "ROOT_IMAGE_DIR" in text and "media_dir" in text


# --------------------------------------------------------------------------- issue 21, item 5

def test_a_system_prompt_is_kept_in_meta_and_counted(tmp_path, capsys):
    d = audio_folder(tmp_path)
    rows = [  # ms-swift messages with a system turn, its ShareGPT `system` column, and none
        {"messages": [{"role": "system", "content": "You are an audio expert."}, {"role": "user", "content": MC_USER},
                      {"role": "assistant", "content": "B"}], "audios": ["clips/1.wav"]},
        {"system": "Answer briefly.", "conversation": [{"human": MC_USER, "assistant": "A"}],
         "audios": ["clips/2.wav"]},
        {"messages": [{"role": "user", "content": MC_USER}, {"role": "assistant", "content": "C"}],
         "audios": ["clips/1.wav"], "images": [], "solution": "C"},
    ]
    p = write_example(d, "sys.jsonl", rows)
    out = d / "out.jsonl"
    assert main(["data", "import", str(p), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 record(s) came with a system prompt, kept in meta 'system' (aqa's prompt has none)" in printed
    assert "keys aqa does not read (images, solution) kept in meta 'interchange' 'unused' of 1 record(s)" in printed
    back, errors = read_records(out)
    assert not errors
    assert [r.meta.get("system") for r in back] == ["You are an audio expert.", "Answer briefly.", None]
    assert back[2].meta["interchange"]["unused"] == {"images": [], "solution": "C"}
    with pytest.raises(RecordError, match="no user turn, only the system's"):
        from_interchange({"messages": [{"role": "system", "content": "hi"}], "audios": ["a.wav"]})


def test_an_import_with_audio_outside_its_folder_checks_clean_without_the_flag(records_file, tmp_path, capsys):
    # The default export writes absolute paths (as ms-swift prefers); imported into another folder.
    ex = tmp_path / "swift" / "train.jsonl"
    assert main(["data", "export", str(records_file), "-o", str(ex)]) == 0
    out = tmp_path / "work" / "data" / "imported.jsonl"
    out.parent.mkdir(parents=True)
    capsys.readouterr()
    assert main(["data", "import", str(ex), "-o", str(out)]) == 0
    audio = os.path.realpath(records_file.parent / "audio")
    assert (f"4 audio path(s) lie outside {out.parent}, under {audio}: written absolute, that root recorded in "
            f"{out.parent / 'imported.root.json'} for readers") in capsys.readouterr().out
    assert main(["data", "check", str(out)]) == 0
    back, errors = read_records(out)
    assert not errors and [str(r.audio_path) for r in back] == [os.path.join(audio, f"{c}.wav") for c in "abcd"]
    # The root holds for this file as written: a line added by hand is checked as before.
    with open(out, "a") as fh:
        fh.write(json.dumps(rec("r9", os.path.join(audio, "a.wav"))) + "\n")
    back, errors = read_records(out)
    assert not back and len(errors) == 5


def test_the_recorded_root_is_the_input_folder_or_the_deepest_one_holding_every_clip(tmp_path):
    from pathlib import Path

    from aqa.data.sources.interchange import imported_root

    def records(*paths):
        out = [AQARecord.from_dict(rec(f"r{i}", str(p))) for i, p in enumerate(paths)]
        for r in out:
            r.audio_path = Path(r.audio)
        return out

    here = Path(os.path.realpath(tmp_path))
    assert imported_root(records(here / "a" / "1.wav", here / "b" / "2.wav"), here) == here
    assert imported_root(records(here / "a" / "1.wav", here / "a" / "x" / "2.wav"), here / "b") == here / "a"
    # Only "/" holds both: nothing a reader would trust (test_pipeline_paths.py), so nothing recorded.
    assert imported_root(records(here / "a" / "1.wav", "/nonexistent-aqa/2.wav"), here) is None


# --------------------------------------------------------------------------- issue 22, item 1
# A think block in the assistant's answer is the record's rationale, and back.

THINK_USER = "<audio>Which sound is heard?\nOptions:\nA. dog barking\nB. car horn\nC. rain\n" \
             "Answer with the option's letter from the given choices directly."


@pytest.mark.parametrize("fmt", ["swift", "llamafactory"])
def test_rationale_round_trips_as_a_think_block(records_file, tmp_path, fmt):
    recs, _ = read_records(records_file)
    recs[0].rationale = "Two barks are heard.\nSo the count is 2."
    recs[1].rationale = "It quotes the tag </think> and goes on."  # a rationale may hold the closing tag
    recs[3].rationale = "unlabelled: nothing to put it before"
    out, _ = export_records(recs, tmp_path / "x.jsonl", fmt)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["messages"][1]["content"] == "<think>\nTwo barks are heard.\nSo the count is 2.\n</think>\n\nB"
    assert rows[2]["messages"][1]["content"] == "A"  # no rationale: the letter alone, as before
    assert "nothing to put" not in json.dumps(rows[3])
    back, errors = import_file(out)
    assert not errors
    assert [essentials(r) for r in back] == [essentials(r) for r in recs]
    assert [r.rationale for r in back] == [recs[0].rationale, recs[1].rationale, None, None]


def test_import_reads_think_blocks_of_client_rows(tmp_path):
    d = audio_folder(tmp_path)
    replies = [
        "<think>\nA dog barks.\n</think>\n\nA",                   # Qwen3 layout
        "  <THINK>horn honks</THINK> The answer is B",              # spacing and case vary
        "<think>\n\n</think>\n\nC",                                # Qwen3 without thinking: no rationale
        "<think>It rains.</think><answer>C</answer>",               # R1-style tags after it
        "<think>a dog</think>",                                     # reasoning, no answer
        "<think>never closed. A",                                   # unclosed block
        "A. dog barking <think>afterthought</think>",               # not leading: no block, as before
    ]
    rows = [{"messages": [{"role": "user", "content": THINK_USER}, {"role": "assistant", "content": r}],
             "audios": ["clips/1.wav"]} for r in replies]
    p = write_example(d, "think.jsonl", rows)
    recs, errors = import_file(p)
    assert [(r.id, r.answer, r.rationale) for r in recs] == [
        ("think-1", 0, "A dog barks."), ("think-2", 1, "horn honks"), ("think-3", 2, None),
        ("think-4", 2, "It rains."), ("think-7", 0, None)]
    assert [(e.line, e.field) for e in errors] == [(5, "messages"), (6, "messages")]
    assert "no answer after it" in str(errors[0]) and "never closed" in str(errors[1])
    out = tmp_path / "recs.jsonl"
    assert main(["data", "import", str(p), "-o", str(out)]) == 0
    written = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x.get("rationale") for x in written] == ["A dog barks.", "horn honks", None, "It rains.", None]
