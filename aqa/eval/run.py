"""`aqa eval`: answer every item of an AQA JSONL with a model (and adapter), write
`predictions.jsonl` and `metrics.json` (their fields: docs/ARCHITECTURE.md).

Resumable: predictions are appended batch by batch, and a rerun with the same settings
skips the ids already written. Items whose audio cannot be decoded are skipped, listed in
`skipped.jsonl` and counted in the metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from aqa.io import append_jsonl, drop_partial_last_line, iter_jsonl, write_json, write_jsonl

log = logging.getLogger(__name__)


@dataclass
class EvalSettings:
    """What an eval dir was made with; a resume must match it."""

    model: str
    adapter: str | None
    data: str
    mode: str = "score"
    shuffles: int = 1
    vote: str = "probs"
    max_new_tokens: int = 16
    seed: int = 0
    #: normal; silence (each clip replaced by silence of its length); none (a prompt without audio)
    audio: str = "normal"


def evaluate(settings: EvalSettings, out_dir: str | Path, *, backend=None, batch_size: int = 8,
             device: str | None = None, dtype: str | None = None, trust_remote_code: bool = False,
             allow_outside_root: bool = False, limit: int = 0, name: str | None = None,
             overwrite: bool = False, n_boot: int = 1000, progress: bool = True,
             reference: str | Path | None = None, group_by_length: bool = True) -> dict:
    """Evaluate and return the metrics dict. `backend` may be passed to reuse a loaded model.
    With `reference` (an eval dir of the same model with the audio), a silent or audio-free
    evaluation also reports each item's audio contribution."""
    import numpy as np
    from tqdm.auto import tqdm

    from aqa.data.audio import AudioError, header_duration, load_audio
    from aqa.data.records import load_records
    from aqa.eval.metrics import format_summary, load_predictions, write_metrics
    from aqa.eval.score import combine, generate_queries, make_queries, score_queries

    if settings.mode not in ("score", "generate"):
        raise ValueError(f"mode must be score or generate, got {settings.mode!r}")
    if settings.shuffles < 1:
        raise ValueError("shuffles must be >= 1")
    if settings.audio not in ("normal", "silence", "none"):
        raise ValueError(f"audio must be normal, silence or none, got {settings.audio!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred_file, skip_file, settings_file = out / "predictions.jsonl", out / "skipped.jsonl", out / "eval_config.json"
    if overwrite:
        for f in (pred_file, skip_file, out / "metrics.json"):
            f.unlink(missing_ok=True)
    if settings_file.is_file() and pred_file.is_file():
        old = json.loads(settings_file.read_text())
        # A key an older aqa did not write had its default then.
        defaults = {f.name: f.default for f in fields(EvalSettings) if f.default is not MISSING}
        diff = {k: (old.get(k, defaults.get(k)), v) for k, v in asdict(settings).items()
                if old.get(k, defaults.get(k)) != v}
        if diff:
            raise ValueError(f"{out} holds predictions made with other settings {diff}; "
                             f"use another -o folder or --overwrite")
    write_json(settings_file, asdict(settings))
    drop_partial_last_line(pred_file)
    drop_partial_last_line(skip_file)

    records = load_records(settings.data, allow_outside_root=allow_outside_root, require_answer=False)
    if limit:
        records = records[:limit]
    done = {r["id"] for r in load_predictions(out)} if pred_file.is_file() else set()
    skipped = {r["id"]: r for _, r in iter_jsonl(skip_file, skip_bad=True)} if skip_file.is_file() else {}
    todo = [r for r in records if r.id not in done and r.id not in skipped]
    if done:
        log.info("%s: %d item(s) already done, %d to go", out, len(done), len(todo))
    if todo and backend is None:
        from aqa.models.registry import load_backend

        backend = load_backend(settings.model, adapter=settings.adapter, device=device, dtype=dtype,
                               trust_remote_code=trust_remote_code)
    if backend is not None:
        backend.model.eval()
    if group_by_length and len(todo) > 1:
        # Clips of like length share a batch, so the trimmed encoder pads little; the header
        # read is cheap, and predictions do not depend on the batch an item lands in.
        todo.sort(key=lambda r: header_duration(r.audio_path or r.audio))
    # Items per forward: each item puts K queries to the model.
    per_batch = max(1, batch_size // settings.shuffles)
    bar = tqdm(total=len(todo), desc=f"eval {settings.mode}", disable=not progress)
    for lo in range(0, len(todo), per_batch):
        chunk = todo[lo:lo + per_batch]
        ok, audios = [], []
        for r in chunk:
            try:
                a = load_audio(r.audio_path or r.audio, max_seconds=backend.audio_seconds, long_policy="truncate")
            except AudioError as e:
                log.warning("skipping %s: %s", r.id, e)
                append_jsonl(skip_file, [{"id": r.id, "subset": r.subset, "problem": str(e), "kind": e.kind}])
                skipped[r.id] = e
                continue
            if a.too_long:
                log.debug("%s: %.1f s clip truncated to the model's %.0f s window", r.id, a.duration,
                          backend.audio_seconds)
            ok.append(r)
            # The silent baseline keeps each clip's length, so only the sound itself is gone.
            audios.append({"normal": a.samples, "silence": np.zeros_like(a.samples), "none": None}[settings.audio])
        if ok:
            queries = make_queries(ok, audios, settings.shuffles, settings.seed)
            if settings.mode == "score":
                answers = score_queries(backend, queries)
            else:
                answers = generate_queries(backend, queries, settings.max_new_tokens)
            per_item: list[list] = [[] for _ in ok]
            for q, a in zip(queries, answers):
                per_item[q.item].append(a)
            append_jsonl(pred_file, [combine(r, per_item[i], settings.mode, settings.vote) for i, r in enumerate(ok)])
        bar.update(len(chunk))
    bar.close()

    rows = load_predictions(out) if pred_file.is_file() else []
    keep = {r.id for r in records}
    rows = [r for r in rows if r["id"] in keep]
    extra = {"name": name or out.name, "mode": settings.mode, "model": settings.model,
             "adapter": settings.adapter, "data": settings.data, "n_skipped": len(skipped)}
    if reference:
        extra["audio_contribution"] = audio_contribution(load_predictions(reference), rows, out)
    metrics = write_metrics(out, rows, n_boot=n_boot, seed=settings.seed, extra=extra)
    if settings.mode == "generate":
        unparsed = [r for r in rows if r.get("pred") is None]
        write_jsonl(out / "unparsed.jsonl", [{"id": r["id"], "raw": r.get("raw")} for r in unparsed])
    if progress:
        print(format_summary(metrics))
    return metrics


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
    p.add_argument("--model", required=True, help="Hugging Face id or local folder")
    p.add_argument("--adapter", help="peft adapter folder (e.g. RUN/adapter)")
    p.add_argument("--data", required=True, help="AQA JSONL")
    p.add_argument("-o", "--output", required=True, help="eval folder to write (resumed if it exists)")
    p.add_argument("--mode", choices=["score", "generate"], default="score",
                   help="score: option-letter probabilities from one forward pass; generate: greedy decoding")
    p.add_argument("--shuffles", type=int, default=1, help="evaluate under K orders of the options")
    p.add_argument("--vote", choices=["probs", "majority"], default="probs",
                   help="with --shuffles: average the probabilities, or majority vote over orders")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="only the first N items")
    p.add_argument("--name", help="row name in reports (default: the folder's name)")
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--allow-outside-root", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="discard predictions already in the folder")
    p.add_argument("--audio", choices=["normal", "silence", "none"], default="normal",
                   help="silence: each clip replaced by silence of the same length; none: no audio in the prompt")
    p.add_argument("--reference", help="with --audio silence/none: the eval dir made with the audio, to report "
                                       "each item's audio contribution")
    p.set_defaults(func=_run)


def _run(args) -> int:
    s = EvalSettings(model=args.model, adapter=args.adapter, data=args.data, mode=args.mode,
                     shuffles=args.shuffles, vote=args.vote, max_new_tokens=args.max_new_tokens, seed=args.seed,
                     audio=args.audio)
    evaluate(s, args.output, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
             trust_remote_code=args.trust_remote_code, allow_outside_root=args.allow_outside_root,
             limit=args.limit, name=args.name, overwrite=args.overwrite, reference=args.reference)
    print(f"wrote {args.output}/ (predictions.jsonl, metrics.json)")
    return 0
