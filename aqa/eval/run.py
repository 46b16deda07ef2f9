"""`aqa eval`: answer every item of an AQA JSONL with a model (and adapter), write
`predictions.jsonl` and `metrics.json` (their fields: docs/ARCHITECTURE.md).

Resumable: predictions are appended batch by batch, and a rerun with the same settings
skips the ids already written. Items whose audio cannot be decoded are skipped, listed in
`skipped.jsonl` and counted in the metrics.

Sharded: under `torchrun` or `accelerate launch` (or with `--shard I/N` on machines that do
not talk to each other) the batches a single process would make are dealt round the N
processes; each writes OUT/shards/predictions-I-of-N.jsonl (and skipped-...), resumable by
itself. Shard 0 of a launch waits for the others and merges the shards into
predictions.jsonl, in the order one process writes it; after `--shard` runs, a run without
it (nothing left to do) merges. The batches are those of one process, so the merged
predictions equal a 1-process run's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from aqa.config import doc
from aqa.io import UserError, append_jsonl, drop_partial_last_line, safe_name, write_json, write_jsonl

log = logging.getLogger(__name__)


#: What the model hears: the item's clip, silence of its length, no audio, or another item's clip.
AUDIO_MODES = ("normal", "silence", "none", "mismatched")


@dataclass
class EvalSettings:
    """One evaluation's settings. The predictions depend on those in `RESUME_KEYS`, which
    eval_config.json keeps: a resume must match them. The rest say how the evaluation runs."""

    model: str = doc(help="Hugging Face id or local folder")
    adapter: str | None = doc(help="peft adapter folder (RUN/adapter), or None for the base model")
    data: str = doc(help="the AQA JSONL to answer")
    mode: str = doc("score", help="score: option-letter probabilities from one forward pass; generate: greedy "
                                  "decoding; reason-then-score: the model reasons, then the letters are scored after "
                                  "its closed reasoning")
    shuffles: int = doc(1, help="answer each item under this many orders of its options")
    vote: str = doc("probs", help="with shuffles: average the probabilities (probs), or a majority vote")
    max_new_tokens: int | None = doc(None, help="generate and reason-then-score: the token budget of an answer; "
                                               "None: 1024 when the model reasons, else 16")
    seed: int = doc(0, help="seed of the option orders and of the bootstrap intervals")
    audio: str = doc("normal", help="normal; silence (each clip replaced by silence of its length); none (no audio "
                                    "in the prompt); mismatched (each question heard with another item's clip)")
    max_prompt_tokens: int = doc(0, help="skip items whose prompt is longer than this; 0: the model's own limit")
    batch_size: int = doc(8, help="queries per forward pass (an item under K orders puts K)")
    device: str | None = doc(None, help="torch device; None: cuda when available, else cpu")
    dtype: str | None = doc(None, help="auto, bf16, fp16 or fp32; None: bf16 on GPU, fp32 on CPU")
    trust_remote_code: bool = doc(False, help="let transformers run code shipped with the model")
    allow_outside_root: bool = doc(False, help="accept audio paths outside the data file's folder")
    allow_pickle: bool = doc(False, help="load weights saved as pickles (.bin/.pt), which can run code")
    limit: int = doc(0, help="answer only the first N items (0: all)")
    name: str | None = doc(None, help="row name in reports; None: the folder's name")
    overwrite: bool = doc(False, help="discard the predictions already in the folder")
    n_boot: int = doc(1000, help="bootstrap resamples of the 95% intervals")
    reference: str | None = doc(None, help="with audio silence/none: the eval dir made with the audio, for each "
                                           "item's audio contribution")
    group_by_length: bool = doc(True, help="batch clips of like length together (predictions do not change)")
    shard: tuple[int, int] | None = doc(None, help="(i, n): answer only shard i of n, into that shard's files")
    compile: bool = doc(False, help="run the decoder through torch.compile")
    cache_dir: str | None = doc(None, help="where the backend keeps per-clip work (Kimi-Audio's speech tokens)")
    progress: bool = doc(True, help="a progress bar and the summary on stdout")
    thinking: str = doc("auto", help="whether the model reasons first: auto (its chat template mentions <think> or "
                                     "enable_thinking, or the adapter was trained with target=reasoning), on, off")
    adapter_scale: float = doc(1.0, help="scale of the adapter's update (0: the weights under it, 1: as trained)")

    #: The settings the predictions depend on: eval_config.json holds them, and a resume must match.
    RESUME_KEYS = ("model", "adapter", "data", "mode", "shuffles", "vote", "max_new_tokens", "seed", "audio",
                   "max_prompt_tokens", "thinking", "adapter_scale")
    MODES = ("score", "generate", "reason-then-score")

    def __post_init__(self):
        import math

        if self.mode not in self.MODES:
            raise UserError(f"mode must be one of {', '.join(self.MODES)}, got {self.mode!r}")
        if self.thinking not in ("auto", "on", "off"):
            raise UserError(f"thinking must be auto, on or off, got {self.thinking!r}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not (isinstance(self.adapter_scale, (int, float)) and math.isfinite(self.adapter_scale)
                and self.adapter_scale >= 0):
            raise UserError(f"adapter_scale must be a finite number >= 0, got {self.adapter_scale!r}")
        if self.adapter_scale != 1 and not self.adapter:
            raise UserError(f"adapter_scale {self.adapter_scale} scales an adapter's update: name the adapter "
                            f"(--adapter)")
        if self.shuffles < 1:
            raise UserError("shuffles must be >= 1")
        if self.audio not in AUDIO_MODES:
            raise UserError(f"audio must be {', '.join(AUDIO_MODES[:-1])} or {AUDIO_MODES[-1]}, got {self.audio!r}")
        index, n = self.shard or (0, 1)
        if not 0 <= index < n:
            raise UserError(f"shard {index} of {n} does not exist (0 <= I < N)")

    def resume_key(self) -> dict:
        """What eval_config.json holds."""
        return {k: getattr(self, k) for k in self.RESUME_KEYS}


SHARDS = "shards"


@dataclass
class EvalFolder:
    """The files of one eval folder, and those this process appends to (its shard's, when sharded)."""

    out: Path
    index: int  # this process's shard
    n_shards: int

    @property
    def predictions(self) -> Path:
        return self.out / "predictions.jsonl"

    @property
    def skipped(self) -> Path:
        return self.out / "skipped.jsonl"

    @property
    def my_predictions(self) -> Path:
        return (self.out / SHARDS / f"predictions-{self.index}-of-{self.n_shards}.jsonl" if self.n_shards > 1
                else self.predictions)

    @property
    def my_skipped(self) -> Path:
        return (self.out / SHARDS / f"skipped-{self.index}-of-{self.n_shards}.jsonl" if self.n_shards > 1
                else self.skipped)

    def done_files(self) -> list[Path]:
        """The prediction files, the eval dir's own and every shard's."""
        return [f for f in (self.predictions, *sorted((self.out / SHARDS).glob("predictions-*.jsonl"))) if f.is_file()]

    def skip_files(self) -> list[Path]:
        return [f for f in (self.skipped, *(self.out / SHARDS).glob("skipped-*.jsonl")) if f.is_file()]


def evaluate(settings: EvalSettings, out_dir: str | Path, *, backend=None,
             barrier: Callable[[], None] | None = None) -> dict:
    """Evaluate and return the metrics dict: load the items, open the folder (resume or start),
    plan what is left, load the model, answer in batches, then merge the shards and write the
    metrics. `backend` may be passed to reuse a loaded model.

    `settings.shard=(i, n)`: answer only every n-th batch from the i-th, into shard i's files.
    `barrier`: a barrier of the n processes of one launch; then shard 0 merges the shards and
    writes the metrics, and every process returns them. Without it a shard returns a summary of
    its own work, and a later run without `shard` merges."""
    records = load_items(settings)
    passed = backend is not None
    # Whether the model reasons first decides the generation budget (a resume key) and refuses
    # reason-then-score on a model that does not: both known before the folder is made.
    reasons = None if settings.mode == "score" else model_reasons(settings, backend)
    settings = with_budget(settings, reasons)
    folder = open_folder(settings, Path(out_dir), barrier)
    todo, skipped = plan(settings, records, folder)
    if todo and backend is None:
        from aqa.models.registry import load_backend

        backend = load_backend(settings.model, adapter=settings.adapter, device=settings.device,
                               dtype=settings.dtype, trust_remote_code=settings.trust_remote_code,
                               allow_pickle=settings.allow_pickle)
        if settings.compile:
            backend.compile_decoder()
    if backend is not None:
        backend.model.eval()
        if settings.cache_dir:
            backend.set_cache_dir(settings.cache_dir)
        reasons = model_reasons(settings, backend) if reasons is None else reasons
        backend.set_thinking(reasons)
        if settings.adapter and (settings.adapter_scale != 1 or passed):
            # Absolute (alpha / r times the scale): a reused backend gets this evaluation's scale.
            try:
                backend.scale_adapter(settings.adapter_scale)
            except ValueError:
                if settings.adapter_scale != 1:  # a backend given with its adapter merged: nothing to scale
                    raise
    if todo:
        todo = skip_too_long(backend, todo, settings, folder, skipped)
    answer(backend, todo, settings, folder, skipped)
    return finish(settings, records, folder, barrier, reasons)


#: The generation budget when the model reasons first (`max_new_tokens` None), and otherwise.
REASONING_BUDGET, ANSWER_BUDGET = 1024, 16


def model_reasons(settings: EvalSettings, backend=None) -> bool:
    """Whether the evaluated model reasons before it answers: `thinking` on/off, else an adapter
    trained with target=reasoning (or stacked on one), else its checkpoint's chat template
    (`Backend.thinks`; read from the processor alone when no backend is loaded yet)."""
    from aqa.models.base import adapter_reasons

    if settings.thinking != "auto":
        return settings.thinking == "on"
    if adapter_reasons(settings.adapter):
        return True
    if backend is None:
        from aqa.models.registry import load_without_weights

        backend = load_without_weights(settings.model, trust_remote_code=settings.trust_remote_code)
    else:
        backend.set_thinking(None)  # its template's say, not an earlier evaluation's setting
    return backend.thinks


def with_budget(settings: EvalSettings, reasons: bool | None) -> EvalSettings:
    """`settings` with the generation budget decided (`max_new_tokens` None: 1024 for a model
    that reasons, else 16; score mode keeps 16, which it never uses). Refuses reason-then-score
    on a model that does not reason."""
    import dataclasses

    if settings.mode == "reason-then-score" and not reasons:
        raise UserError(f"{settings.model}: --mode reason-then-score needs a model that reasons first, and this one "
                        f"does not (its chat template has no think block, and the adapter was not trained with "
                        f"target=reasoning); use --mode score, or --thinking on to make it reason")
    if settings.max_new_tokens is not None:
        return settings
    return dataclasses.replace(settings, max_new_tokens=REASONING_BUDGET if reasons else ANSWER_BUDGET)


def load_items(settings: EvalSettings) -> list:
    """The records to answer. The data first: a file that cannot be evaluated leaves no
    half-made eval folder behind."""
    from aqa.data.records import load_records

    records = load_records(settings.data, allow_outside_root=settings.allow_outside_root, require_answer=False)
    repeated = sorted(i for i, n in Counter(r.id for r in records).items() if n > 1)
    if repeated:
        raise UserError(f"{settings.data}: {len(repeated)} id(s) appear more than once ({', '.join(repeated[:5])}"
                        f"{', ...' if len(repeated) > 5 else ''}); predictions are kept by id, so each question "
                        f"needs its own (aqa data check lists them)")
    records = records[:settings.limit] if settings.limit else records
    return mismatched_clips(records, settings.seed, settings.data) if settings.audio == "mismatched" else records


def mismatched_clips(records: list, seed: int, data: str) -> list:
    """The records, each to be heard with another item's clip (DCASE 2026's mismatched-audio
    condition): a seeded derangement of the distinct clips of the evaluated set, so that no
    question gets its own clip, also where several questions share one. It depends only on the
    records and the seed, so every shard and every resume hears the same."""
    import dataclasses
    import random

    clips = list(dict.fromkeys(str(r.audio_path or r.audio) for r in records))
    if len(clips) < 2:
        raise UserError(f"{data}: --audio mismatched needs at least two different clips, found {len(clips)}")
    order = clips[:]
    random.Random(seed).shuffle(order)
    other = {c: order[(i + 1) % len(order)] for i, c in enumerate(order)}  # one cycle: nobody keeps their own
    return [dataclasses.replace(r, audio_path=Path(other[str(r.audio_path or r.audio)])) for r in records]


def open_folder(settings: EvalSettings, out: Path, barrier) -> EvalFolder:
    """The eval folder, locked for this process, emptied with `overwrite`, else checked to hold
    predictions of the same settings; its settings written."""
    index, n_shards = settings.shard or (0, 1)
    out.mkdir(parents=True, exist_ok=True)
    _lock(out, index)  # let go when this evaluation returns (or, failed, when the next one starts)
    folder = EvalFolder(out, index, n_shards)
    if settings.overwrite:
        if index == 0:
            for f in (folder.predictions, folder.skipped, out / "metrics.json"):
                f.unlink(missing_ok=True)
            if barrier or not settings.shard:
                for f in (out / SHARDS).glob("*.jsonl"):
                    f.unlink()
        for f in (folder.my_predictions, folder.my_skipped):
            f.unlink(missing_ok=True)
    if barrier:
        barrier()  # nobody reads what shard 0 is deleting
    settings_file = out / "eval_config.json"
    if settings_file.is_file() and folder.done_files():
        old = json.loads(settings_file.read_text())
        # A key an older aqa did not write had its default then.
        defaults = {f.name: f.default for f in fields(EvalSettings) if f.default is not MISSING}
        diff = {k: (old.get(k, defaults.get(k)), v) for k, v in settings.resume_key().items()
                if old.get(k, defaults.get(k)) != v}
        if diff:
            raise UserError(f"{out} holds predictions made with other settings {diff}; "
                             f"use another -o folder or --overwrite")
    write_json(settings_file, settings.resume_key())
    drop_partial_last_line(folder.my_predictions)
    drop_partial_last_line(folder.my_skipped)
    return folder


def plan(settings: EvalSettings, records: list, folder: EvalFolder) -> tuple[list, dict]:
    """(the records this process answers, in order; the ids skipped so far, with why). Done
    anywhere counts: in the eval dir's files or any shard's (another process may be appending to
    its own; a half-written last line there is skipped)."""
    from aqa.data.audio import header_duration

    done = {r["id"] for f in folder.done_files() for r in _rows(f)}
    skipped = {r["id"]: r for f in folder.skip_files() for r in _rows(f)}
    per_batch = items_per_batch(settings)
    if settings.shard:
        # The batches one process makes of every item; this shard takes every n-th. Dealt from
        # all items, not those left, so that every shard deals alike whatever it finds done.
        order = _length_order(records, header_duration) if settings.group_by_length else records
        mine = [r for lo in range(folder.index * per_batch, len(order), folder.n_shards * per_batch)
                for r in order[lo:lo + per_batch]]
        todo = [r for r in mine if r.id not in done and r.id not in skipped]
    else:
        todo = [r for r in records if r.id not in done and r.id not in skipped]
        if settings.group_by_length and len(todo) > 1:
            # Clips of like length share a batch, so the trimmed encoder pads little; the header
            # read is cheap, and predictions do not depend on the batch an item lands in.
            todo = _length_order(todo, header_duration)
    if done:
        log.info("%s: %d item(s) already done, %d to go%s", folder.out, len(done), len(todo),
                 f" in shard {folder.index} of {folder.n_shards}" if settings.shard else "")
    return todo, skipped


def items_per_batch(settings: EvalSettings) -> int:
    """Items per forward: each item puts `shuffles` queries to the model."""
    return max(1, settings.batch_size // settings.shuffles)


def skip_too_long(backend, todo: list, settings: EvalSettings, folder: EvalFolder, skipped: dict) -> list:
    """`todo` without the items whose prompt the model does not take, each written to skipped
    (before batching: one overlong question would make its whole batch fail to allocate)."""
    too_long = {r.id: why for r, why in too_long_prompts(backend, todo, settings)}
    for r in todo:
        if r.id in too_long:
            log.warning("skipping %s: %s", r.id, too_long[r.id])
            append_jsonl(folder.my_skipped, [{"id": r.id, "subset": r.subset, "problem": too_long[r.id],
                                              "kind": PROMPT_TOO_LONG}])
            skipped[r.id] = too_long[r.id]
    return [r for r in todo if r.id not in too_long]


def answer(backend, todo: list, settings: EvalSettings, folder: EvalFolder, skipped: dict) -> None:
    """Answer `todo` batch by batch, appending each batch's predictions as it is done (and each
    clip that cannot be decoded to skipped)."""
    import numpy as np
    from tqdm.auto import tqdm

    from aqa.data.audio import AudioError, load_audio
    from aqa.eval.score import combine, generate_queries, make_queries, reason_then_score_queries, score_queries

    per_batch = items_per_batch(settings)
    bar = tqdm(total=len(todo), desc=f"eval {settings.mode}" + (
        f" {folder.index}/{folder.n_shards}" if settings.shard else ""), disable=not settings.progress or folder.index > 0)
    truncated: dict[str, dict] = {}  # id -> clip and heard seconds of the clips cut to the model's limit
    for lo in range(0, len(todo), per_batch):
        chunk = todo[lo:lo + per_batch]
        ok, audios = [], []
        for r in chunk:
            try:
                a = load_audio(r.audio_path or r.audio, max_seconds=backend.audio_seconds, long_policy="truncate")
            except AudioError as e:
                log.warning("skipping %s: %s", r.id, e)
                append_jsonl(folder.my_skipped, [{"id": r.id, "subset": r.subset, "problem": str(e), "kind": e.kind}])
                skipped[r.id] = e
                continue
            if a.too_long:
                log.debug("%s: %.1f s clip truncated to the model's %.0f s window", r.id, a.duration,
                          backend.audio_seconds)
                truncated[r.id] = {"clip_s": round(a.duration, 3), "heard_s": backend.audio_seconds}
            ok.append(r)
            # The silent baseline keeps each clip's length, so only the sound itself is gone; a
            # mismatched item's record already points at the other item's clip (`mismatched_clips`).
            audios.append({"silence": np.zeros_like(a.samples), "none": None}.get(settings.audio, a.samples))
        if ok:
            queries = make_queries(ok, audios, settings.shuffles, settings.seed)
            if settings.mode == "score":
                answers = score_queries(backend, queries)
            elif settings.mode == "generate":
                answers = generate_queries(backend, queries, settings.max_new_tokens, reasoning=backend.thinks)
            else:
                answers = reason_then_score_queries(backend, queries, settings.max_new_tokens)
            per_item: list[list] = [[] for _ in ok]
            for q, a in zip(queries, answers):
                per_item[q.item].append(a)
            rows = [combine(r, per_item[i], settings.mode, settings.vote) for i, r in enumerate(ok)]
            for r, row in zip(ok, rows):
                if row["id"] in truncated:
                    row["truncated"] = truncated[row["id"]]
                if settings.audio == "mismatched":
                    row["heard_clip"] = str(r.audio_path)
            append_jsonl(folder.my_predictions, rows)
        bar.update(len(chunk))
    bar.close()


def finish(settings: EvalSettings, records: list, folder: EvalFolder, barrier, reasons: bool | None = None) -> dict:
    """The metrics, once every shard has answered: shard 0 (or a run without shards) merges the
    shards' lines and writes metrics.json; the others wait and read it. A shard of runs that do
    not talk to each other returns a summary of its own work."""
    from aqa.data.audio import header_duration
    from aqa.eval.metrics import format_summary

    out, index = folder.out, folder.index
    if settings.shard and not barrier:
        log.info("%s: shard %d of %d done; a run without --shard merges the shards", out, index, folder.n_shards)
        _unlock(out, index)
        mine = folder.my_predictions
        return {"shard": [index, folder.n_shards], "answered": len(_rows(mine)) if mine.is_file() else 0}
    if barrier:
        barrier()  # every shard has written its last line
        if index > 0:
            barrier()  # shard 0 has merged and written the metrics
            _unlock(out, index)
            return json.loads((out / "metrics.json").read_text())
    if (out / SHARDS).is_dir():
        order = _length_order(records, header_duration) if settings.group_by_length else records
        _merge_shards(out, folder.predictions, folder.skipped, {r.id: i for i, r in enumerate(order)})
    metrics = write_eval_metrics(out, settings, records, reasons)
    if barrier:
        barrier()
    if settings.progress:
        print(format_summary(metrics))
    _unlock(out, index)
    return metrics


#: skipped.jsonl `kind` of an item whose prompt is longer than the model takes.
PROMPT_TOO_LONG = "prompt_too_long"


def too_long_prompts(backend, records: list, settings: EvalSettings) -> list[tuple]:
    """(record, reason) for each record whose prompt is longer than `settings.max_prompt_tokens`
    (0: the model's limit), counted without decoding audio (durations from the file headers)."""
    from aqa.data.audio import header_duration

    limit = settings.max_prompt_tokens or backend.max_prompt_tokens
    over = backend.too_long(records, lambda r: None if settings.audio == "none" else header_duration(
        r.audio_path or r.audio), limit=limit)
    return [(r, f"prompt of {n} tokens is longer than the {limit} the model takes") for r, n in over]


def _rows(path: Path) -> list[dict]:
    from aqa.eval.metrics import load_predictions

    return load_predictions(path)


def _length_order(records: list, duration) -> list:
    """Records shortest clip first (stable: like lengths keep the data file's order)."""
    return sorted(records, key=lambda r: duration(r.audio_path or r.audio))


def _merge_shards(out: Path, pred_file: Path, skip_file: Path, position: dict) -> None:
    """predictions.jsonl and skipped.jsonl from the eval dir's own lines and every shard's,
    each id once, in `position` order (the order one process answers them in); ids outside it
    (an earlier, longer --limit) after them. The shards stay: a resumed run reads them."""
    for target, pattern in ((pred_file, "predictions-*.jsonl"), (skip_file, "skipped-*.jsonl")):
        rows: dict = {}
        for f in (target, *sorted((out / SHARDS).glob(pattern))):
            if f.is_file():
                for r in _rows(f):
                    rows.setdefault(r["id"], r)
        if rows or target.is_file():
            end = len(position)
            write_jsonl(target, sorted(rows.values(), key=lambda r: position.get(r["id"], end)))


def write_eval_metrics(out: Path, settings: EvalSettings, records: list, reasons: bool | None = None) -> dict:
    """metrics.json (and unparsed.jsonl, contribution.jsonl) from predictions.jsonl and
    skipped.jsonl."""
    from aqa.eval.metrics import load_predictions, write_metrics

    pred_file, skip_file = out / "predictions.jsonl", out / "skipped.jsonl"
    rows = load_predictions(out) if pred_file.is_file() else []
    keep = {r.id for r in records}
    rows = [r for r in rows if r["id"] in keep]
    skips = _rows(skip_file) if skip_file.is_file() else []
    cut = [r["truncated"] for r in rows if r.get("truncated")]
    extra = {"name": settings.name or out.name, "mode": settings.mode, "model": settings.model,
             "adapter": settings.adapter, "data": settings.data, "n_skipped": len(skips),
             "skipped": dict(sorted(Counter(r.get("kind", "unknown") for r in skips).items())),
             # Clips longer than the model hears, answered from their first `limit_s` seconds.
             "audio_truncated": {"n": len(cut), "limit_s": cut[0]["heard_s"] if cut else None}}
    if reasons:  # a model that reasons first: the answer position and the budget it had
        extra["reasons"] = True
    if settings.mode != "score":
        extra["max_new_tokens"] = settings.max_new_tokens
    if settings.adapter_scale != 1:
        extra["adapter_scale"] = settings.adapter_scale
    if settings.audio != "normal":
        extra["audio"] = settings.audio
    if settings.reference:
        extra["reference"] = str(Path(settings.reference).resolve())
        extra["audio_contribution"] = audio_contribution(load_predictions(settings.reference), rows, out)
    metrics = write_metrics(out, rows, n_boot=settings.n_boot, seed=settings.seed, extra=extra)
    if settings.mode == "generate":
        unparsed = [r for r in rows if r.get("pred") is None]
        write_jsonl(out / "unparsed.jsonl", [{"id": r["id"], "raw": r.get("raw"),
                                              **({"unfinished": True} if r.get("unfinished") else {})}
                                             for r in unparsed])
    return metrics


#: Lock files this process holds, by path.
_HELD: dict = {}


def _lock(out: Path, shard: int):
    """An exclusive lock on the eval folder (on its shard, for a sharded eval): a second `aqa
    eval` into the same folder would append every line twice. An earlier evaluation of the same
    folder in this process has ended (calls do not overlap in one process): its lock, which a
    traceback may still keep open, is let go first."""
    import fcntl

    path = (out / f".lock-{shard}").resolve()
    if path in _HELD:
        _HELD.pop(path).close()
    fh = open(path, "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise UserError(f"{out}: another aqa eval is writing this folder; wait for it to end or use "
                        f"another -o folder") from None
    _HELD[path] = fh
    return fh


def _unlock(out: Path, shard: int) -> None:
    fh = _HELD.pop((out / f".lock-{shard}").resolve(), None)
    if fh is not None:
        fh.close()


def audio_contribution(with_audio: list[dict], without: list[dict], out: Path) -> dict:
    """Per subset: accuracy with the audio, without it, and the mean audio contribution (correct
    with audio minus correct without, per item, over the items both evaluations answered).
    Writes the per-item values to OUT/contribution.jsonl."""
    from aqa.eval.metrics import order_subsets

    ref = {r["id"]: r for r in with_audio if r.get("answer") is not None}
    per_item = [{"id": r["id"], "subset": r["subset"],
                 "contribution": int(bool(ref[r["id"]].get("correct"))) - int(bool(r.get("correct")))}
                for r in without if r["id"] in ref]
    write_jsonl(out / "contribution.jsonl", per_item)
    table: dict = {}
    for subset in order_subsets({p["subset"] for p in per_item}) + ["all"]:
        items = [p for p in per_item if subset in ("all", p["subset"])]
        ids = {p["id"] for p in items}
        table[subset] = {
            "n": len(items),
            "accuracy_with_audio": sum(bool(ref[i].get("correct")) for i in ids) / len(items),
            "accuracy_without": sum(bool(r.get("correct")) for r in without if r["id"] in ids) / len(items),
            "contribution": sum(p["contribution"] for p in items) / len(items)}
    return table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model on an AQA JSONL")
    p.add_argument("--config", metavar="YAML",
                   help="flags from a file of key: value pairs (batch_size: 16 is --batch-size 16; "
                        "configs/<family>/eval.yaml); flags given here override them")
    p.add_argument("--model", required=True, help="Hugging Face id or local folder")
    p.add_argument("--adapter", help="peft adapter folder (e.g. RUN/adapter)")
    p.add_argument("--data", help="AQA JSONL (or --suite)")
    p.add_argument("--suite", metavar="YAML", help="evaluate on every benchmark a suite file names (configs/suites/), "
                                                   "each into OUTPUT/eval/NAME; the report shows them side by side")
    p.add_argument("-o", "--output", required=True, help="eval folder to write (resumed if it exists)")
    p.add_argument("--mode", choices=list(EvalSettings.MODES), default="score",
                   help="score: option-letter probabilities from one forward pass (after an empty think block on a "
                        "model that reasons); generate: greedy decoding, the answer read after the reasoning; "
                        "reason-then-score: the model reasons, then the letters' probabilities are read after its "
                        "closed reasoning")
    p.add_argument("--shuffles", type=int, default=1, help="evaluate under K orders of the options")
    p.add_argument("--vote", choices=["probs", "majority"], default="probs",
                   help="with --shuffles: average the probabilities, or majority vote over orders")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generate and reason-then-score: the token budget (default: 1024 when the model reasons, "
                        "else 16)")
    p.add_argument("--thinking", choices=["auto", "on", "off"], default="auto",
                   help="whether the model reasons first (auto: its chat template mentions <think> or "
                        "enable_thinking, or the adapter was trained with target=reasoning)")
    p.add_argument("--adapter-scale", type=float, default=1.0,
                   help="scale the adapter's LoRA update: 0 gives the weights under it, 1 the adapter as trained")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="only the first N items")
    p.add_argument("--name", help="row name in reports (default: the folder's name)")
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--allow-outside-root", action="store_true")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load weights saved as pickles (.bin/.pt), which can run code: only files you trust")
    p.add_argument("--overwrite", action="store_true", help="discard predictions already in the folder")
    p.add_argument("--audio", choices=list(AUDIO_MODES), default="normal",
                   help="silence: each clip replaced by silence of the same length; none: no audio in the prompt; "
                        "mismatched: each question with another item's clip (a seeded derangement)")
    p.add_argument("--reference", help="with --audio silence/none/mismatched: the eval dir made with the audio, to "
                                       "report each item's audio contribution (and, with both silence and mismatched "
                                       "beside it, the audio sensitivity)")
    p.add_argument("--compile", action="store_true", help="run the decoder through torch.compile")
    p.add_argument("--cache-dir", help="keep per-clip work here for later evaluations of the same clips "
                                       "(Kimi-Audio's speech tokens)")
    p.add_argument("--max-prompt-tokens", type=int, default=0,
                   help="skip items whose prompt is longer than this (default: the model's context)")
    p.add_argument("--shard", help="I/N: answer shard I of N (0-based) only, for machines that do not talk to "
                                   "each other; a run without --shard merges. Under torchrun or accelerate launch "
                                   "the processes shard by themselves")
    p.set_defaults(func=_run, config_flags=True)


def launched_processes() -> tuple[int, int, int] | None:
    """(rank, processes, local rank) when started by torchrun or `accelerate launch`, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def _run(args) -> int:
    import datetime

    from aqa.models.registry import find_adapter

    # Before any folder is made; the settings (and a resume's check) name the adapter folder itself.
    adapter = find_adapter(args.adapter) if args.adapter else None
    shard, barrier, device = None, None, args.device
    launched = launched_processes()
    if args.shard:
        try:
            i, n = (int(x) for x in args.shard.split("/"))
        except ValueError:
            raise SystemExit(f"--shard {args.shard!r}: expected I/N, e.g. 0/4") from None
        shard = (i, n)
    elif launched:
        import torch
        import torch.distributed as dist

        rank, world, local = launched
        # Only barriers cross the processes: gloo over TCP with a timeout no shard of a long
        # evaluation outlasts (NCCL's default would give up on a straggler after minutes).
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
        shard, barrier = (rank, world), dist.barrier
        if not device and torch.cuda.is_available():
            device = f"cuda:{local}"
    suite = load_suite(args.suite) if args.suite else None
    if (suite is None) == (args.data is None):
        raise UserError("aqa eval needs --data FILE or --suite FILE (one of them)")
    s = EvalSettings(model=args.model, adapter=adapter, data=args.data or suite[0][1], mode=args.mode,
                     shuffles=args.shuffles, vote=args.vote, max_new_tokens=args.max_new_tokens, seed=args.seed,
                     audio=args.audio, max_prompt_tokens=args.max_prompt_tokens, batch_size=args.batch_size,
                     device=device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                     allow_outside_root=args.allow_outside_root, allow_pickle=args.allow_pickle, limit=args.limit,
                     name=args.name, overwrite=args.overwrite, reference=args.reference, shard=shard,
                     compile=args.compile, cache_dir=args.cache_dir, thinking=args.thinking,
                     adapter_scale=args.adapter_scale)
    try:
        if suite is None:
            evaluate(s, args.output, barrier=barrier)
        else:
            run_suite(s, suite, Path(args.output), args.suite, barrier=barrier)
    finally:
        if barrier:
            import torch.distributed as dist

            dist.destroy_process_group()
    if not shard or (barrier and shard[0] == 0):
        print(f"wrote {args.output}/ " + ("(predictions.jsonl, metrics.json)" if suite is None else
                                          "(suite.json, eval/NAME/ per benchmark; aqa report shows them)"))
    return 0


#: Written into a suite's output folder: the model, the adapter and the benchmarks, in order.
SUITE_FILE = "suite.json"


def load_suite(path: str) -> list[tuple[str, str]]:
    """(benchmark name, data file) of a suite file (`benchmarks:` a list of `name:` / `data:`,
    data paths relative to the working directory, as --data), each file checked to exist before
    anything runs."""
    from aqa.config import read_yaml_mapping

    raw = read_yaml_mapping(path)
    items = raw.get("benchmarks")
    if not isinstance(items, list) or not items or set(raw) - {"benchmarks"}:
        raise UserError(f"{path}: a suite is `benchmarks:` followed by a list of `- name: NAME` / `data: FILE`")
    out = []
    for i, b in enumerate(items):
        if not isinstance(b, dict) or set(b) != {"name", "data"} or not all(isinstance(v, str) for v in b.values()):
            raise UserError(f"{path}: benchmark {i + 1} needs exactly `name` and `data` (strings), got {b!r}")
        if not Path(b["data"]).is_file():
            raise UserError(f"{path}: benchmark {b['name']!r}: no such data file {b['data']} (convert it first: "
                            f"aqa data --help)")
        out.append((b["name"], b["data"]))
    names = [n for n, _ in out]
    if len(set(names)) < len(names) or any(n != safe_name(n) for n in names):
        raise UserError(f"{path}: benchmark names must be distinct and usable as folder names, got {names}")
    return out


def run_suite(settings: EvalSettings, suite: list[tuple[str, str]], out: Path, suite_file: str, *,
              barrier=None) -> dict[str, dict]:
    """Evaluate one model (and adapter) on each benchmark of a suite into OUT/eval/NAME, the
    model loaded once; writes OUT/suite.json. Returns each benchmark's metrics."""
    import dataclasses

    from aqa.models.registry import load_backend

    backend = load_backend(settings.model, adapter=settings.adapter, device=settings.device, dtype=settings.dtype,
                           trust_remote_code=settings.trust_remote_code, allow_pickle=settings.allow_pickle)
    if settings.compile:
        backend.compile_decoder()
    results = {}
    for name, data in suite:
        log.info("suite %s: %s (%s)", suite_file, name, data)
        results[name] = evaluate(dataclasses.replace(settings, data=data, name=name), out / "eval" / name,
                                 backend=backend, barrier=barrier)
    if (settings.shard or (0, 1))[0] == 0:
        write_json(out / SUITE_FILE, {"suite": str(suite_file), "model": settings.model, "adapter": settings.adapter,
                                     "benchmarks": [n for n, _ in suite]})
    return results
