"""Atomic file writes and JSON Lines helpers shared by every command that writes files."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class UserError(ValueError):
    """An input the user gave that cannot be used: a file that is empty, malformed or not what
    the command needs. The message names the file (and line) and the problem on one line;
    `aqa` prints it without a traceback and exits 2. A ValueError, so callers that already
    catch those keep working."""


def safe_name(s: str) -> str:
    """A file or folder name made from free text (a run name, a model id)."""
    return _UNSAFE.sub("-", s).strip("-.") or "run"


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Write `data` to `path` so that readers see the old file or the new one, never half.

    `fsync=False` keeps the rename but not the flush to disk, so a power loss may leave an
    empty file under the name. For bulk outputs that a rerun rebuilds byte for byte (the
    synthetic WAVs), where thousands of fsyncs would cost more than making the data."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the mode an ordinary write would.
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None:
            # A failed write or fsync (a full disk) carries no file name: give it the target's,
            # so the one-line message says which output could not be written.
            raise type(e)(e.errno, e.strerror or str(e), str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def ordinary_modes(*paths: str | os.PathLike) -> None:
    """Give files that a library wrote private (0600: safetensors and transformers save through
    a temporary file) the mode an ordinary write gets under the umask, so that a model folder
    can be shared like any other. Folders are walked; other modes are left alone."""
    for p in map(Path, paths):
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file() and not f.is_symlink()]
        for f in files:
            if f.stat().st_mode & 0o777 == 0o600:
                f.chmod(0o666 & ~_UMASK)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return atomic_write_text(path, text)


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows and fsync: used for resumable outputs whose every finished line counts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "a", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        if e.filename is None:  # as in atomic_write_bytes: say which file a full disk stopped
            raise type(e)(e.errno, e.strerror or str(e), str(path)) from e
        raise


def drop_partial_last_line(path: str | os.PathLike) -> bool:
    """Cut an unterminated last line (a write killed midway) off an appended file, so that the
    next append starts on a line of its own. Returns whether anything was cut."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return False
    cut = data.rfind(b"\n") + 1
    atomic_write_bytes(path, data[:cut])
    logging.getLogger(__name__).warning("%s: dropped an unfinished last line (%d bytes)", path, len(data) - cut)
    return True


class BadJSONLine(UserError):
    """A line of a JSON Lines file that is not JSON (or not UTF-8); `problem` says why
    without the place."""

    def __init__(self, path: str | os.PathLike, line: int, msg: str, *, problem: str | None = None):
        self.path, self.line = str(path), line
        self.problem = problem if problem is not None else f"not valid JSON ({msg})"
        super().__init__(f"{path}:{line}: {self.problem}")


def _decode_line(raw: bytes, path, lineno: int) -> str | BadJSONLine:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        # One bad byte (a Latin-1 "é" pasted in) spoils its line, not the whole file.
        return BadJSONLine(path, lineno, "", problem=f"not valid UTF-8 (byte 0x{raw[e.start]:02x} "
                                                     f"at column {e.start + 1})")


def iter_jsonl(path: str | os.PathLike, *, skip_bad: bool = False, yield_bad: bool = False,
               ) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed object) for each non-blank line. A line that is not JSON
    raises `BadJSONLine` (a ValueError naming the file and the line); with `skip_bad` it is
    logged and skipped (a run killed mid-write leaves at most one such line at the end of an
    appended file); with `yield_bad` the BadJSONLine is yielded in the object's place, for
    readers that report every bad line with the good ones."""
    if skip_bad and yield_bad:
        raise ValueError("skip_bad and yield_bad exclude each other")
    with open(path, "rb") as fh:
        lineno = 0
        # Bytes, decoded line by line, so that a byte that is not UTF-8 costs one line only.
        # splitlines also ends a line at a lone CR, as reading in text mode did.
        for chunk in fh:
            for raw in chunk.splitlines():
                lineno += 1
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]  # a byte-order mark (Windows editors) is not part of the JSON
                line = _decode_line(raw, path, lineno)
                if isinstance(line, str) and not line.strip():
                    continue
                bad = line if isinstance(line, BadJSONLine) else None
                if bad is None:
                    try:
                        yield lineno, json.loads(line)
                        continue
                    except json.JSONDecodeError as e:
                        bad = BadJSONLine(path, lineno, e.msg)
                if yield_bad:
                    yield lineno, bad
                elif skip_bad:
                    logging.getLogger(__name__).warning("%s; line skipped", bad)
                else:
                    raise bad from None


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
