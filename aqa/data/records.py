"""The AQA record: one multiple-choice question about one audio clip.

Reading validates every line and never stops at the first bad one: each problem becomes a
`RecordError` that names the file, the line and the field, the record is skipped, and the
caller decides whether any error is fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aqa.io import BadJSONLine, UserError, iter_jsonl, write_json, write_jsonl
from aqa.prompts import LETTERS

log = logging.getLogger(__name__)

#: Splits whose records may carry `answer: null` (the challenge's hidden-label evaluation sets).
UNLABELLED_SPLITS = frozenset({"eval", "test-unlabelled"})
#: The `meta` key where a converter keeps an evaluation item's reference reasoning (MMAR ships
#: one per item). It stays out of `rationale` because training reads that field as a target;
#: `aqa data check --against` still compares training rationales with it.
REFERENCE_REASONING = "reference_reasoning"


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


class NoRecords(UserError):
    """A data file that yields no usable record (empty, every line skipped, or not JSON Lines)."""


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
    #: A reasoning that leads to the answer (a training file's chain of thought, an imported think
    #: block): the target of SFT with target=reasoning, never read by the prompt or a letter target.
    #: Written to JSONL only when present.
    rationale: str | None = None
    #: The audio file resolved against the dataset root when the record was read; not serialised.
    audio_path: Path | None = field(default=None, compare=False, repr=False)
    #: The root `audio_path` was checked against when the record was read (None: not checked,
    #: --allow-outside-root); not serialised. Writing the record elsewhere records it again.
    root: Path | None = field(default=None, compare=False, repr=False)

    _FIELDS = ("id", "audio", "question", "choices", "answer", "subset", "question_type",
               "source", "split", "meta")

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self._FIELDS}
        if self.rationale is not None:
            # Omitted when absent, so files without rationales stay byte-identical to before.
            d["rationale"] = self.rationale
        return d

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
        rationale = d.get("rationale")
        if rationale is not None and not isinstance(rationale, str):
            raise err("rationale", f"must be a string, got {type(rationale).__name__} {rationale!r:.80}")
        return cls(id=d["id"], audio=d["audio"], question=d["question"], choices=list(choices),
                   answer=answer, subset=d["subset"], question_type=d.get("question_type") or "",
                   source=d.get("source") or "", split=split, meta=meta, rationale=rationale)


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


# ---------------------------------------------------------------------------------------------
# The dataset root a converter recorded
#
# A converter given `--audio-root DIR -o data/x.jsonl` writes audio paths relative to data/,
# which climb out of it ("../../DIR/clip.wav"); a reader that allowed only the data file's own
# folder would refuse every record. So the writer records the root it checked the paths
# against in a sidecar, ``x.root.json``, with the SHA-256 of the exact bytes it wrote. A
# reader trusts that root only while the data file is unchanged: a line added or edited by
# hand (or a data file shipped by someone else with a forged path) is checked against the
# file's own folder again, and a path that escapes both is refused as before.


def root_file(path: str | os.PathLike) -> Path:
    """The sidecar that records `path`'s dataset root: ``x.jsonl`` -> ``x.root.json``."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".jsonl") + ".root.json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_root(path: str | os.PathLike, dataset_root: str | os.PathLike | None) -> Path | None:
    """Record `dataset_root` for the data file `path` as it is now (see above); with None,
    remove a sidecar left by an earlier write. Returns the sidecar written, if any."""
    path = Path(path)
    side = root_file(path)
    if dataset_root is None:
        side.unlink(missing_ok=True)
        return None
    return write_json(side, {"data_file": path.name, "dataset_root": os.path.realpath(dataset_root),
                             "sha256": _sha256(path)})


def recorded_root(path: str | os.PathLike) -> Path | None:
    """The dataset root recorded for `path` by the writer, or None when there is none or it no
    longer holds (the file changed, the folder is gone); a sidecar that does not hold is
    logged, since the refusals that follow would otherwise be a puzzle."""
    path = Path(path)
    side = root_file(path)
    if not side.is_file():
        return None
    try:
        info = json.loads(side.read_text(encoding="utf-8"))
        root = Path(info["dataset_root"])
        ok = info["data_file"] == path.name and info["sha256"] == _sha256(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s: ignored (%s)", side, e)
        return None
    if not ok:
        log.warning("%s: ignored: %s changed since it was written; its audio paths must stay in its own "
                    "folder", side, path.name)
        return None
    if not root.is_absolute() or not root.is_dir() or root == Path(root.anchor):
        log.warning("%s: ignored: dataset root %s is not a folder aqa trusts", side, root)
        return None
    return root


# ---------------------------------------------------------------------------------------------
# Reading and writing


def read_records(path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                 allow_outside_root: bool = False, require_answer: bool | None = None,
                 ) -> tuple[list[AQARecord], list[RecordError]]:
    """Read a JSONL file of records. Returns the valid records (with `audio_path` resolved)
    and one RecordError per line that was skipped; never raises for a bad line. Without
    `root`, audio paths must stay in the file's folder or in the dataset root its writer
    recorded (`recorded_root`)."""
    path = Path(path)
    also = recorded_root(path) if root is None and not allow_outside_root else None

    def parse(obj: Any, lineno: int) -> AQARecord:
        rec = AQARecord.from_dict(obj, path=path, line=lineno, require_answer=require_answer)
        try:
            try:
                rec.audio_path = resolve_audio_path(rec.audio, path.parent, root,
                                                    allow_outside_root=allow_outside_root)
                rec.root = None if allow_outside_root else Path(os.path.realpath(root or path.parent))
            except PathOutsideRoot:
                if also is None:
                    raise
                rec.audio_path = resolve_audio_path(rec.audio, path.parent, also)
                rec.root = also
        except PathOutsideRoot as e:
            raise RecordError(path, lineno, "audio", str(e), obj.get("id")) from None
        return rec

    records, errors = parse_lines(path, parse)
    for e in errors:
        log.warning("skipped: %s", e)
    return records, errors


def why_no_records(path: str | os.PathLike, errors: list[RecordError]) -> str:
    """Why a file yielded no record, in one line: empty, one JSON array, or its first error."""
    path = Path(path)
    if not errors:
        return f"{path}: no records: the file is empty"
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        return (f"{path}: no records: the file is one JSON array, not JSON Lines (one record object "
                f"per line); all {len(errors)} line(s) were skipped")
    return f"{path}: no records: all {len(errors)} line(s) were skipped; the first: {errors[0]}"


def load_records(path: str | os.PathLike, **kw) -> list[AQARecord]:
    """read_records for commands that go on without the bad lines (each is logged). A file
    with no usable record is `NoRecords`, naming the file and why: evaluating or training on
    nothing would end with "0 items" and exit 0."""
    records, errors = read_records(path, **kw)
    if not records:
        raise NoRecords(why_no_records(path, errors))
    if errors:
        log.warning("%s: %d record(s) skipped, %d kept", path, len(errors), len(records))
    return records


def load_all_records(path: str | os.PathLike, **kw) -> list[AQARecord]:
    """read_records where every line must be a record: the first bad line is a `UserError`
    naming the file, the line and the problem (and how many more there are). For outputs
    that must cover the whole file, such as a challenge submission."""
    records, errors = read_records(path, **kw)
    if errors:
        more = f" (and {len(errors) - 1} more bad line(s))" if len(errors) > 1 else ""
        raise UserError(f"{errors[0]}{more}")
    if not records:
        raise NoRecords(why_no_records(path, errors))
    return records


def write_records(path: str | os.PathLike, records, *, relative_to: str | os.PathLike | None = None,
                  dataset_root: str | os.PathLike | None = None) -> Path:
    """Write records atomically. With `relative_to`, each record's resolved audio path is
    rewritten relative to that folder (the folder the JSONL will live in). `dataset_root`
    is the root the records' audio was checked against (default: the one root they were all
    read with, if they share one); when some audio lies outside the file's folder it is
    recorded beside the file (`write_root`), so readers accept it: a subset written elsewhere
    (`aqa data filter -o`) stays as readable as the file it came from."""
    records = list(records)
    rows = []
    outside = False
    folder = Path(os.path.realpath(Path(path).parent))
    for r in records:
        d = r.to_dict()
        if relative_to is not None and r.audio_path is not None:
            d["audio"] = os.path.relpath(r.audio_path, relative_to)
        if r.audio_path is not None and folder not in Path(os.path.realpath(r.audio_path)).parents:
            outside = True
        rows.append(d)
    if dataset_root is None:
        roots = {r.root for r in records}
        dataset_root = roots.pop() if len(roots) == 1 and None not in roots else None
    out = write_jsonl(path, rows)
    write_root(out, dataset_root if outside else None)
    return out
