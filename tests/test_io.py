"""Atomic writes: readers never see half a file, and the file gets an ordinary mode. The one
JSON Lines reader: bad lines raise, are skipped or are handed back, each with its line number."""

import logging
import os

import pytest

from aqa.io import BadJSONLine, atomic_write_bytes, atomic_write_text, iter_jsonl


@pytest.mark.parametrize("fsync", [True, False])
def test_atomic_write_replaces_and_keeps_the_usual_mode(tmp_path, fsync):
    p = tmp_path / "sub" / "out.json"
    atomic_write_text(p, "old")
    atomic_write_bytes(p, b"new", fsync=fsync)
    assert p.read_text() == "new"
    assert [f.name for f in p.parent.iterdir()] == ["out.json"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


@pytest.fixture
def jsonl(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"a": 1}\n\n{"a": \n[2]\nnot json\n')
    return p


def test_iter_jsonl_raises_at_the_first_bad_line(jsonl):
    rows = iter_jsonl(jsonl)
    assert next(rows) == (1, {"a": 1})
    with pytest.raises(ValueError, match=rf"^{jsonl}:3: not valid JSON") as e:
        next(rows)
    assert isinstance(e.value, BadJSONLine) and e.value.line == 3


def test_iter_jsonl_skips_bad_lines_with_a_warning(jsonl, caplog):
    with caplog.at_level(logging.WARNING, logger="aqa.io"):
        assert list(iter_jsonl(jsonl, skip_bad=True)) == [(1, {"a": 1}), (4, [2])]
    assert [r.getMessage().split(": ")[0] for r in caplog.records] == [f"{jsonl}:3", f"{jsonl}:5"]


def test_iter_jsonl_yields_bad_lines_in_place(jsonl):
    rows = list(iter_jsonl(jsonl, yield_bad=True))
    assert [n for n, _ in rows] == [1, 3, 4, 5]
    bad = [obj for _, obj in rows if isinstance(obj, BadJSONLine)]
    assert [(b.path, b.line) for b in bad] == [(str(jsonl), 3), (str(jsonl), 5)]
    assert all(b.problem.startswith("not valid JSON (") for b in bad)
    with pytest.raises(ValueError):
        list(iter_jsonl(jsonl, skip_bad=True, yield_bad=True))


def test_a_failed_append_names_its_file(tmp_path, monkeypatch):
    import errno

    import aqa.io

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(aqa.io.os, "fsync", full)
    p = tmp_path / "predictions.jsonl"
    with pytest.raises(OSError) as e:
        aqa.io.append_jsonl(p, [{"a": 1}])
    assert e.value.filename == str(p) and e.value.errno == errno.ENOSPC
