"""Atomic writes: readers never see half a file, and the file gets an ordinary mode."""

import os

from aqa.io import atomic_write_text


def test_atomic_write_replaces_and_keeps_the_usual_mode(tmp_path):
    p = tmp_path / "sub" / "out.json"
    atomic_write_text(p, "old")
    atomic_write_text(p, "new")
    assert p.read_text() == "new"
    assert [f.name for f in p.parent.iterdir()] == ["out.json"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
