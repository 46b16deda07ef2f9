"""`aqa data check`: validate a records file, decode its audio, and look for leakage.

What is checked:

- every line is a valid AQA record (`aqa.data.records`), each bad one named by file, line and field;
- counts per subset, per question type (within its subset), per number of options and per
  answer letter (a skewed letter distribution is worth knowing before shuffling options);
- the defects converters recorded in ``meta["defects"]`` (a list of strings or of objects
  with a ``"kind"`` key), grouped by kind with the records' ids;
- every distinct audio file is read once: hashed (SHA-256 of its bytes) and, unless
  ``--no-audio``, decoded with :func:`aqa.data.audio.load_audio`; undecodable or unusable
  files are listed with their AudioError kind, clips longer than the model hears are flagged
  (its limit with ``--model``, ``--audio-limit`` seconds, else Qwen2-Audio's 30 s): they are
  truncated to it;
- with ``--model``: prompts longer than the model takes (``max_prompt_tokens``, counted from
  the question, options and clip length without running the model), which eval and training skip;
- records whose question or options hold a special-token string (``<|im_end|>``, an audio
  placeholder such as ``<|AUDIO|>`` or ``<sound>``, ``[INST]``): the model's own with ``--model``,
  else the six families' (`SPECIAL_MARKERS`). The models read such text as plain text, never as
  the token, but it is rarely what the question meant (the answer is an option's index, so the
  options cover it);
- duplicate ids, duplicate audio (different paths with identical bytes) and duplicate items
  (same audio bytes and same question) within the file;
- with ``--against OTHER.jsonl``: leakage, i.e. audio whose bytes also occur in OTHER (by
  content hash, so copies under other names count) and, stricter, the same question asked
  about the same audio in both files. OTHER's audio is hashed, not decoded. Also rationales:
  a record of FILE whose ``rationale`` repeats the reference reasoning of an item of OTHER
  (its ``rationale``, or ``meta["reference_reasoning"]`` where evaluation converters keep it),
  one pair per line. Texts are compared as case-folded words, punctuation and spacing
  ignored (`aqa.textnorm.loose_key`); a pair is flagged when the two texts are the same, or
  when they share a passage of `PASSAGE_WORDS` (20) or more consecutive words. Twenty words
  is longer than any stock phrase of a reasoning style ("let me listen to the audio
  carefully") yet far shorter than a reasoning, so a copied sentence or two is found while
  two independent reasonings about similar sounds are not. A text or passage found in more
  than `STOCK_RATIONALES` (5) rationales of either file is a template, not a copy of one
  item: it is not flagged, and its words do not count towards the 20 of another passage.

Hard errors and warnings (the exit code):

- exit 2: FILE (or OTHER) cannot be read at all (missing, a folder, not UTF-8);
- exit 1: hard errors in FILE, i.e. lines that are not valid records (they would be
  silently dropped by every command downstream) or duplicate ids (predictions, resumption
  and submissions are keyed by id, so a repeated id loses an item);
- exit 0 otherwise. Defects, undecodable audio, long clips, overlong prompts, special-token
  strings, duplicate audio, duplicate items and leakage (rationales too) are warnings:
  reported, and fatal only with ``--strict``. Problems in OTHER are reported but never
  change the exit code: the command checks FILE.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aqa.data.audio import MODEL_WINDOW_S, AudioError, file_hash, header_duration, load_audio
from aqa.data.records import REFERENCE_REASONING, AQARecord, read_records
from aqa.io import iter_jsonl, write_json
from aqa.prompts import LETTERS
from aqa.textnorm import loose_key, question_key

#: Exit codes of `aqa data check`.
EXIT_OK, EXIT_HARD, EXIT_UNREADABLE = 0, 1, 2

#: Special-token strings of the six families' tokenizers, looked for without --model (with it,
#: the model's own `special_strings`). The data layer reads no tokenizer, so they are written
#: out here; tests/test_special_text.py checks that they match every special string of each
#: family's tiny model (whose tokenizers carry the released token names).
#: - `<|name|>`: Qwen2-Audio, Qwen2.5-Omni, Qwen3-Omni and Audio Flamingo 3 (Qwen2/Qwen2.5/Qwen3
#:   tokenizers: <|endoftext|>, <|im_start|>, <|im_end|>, <|AUDIO|>, <|audio_bos|>, <|audio_pad|>,
#:   <|vision_start|>, <|fim_prefix|>, ...) and Kimi-Audio (<|im_kimia_text_blank|>,
#:   <|im_media_begin|>, <|reserved_token_N|>, ...: tokenization_kimia.py's table, as
#:   aqa/models/kimi_audio.py's `special_token_names` copies it);
#: - Audio Flamingo 3's audio placeholder <sound>, and the added tokens Qwen2.5 and Qwen3
#:   tokenizers write without bars: <tool_call>, <tool_response>, <think> and their closing tags;
#: - Kimi-Audio's [BOS], [EOS], [EOT];
#: - Voxtral: mistral-common's control tokens (`mistral_common.tokens.tokenizers.base.SpecialTokens`,
#:   mistral-common 1.13) and Tekken's fillers <SPECIAL_N>.
SPECIAL_MARKERS = re.compile("|".join([
    r"<\|[A-Za-z0-9_]+\|>", r"<SPECIAL_\d+>",
    *map(re.escape, ["<sound>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>",
                     "</think>", "[BOS]", "[EOS]", "[EOT]", "<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]",
                     "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]",
                     "[IMG]", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]",
                     "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]", "[ARGS]", "[CALL_ID]", "[AUDIO]", "[BEGIN_AUDIO]",
                     "[TRANSCRIBE]", "[THINK]", "[/THINK]", "[STREAMING_PAD]", "[STREAMING_WORD]",
                     "[NEXT_AUDIO_TEXT]", "[REPEAT_AUDIO_TEXT]", "[MODEL_SETTINGS]", "[/MODEL_SETTINGS]"])]))


#: A shared run of this many words makes two rationales a leak (the module docstring says why).
PASSAGE_WORDS = 20
#: A text or passage in more rationales than this, in either file, is a template, not a leak.
STOCK_RATIONALES = 5


def reference_reasonings(record: AQARecord) -> list[str]:
    """The reference reasoning texts an item carries: its rationale and the evaluation
    reasoning a converter kept in meta (`REFERENCE_REASONING`)."""
    texts = [record.rationale, record.meta.get(REFERENCE_REASONING)]
    return list(dict.fromkeys(t for t in texts if isinstance(t, str) and t.strip()))


def _passages(words: list[str]) -> list[str]:
    return [" ".join(words[i:i + PASSAGE_WORDS]) for i in range(len(words) - PASSAGE_WORDS + 1)]


def _runs(positions: list[int]) -> list[tuple[int, int]]:
    """(first, last) of each run of consecutive numbers in the ascending `positions`."""
    runs: list[tuple[int, int]] = []
    for i in positions:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def leaked_rationales(records: Iterable[AQARecord], others: Iterable[AQARecord]) -> list[dict]:
    """One entry per (record, other) pair whose texts match under the rule in the module
    docstring: id, other_id, kind ("same" or "passage"), words (the length of the record's
    longest stretch made of passages the other text has; the whole text for "same") and
    passage (that stretch, cut to 30 words)."""
    theirs = [(o.id, loose_key(t).split()) for o in others for t in reference_reasonings(o)]
    mine = [(r.id, loose_key(r.rationale).split()) for r in records if r.rationale and r.rationale.strip()]
    # Indexes count rationales, not occurrences: one text repeating itself is no template.
    whole: dict[str, set[str]] = defaultdict(set)
    grams: dict[str, set[str]] = defaultdict(set)
    for oid, words in theirs:
        if words:
            whole[" ".join(words)].add(oid)
        for g in set(_passages(words)):
            grams[g].add(oid)
    mine_whole = Counter(" ".join(w) for _, w in mine if w)
    mine_grams: Counter[str] = Counter()
    found: list[tuple[str, list[str], dict[int, str]]] = []
    for rid, words in mine:
        shared = {i: g for i, g in enumerate(_passages(words)) if g in grams}
        mine_grams.update(set(shared.values()))
        found.append((rid, words, shared))

    def template(other_ids: set[str], n_mine: int) -> bool:
        return len(other_ids) > STOCK_RATIONALES or n_mine > STOCK_RATIONALES

    out: list[dict] = []
    for rid, words, shared in found:
        text = " ".join(words)
        same = whole.get(text, set())
        if not text or template(same, mine_whole[text]):
            same = set()
        out += [{"id": rid, "other_id": oid, "kind": "same", "words": len(words), "passage": " ".join(words[:30])}
                for oid in sorted(same)]
        # A word inside a template passage counts for no pair: otherwise the passage that
        # runs one word past a template would be a 20-word match of its own.
        stock = [False] * len(words)
        at: dict[str, list[int]] = defaultdict(list)
        for i, g in shared.items():
            if template(grams[g], mine_grams[g]):
                stock[i:i + PASSAGE_WORDS] = [True] * PASSAGE_WORDS
            else:
                for oid in grams[g] - same:
                    at[oid].append(i)
        for oid, positions in sorted(at.items()):
            spans = [(a, b + PASSAGE_WORDS) for a, b in _runs(positions)
                     if sum(not stock[k] for k in range(a, b + PASSAGE_WORDS)) >= PASSAGE_WORDS]
            if spans:
                a, b = max(spans, key=lambda ab: ab[1] - ab[0])
                out.append({"id": rid, "other_id": oid, "kind": "passage", "words": b - a,
                            "passage": " ".join(words[a:min(b, a + 30)])})
    return out


def marker_pattern(strings: Iterable[str]) -> re.Pattern:
    """A pattern matching any of `strings`, the longest first (`<|im_end|>` before `<|im|>`)."""
    names = sorted(set(strings), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, names)) if names else "(?!)")


def special_text(records: Iterable[AQARecord], markers: re.Pattern = SPECIAL_MARKERS) -> list[dict]:
    """One entry per record whose question or options hold a string `markers` matches: its id
    and, per field ("question", "choice B"), the strings found, in order."""
    out = []
    for r in records:
        texts = [("question", r.question), *((f"choice {LETTERS[i]}", c) for i, c in enumerate(r.choices))]
        found = {f: list(dict.fromkeys(markers.findall(t))) for f, t in texts}
        found = {f: m for f, m in found.items() if m}
        if found:
            out.append({"id": r.id, "found": found})
    return out


@dataclass
class AudioInfo:
    """What reading one distinct audio file found."""
    path: str
    sha256: str | None = None  # None when the file could not be read at all
    duration: float | None = None  # None when not decoded
    format: str | None = None
    error: dict | None = None  # AudioError.to_dict() when the file is unusable


@dataclass
class CheckReport:
    """Everything `aqa data check` found; `to_dict` is the JSON report."""
    file: str
    against: str | None = None
    decoded_audio: bool = True
    n_records: int = 0
    n_labelled: int = 0
    #: Lines skipped as invalid records (RecordError.to_dict()).
    invalid: list[dict] = field(default_factory=list)
    subsets: dict[str, int] = field(default_factory=dict)
    #: subset -> question type -> count ("" when a record has no type).
    question_types: dict[str, dict[str, int]] = field(default_factory=dict)
    n_choices: dict[str, int] = field(default_factory=dict)
    answer_letters: dict[str, int] = field(default_factory=dict)
    #: defect kind -> ids of the records that carry it.
    defects: dict[str, list[str]] = field(default_factory=dict)
    #: One entry per defect: id, kind and the converter's full entry.
    defect_details: list[dict] = field(default_factory=list)
    #: id -> line numbers where it occurs (only ids that valid records repeat).
    duplicate_ids: dict[str, list[int]] = field(default_factory=dict)
    n_audio_files: int = 0
    #: One entry per unusable file: file, kind, problem, ids.
    audio_errors: list[dict] = field(default_factory=list)
    #: The model whose limits were checked (--model), if any.
    model: str | None = None
    #: Seconds of audio one prompt carries; longer clips are truncated to it (None: no limit).
    audio_limit_s: float | None = MODEL_WINDOW_S
    #: One entry per clip longer than `audio_limit_s`: file, duration, ids.
    long_clips: list[dict] = field(default_factory=list)
    #: The longest prompt (tokens) the model takes, with --model.
    prompt_limit: int | None = None
    #: One entry per record whose prompt is longer than `prompt_limit`: id, tokens.
    long_prompts: list[dict] = field(default_factory=list)
    #: One entry per record whose question or options hold a special-token string (the model's
    #: with --model, else `SPECIAL_MARKERS`): id, found (field -> strings).
    special_text: list[dict] = field(default_factory=list)
    #: Groups of different paths with identical bytes: sha256, files, ids.
    duplicate_audio: list[dict] = field(default_factory=list)
    #: Groups of records asking the same question about the same audio bytes.
    duplicate_items: list[dict] = field(default_factory=list)
    #: Audio shared with the --against file: sha256, files, other_files, ids, other_ids.
    leaked_audio: list[dict] = field(default_factory=list)
    #: The same question on the same audio in both files: sha256, question, ids, other_ids.
    leaked_questions: list[dict] = field(default_factory=list)
    #: Rationales of this file that repeat an item's reference reasoning in the --against file,
    #: one entry per pair (`leaked_rationales`): id, other_id, kind, words, passage.
    leaked_rationales: list[dict] = field(default_factory=list)
    #: Invalid lines of the --against file (reported, never fatal).
    against_invalid: list[dict] = field(default_factory=list)
    against_n_records: int = 0

    @property
    def hard_errors(self) -> int:
        # A file without a single usable record is an error in itself: "ok" would send an
        # empty file on to evaluation or training.
        return len(self.invalid) + len(self.duplicate_ids) + (self.n_records == 0)

    @property
    def warnings(self) -> int:
        return (sum(len(v) for v in self.defects.values()) + len(self.audio_errors) + len(self.long_clips)
                + len(self.long_prompts) + len(self.special_text) + len(self.duplicate_audio)
                + len(self.duplicate_items) + len(self.leaked_audio)
                + len(self.leaked_questions) + len(self.leaked_rationales))

    def exit_code(self, strict: bool = False) -> int:
        if self.hard_errors or (strict and self.warnings):
            return EXIT_HARD
        return EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hard_errors"], d["warnings"] = self.hard_errors, self.warnings
        return d


# --------------------------------------------------------------------------- helpers

def _defect_entries(meta: dict) -> list[tuple[str, Any]]:
    """(kind, original entry) for each defect a converter recorded. Strings of the form
    "kind: detail" group under "kind", so one kind does not split per detail."""
    raw = meta.get("defects")
    if raw is None:
        return []
    items: Iterable[Any] = raw if isinstance(raw, list) else [raw]
    out = []
    for item in items:
        if isinstance(item, dict):
            kind = item.get("kind")
            out.append((str(kind) if kind else "unspecified", item))
        elif isinstance(item, str):
            out.append((item.split(":", 1)[0].strip() or item, item))
        else:
            out.append(("unspecified", item))
    return out


def _ids_per_line(path: Path) -> dict[str, list[int]]:
    """id -> line numbers, from a raw scan; records do not keep their line numbers. Lines that
    are not JSON are already reported as invalid records, so they are passed over here."""
    where: dict[str, list[int]] = defaultdict(list)
    for lineno, obj in iter_jsonl(path, yield_bad=True):
        if isinstance(obj, dict) and isinstance(obj.get("id"), str):
            where[obj["id"]].append(lineno)
    return where


def _read_one(path: Path, decode: bool) -> AudioInfo:
    info = AudioInfo(path=str(path))
    if decode:
        try:
            # 'keep' skips the truncation copy; the duration is the file's either way.
            a = load_audio(path, long_policy="keep")
        except AudioError as e:
            info.error = e.to_dict()
        except Exception as e:  # noqa: BLE001 - one odd file must not stop a check of thousands
            info.error = AudioError(path, "not-audio", f"decoding failed ({type(e).__name__}: {e})").to_dict()
        else:
            info.sha256, info.duration, info.format = a.sha256, a.duration, a.format
            return info
    elif not path.is_file():
        info.error = AudioError(path, "missing", "file not found").to_dict()
    # Undecodable files are still hashed: a broken file copied into two splits is leakage too.
    if path.is_file():
        try:
            info.sha256 = file_hash(path)
        except OSError as e:
            info.error = info.error or AudioError(path, "missing", f"cannot read ({e})").to_dict()
    return info


def read_audio_files(paths: Iterable[Path], *, decode: bool = True, workers: int | None = None,
                     cache: dict[Path, AudioInfo] | None = None, desc: str = "audio") -> dict[Path, AudioInfo]:
    """Hash (and decode) each distinct path once, in parallel, with a progress bar.
    `cache` carries results across calls, so a file both lists share is read once."""
    from tqdm import tqdm

    cache = {} if cache is None else cache
    todo = sorted({Path(p) for p in paths} - set(cache))
    if todo:
        workers = workers or min(8, os.cpu_count() or 1)
        # libsndfile, soxr and hashlib release the GIL, so threads overlap the decoding.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = pool.map(lambda p: _read_one(p, decode), todo)
            for p, info in zip(todo, tqdm(results, total=len(todo), desc=desc, unit="file", disable=None)):
                cache[p] = info
    return cache


def _count(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


# --------------------------------------------------------------------------- library

def check_records(path: str | os.PathLike, against: str | os.PathLike | None = None,
                  decode_audio: bool = True, *, root: str | os.PathLike | None = None,
                  allow_outside_root: bool = False, workers: int | None = None, model=None,
                  model_name: str | None = None, audio_limit: float | None = None,
                  max_prompt_tokens: int | None = None) -> CheckReport:
    """Check one records file (and its leakage into `against`). Raises OSError or
    UnicodeDecodeError only when a file cannot be read at all; every other problem is
    collected in the returned report.

    `model`: a backend without weights (`aqa.models.registry.load_without_weights`; anything
    with its `audio_seconds`, `max_prompt_tokens`, `too_long` and `special_strings`), whose limits
    the clips and prompts are checked against, and whose special tokens the text; `audio_limit`
    and `max_prompt_tokens` override the limits."""
    path = Path(path)
    records, errors = read_records(path, root=root, allow_outside_root=allow_outside_root)
    rep = CheckReport(file=str(path), against=str(against) if against is not None else None,
                      decoded_audio=decode_audio, n_records=len(records),
                      n_labelled=sum(r.labelled for r in records),
                      invalid=[e.to_dict() for e in errors], model=model_name)
    if audio_limit is not None:
        rep.audio_limit_s = audio_limit
    elif model is not None:
        rep.audio_limit_s = model.audio_seconds

    # Counts.
    rep.subsets = _count(r.subset for r in records)
    by_subset: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        by_subset[r.subset][r.question_type] += 1
    rep.question_types = {s: dict(sorted(c.items())) for s, c in sorted(by_subset.items())}
    rep.n_choices = {str(k): v for k, v in sorted(Counter(len(r.choices) for r in records).items())}
    rep.answer_letters = _count(LETTERS[r.answer] for r in records if r.answer is not None)

    # Defects recorded by converters.
    defects: dict[str, list[str]] = defaultdict(list)
    for r in records:
        for kind, entry in _defect_entries(r.meta):
            defects[kind].append(r.id)
            rep.defect_details.append({"id": r.id, "kind": kind, "entry": entry})
    rep.defects = dict(sorted(defects.items()))

    # Duplicate ids among valid records, located by the lines that carry them.
    id_counts = Counter(r.id for r in records)
    if any(n > 1 for n in id_counts.values()):
        lines = _ids_per_line(path)
        rep.duplicate_ids = {i: lines.get(i, []) for i, n in sorted(id_counts.items()) if n > 1}

    # Audio: each distinct file once.
    cache: dict[Path, AudioInfo] = {}
    read_audio_files((r.audio_path for r in records), decode=decode_audio, workers=workers,
                     cache=cache, desc=path.name)
    rep.n_audio_files = len({r.audio_path for r in records})
    ids_by_file: dict[Path, list[str]] = defaultdict(list)
    for r in records:
        ids_by_file[r.audio_path].append(r.id)
    files_by_hash: dict[str, set[Path]] = defaultdict(set)
    for p, ids in sorted(ids_by_file.items()):
        info = cache[p]
        if info.error:
            rep.audio_errors.append({**info.error, "ids": ids})
        if (info.duration is not None and rep.audio_limit_s is not None
                and info.duration > rep.audio_limit_s + 1e-6):
            rep.long_clips.append({"file": str(p), "duration": round(info.duration, 3), "ids": ids})
        if info.sha256:
            files_by_hash[info.sha256].add(p)
    for h, files in sorted(files_by_hash.items()):
        if len(files) > 1:
            fs = sorted(files)
            rep.duplicate_audio.append({"sha256": h, "files": [str(f) for f in fs],
                                        "ids": [i for f in fs for i in ids_by_file[f]]})

    if model is not None:
        # A clip's length as decoded, or from its header when not decoded (--no-audio).
        rep.prompt_limit = max_prompt_tokens or model.max_prompt_tokens
        over = model.too_long(records, lambda r: cache[r.audio_path].duration or header_duration(r.audio_path),
                              limit=rep.prompt_limit)
        rep.long_prompts = [{"id": r.id, "tokens": n} for r, n in over]

    markers = SPECIAL_MARKERS if model is None else marker_pattern(model.special_strings)
    rep.special_text = special_text(records, markers)

    def item_key(r: AQARecord) -> tuple[str, str] | None:
        h = cache[r.audio_path].sha256
        return (h, question_key(r.question)) if h else None

    items: dict[tuple[str, str], list[AQARecord]] = defaultdict(list)
    for r in records:
        if (k := item_key(r)) is not None:
            items[k].append(r)
    for (h, _), group in items.items():
        if len(group) > 1:
            rep.duplicate_items.append({"sha256": h, "question": group[0].question,
                                        "ids": [r.id for r in group]})

    if against is not None:
        _check_leakage(rep, records, Path(against), cache, root=root,
                       allow_outside_root=allow_outside_root, workers=workers, item_key=item_key)
    return rep


def _check_leakage(rep: CheckReport, records: list[AQARecord], other_path: Path,
                   cache: dict[Path, AudioInfo], *, root, allow_outside_root: bool, workers, item_key) -> None:
    others, errors = read_records(other_path, root=root, allow_outside_root=allow_outside_root,
                                  require_answer=False)
    rep.against_n_records = len(others)
    rep.against_invalid = [e.to_dict() for e in errors]
    # Files already decoded for FILE keep their result; the rest are only hashed.
    read_audio_files((o.audio_path for o in others), decode=False, workers=workers, cache=cache,
                     desc=other_path.name)

    def by_hash(recs: list[AQARecord]) -> dict[str, list[AQARecord]]:
        out: dict[str, list[AQARecord]] = defaultdict(list)
        for r in recs:
            if h := cache[r.audio_path].sha256:
                out[h].append(r)
        return out

    mine, theirs = by_hash(records), by_hash(others)
    for h in sorted(mine.keys() & theirs.keys()):
        a, b = mine[h], theirs[h]
        rep.leaked_audio.append({
            "sha256": h,
            "files": sorted({str(r.audio_path) for r in a}),
            "other_files": sorted({str(r.audio_path) for r in b}),
            "ids": [r.id for r in a], "other_ids": [r.id for r in b]})
    their_items: dict[tuple[str, str], list[str]] = defaultdict(list)
    for o in others:
        if (k := item_key(o)) is not None:
            their_items[k].append(o.id)
    mine_items: dict[tuple[str, str], list[AQARecord]] = defaultdict(list)
    for r in records:
        if (k := item_key(r)) is not None and k in their_items:
            mine_items[k].append(r)
    for k, group in mine_items.items():
        rep.leaked_questions.append({"sha256": k[0], "question": group[0].question,
                                     "ids": [r.id for r in group], "other_ids": their_items[k]})
    rep.leaked_rationales = leaked_rationales(records, others)


# --------------------------------------------------------------------------- text report

def _ids(ids: list[str], limit: int = 8) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def format_report(rep: CheckReport, *, limit: int = 20) -> str:
    """The report as text for a terminal; each list is cut at `limit` entries (the JSON
    report keeps everything)."""
    out: list[str] = []
    w = out.append
    home = Path(os.path.realpath(Path(rep.file).parent))

    def short(f: str) -> str:
        # Paths under the checked file's folder are shown relative to it; the JSON keeps them whole.
        p = Path(f)
        return os.path.relpath(p, home) if home in p.parents else f

    def section(header: str, items: list, line: Callable[[Any], str]) -> None:
        w(header)
        for x in items[:limit]:
            w(line(x))
        if len(items) > limit:
            w(f"    ... and {len(items) - limit} more (see --json)")

    def invalid_line(e: dict) -> str:
        fld = f" field '{e['field']}'" if e["field"] else ""
        return f"    {e['file']}:{e['line']}:{fld} {e['problem']}"

    w(f"== {rep.file}")
    w(f"records: {rep.n_records} valid ({rep.n_labelled} labelled), {len(rep.invalid)} invalid line(s)")
    for s, n in rep.subsets.items():
        types = ", ".join(f"{t or '(none)'} {c}" for t, c in rep.question_types.get(s, {}).items())
        w(f"  {s}: {n}  [{types}]")
    if rep.n_choices:
        w("options per item: " + ", ".join(f"{k}: {v}" for k, v in rep.n_choices.items()))
    if rep.answer_letters:
        w("answer letters:   " + ", ".join(f"{k}: {v}" for k, v in rep.answer_letters.items()))

    w("")
    w(f"HARD ERRORS: {rep.hard_errors}")
    if rep.n_records == 0:
        w("  no usable record in the file")
    if rep.invalid:
        section(f"  invalid records ({len(rep.invalid)}):", rep.invalid, invalid_line)
    if rep.duplicate_ids:
        section(f"  duplicate ids ({len(rep.duplicate_ids)}):", list(rep.duplicate_ids.items()),
                lambda kv: f"    {kv[0]}: lines {', '.join(map(str, kv[1]))}")

    w("")
    w(f"WARNINGS: {rep.warnings}")
    if rep.defects:
        w(f"  defects recorded by the converter ({sum(map(len, rep.defects.values()))}):")
        for kind, ids in rep.defects.items():
            w(f"    {kind} ({len(ids)}): {_ids(ids)}")
    audio_what = "decoded" if rep.decoded_audio else "hashed, not decoded"
    w(f"  audio files: {rep.n_audio_files} ({audio_what})")
    if rep.audio_errors:
        kinds = Counter(e["kind"] for e in rep.audio_errors)
        section(f"  unusable audio ({len(rep.audio_errors)}: "
                + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + "):", rep.audio_errors,
                lambda e: f"    [{e['kind']}] {short(e['file'])}: {e['problem']}  (ids: {_ids(e['ids'])})")
    whose = "the model's" if rep.model else "the limit of"
    if rep.long_clips:
        section(f"  {len(rep.long_clips)} clip(s) longer than {whose} {rep.audio_limit_s:g} s: truncated to it",
                rep.long_clips, lambda c: f"    {short(c['file'])}: {c['duration']:.1f} s  (ids: {_ids(c['ids'])})")
    if rep.long_prompts:
        section(f"  {len(rep.long_prompts)} prompt(s) longer than {whose} {rep.prompt_limit} tokens: eval and "
                f"training skip them", rep.long_prompts, lambda p: f"    {p['id']}: {p['tokens']} tokens")
    if rep.special_text:
        whose_tokens = f"{rep.model}'s tokenizer" if rep.model else "the six families' tokenizers"
        section(f"  {len(rep.special_text)} record(s) hold special-token strings of {whose_tokens}: the models "
                f"read them as plain text", rep.special_text,
                lambda x: f"    {rep.file}: {x['id']}: "
                          + ", ".join(f"{' '.join(ms)} in {f}" for f, ms in x["found"].items()))
    if rep.duplicate_audio:
        section(f"  identical audio under different paths ({len(rep.duplicate_audio)} group(s)):",
                rep.duplicate_audio,
                lambda g: f"    {' == '.join(map(short, g['files']))}  (ids: {_ids(g['ids'])})")
    if rep.duplicate_items:
        section(f"  same question on the same audio ({len(rep.duplicate_items)} group(s)):", rep.duplicate_items,
                lambda g: f"    {_ids(g['ids'])}: {g['question']!r}")

    if rep.against is not None:
        w("")
        w(f"== leakage against {rep.against} ({rep.against_n_records} records, "
          f"{len(rep.against_invalid)} invalid line(s) there)")
        section(f"  audio shared by content: {len(rep.leaked_audio)} clip(s), "
                f"{sum(len(g['ids']) for g in rep.leaked_audio)} of this file's records", rep.leaked_audio,
                lambda g: f"    {', '.join(map(short, g['files']))} == {', '.join(map(short, g['other_files']))}")
        section(f"  same question on the same audio: {len(rep.leaked_questions)}", rep.leaked_questions,
                lambda g: f"    {_ids(g['ids'])} ~ {_ids(g['other_ids'])}: {g['question']!r}")
        section(f"  rationale repeating a reference reasoning there: {len(rep.leaked_rationales)} pair(s)",
                rep.leaked_rationales,
                lambda x: f"    {rep.file}: {x['id']} ~ {rep.against}: {x['other_id']}: "
                          + ("same rationale" if x["kind"] == "same" else f"{x['words']} words in common")
                          + f": {x['passage']!r}")
    return "\n".join(out)


# --------------------------------------------------------------------------- CLI

def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="validate a records file, decode its audio, report defects and leakage",
        description=__doc__.split("\n\n")[0],
        epilog="Exit codes: 0 no hard errors; 1 invalid records or duplicate ids (or any "
               "warning with --strict); 2 the file cannot be read.")
    p.add_argument("file", type=Path, help="records JSONL")
    p.add_argument("--against", type=Path,
                   help="another records JSONL to check leakage into (by audio content, question and rationale)")
    p.add_argument("--json", type=Path, dest="json_out", metavar="REPORT.json", help="also write the full report as JSON")
    p.add_argument("--no-audio", action="store_true",
                   help="do not decode audio (files are still hashed for duplicate and leakage checks)")
    p.add_argument("--root", type=Path, help="dataset root audio paths must stay under (default: the file's folder)")
    p.add_argument("--allow-outside-root", action="store_true", help="accept audio paths outside the root")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    p.add_argument("--workers", type=int, default=None, help="threads for reading audio (default: up to 8)")
    p.add_argument("--limit", type=int, default=20, help="entries shown per list in the text report")
    p.add_argument("--model", metavar="PATH_OR_ID",
                   help="check clips and prompts against this model's limits (reads its config and processor, "
                        "not its weights)")
    p.add_argument("--audio-limit", type=float, metavar="SECONDS",
                   help="flag clips longer than this (default: the model's limit, else 30)")
    p.add_argument("--max-prompt-tokens", type=int, default=0,
                   help="with --model: flag prompts longer than this (default: the model's context)")
    # How --model becomes a backend without weights: given by the command line's assembly
    # (aqa/cli.py), since the data layer does not import the models layer.
    p.set_defaults(func=run, load_model=None)


def run(args: argparse.Namespace) -> int:
    try:
        model = args.load_model(args.model) if args.model else None
        rep = check_records(args.file, args.against, decode_audio=not args.no_audio, root=args.root,
                            allow_outside_root=args.allow_outside_root, workers=args.workers, model=model,
                            model_name=args.model, audio_limit=args.audio_limit,
                            max_prompt_tokens=args.max_prompt_tokens or None)
    except (OSError, UnicodeDecodeError) as e:
        print(f"aqa data check: cannot read: {e}", file=sys.stderr)
        return EXIT_UNREADABLE
    print(format_report(rep, limit=args.limit))
    if args.json_out:
        write_json(args.json_out, rep.to_dict())
        print(f"wrote {args.json_out}")
    rc = rep.exit_code(strict=args.strict)
    verdict = "FAILED" if rc else "ok"
    print(f"\n{verdict}: {rep.hard_errors} hard error(s), {rep.warnings} warning(s)")
    return rc
