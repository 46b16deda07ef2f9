"""The AQA record: one multiple-choice question about one audio clip.

Reading validates every line and never stops at the first bad one: each problem becomes a
`RecordError` that names the file, the line and the field, the record is skipped, and the
caller decides whether any error is fatal.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aqa.io import BadJSONLine, iter_jsonl, write_jsonl
from aqa.prompts import LETTERS

log = logging.getLogger(__name__)

#: Splits whose records may carry `answer: null` (the challenge's hidden-label evaluation sets).
UNLABELLED_SPLITS = frozenset({"eval", "test-unlabelled"})


class RecordError(ValueError):
    """A record that cannot be used, located by file, line and field."""

    def __init__(self, path: str | os.PathLike | None, line: int | None, fieldname: str | None,
                 problem: str, record_id: str | None = None):
        self.path, self.line, self.field, self.problem, self.record_id = (
            str(path) if path is not None else None, line, fieldname, problem, record_id)
        where = ":".join(str(x) for x in (self.path, line) if x is not None) or "<record>"
        what = f" field '{fieldname}'" if fieldname else ""
        rid = f" (id {record_id})" if record_id else ""
        super().__init__(f"{where}:{what}{rid}: {problem}")

    def to_dict(self) -> dict:
        return {"file": self.path, "line": self.line, "field": self.field, "id": self.record_id,
                "problem": self.problem}


class PathOutsideRoot(ValueError):
    """An audio path that resolves outside the dataset root."""


@dataclass
class AQARecord:
    id: str
    audio: str
    question: str
    choices: list[str]
    answer: int | None
    subset: str
    question_type: str = ""
    source: str = ""
    split: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    #: The audio file resolved against the dataset root when the record was read; not serialised.
    audio_path: Path | None = field(default=None, compare=False, repr=False)

    _FIELDS = ("id", "audio", "question", "choices", "answer", "subset", "question_type",
               "source", "split", "meta")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self._FIELDS}

    @property
    def labelled(self) -> bool:
        return self.answer is not None

    @classmethod
    def from_dict(cls, d: Any, *, path=None, line=None, require_answer: bool | None = None) -> AQARecord:
        """Validate one parsed JSON object. `require_answer=None` allows a null answer only on
        an unlabelled split (UNLABELLED_SPLITS)."""
        def err(fieldname, problem):
            rid = d.get("id") if isinstance(d, dict) and isinstance(d.get("id"), str) else None
            return RecordError(path, line, fieldname, problem, rid)

        if not isinstance(d, dict):
            raise err(None, f"expected a JSON object, got {type(d).__name__}")
        for k in ("id", "audio", "question", "choices", "subset"):
            if k not in d:
                raise err(k, "missing")
        for k in ("id", "audio", "question", "subset"):
            if not isinstance(d[k], str) or not d[k].strip():
                raise err(k, f"must be a non-empty string, got {d[k]!r}")
        for k in ("question_type", "source", "split"):
            if k in d and d[k] is not None and not isinstance(d[k], str):
                raise err(k, f"must be a string, got {d[k]!r}")
        choices = d["choices"]
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise err("choices", "must be a list of strings")
        if len(choices) < 2:
            raise err("choices", f"needs at least 2 options, got {len(choices)}")
        if len(choices) > len(LETTERS):
            raise err("choices", f"at most {len(LETTERS)} options, got {len(choices)}")
        if any(not c.strip() for c in choices):
            raise err("choices", "an option is empty")
        if len(set(choices)) != len(choices):
            raise err("choices", f"options repeat: {choices}")
        answer = d.get("answer")
        split = d.get("split") or ""
        if answer is None:
            needed = require_answer if require_answer is not None else split not in UNLABELLED_SPLITS
            if needed:
                raise err("answer", f"missing or null, allowed only on unlabelled splits "
                                    f"({', '.join(sorted(UNLABELLED_SPLITS))}); split is {split!r}")
        elif isinstance(answer, bool) or not isinstance(answer, int):
            raise err("answer", f"must be an option index (integer), got {answer!r}")
        elif not 0 <= answer < len(choices):
            raise err("answer", f"index {answer} out of range for {len(choices)} options")
        meta = d.get("meta") or {}
        if not isinstance(meta, dict):
            raise err("meta", "must be an object")
        return cls(id=d["id"], audio=d["audio"], question=d["question"], choices=list(choices),
                   answer=answer, subset=d["subset"], question_type=d.get("question_type") or "",
                   source=d.get("source") or "", split=split, meta=meta)


def resolve_audio_path(audio: str, base_dir: str | os.PathLike, root: str | os.PathLike | None = None,
                       *, allow_outside_root: bool = False) -> Path:
    """Resolve a record's `audio` against `base_dir` (the JSONL's folder). Symlinks are
    followed before the check, so a link that points out of `root` is refused as well."""
    base = Path(base_dir)
    p = Path(audio)
    full = p if p.is_absolute() else base / p
    resolved = Path(os.path.realpath(full))
    if not allow_outside_root:
        root_real = Path(os.path.realpath(root if root is not None else base))
        if resolved != root_real and root_real not in resolved.parents:
            raise PathOutsideRoot(f"audio path {audio!r} resolves to {resolved}, outside the dataset "
                                  f"root {root_real} (pass allow_outside_root / --allow-outside-root "
                                  f"to permit it)")
    return resolved


def parse_lines(path: str | os.PathLike, parse: Callable[[Any, int], AQARecord],
                ) -> tuple[list[AQARecord], list[RecordError]]:
    """`parse(object, line number)` over each line of a JSONL file. Returns what it made and
    one RecordError per line skipped: a line that is not JSON, or that `parse` refuses by
    raising RecordError. Never raises for a bad line."""
    records: list[AQARecord] = []
    errors: list[RecordError] = []
    for lineno, obj in iter_jsonl(path, yield_bad=True):
        if isinstance(obj, BadJSONLine):
            errors.append(RecordError(path, lineno, None, obj.problem))
            continue
        try:
            records.append(parse(obj, lineno))
        except RecordError as e:
            errors.append(e)
    return records, errors


def read_records(path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                 allow_outside_root: bool = False, require_answer: bool | None = None,
                 ) -> tuple[list[AQARecord], list[RecordError]]:
    """Read a JSONL file of records. Returns the valid records (with `audio_path` resolved)
    and one RecordError per line that was skipped; never raises for a bad line."""
    path = Path(path)

    def parse(obj: Any, lineno: int) -> AQARecord:
        rec = AQARecord.from_dict(obj, path=path, line=lineno, require_answer=require_answer)
        try:
            rec.audio_path = resolve_audio_path(rec.audio, path.parent, root,
                                                allow_outside_root=allow_outside_root)
        except PathOutsideRoot as e:
            raise RecordError(path, lineno, "audio", str(e), obj.get("id")) from None
        return rec

    records, errors = parse_lines(path, parse)
    for e in errors:
        log.warning("skipped: %s", e)
    return records, errors


def load_records(path: str | os.PathLike, **kw) -> list[AQARecord]:
    """read_records, logging each skipped line; for commands that go on without the bad ones."""
    records, errors = read_records(path, **kw)
    if errors:
        log.warning("%s: %d record(s) skipped, %d kept", path, len(errors), len(records))
    return records


def write_records(path: str | os.PathLike, records, *, relative_to: str | os.PathLike | None = None) -> Path:
    """Write records atomically. With `relative_to`, each record's resolved audio path is
    rewritten relative to that folder (the folder the JSONL will live in)."""
    rows = []
    for r in records:
        d = r.to_dict()
        if relative_to is not None and r.audio_path is not None:
            d["audio"] = os.path.relpath(r.audio_path, relative_to)
        rows.append(d)
    return write_jsonl(path, rows)
