"""`aqa data export` / `aqa data import`: the chat-style multimodal JSONL that ms-swift and
LLaMA-Factory train on.

What export writes, one JSON object per line::

    {"messages": [{"role": "user", "content": "<audio>" + question_text(question, choices)},
                  {"role": "assistant", "content": target_text(answer)}],
     "audios": ["/abs/path/clip.wav"],
     "id": "...", "subset": "...", "question_type": "...", "source": "...", "split": "..."}

- The user text is exactly :func:`aqa.prompts.question_text` (question, "Options:", one
  "A. text" line per option, the instruction) behind one ``<audio>`` placeholder, and the
  assistant text is :func:`aqa.prompts.target_text` (the letter), so a model tuned in either
  tool sees the prompt ``aqa eval`` uses.
- A record with a ``rationale`` gets it as a think block before the letter,
  ``"<think>\n" + rationale + "\n</think>\n\n" + letter`` (the layout Qwen3's reasoning
  templates write); import reads such a block back into ``rationale`` (below).
- ms-swift: this is its standard "messages" format; multimodal paths go in ``audios`` and
  ``<audio>`` marks where each one goes in the text; absolute paths are preferred.
  Source: ms-swift docs, Customization/Custom-dataset.md, sections "Standard Dataset Format"
  and "Multimodal" (https://swift.readthedocs.io/en/latest/Customization/Custom-dataset.html).
  Rows whose last turn is the user's are its documented PPO/GRPO/inference layout, so
  unlabelled records (answer null) are written with no assistant turn.
- LLaMA-Factory: the "sharegpt" formatting with OpenAI-style tags, as in its own
  ``data/mllm_audio_demo.json`` and ``data/README.md`` ("OpenAI Format", multimodal
  columns). The ``dataset_info.json`` entry it needs is printed by the export (see
  :data:`LLAMAFACTORY_DATASET_INFO`). One departure from ms-swift: LLaMA-Factory's sharegpt
  converter skips any conversation with an odd number of turns as "abnormal", so an
  unlabelled record gets an assistant turn with empty content (what its predict mode
  expects) instead of none.
- The extra keys (id, subset, question_type, source, split; always strings) are ignored by
  both tools' training (LLaMA-Factory drops unmapped columns, ms-swift drops extra fields
  except in GRPO, where it passes them to reward functions, which is useful there). They
  let import restore the record. ``meta`` is not exported: its nested, per-source shape
  would break the Arrow schema inference both tools load JSONL with.

Import reads the same layout back, and the other shapes the two tools document:

- a JSON array of rows instead of JSON Lines (LLaMA-Factory's own ``data/mllm_audio_demo.json``);
- ``conversations`` / ``conversation`` with ``from`` / ``value`` and human/gpt/bot roles
  (LLaMA-Factory's sharegpt tags; ms-swift's MessagesPreprocessor, which also takes ``bot``);
- ms-swift's ShareGPT pairs, ``{"system": ..., "conversation": [{"human": Q, "assistant": A}]}``
  (Custom-dataset.md, "ShareGPT format");
- the audio under ``audios`` or ``audio``, as a list or a single string (ms-swift maps
  ``audio`` to ``audios`` and a lone string to a list: swift/dataset/preprocessor/core.py;
  LLaMA-Factory's converter wraps a lone path too: src/llamafactory/data/converter.py).

The options come from the "A. text" lines of the user text, the answer from the assistant
text with :func:`aqa.prompts.parse_answer` (after a leading ``<think>...</think>`` block,
whose text becomes the record's ``rationale``; an empty block, as Qwen3 writes when not
thinking, is no rationale), the audio path is resolved against the input
file's folder (or ``--audio-root``). A row it cannot use is reported with its file and line
(or item, in an array) and skipped; a file that yields no record at all is an error. A
system prompt (a ``system`` turn or column) is kept in the record's ``meta["system"]``, any
key import does not read in ``meta["interchange"]["unused"]``, and the summary counts both.
Audio outside the output's folder is written absolute, and the folder holding it recorded
beside the output (:func:`imported_root`, ``records.write_root``), as the converters record
their dataset root, so that ``aqa data check`` and the rest read the file without
``--allow-outside-root``.

Relative audio paths (``aqa data export --relative-paths``) are written relative to the
output file's folder, which neither tool resolves against by itself; the export prints what
makes each resolve them (:data:`RELATIVE_PATH_SETTINGS`):

- ms-swift opens a relative path as given (against the working directory) and, when that
  does not exist, joined to the environment variable ``ROOT_IMAGE_DIR`` (swift/template/
  vision_utils.py, ``_check_path``; the same variable for images, videos and audio);
- LLaMA-Factory joins it to ``media_dir``, which defaults to ``dataset_dir`` (src/llamafactory/
  data/converter.py ``_find_medias``; hparams/data_args.py), and falls back to the path as given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aqa.data.records import (AQARecord, NoRecords, RecordError, parse_lines, read_records, root_file,
                              why_no_records, write_records)
from aqa.io import UserError
from aqa.prompts import INSTRUCTION, LETTERS, parse_answer, question_text, target_text

FORMATS = ("swift", "llamafactory")
AUDIO_TOKEN = "<audio>"
#: The extra keys export adds and import reads back.
EXTRA_KEYS = ("id", "subset", "question_type", "source", "split")
#: What LLaMA-Factory's dataset_info.json needs for an exported file (file_name filled in).
LLAMAFACTORY_DATASET_INFO: dict[str, Any] = {
    "formatting": "sharegpt",
    "columns": {"messages": "messages", "audios": "audios"},
    "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
             "assistant_tag": "assistant", "system_tag": "system"},
}

#: A leading think block, to the last closing tag: a rationale that quotes "</think>" still
#: comes back whole, and an answer (a letter or an option) never holds the tag.
_THINK = re.compile(r"\s*<think>(.*)</think>", re.S | re.I)
_OPTION = re.compile(r"^\s*\(?([A-Z])[.)]\s*(.*?)\s*$")
_OPTIONS_HEADER = re.compile(r"^\s*(options|choices)\s*:?\s*$", re.I)
_USER_ROLES, _ASSISTANT_ROLES = ("user", "human"), ("assistant", "gpt", "bot")
#: Where a conversation may sit in a row, first present wins (ms-swift's message_keys).
_MESSAGE_KEYS = ("messages", "conversations", "conversation")
#: The keys of a row import reads; any other is kept in the record's meta (interchange.unused).
_READ_KEYS = frozenset((*_MESSAGE_KEYS, "audios", "audio", "system", *EXTRA_KEYS))
#: What makes each tool find audio paths written relative to the output's folder: the
#: setting, where it goes, and the source that says so (the module docstring).
RELATIVE_PATH_SETTINGS = {
    "swift": ("ROOT_IMAGE_DIR", "environment variable of the ms-swift command"),
    "llamafactory": ("media_dir", "key of the LLaMA-Factory training config (YAML) or --media_dir"),
}


# --------------------------------------------------------------------------- export

def to_interchange(record: AQARecord, fmt: str = "swift", *, audio: str | None = None) -> dict[str, Any]:
    """One record as an ms-swift / LLaMA-Factory row. `audio` overrides the path written
    (default: the resolved path the record was read with, else its `audio` field)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if audio is None:
        audio = str(record.audio_path) if record.audio_path is not None else record.audio
    messages = [{"role": "user", "content": AUDIO_TOKEN + question_text(record.question, record.choices)}]
    if record.answer is not None:
        messages.append({"role": "assistant", "content": assistant_text(record)})
    elif fmt == "llamafactory":
        messages.append({"role": "assistant", "content": ""})
    row: dict[str, Any] = {"messages": messages, "audios": [audio]}
    for k in EXTRA_KEYS:
        row[k] = getattr(record, k) or ""
    return row


def assistant_text(record: AQARecord) -> str:
    """The answer's letter, behind the record's rationale as a think block when it has one."""
    letter = target_text(record.answer)
    if record.rationale and record.rationale.strip():
        return f"<think>\n{record.rationale.strip()}\n</think>\n\n{letter}"
    return letter


def split_think(reply: str) -> tuple[str | None, str]:
    """(the text of the reply's leading ``<think>...</think>`` block, or None when it has
    none, and the reply after the block). Raises ValueError for a block never closed."""
    m = _THINK.match(reply)
    if m is None:
        if reply.lstrip().lower().startswith("<think>"):
            raise ValueError("the assistant's answer opens a <think> block that is never closed")
        return None, reply
    return m.group(1).strip(), reply[m.end():].strip()


def export_records(records: Iterable[AQARecord], out: str | os.PathLike, fmt: str = "swift", *,
                   relative_paths: bool = False) -> tuple[Path, int]:
    """Write records as interchange JSONL (atomically). Audio paths are absolute, or with
    `relative_paths` relative to the output file's folder, which the tool must be told
    (`relative_path_setting`). Returns (path, rows written)."""
    from aqa.io import write_jsonl

    out = Path(out)
    rows = []
    for r in records:
        audio = str(r.audio_path) if r.audio_path is not None else r.audio
        if relative_paths:
            audio = os.path.relpath(audio, Path(os.path.realpath(out.parent)))
        rows.append(to_interchange(r, fmt, audio=audio))
    return write_jsonl(out, rows), len(rows)


def relative_path_setting(fmt: str, out: str | os.PathLike) -> str:
    """The line that makes `fmt`'s tool resolve paths written relative to `out`'s folder."""
    name, where = RELATIVE_PATH_SETTINGS[fmt]
    folder = os.path.realpath(Path(out).parent)
    value = f"{name}={folder}" if fmt == "swift" else f"{name}: {folder}"
    return f"{value}   ({where}; without it the relative paths resolve against the working directory)"


# --------------------------------------------------------------------------- import

def parse_user_text(text: str) -> tuple[str, list[str], str]:
    """Split a prompt written by :func:`aqa.prompts.question_text` (audio placeholders
    already removed) into (question, choices, the text after the options). The options are
    the last run of lines lettered A., B., C., ... in order; an "Options:" line before them
    belongs to neither. Raises ValueError when there is no such run of two or more."""
    lines = text.split("\n")
    best: tuple[int, int] | None = None
    i = 0
    while i < len(lines):
        m = _OPTION.match(lines[i])
        if m and m.group(1) == "A":
            j = i + 1
            while j < len(lines) and (n := _OPTION.match(lines[j])) and n.group(1) == LETTERS[j - i]:
                j += 1
            if j - i >= 2:
                best = (i, j)
            i = max(j, i + 1)
        else:
            i += 1
    if best is None:
        raise ValueError("no lettered options (lines 'A. ...', 'B. ...') found in the user text")
    start, end = best
    choices = [_OPTION.match(line).group(2) for line in lines[start:end]]
    head = lines[:start]
    while head and not head[-1].strip():
        head.pop()
    if head and _OPTIONS_HEADER.match(head[-1]):
        head.pop()
    return "\n".join(head).strip(), choices, "\n".join(lines[end:]).strip()


def _turns(row: dict) -> list[tuple[str, str]]:
    key = next((k for k in _MESSAGE_KEYS if k in row), None)
    msgs = row.get(key) if key else None
    if not isinstance(msgs, list) or not msgs:
        raise ValueError("no 'messages' (or 'conversations', 'conversation') list")
    out = []
    for m in msgs:
        if not isinstance(m, dict):
            raise ValueError("a message is not an object")
        if not {"role", "content", "from", "value"} & m.keys():
            out += _pair_turns(m)
            continue
        role, content = m.get("role", m.get("from")), m.get("content", m.get("value"))
        if not isinstance(role, str) or not isinstance(content, (str, type(None))):
            raise ValueError(f"a message lacks a string role/content: {m!r}")
        out.append((role.lower(), content or ""))
    return out


def _pair_turns(m: dict) -> list[tuple[str, str]]:
    """ms-swift's ShareGPT element, one exchange keyed by role: {"human": Q, "assistant": A}."""
    user = next((m[k] for k in _USER_ROLES if k in m), None)
    reply = next((m[k] for k in _ASSISTANT_ROLES if k in m), None)
    if not isinstance(user, str) or not isinstance(reply, (str, type(None))):
        raise ValueError(f"a conversation element has neither role/content nor human/assistant text: {m!r}")
    return [("user", user)] + ([("assistant", reply)] if reply is not None else [])


def _audio_paths(row: dict) -> Any:
    """The row's audio paths as a list: `audios` or `audio`, a list or one string."""
    value = row.get("audios", row.get("audio"))
    return [value] if isinstance(value, str) else value


def from_interchange(row: Any, *, path: str | os.PathLike | None = None, line: int | None = None,
                     audio_root: str | os.PathLike | None = None, subset: str | None = None,
                     item: int | None = None) -> AQARecord:
    """One interchange row back to a record; raises RecordError naming file, line and field.
    `subset` overrides the row's own; relative audio paths resolve against `audio_root`
    (default: the folder of `path`, else the working directory). `item` is the row's index
    in a file that is one JSON array (then `line` is not known)."""
    rid = row.get("id") if isinstance(row, dict) and isinstance(row.get("id"), str) else None
    where = f"{path}[{item}]" if item is not None else path

    def err(fieldname: str | None, problem: str) -> RecordError:
        return RecordError(where, line, fieldname, problem, rid)

    if not isinstance(row, dict):
        raise err(None, f"expected a JSON object, got {type(row).__name__}")
    try:
        turns = _turns(row)
    except ValueError as e:
        raise err("messages", str(e)) from None
    # ms-swift's ShareGPT and LLaMA-Factory's sharegpt put it in a `system` column, the
    # messages layouts in a system turn: the record keeps it (in meta), though aqa's prompt has none.
    system = [text for text in (row.get("system"),) if isinstance(text, str) and text.strip()]
    system += [content for role, content in turns if role == "system" and content.strip()]
    turns = [t for t in turns if t[0] != "system"]
    if not turns:
        raise err("messages", "no user turn, only the system's")
    if turns[0][0] not in _USER_ROLES:
        raise err("messages", f"the first turn is {turns[0][0]!r}, expected the user's")
    if len(turns) > 2:
        raise err("messages", f"{len(turns)} turns; an AQA item is one question and at most one answer")
    if len(turns) == 2 and turns[1][0] not in _ASSISTANT_ROLES:
        raise err("messages", f"the second turn is {turns[1][0]!r}, expected the assistant's")

    audios = _audio_paths(row)
    if not isinstance(audios, list) or len(audios) != 1 or not isinstance(audios[0], str) or not audios[0]:
        raise err("audios", f"expected one audio path (a list of one, or a string), got {audios!r}")
    user = turns[0][1]
    n_tokens = user.count(AUDIO_TOKEN)
    if n_tokens > 1:
        raise err("messages", f"{n_tokens} {AUDIO_TOKEN} placeholders for one audio file")
    try:
        question, choices, tail = parse_user_text(user.replace(AUDIO_TOKEN, ""))
    except ValueError as e:
        raise err("messages", str(e)) from None
    if not question:
        raise err("messages", "no question text before the options")

    answer: int | None = None
    reply = turns[1][1].strip() if len(turns) == 2 else ""
    try:
        rationale, reply = split_think(reply)
    except ValueError as e:
        raise err("messages", str(e)) from None
    if rationale and not reply:
        # Reasoning without an answer is no label; reading it as unlabelled would hide the row's defect.
        raise err("messages", "the assistant's answer holds a <think> block but no answer after it")
    if reply:
        answer = parse_answer(reply, choices)
        if answer is None:
            raise err("messages", f"cannot tell which option the assistant's answer {reply!r} names")

    base = Path(audio_root) if audio_root is not None else (Path(path).parent if path is not None else Path.cwd())
    audio_path = Path(os.path.realpath(base / audios[0]))  # an absolute path ignores base

    extra = {k: row[k] for k in EXTRA_KEYS if isinstance(row.get(k), str) and row[k]}
    split = extra.get("split", "")
    if answer is None and not split:
        # No split and no answer: an unlabelled set, which records allow only on such splits.
        split = "test-unlabelled"
    place = {"item": item} if item is not None else {"line": line}
    meta: dict[str, Any] = {"interchange": {"file": str(path) if path is not None else None, **place}}
    unused = {k: v for k, v in row.items() if k not in _READ_KEYS}
    if unused:  # images, tools, a GRPO solution column...: kept, never dropped without a word
        meta["interchange"]["unused"] = unused
    if system:
        meta["system"] = "\n\n".join(system)
    if tail and tail != INSTRUCTION:
        meta["instruction"] = tail
    number = item + 1 if item is not None else line or 0
    d = {"id": extra.get("id") or f"{Path(path).stem if path else 'row'}-{number}",
         "audio": str(audio_path), "question": question, "choices": choices, "answer": answer,
         "subset": subset or extra.get("subset") or "imported",
         "question_type": extra.get("question_type", ""), "source": extra.get("source", ""),
         "split": split, "meta": meta}
    if rationale:
        d["rationale"] = rationale
    rec = AQARecord.from_dict(d, path=where, line=line)
    rec.audio_path = audio_path
    return rec


def _is_json_array(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


def import_file(path: str | os.PathLike, *, subset: str | None = None,
                audio_root: str | os.PathLike | None = None) -> tuple[list[AQARecord], list[RecordError]]:
    """Read an interchange file: JSON Lines, or one JSON array of rows (as LLaMA-Factory's own
    demo files are). Returns the records and one RecordError per skipped row; never raises
    for a bad row, only when the file itself cannot be read (OSError, UserError)."""
    path = Path(path)
    if not _is_json_array(path):
        return parse_lines(path, lambda row, lineno: from_interchange(row, path=path, line=lineno,
                                                                      audio_root=audio_root, subset=subset))
    try:
        rows = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: starts like a JSON array but is not valid JSON ({e})") from None
    records: list[AQARecord] = []
    errors: list[RecordError] = []
    for i, row in enumerate(rows):
        try:
            records.append(from_interchange(row, path=path, item=i, audio_root=audio_root, subset=subset))
        except RecordError as e:
            errors.append(e)
    return records, errors


def _under(p: Path, folder: Path) -> bool:
    return folder == p or folder in p.parents


def imported_root(records: list[AQARecord], base: str | os.PathLike) -> Path | None:
    """The dataset root an imported file's readers accept its audio under: `base` (the
    folder relative paths started from: --audio-root or the input's folder) when it holds
    every clip, else the deepest folder that does; None when only the filesystem's root does
    (readers then need --allow-outside-root)."""
    clips = [Path(os.path.realpath(r.audio_path or r.audio)) for r in records]
    base = Path(os.path.realpath(base))
    root = base if all(_under(p, base) for p in clips) else Path(os.path.commonpath([p.parent for p in clips]))
    return None if root == Path(root.anchor) else root


def write_imported(records: list[AQARecord], out: str | os.PathLike, *, root: str | os.PathLike | None = None,
                   ) -> tuple[Path, int]:
    """Write imported records with audio paths relative to the output's folder where the
    audio lies under it, absolute elsewhere; `root` (`imported_root`) is recorded for the
    paths outside, as the converters record theirs, so that readers accept them without
    --allow-outside-root. Returns (path, how many paths lie outside)."""
    out = Path(out)
    folder = Path(os.path.realpath(out.parent))
    outside = 0
    for r in records:
        p = r.audio_path or Path(r.audio)
        if _under(p, folder):
            r.audio = os.path.relpath(p, folder)
        else:
            r.audio, outside = str(p), outside + 1
    return write_records(out, records, dataset_root=root), outside


# --------------------------------------------------------------------------- CLI

def register(subparsers) -> None:
    e = subparsers.add_parser("export", help="write records as ms-swift / LLaMA-Factory multimodal JSONL",
                              description="Write records as ms-swift / LLaMA-Factory 'messages' + 'audios' JSONL.")
    e.add_argument("file", type=Path, help="records JSONL")
    e.add_argument("--format", choices=FORMATS, default="swift", dest="fmt")
    e.add_argument("-o", "--output", type=Path, required=True, help="output JSONL")
    e.add_argument("--relative-paths", action="store_true",
                   help="write audio paths relative to the output's folder (default: absolute). Neither "
                        "tool resolves them there by itself: the export prints the setting that makes it "
                        "(ms-swift: the ROOT_IMAGE_DIR environment variable; LLaMA-Factory: media_dir)")
    e.add_argument("--root", type=Path, help="dataset root audio paths must stay under (default: the file's folder)")
    e.add_argument("--allow-outside-root", action="store_true", help="accept audio paths outside the root")
    e.add_argument("--strict", action="store_true", help="exit 1 when any input line was skipped")
    e.set_defaults(func=run_export)

    i = subparsers.add_parser("import", help="read ms-swift / LLaMA-Factory multimodal data back into records",
                              description="Read 'messages' + 'audios' rows (as `aqa data export` writes, or "
                                          "ms-swift's and LLaMA-Factory's documented shapes: JSON Lines or one JSON "
                                          "array; messages, conversations or ShareGPT pairs; audios or audio) into "
                                          "records. A file that yields no record is an error.")
    i.add_argument("file", type=Path, help="interchange JSONL or JSON array")
    i.add_argument("-o", "--output", type=Path, required=True, help="records JSONL to write")
    i.add_argument("--subset", help="subset for every record (default: the row's 'subset', else 'imported')")
    i.add_argument("--audio-root", type=Path, help="folder relative audio paths start from (default: the file's folder)")
    i.add_argument("--strict", action="store_true", help="exit 1 when any input line was skipped")
    i.set_defaults(func=run_import)


def _read(command: str, read: Callable[[], tuple[list[AQARecord], list[RecordError]]],
          ) -> tuple[list[AQARecord], list[RecordError]] | None:
    """`read()`, each skipped line printed; None, after saying why, when the file cannot be read."""
    try:
        records, errors = read()
    except (OSError, UnicodeDecodeError) as e:
        print(f"aqa data {command}: cannot read: {e}", file=sys.stderr)
        return None
    for e in errors:
        print(f"skipped: {e}", file=sys.stderr)
    return records, errors


def _no_records(path: Path, errors: list[RecordError]) -> NoRecords:
    if not errors:
        return NoRecords(f"{path}: no records: the file is empty")
    return NoRecords(f"{path}: no records: all {len(errors)} row(s) were skipped; the first: {errors[0]}")


def run_export(args: argparse.Namespace) -> int:
    read = _read("export", lambda: read_records(args.file, root=args.root,
                                                allow_outside_root=args.allow_outside_root))
    if read is None:
        return 2
    records, errors = read
    if not records:
        raise NoRecords(why_no_records(args.file, errors))
    out, n = export_records(records, args.output, args.fmt, relative_paths=args.relative_paths)
    print(f"wrote {out}: {n} rows ({args.fmt}), {sum(r.answer is None for r in records)} unlabelled, "
          f"{len(errors)} input line(s) skipped")
    if args.fmt == "llamafactory":
        entry = {args.output.stem: {"file_name": str(out.resolve()), **LLAMAFACTORY_DATASET_INFO}}
        print("LLaMA-Factory dataset_info.json entry:\n" + json.dumps(entry, indent=2))
    if args.relative_paths:
        print("relative audio paths: set " + relative_path_setting(args.fmt, out))
    return 1 if args.strict and errors else 0


def run_import(args: argparse.Namespace) -> int:
    read = _read("import", lambda: import_file(args.file, subset=args.subset, audio_root=args.audio_root))
    if read is None:
        return 2
    records, errors = read
    if not records:
        raise _no_records(args.file, errors)
    root = imported_root(records, args.audio_root if args.audio_root is not None else args.file.parent)
    out, outside = write_imported(records, args.output, root=root)
    unlabelled = sum(r.answer is None for r in records)
    print(f"wrote {out}: {len(records)} records ({unlabelled} unlabelled), {len(errors)} line(s) skipped")
    with_system = sum("system" in r.meta for r in records)
    if with_system:
        print(f"{with_system} record(s) came with a system prompt, kept in meta 'system' (aqa's prompt has none)")
    unused = sorted({k for r in records for k in r.meta["interchange"].get("unused", {})})
    if unused:
        print(f"keys aqa does not read ({', '.join(unused)}) kept in meta 'interchange' 'unused' of "
              f"{sum('unused' in r.meta['interchange'] for r in records)} record(s)")
    if outside and root is not None:
        print(f"{outside} audio path(s) lie outside {out.parent}, under {root}: written absolute, that root "
              f"recorded in {root_file(out)} for readers")
    elif outside:
        print(f"note: {outside} audio path(s) lie outside {out.parent} and share no folder but the filesystem's "
              f"root; they are written absolute and readers need --allow-outside-root", file=sys.stderr)
    return 1 if args.strict and errors else 0


__all__ = ["FORMATS", "AUDIO_TOKEN", "LLAMAFACTORY_DATASET_INFO", "RELATIVE_PATH_SETTINGS", "to_interchange",
           "assistant_text", "split_think",
           "export_records", "relative_path_setting", "parse_user_text", "from_interchange", "import_file",
           "imported_root", "write_imported"]
