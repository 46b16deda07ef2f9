"""Synthetic soundscapes with exact labels: offline data for tests, the demo and sanity checks.

Each clip is background noise (pink, so it sounds like a room rather than a hiss) with a few
events from `CLASSES` placed at random: 1 to 4 different classes, each 1 to 3 times. The
classes are built to be told apart by ear and by a small network: different pitch ranges,
different temporal patterns (steady, swept, warbling, pulsed, decaying) and different
bandwidths. Events start and end with 10 ms ramps, so onsets are clean and the written
onsets are where the energy rises. Two occurrences of one class are at least
`MIN_SAME_CLASS_GAP_S` apart (so they count as two), at most two events sound at once, and
the SNR (each event's RMS over the background's RMS) is `snr_db` +- 3 dB.

Writes `wav/<clip>.wav` (16 kHz mono PCM16), `strong.tsv` (AudioSet-Strong format, onsets
and offsets on the millisecond grid the audio was built on), `labels.tsv` (mid<TAB>name)
and `qa.jsonl` (made by aqa.data.sources.audioset_strong's converter, plus `identification` questions), and
with a dev fraction `train.jsonl`/`dev.jsonl` split by clip. Every random choice for clip i
comes from a generator seeded by (seed, i), so the output does not depend on the number of
worker processes.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from aqa.data.audio import TARGET_SR
from aqa.data.sources.audioset_strong import convert_strong
from aqa.data.events import Event
from aqa.data.llm import LLMDistractors, add_llm_arguments, llm_from_args
from aqa.data.question_types import QUESTION_TYPES, parse_types
from aqa.data.records import write_records
from aqa.io import atomic_write_bytes, atomic_write_text

SR = TARGET_SR
#: Question types the synthetic set gets by default: the four temporal ones plus identification.
SYNTH_TYPES = QUESTION_TYPES
#: Occurrences of one class closer than this would be heard as one; keep them apart.
MIN_SAME_CLASS_GAP_S = 0.4
#: Raised-cosine ramp at each end of an event: short enough for a crisp onset, long enough
#: that the step does not splash broadband energy around the labelled times.
RAMP_S = 0.01
#: Event level before the SNR scaling; leaves headroom for two overlapping events.
EVENT_RMS = 0.1


@dataclass(frozen=True)
class SoundClass:
    """One synthetic sound: MID-like id, the name people would use, its duration range."""

    mid: str
    name: str
    min_s: float
    max_s: float
    make: Callable[[np.random.Generator, int], np.ndarray]  # (rng, samples) -> waveform


def _t(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) / SR


def _beep(rng: np.random.Generator, n: int) -> np.ndarray:
    f = rng.uniform(950, 1050)
    t = _t(n)
    return np.sin(2 * np.pi * f * t) + 0.2 * np.sin(4 * np.pi * f * t)


def _whistle(rng: np.random.Generator, n: int) -> np.ndarray:
    # High and with a vibrato: the vibrato is what tells it from the steady beep.
    f0, rate, depth = rng.uniform(2300, 2700), rng.uniform(5, 7), rng.uniform(60, 100)
    t = _t(n)
    return np.sin(2 * np.pi * f0 * t + (depth / rate) * np.sin(2 * np.pi * rate * t))


def _siren(rng: np.random.Generator, n: int) -> np.ndarray:
    # Slow wide wail between about 600 and 1300 Hz, with odd harmonics for a horn-like timbre.
    fc, dev, rate = rng.uniform(850, 1000), rng.uniform(300, 400), rng.uniform(0.8, 1.2)
    t = _t(n)
    phase = 2 * np.pi * fc * t - (dev / rate) * np.cos(2 * np.pi * rate * t)
    return np.sin(phase) + 0.3 * np.sin(3 * phase)


def _sweep(rng: np.random.Generator, n: int) -> np.ndarray:
    f0, f1 = rng.uniform(300, 500), rng.uniform(2500, 3500)
    t = _t(n)
    return np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * max(t[-1], 1e-3))))


def _hum(rng: np.random.Generator, n: int) -> np.ndarray:
    # A low buzz: many harmonics of about 120 Hz, nothing above ~1 kHz.
    f0 = rng.uniform(100, 140)
    t = _t(n)
    return sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 9))


def _hiss(rng: np.random.Generator, n: int) -> np.ndarray:
    # White noise differenced twice: energy rises towards 8 kHz, like steam or a leak.
    return np.diff(rng.standard_normal(n + 2), 2)


def _trill(rng: np.random.Generator, n: int) -> np.ndarray:
    # Bird-like: two high notes alternating about 12 times a second.
    lo, hi, rate = rng.uniform(3000, 3300), rng.uniform(3800, 4200), rng.uniform(10, 14)
    t = _t(n)
    freq = np.where(np.sin(2 * np.pi * rate * t) >= 0, hi, lo)
    return np.sin(2 * np.pi * np.cumsum(freq) / SR)


def _pulses(n: int, period: int, kernel: np.ndarray) -> np.ndarray:
    """`kernel` repeated about every `period` samples, from just after the onset ramp (so the
    ramp does not swallow the first pulse) to a last pulse that ends at the offset (so the
    written offset is where the sound stops, not up to a period of silence later)."""
    first = int(RAMP_S * SR)
    span = max(n - first - len(kernel), 0)
    count = max(2, int(round(span / period)) + 1)
    x = np.zeros(n + len(kernel))
    for start in np.linspace(first, first + span, count).astype(int):
        x[start:start + len(kernel)] += kernel
    return x[:n]


def _click_train(rng: np.random.Generator, n: int) -> np.ndarray:
    # Broadband clicks 20-30 per second: heard as one rattle, not as separate events.
    period = int(SR / rng.uniform(20, 30))
    k = 48
    kernel = rng.standard_normal(k) * np.exp(-np.arange(k) / 8)
    return _pulses(n, period, kernel)


def _knocking(rng: np.random.Generator, n: int) -> np.ndarray:
    # Low woody thumps about 6 per second, each a damped 180-250 Hz resonance.
    period = int(SR / rng.uniform(5.5, 7))
    k = int(0.08 * SR)
    kt = np.arange(k) / SR
    kernel = np.sin(2 * np.pi * rng.uniform(180, 250) * kt) * np.exp(-kt / 0.015)
    return _pulses(n, period, kernel)


def _bell(rng: np.random.Generator, n: int) -> np.ndarray:
    # Struck: inharmonic partials decaying by about 9 dB over the event, then damped at the
    # offset, so that it is still audible up to the labelled end (duration questions).
    f0 = rng.uniform(500, 700)
    t = _t(n)
    tau = max(t[-1], 0.1)
    partials = ((1.0, 1.0), (2.0, 0.6), (2.76, 0.5), (5.4, 0.25))
    return np.exp(-t / tau) * sum(a * np.sin(2 * np.pi * r * f0 * t) for r, a in partials)


#: The synthetic classes. Ids look like AudioSet MIDs so the same converter reads them.
CLASSES: tuple[SoundClass, ...] = (
    SoundClass("/synth/beep", "beep", 0.5, 2.0, _beep),
    SoundClass("/synth/whistle", "whistle", 0.5, 2.0, _whistle),
    SoundClass("/synth/siren", "siren", 1.5, 4.0, _siren),
    SoundClass("/synth/sweep", "rising sweep", 0.5, 1.5, _sweep),
    SoundClass("/synth/hum", "hum", 1.0, 4.0, _hum),
    SoundClass("/synth/hiss", "hiss", 0.5, 3.0, _hiss),
    SoundClass("/synth/trill", "trill", 0.5, 2.0, _trill),
    SoundClass("/synth/click_train", "click train", 0.5, 2.0, _click_train),
    SoundClass("/synth/knocking", "knocking", 0.5, 1.5, _knocking),
    SoundClass("/synth/bell", "bell", 0.8, 2.5, _bell),
)
CLASS_BY_MID = {c.mid: c for c in CLASSES}


def clip_id(index: int) -> str:
    return f"synth_{index:06d}"


def _ramp(n: int) -> np.ndarray:
    r = min(int(RAMP_S * SR), n // 2)
    env = np.ones(n)
    if r > 0:
        up = 0.5 - 0.5 * np.cos(np.pi * np.arange(r) / r)
        env[:r] = up
        env[n - r:] = up[::-1]
    return env


@lru_cache(maxsize=8)
def _pink_shape(n: int) -> np.ndarray:
    f = np.arange(n // 2 + 1, dtype=np.float64)
    f[0] = np.inf  # no DC offset
    return 1.0 / np.sqrt(f)


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    # White Gaussian noise has a complex Gaussian spectrum, so drawing the spectrum directly
    # saves the forward FFT, which was a third of the time per clip.
    shape = _pink_shape(n)
    spec = (rng.standard_normal(len(shape)) + 1j * rng.standard_normal(len(shape))) * shape
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x * x)) + 1e-12)


def plan_clip(rng: np.random.Generator, duration: float, max_classes: int = 4, max_repeats: int = 3
              ) -> list[tuple[str, int, int]]:
    """The timeline of one clip: (mid, onset ms, offset ms), sorted by onset. Placement is by
    rejection sampling: a try that puts an occurrence too near another of its class, or over
    two sounding events, is drawn again; an occurrence that finds no place is left out."""
    total_ms = int(round(duration * 1000))
    n_classes = int(rng.integers(1, min(max_classes, len(CLASSES)) + 1))
    picks = rng.choice(len(CLASSES), size=n_classes, replace=False)
    gap = int(MIN_SAME_CLASS_GAP_S * 1000)
    placed: list[tuple[str, int, int]] = []
    repeat_p = np.array([0.5, 0.3, 0.2])[:max_repeats]
    for ci in picks:
        cls = CLASSES[int(ci)]
        repeats = int(rng.choice(np.arange(1, len(repeat_p) + 1), p=repeat_p / repeat_p.sum()))
        lo = int(cls.min_s * 1000)
        hi = min(int(cls.max_s * 1000), total_ms)
        if lo > hi:
            continue
        for _ in range(repeats):
            for _try in range(30):
                length = int(rng.integers(lo, hi + 1))
                on = int(rng.integers(0, total_ms - length + 1))
                off = on + length
                same_ok = all(on >= o2 + gap or off + gap <= o1
                              for m, o1, o2 in placed if m == cls.mid)
                overlapping = sum(1 for _m, o1, o2 in placed if o1 < off and on < o2)
                if same_ok and overlapping <= 1:
                    placed.append((cls.mid, on, off))
                    break
    placed.sort(key=lambda e: (e[1], e[2], e[0]))
    return placed


def render_clip(rng: np.random.Generator, plan: Sequence[tuple[str, int, int]], duration: float,
                snr_db: float) -> np.ndarray:
    """Mix the planned events over pink noise; float32 in [-1, 1]."""
    n = int(round(duration * SR))
    noise_rms = EVENT_RMS / 10 ** (snr_db / 20)
    mix = _pink(rng, n) * noise_rms
    for mid, on_ms, off_ms in plan:
        a, b = on_ms * SR // 1000, off_ms * SR // 1000
        x = CLASS_BY_MID[mid].make(rng, b - a)
        x = x / (np.sqrt(np.mean(x * x)) + 1e-12)
        gain = EVENT_RMS * 10 ** (rng.uniform(-3, 3) / 20)
        mix[a:b] += gain * x * _ramp(b - a)
    peak = float(np.abs(mix).max())
    if peak > 0.99:  # rare (two loud pulsed events at once); scale rather than clip
        mix *= 0.99 / peak
    return mix.astype(np.float32)


def wav_bytes(samples: np.ndarray, sr: int = SR) -> bytes:
    """16-bit PCM mono WAV: header by hand, because soundfile's per-call overhead and
    BytesIO copies dominate when writing thousands of short files."""
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, 1, 1,
                         sr, sr * 2, 2, 16, b"data", len(pcm))
    return header + pcm


def _make_one(job: tuple[int, int, float, float, str]) -> tuple[int, list[tuple[str, int, int]]]:
    index, seed, duration, snr_db, wav_dir = job
    rng = np.random.default_rng([seed, index])
    plan = plan_clip(rng, duration)
    audio = render_clip(rng, plan, duration, snr_db)
    # No fsync: thousands of them would cost more than the synthesis, and a crashed run is
    # simply run again (it is deterministic).
    atomic_write_bytes(Path(wav_dir) / f"{clip_id(index)}.wav", wav_bytes(audio), fsync=False)
    return index, plan


def _split_clips(ids: Sequence[str], dev_fraction: float, seed: int) -> set[str]:
    """The dev clips: a seeded random subset, at least one when the fraction is > 0 and there
    are two clips or more (so a dev file is never silently empty)."""
    if dev_fraction <= 0 or len(ids) < 2:
        return set()
    n_dev = min(len(ids) - 1, max(1, int(round(dev_fraction * len(ids)))))
    order = np.random.default_rng([seed, 2**31 - 1]).permutation(len(ids))
    return {ids[i] for i in order[:n_dev]}


def synthesize(out_dir: str | os.PathLike, n: int = 2000, seed: int = 0, duration: float = 10.0,
               snr_db: float = 10.0, *, dev_fraction: float = 0.0,
               types: Sequence[str] = SYNTH_TYPES, questions_per_clip: int | None = None,
               n_choices: int = 4, workers: int | None = None, llm: LLMDistractors | None = None,
               progress: bool = False) -> dict:
    """Make `n` clips under `out_dir` (see the module docstring for the files). Returns a
    summary: counts, the files written, the seconds taken."""
    if n < 1:
        raise ValueError("n must be at least 1")
    if duration < 2.0:
        raise ValueError("duration must be at least 2 seconds (the longest classes need room)")
    if not 0 <= dev_fraction < 1:
        raise ValueError("dev_fraction must be in [0, 1)")
    from tqdm import tqdm

    t0 = time.perf_counter()
    out = Path(out_dir)
    wav_dir = out / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or os.cpu_count() or 1, n))
    jobs = [(i, seed, float(duration), float(snr_db), str(wav_dir)) for i in range(n)]
    plans: dict[int, list[tuple[str, int, int]]] = {}
    bar = tqdm(total=n, desc="synth", unit="clip", disable=not progress)
    if workers == 1:
        for job in jobs:
            i, plan = _make_one(job)
            plans[i] = plan
            bar.update()
    else:
        import multiprocessing as mp

        # fork where available: the workers need nothing but this module, already imported.
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers) as pool:
            for i, plan in pool.imap_unordered(_make_one, jobs, chunksize=max(1, n // (workers * 8))):
                plans[i] = plan
                bar.update()
    bar.close()
    t_audio = time.perf_counter() - t0

    ids = [clip_id(i) for i in range(n)]
    clips = {clip_id(i): [Event(m, on / 1000, off / 1000) for m, on, off in plans[i]]
             for i in range(n)}
    rows = ["segment_id\tstart_time_seconds\tend_time_seconds\tlabel"]
    rows += [f"{cid}\t{e.onset:.3f}\t{e.offset:.3f}\t{e.label}" for cid in ids for e in clips[cid]]
    files = [atomic_write_text(out / "strong.tsv", "\n".join(rows) + "\n"),
             atomic_write_text(out / "labels.tsv", "".join(f"{c.mid}\t{c.name}\n" for c in CLASSES))]

    labels = {c.mid: c.name for c in CLASSES}
    dev = _split_clips(ids, dev_fraction, seed)
    records, stats = convert_strong(clips, labels, wav_dir, seed=seed, types=types,
                                    n_choices=n_choices, generic_names=(), llm=llm, source="synth",
                                    id_prefix="", max_per_clip=questions_per_clip,
                                    progress=progress, per_clip=None, durations_within_clip=False)
    for r in records:
        r.split = "dev" if r.meta["segment_id"] in dev else "train"
    root = out.resolve()
    files.append(write_records(out / "qa.jsonl", records, relative_to=root))
    if dev:
        files.append(write_records(out / "train.jsonl", [r for r in records if r.split == "train"],
                                   relative_to=root))
        files.append(write_records(out / "dev.jsonl", [r for r in records if r.split == "dev"],
                                   relative_to=root))
    seconds = time.perf_counter() - t0
    return {
        "clips": n, "events": sum(len(v) for v in clips.values()),
        "events_per_class": dict(sorted(Counter(e.label for v in clips.values() for e in v).items())),
        "questions": len(records), "questions_per_type": dict(sorted(stats.questions.items())),
        "clips_skipped": dict(stats.skipped), "dev_clips": len(dev),
        "train_questions": sum(r.split == "train" for r in records),
        "dev_questions": sum(r.split == "dev" for r in records),
        "wav_dir": str(wav_dir), "files": [str(f) for f in files],
        "seconds_audio": round(t_audio, 2), "seconds": round(seconds, 2), "workers": workers,
    }


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="synthetic soundscapes with exact labels, and their QA",
        description="Synthesise soundscapes from named sound classes over background noise; write "
                    "WAVs, an AudioSet-Strong TSV, the label names and temporal QA.")
    p.add_argument("-n", type=int, default=2000, help="number of clips (default 2000)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per clip (default 10)")
    p.add_argument("--snr-db", type=float, default=10.0,
                   help="event RMS over background RMS in dB, +-3 dB per event (default 10)")
    p.add_argument("--dev-fraction", type=float, default=0.1,
                   help="share of clips for dev.jsonl (default 0.1; 0 for qa.jsonl only)")
    p.add_argument("--types", type=parse_types, default=SYNTH_TYPES,
                   help=f"comma-separated question types (default {','.join(SYNTH_TYPES)})")
    p.add_argument("--questions-per-clip", type=int, default=None, metavar="K",
                   help="keep at most K questions per clip, chosen at random (default: all)")
    p.add_argument("--choices", type=int, default=4, help="options per question (default 4)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    add_llm_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        llm = llm_from_args(args)
        if args.questions_per_clip is not None and args.questions_per_clip < 1:
            raise ValueError("--questions-per-clip must be at least 1")
        if args.choices < 2:
            raise ValueError("--choices must be at least 2")
        summary = synthesize(args.output, args.n, args.seed, args.duration, args.snr_db,
                             dev_fraction=args.dev_fraction, types=args.types,
                             questions_per_clip=args.questions_per_clip, n_choices=args.choices,
                             workers=args.workers, llm=llm, progress=True)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"aqa data synth: {summary['clips']} clips, {summary['events']} events, "
          f"{summary['questions']} questions in {summary['seconds']:.1f} s "
          f"({summary['workers']} workers)")
    print("questions: " + ", ".join(f"{t} {k}" for t, k in summary["questions_per_type"].items()))
    if summary["dev_clips"]:
        print(f"split: {summary['train_questions']} train / {summary['dev_questions']} dev questions "
              f"({summary['dev_clips']} dev clips)")
    print(f"wrote {summary['clips']} WAV files in {summary['wav_dir']}")
    for f in summary["files"]:
        print(f"wrote {f}")
    return 0
