"""The training input pipeline: how fast one DataLoader worker prepares clips, and what a training
step costs when its micro-batches come from real audio files through the pipeline instead of
from memory, in one process (plus its workers).

    python bench/pipeline.py                   # CPU, mid-sized random models (minutes)
    python bench/pipeline.py --device cuda     # one GPU: the training step on the GPU

Preprocessing, per worker (one process, one torch thread, as a DataLoader worker runs): read a
44.1 kHz stereo FLAC, decode, downmix and resample to 16 kHz, shuffle the options, collate
(Qwen2-Audio: its processor's log-mel and tokens; Kimi-Audio: Whisper log-mel and text tokens,
the speech tokens read from the cache). Kimi-Audio's GLM-4-Voice tokens are a model's work and
stay in the training process; they are computed once per clip (the first epoch), timed apart.

Training step: LoRA SFT on one micro-batch per step, its batch taken from memory (collated
before timing), or prepared by the pipeline in the training process (0 workers) or by
`--workers` DataLoader workers. Kimi-Audio's speech tokens are cached before timing (every epoch
after the first).

Prints a table and appends it to bench/RESULTS.md with the machine, the date and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kimi_audio as kimi_bench  # noqa: E402
import speed  # noqa: E402
from speed import heading, publish  # noqa: E402

SHAPES = ("tiny", "mid")


def write_dataset(folder: Path, n: int, seconds: float, seed: int) -> Path:
    """`n` questions on `n` clips: 44.1 kHz stereo FLAC, noise and tones. Returns the JSONL."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    sr = 44100
    rows = []
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        t = np.arange(int(seconds * sr)) / sr
        x = 0.05 * rng.standard_normal((len(t), 2)) + 0.2 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t)[:, None]
        sf.write(folder / "audio" / f"c{i}.flac", x.astype(np.float32), sr, format="FLAC", subtype="PCM_16")
        rows.append({"id": f"q{i}", "audio": f"audio/c{i}.flac", "question": "Which sound is heard in the clip?",
                     "choices": ["a dog barking", "a car horn", "rain on a roof", "a bell ringing"],
                     "answer": int(rng.integers(4)), "subset": "bench"})
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def qwen2_audio(shapes: str, device: torch.device):
    from aqa.models.qwen2_audio import Qwen2AudioBackend
    from aqa.models.tiny.qwen2_audio import TinySpec, random_model, tiny_processor_and_config

    spec = TinySpec(**speed.SHAPES[shapes])
    processor, config = tiny_processor_and_config(spec)
    with torch.device(device):
        model = random_model(spec, config, processor.tokenizer)
    return Qwen2AudioBackend(model, processor, device)


def kimi_audio(shapes: str, device: torch.device, tmp: Path):
    from aqa.models.registry import load_backend
    from aqa.models.tiny.kimi_audio import TinyKimiSpec, build_tiny_kimi

    folder = build_tiny_kimi(tmp / "kimi", TinyKimiSpec(**kimi_bench.SHAPES[shapes]))
    return load_backend(str(folder), device=str(device), dtype="fp32")


def pipeline(backend, data: Path, *, batch: int, steps: int, workers: int, with_target: bool = True):
    """The MicroBatches of `steps` one-micro-batch steps over `data`, and their QAItems."""
    from aqa.data.records import load_records
    from aqa.train.data import MicroBatches, QAItems, StepPlan

    items = QAItems(load_records(data), seed=0, shuffle=True, window_s=backend.audio_seconds)
    plan = StepPlan(n_items=len(items), seed=0, per_step=batch, steps_per_epoch=len(items) // batch, accum=1,
                    world=1, micro=batch)
    return MicroBatches(plan, items, rank=0, start=0, steps=steps, backend=backend, with_target=with_target,
                        workers=workers)


def per_worker_rate(backend, data: Path, batch: int, repeats: int) -> float:
    """Clips per second that one worker prepares (host batches, one torch thread)."""
    ds = pipeline(backend, data, batch=batch, steps=len(data.read_text().splitlines()) // batch, workers=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a DataLoader worker runs with
    try:
        ds[0]  # warm-up: lazy imports, the feature extractor's filters
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            for j in range(len(ds)):
                ds[j]
            best = min(best, (time.perf_counter() - t) / (len(ds) * batch))
    finally:
        torch.set_num_threads(threads)
    return 1.0 / best


def speech_token_rate(backend, data: Path, clips: int, repeats: int) -> float:
    """Clips per second the training process tokenizes (GLM-4-Voice), cache empty."""
    from aqa.data.audio import load_audio
    from aqa.data.records import load_records

    audio = [load_audio(r.audio_path, max_seconds=None).samples for r in load_records(data)[:clips]]
    backend.speech_tokens(audio[0])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        backend.speech_cache.memo.clear()  # not cached yet: the first epoch
        t = time.perf_counter()
        for a in audio[1:]:
            backend.speech_tokens(a)
        best = min(best, (time.perf_counter() - t) / (len(audio) - 1))
    return 1.0 / best


def step_rates(backend, data: Path, *, batch: int, steps: int, workers: int, device, repeats: int) -> dict:
    """Training steps per second: batches from memory, and through the pipeline with 0 and
    `workers` DataLoader workers; the best of `repeats` rounds that take the three in turn (so a
    burst of load from other processes does not favour one)."""
    from peft import LoraConfig, get_peft_model

    from aqa.train.data import micro_batch_loader

    if not hasattr(backend.model, "peft_config"):
        backend.model = get_peft_model(backend.model, LoraConfig(r=8, lora_alpha=16,
                                                                 target_modules=backend.lora_target_modules()))
    params = [p for p in backend.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)

    def step(batch):
        logp, mask = backend.target_logprobs(batch)
        (-(logp.sum() / mask.sum())).backward()
        opt.step()
        opt.zero_grad()

    def timed_steps(batches) -> float:
        step(next(batches))  # warm-up; the workers, if any, started
        speed.sync(device)
        t = time.perf_counter()
        for b in batches:
            step(b)
        speed.sync(device)
        return steps / (time.perf_counter() - t)

    def through(n):
        ds = pipeline(backend, data, batch=batch, steps=steps + 1, workers=n)
        for mb in micro_batch_loader(ds, num_workers=n, prefetch=2, pin_memory=device.type == "cuda"):
            yield backend.to_device(mb.batch) if mb.on_host else mb.batch

    ds = pipeline(backend, data, batch=batch, steps=steps + 1, workers=0)
    held = [ds[j].batch for j in range(len(ds))]  # collated before timing
    rates: dict[str, float] = {}
    for _ in range(repeats):
        modes = [("memory", iter(held)), ("workers=0", through(0)), (f"workers={workers}", through(workers))]
        for mode, batches in modes:
            rates[mode] = max(rates.get(mode, 0.0), timed_steps(batches))
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shapes", choices=SHAPES, default="mid")
    ap.add_argument("--clip-seconds", type=float, nargs="+", default=[10.0, 30.0],
                    help="clip lengths of the preprocessing rows (the training step uses the first)")
    ap.add_argument("--clips", type=int, default=16, help="clips per preprocessing measurement")
    ap.add_argument("--batch", type=int, default=4, help="items per micro-batch")
    ap.add_argument("--steps", type=int, default=6, help="timed training steps per row")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the pipelined training step")
    ap.add_argument("--repeats", type=int, default=3, help="passes and rounds; the best is reported")
    ap.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        backends = {"Qwen2-Audio": qwen2_audio(args.shapes, device), "Kimi-Audio": kimi_audio(args.shapes, device, tmp)}
        n_train = (args.steps + 1) * args.batch
        data = {s: write_dataset(tmp / f"d{s:g}", max(args.clips, n_train), s, seed=int(s)) for s in args.clip_seconds}
        for name, backend in backends.items():
            for s in args.clip_seconds:
                rate = per_worker_rate(backend, data[s], args.batch, args.repeats)
                rows.append((f"{name}: decode, resample, shuffle, collate (one worker)", f"{s:g} s", "clips/s", rate))
                if name == "Kimi-Audio":
                    rows.append((f"{name}: GLM-4-Voice tokens (training process, first epoch only)", f"{s:g} s",
                                 "clips/s", speech_token_rate(backend, data[s], min(args.clips, 8), args.repeats)))
        s0 = args.clip_seconds[0]
        steps = {}
        for name, backend in backends.items():
            if name == "Kimi-Audio":
                for r in [json.loads(x) for x in data[s0].read_text().splitlines()]:  # every epoch after the first
                    from aqa.data.audio import load_audio

                    backend.speech_tokens(load_audio(data[s0].parent / r["audio"], max_seconds=None).samples)
            steps[name] = step_rates(backend, data[s0], batch=args.batch, steps=args.steps, workers=args.workers,
                                     device=device, repeats=args.repeats)

    lines = heading(device, f"input pipeline, {args.shapes} shapes")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines[-1] += (f"44.1 kHz stereo FLAC clips; preprocessing: best of {args.repeats} passes over "
                  f"{args.clips} clips in micro-batches of {args.batch}; training step: LoRA SFT, micro-batch "
                  f"{args.batch} of {s0:g} s clips, best of {args.repeats} rounds of {args.steps} steps after a "
                  f"warm-up; load average {load:.1f} at the end (other processes share the cores).")
    lines += ["", "| what | clips | unit | rate |", "|---|---|---|---:|"]
    lines += [f"| {w} | {c} | {u} | {r:.2f} |" for w, c, u, r in rows]
    lines += ["", "| training step | batches from memory (steps/s) | pipeline, 0 workers | "
              f"pipeline, {args.workers} workers |", "|---|---:|---:|---:|"]
    for name, r in steps.items():
        m = r["memory"]
        lines.append(f"| {name} | {m:.2f} | {r['workers=0']:.2f} ({r['workers=0'] / m:.2f}x) | "
                     f"{r[f'workers={args.workers}']:.2f} ({r[f'workers={args.workers}'] / m:.2f}x) |")
    publish(lines, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
