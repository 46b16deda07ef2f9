"""The README's own commands, run from a working folder outside the dataset: every converted
clip must be found again by the readers eval and training use (issue 16, item 1), a file
with no usable record is an error naming it (item 2), and one byte that is not UTF-8 costs
its line only (item 9)."""

import json
import os

import pytest

from aqa.cli import main
from aqa.data.records import NoRecords, load_records, read_records, root_file
from aqa.io import BadJSONLine, UserError, iter_jsonl
from conftest import MMAU_JSON, write_audio
from test_dcase2025 import build as build_dcase2025
from test_dcase2026 import item as adqa_item, write_lines


@pytest.fixture
def work(tmp_path, monkeypatch):
    """The user's working folder, beside (not inside) the dataset."""
    w = tmp_path / "work"
    w.mkdir()
    monkeypatch.chdir(w)
    return w


def all_found(path, n):
    recs = load_records(path)
    assert len(recs) == n
    missing = [r.id for r in recs if not r.audio_path.is_file()]
    assert not missing, missing
    return recs


@pytest.mark.skipif(not MMAU_JSON.is_file(), reason="the MMAU file is not present")
def test_readme_mmau_command_evaluates_every_clip(tmp_path, work):
    items = json.loads(MMAU_JSON.read_text())
    audio = tmp_path / "mmau-audio"
    for it in items:
        write_audio(audio / it["audio_id"], sr=8000)
    # README: aqa data mmau mmau-test-mini.json --audio-root DIR -o data/mmau.jsonl
    assert main(["data", "mmau", str(MMAU_JSON), "--audio-root", str(audio), "-o", "data/mmau.jsonl",
                 "--no-progress"]) == 0
    all_found("data/mmau.jsonl", 1000)
    assert root_file("data/mmau.jsonl").is_file()


def test_readme_dcase2025_command_evaluates_every_clip(tmp_path, work):
    root = build_dcase2025(tmp_path)
    # README: aqa data dcase2025 ROOT --split dev -o data/dcase_dev.jsonl --drop-flagged
    assert main(["data", "dcase2025", str(root), "--split", "dev", "-o", "data/dcase_dev.jsonl",
                 "--drop-flagged", "--no-progress"]) == 0
    recs = all_found("data/dcase_dev.jsonl", 6)
    assert all(os.path.isabs(r.audio_path) and str(r.audio_path).startswith(str(root)) for r in recs)


def test_readme_dcase2026_command_evaluates_every_clip(tmp_path, work):
    ds = tmp_path / "ds"
    for i in (1, 2):
        write_audio(ds / "dev_audios" / f"{i}.wav")
    write_lines(ds / "dev.jsonl", [adqa_item(1, "rain"), adqa_item(2, "car horn")])
    # README: aqa data dcase2026 dev.jsonl -o data/adqa_dev.jsonl, -o outside the dataset folder
    assert main(["data", "dcase2026", str(ds / "dev.jsonl"), "-o", "data/adqa_dev.jsonl", "--no-progress"]) == 0
    all_found("data/adqa_dev.jsonl", 2)


def converted(tmp_path):
    ds = tmp_path / "ds"
    for i in (1, 2):
        write_audio(ds / "dev_audios" / f"{i}.wav")
    write_audio(tmp_path / "secret.wav")
    write_lines(ds / "dev.jsonl", [adqa_item(1, "rain"), adqa_item(2, "car horn")])
    out = tmp_path / "work" / "data" / "adqa.jsonl"
    assert main(["data", "dcase2026", str(ds / "dev.jsonl"), "-o", str(out), "--no-progress"]) == 0
    return out


def test_a_line_added_by_hand_cannot_use_the_recorded_root(tmp_path, work):
    out = converted(tmp_path)
    row = json.loads(out.read_text().splitlines()[0])
    row.update(id="added", audio="../../secret.wav")
    with open(out, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    # The file changed since the converter recorded its root: every path must stay in its folder.
    recs, errors = read_records(out)
    assert not recs and len(errors) == 3 and all(e.field == "audio" for e in errors)


def test_a_path_escaping_the_recorded_root_is_refused(tmp_path, work):
    out = converted(tmp_path)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    rows[0]["audio"] = "../../secret.wav"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # A sidecar rewritten to match: the root it names still bounds every path.
    side = json.loads(root_file(out).read_text())
    import hashlib
    side["sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
    root_file(out).write_text(json.dumps(side))
    recs, errors = read_records(out)
    assert [r.id for r in recs] == ["adqa_2"]
    assert len(errors) == 1 and "outside the dataset root" in errors[0].problem


def test_a_recorded_filesystem_root_is_not_trusted(tmp_path, work):
    out = converted(tmp_path)
    side = json.loads(root_file(out).read_text())
    side["dataset_root"] = "/"
    root_file(out).write_text(json.dumps(side))
    recs, errors = read_records(out)
    assert not recs and len(errors) == 2


def test_rewriting_a_file_inside_its_root_drops_the_stale_sidecar(tmp_path, work):
    out = converted(tmp_path)
    from aqa.data.records import write_records

    recs = load_records(out)
    inside = tmp_path / "ds" / "copy.jsonl"
    root_file(inside).write_text("{}")
    write_records(inside, recs, relative_to=inside.parent)
    assert not root_file(inside).exists() and len(load_records(inside)) == 2


# --------------------------------------------------------------------------- item 2

def test_an_empty_file_is_an_error_naming_it(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n\n")
    with pytest.raises(NoRecords, match=rf"^{p}: no records: the file is empty"):
        load_records(p)


def test_a_json_array_saved_as_jsonl_is_named_as_such(tmp_path):
    p = tmp_path / "array.jsonl"
    rows = [{"id": "a", "audio": "a.wav", "question": "Q?", "choices": ["x", "y"], "answer": 0, "subset": "s"}] * 2
    p.write_text(json.dumps(rows, indent=2))
    with pytest.raises(NoRecords, match="one JSON array, not JSON Lines"):
        load_records(p)


def test_all_records_skipped_is_an_error_with_the_first_reason(tmp_path):
    p = tmp_path / "bad.jsonl"
    write_lines(p, [{"id": "a", "audio": "../../x.wav", "question": "Q?", "choices": ["x", "y"], "answer": 0,
                     "subset": "s"}, {"id": "b"}])
    with pytest.raises(NoRecords, match=r"all 2 line\(s\) were skipped; the first: .*bad.jsonl:1: field 'audio'"):
        load_records(p, require_answer=False)
    assert isinstance(NoRecords("x"), UserError)


def test_cli_reports_no_records_in_one_line_exit_2(tmp_path, capsys):
    p = tmp_path / "empty.jsonl"
    p.write_text("")
    # `aqa data export` reads through read_records; `aqa eval`/`aqa sft` through load_records:
    # the same NoRecords reaches main, which prints it on one line.
    from aqa import cli

    def boom(args):
        load_records(p)

    parser = cli.build_parser()
    args = parser.parse_args(["data", "check", str(p)])
    args.func = boom
    rc = cli.run_parsed(args)
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == f"aqa: error: {p}: no records: the file is empty"


# --------------------------------------------------------------------------- item 9

def test_a_non_utf8_byte_costs_one_line(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n{"a": 3}\n')
    rows = list(iter_jsonl(p, yield_bad=True))
    assert [n for n, _ in rows] == [1, 2, 3]
    bad = rows[1][1]
    assert isinstance(bad, BadJSONLine) and bad.line == 2
    assert str(bad) == f"{p}:2: not valid UTF-8 (byte 0xe9 at column 11)"
    assert [o for _, o in rows if not isinstance(o, BadJSONLine)] == [{"a": 1}, {"a": 3}]


def test_records_reader_goes_on_after_a_non_utf8_line(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"x")
    good = {"id": "r1", "audio": "a.wav", "question": "Q?", "choices": ["x", "y"], "answer": 0, "subset": "s"}
    p = tmp_path / "d.jsonl"
    p.write_bytes(json.dumps(good).encode() + b"\n" + json.dumps(dict(good, id="r2")).encode()[:-1]
                  + b', "note": "\xff"}\n')
    recs, errors = read_records(p)
    assert [r.id for r in recs] == ["r1"]
    assert len(errors) == 1 and errors[0].line == 2 and "not valid UTF-8" in errors[0].problem


def test_a_byte_order_mark_and_crlf_are_read(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n{"a": 2}\r\n')
    assert list(iter_jsonl(p)) == [(1, {"a": 1}), (2, {"a": 2})]


def test_a_subset_written_elsewhere_stays_readable(tmp_path, work):
    """`aqa data filter data/train.jsonl ... -o other/strong.jsonl` writes the records it read:
    the root they were read with goes with them."""
    from aqa.data.records import write_records

    out = converted(tmp_path)
    recs = load_records(out)
    subset = tmp_path / "elsewhere" / "deep" / "strong.jsonl"
    write_records(subset, recs[:1], relative_to=subset.parent)
    assert [r.id for r in load_records(subset)] == [recs[0].id]
    # Records read with --allow-outside-root carry no root: nothing is vouched for.
    loose = load_records(out, allow_outside_root=True)
    write_records(subset, loose, relative_to=subset.parent)
    assert not root_file(subset).exists()
    assert read_records(subset)[0] == []


def test_readme_audioset_strong_command_evaluates_every_clip(tmp_path, work):
    audio = tmp_path / "as-audio"
    tsv = tmp_path / "strong.tsv"
    rows = ["segment_id\tstart_time_seconds\tend_time_seconds\tlabel"]
    for i in range(3):
        write_audio(audio / f"y{i}_0.wav", sr=8000)
        rows += [f"y{i}_0\t0.1\t0.5\t/m/dog", f"y{i}_0\t0.7\t0.9\t/m/cat"]
    tsv.write_text("\n".join(rows) + "\n")
    labels = tmp_path / "mid_to_display_name.tsv"
    labels.write_text("/m/dog\tDog\n/m/cat\tCat\n/m/bird\tBird\n/m/horn\tHorn\n/m/rain\tRain\n")
    # README: aqa data audioset-strong TSV --labels mid_to_display_name.tsv --audio-root DIR -o data/as_temporal.jsonl
    assert main(["data", "audioset-strong", str(tsv), "--labels", str(labels), "--audio-root", str(audio),
                 "-o", "data/as_temporal.jsonl"]) == 0
    all_found("data/as_temporal.jsonl", 3)
