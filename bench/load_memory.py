"""Peak host memory of loading a model two ways, one fresh process per load, same checkpoint:

- "CPU, then moved": what aqa did before: every weight read to the CPU (`load_backend` with
  device cpu), then the model moved to the device (`.to(device)`);
- "straight to device": what aqa does now: `load_backend` given the device, each weight read
  from the file onto it (`aqa.models.base.device_load_kwargs`).

    python bench/load_memory.py                    # mid-size random checkpoints, CPU (minutes)
    python bench/load_memory.py --shapes tiny      # the test's sizes; numbers mean nothing

There is no GPU here, so the device of the GPU loads is `meta`: a tensor moved there leaves the
host, as one moved to a GPU does, but no value is copied (only the pages that opening a tensor
touches are read; a GPU load reads every page of the file, which a CPU run cannot show). The
numbers are deltas from the process's state right before the load: peak anonymous memory
(private to the process: what every process of a multi-GPU run pays again), peak file-backed
memory (pages of the memory-mapped checkpoint, which processes share and the kernel can drop),
and peak RSS (both; the kernel's VmHWM, reset before the load). The anonymous and file-backed
peaks are sampled every 2 ms.

Prints a table and appends it to bench/RESULTS.md with the machine, the date and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Builder sizes per family. "mid": about 70 M parameters each (about 280 MB in fp32).
SHAPES = {
    "tiny": {"qwen2-audio": {}, "qwen3-omni": {}, "kimi-audio": {}},
    "mid": {
        "qwen2-audio": dict(num_mel_bins=128, encoder_dim=384, encoder_layers=4, encoder_heads=6, decoder_dim=768,
                            decoder_layers=4, decoder_heads=12, decoder_kv_heads=4, model_vocab=16000),
        # Experts are most of the weights, as in Qwen3-Omni-30B-A3B (128 experts a layer).
        "qwen3-omni": dict(num_mel_bins=128, encoder_dim=256, encoder_layers=2, encoder_heads=4, decoder_dim=512,
                           decoder_layers=4, decoder_heads=8, decoder_kv_heads=4, num_experts=24, expert_dim=384,
                           experts_per_token=4, model_vocab=16000),
        # The speech encoder and tokenizer are aqa's own loader (aqa/models/weights.py).
        "kimi-audio": dict(decoder_dim=512, decoder_layers=4, decoder_heads=8, decoder_kv_heads=4, whisper_dim=768,
                           whisper_layers=6, tokenizer_dim=512),
    },
}

#: (key, checkpoint dtype, device, load dtype, what the row stands for).
SCENARIOS = [
    ("cpu-fp32-of-bf16", "bf16", "cpu", "fp32", "aqa's CPU default on a bf16 checkpoint"),
    ("cpu-fp32-of-fp32", "fp32", "cpu", "fp32", "CPU, in the checkpoint's dtype"),
    ("meta-bf16-of-bf16", "bf16", "meta", "bf16", "aqa's GPU default on a bf16 checkpoint"),
    ("meta-bf16-of-fp32", "fp32", "meta", "bf16", "aqa's GPU default on an fp32 checkpoint"),
]
WAYS = {"moved": "CPU, then moved", "direct": "straight to device"}


# --- the measured process -----------------------------------------------------------------------
def proc_status() -> dict[str, int]:
    """This process's memory counters from /proc/self/status, in KiB."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0])
    return out


def reset_peak() -> bool:
    """Reset the kernel's peak RSS (VmHWM) to the current RSS; False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class Sampler(threading.Thread):
    """The largest anonymous and file-backed RSS seen while it runs (the kernel keeps no peak
    of each)."""

    def __init__(self, every: float = 0.002):
        super().__init__(daemon=True)
        self.every, self.done = every, threading.Event()
        self.peak = {"RssAnon": 0, "RssFile": 0}

    def run(self):
        while not self.done.is_set():
            s = proc_status()
            for k in self.peak:
                self.peak[k] = max(self.peak[k], s[k])
            time.sleep(self.every)

    def stop(self) -> dict[str, int]:
        self.done.set()
        self.join()
        s = proc_status()
        return {k: max(v, s[k]) for k, v in self.peak.items()}


def warm_imports(path: str) -> None:
    """Import the family's modules and load its processor once before measuring: a first
    import allocates too, the same for both ways, and is not the load of the weights."""
    import transformers

    from aqa.models.registry import backend_class, load_without_weights, model_family

    load_without_weights(path)
    cls = backend_class(model_family(path))
    for name in (getattr(cls, "transformers_class", ""), getattr(cls, "thinker_class_name", ""),
                 getattr(cls, "processor_class_name", "")):
        if name:
            getattr(transformers, name)
    from transformers.models.whisper import modeling_whisper  # noqa: F401  (Kimi-Audio's encoders)


def load_once(path: str, device: str, dtype: str, way: str) -> dict:
    """Load `path` one way (see the module's docstring) and report the memory it took."""
    import gc

    from aqa.models.registry import load_backend

    gc.collect()
    before = proc_status()
    peak_reset = reset_peak()
    sampler = Sampler()
    sampler.start()
    t = time.perf_counter()
    if way == "direct":
        backend = load_backend(path, device=device, dtype=dtype)
    else:
        backend = load_backend(path, device="cpu", dtype=dtype)
        backend.model.to(device)
    vq = getattr(backend.processor, "speech_tokenizer", None)  # Kimi-Audio's, loaded with the model
    if vq is not None and way != "direct":
        vq.to(device)
    seconds = time.perf_counter() - t
    peak = sampler.stop()
    after = proc_status()
    tensors = [*backend.model.parameters(), *backend.model.buffers(), *(vq.parameters() if vq is not None else [])]
    return {"seconds": seconds, "devices": sorted({str(x.device.type) for x in tensors}),
            "weights_mib": sum(x.numel() * x.element_size() for x in tensors) / 2**20,
            "anon_mib": (peak["RssAnon"] - before["RssAnon"]) / 1024,
            "file_mib": (peak["RssFile"] - before["RssFile"]) / 1024,
            "rss_mib": (after["VmHWM"] - before["VmRSS"]) / 1024 if peak_reset else None}


def child(job: dict) -> dict:
    """`load_once` for each of `job["ways"]` in turn, in this (fresh) process."""
    import torch

    torch.set_num_threads(job["threads"])
    warm_imports(job["path"])
    return {way: load_once(job["path"], job["device"], job["dtype"], way) for way in job["ways"]}


def measure(path: str | Path, device: str, dtype: str, ways: list[str], threads: int = 2) -> dict[str, dict]:
    """`child` in a fresh process with this checkout's aqa. One way per process gives each load
    a process of its own; several share one (each measured from the state before it), which
    costs one start-up, not one per load."""
    job = dict(path=str(path), device=device, dtype=dtype, ways=list(ways), threads=threads)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)],
                       capture_output=True, text=True, env=env, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"loading {path} ({', '.join(ways)}; {device}, {dtype}) failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# --- checkpoints ----------------------------------------------------------------------------------
def build(family: str, sizes: dict, out: Path) -> Path:
    """A random-weight checkpoint of `family` (fp32, as the tiny builders save it)."""
    if family == "kimi-audio":
        from aqa.models.tiny.kimi_audio import TinyKimiSpec, build_tiny_kimi

        return build_tiny_kimi(out, TinyKimiSpec(**sizes))
    from aqa.models.tiny import build_tiny_family

    return build_tiny_family(family, out, **sizes)


def bf16_copy(src: Path, dst: Path) -> Path:
    """`src` with every floating-point weight stored in bf16, as released checkpoints are."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for f in dst.rglob("*.safetensors"):
        state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(f).items()}
        save_file(state, str(f), metadata={"format": "pt"})
    return dst


def disk_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors")) / 2**20


# --- the table ------------------------------------------------------------------------------------
def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", choices=list(SHAPES), default="mid")
    ap.add_argument("--families", default="qwen2-audio,qwen3-omni,kimi-audio",
                    help="comma-separated: " + ", ".join(SHAPES["mid"]))
    ap.add_argument("--scenarios", default=",".join(s[0] for s in SCENARIOS),
                    help="comma-separated: " + ", ".join(s[0] for s in SCENARIOS))
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each loading process")
    ap.add_argument("--work", help="folder for the checkpoints (default: a temporary one, removed after)")
    ap.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    import datetime
    import platform

    import torch

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    scenarios = [s for s in SCENARIOS if s[0] in args.scenarios.split(",")]
    unknown = [f for f in families if f not in SHAPES[args.shapes]]
    if unknown or not scenarios:
        ap.error(f"unknown families {unknown} or no scenario out of {args.scenarios}")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="aqa-load-memory-"))
    rows, disk = [], 0.0
    t0 = time.time()
    try:
        for family in families:
            fp32 = work / family / "fp32"
            if not (fp32 / "config.json").is_file():
                build(family, SHAPES[args.shapes][family], fp32)
            files = {"fp32": fp32}
            if any(s[1] == "bf16" for s in scenarios):
                files["bf16"] = work / family / "bf16"
                if not (files["bf16"] / "config.json").is_file():
                    bf16_copy(fp32, files["bf16"])
            disk += sum(disk_mib(p) for p in files.values())
            for key, file_dtype, device, dtype, what in scenarios:
                for way in WAYS:
                    r = measure(files[file_dtype], device, dtype, [way], args.threads)[way]
                    if r["devices"] != [device]:
                        raise SystemExit(f"{family} {key} {way}: weights on {r['devices']}, not {device}")
                    rows.append((family, file_dtype, device, dtype, what, way, r))
                    print(f"{family:12} {key:18} {WAYS[way]:19} anon {r['anon_mib']:7.0f} MiB  "
                          f"file {r['file_mib']:7.0f} MiB  rss {fmt(r['rss_mib']):>6} MiB  {r['seconds']:.1f} s",
                          flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    day = datetime.date.today().isoformat()
    lines = [f"## {day}, {machine}, host memory of loading a model ({args.shapes} shapes)",
             "", f"Command: `{' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}`; torch {torch.__version__}, "
             f"one fresh process per load, {args.threads} torch threads; random-weight checkpoints built by aqa's tiny "
             f"builders at these sizes ({disk:.0f} MiB of safetensors in all); {time.time() - t0:.0f} s in all. "
             "MiB above the process's state right before the load. `meta` stands for a GPU: the tensors leave the "
             "host as they would for a GPU, but no value is copied, so file-backed pages count only what opening "
             "the tensors touches, where a GPU load reads the whole file. Weights: the loaded model's, in the "
             "loaded dtype.", "",
             "| model | load | stands for | weights MiB | way | peak anonymous MiB | peak file-backed MiB "
             "| peak RSS MiB | s |",
             "|---|---|---|---:|---|---:|---:|---:|---:|"]
    for family, file_dtype, device, dtype, what, way, r in rows:
        lines.append(f"| {family} | {file_dtype} file -> {device}, {dtype} | {what} | {r['weights_mib']:.0f} "
                     f"| {WAYS[way]} | {fmt(r['anon_mib'])} | {fmt(r['file_mib'])} | {fmt(r['rss_mib'])} "
                     f"| {r['seconds']:.1f} |")
    sys.path.insert(0, str(Path(__file__).parent))
    from speed import publish

    publish(lines, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
