"""Helpers of bench/gpu_check.sh (run that, not this):

    python bench/gpu_check.py kimi-forward --device cuda [--shapes 7b] [--batch 4] [--clip-seconds 30]
    python bench/gpu_check.py detail KIND PATH      # one stage's numbers, for the table
    python bench/gpu_check.py table OUT_DIR --command "..." [--results bench/RESULTS.md]

`kimi-forward` scores a batch with a Kimi-Audio of Kimi-Audio-7B-Instruct's shapes (random
weights, bf16 on GPU): a 28 x 3584 Qwen2 decoder with its 168,448-token vocabulary, a
Whisper-large-v3 encoder and a GLM-4-Voice-shaped speech tokenizer (16 layers, 16,384 codes),
built in memory (no 16 GB folder on disk), and prints its time and peak GPU memory as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import publish, sync  # noqa: E402

#: Kimi-Audio-7B-Instruct's config.json (tests/test_kimi_audio.py checks its weight names).
KIMI_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, max_position_embeddings=8192, vocab_size=168448, kimia_adaptor_input_dim=5120,
               rms_norm_eps=1e-6, use_whisper_feature=True)
#: Whisper-large-v3's encoder; GLM-4-Voice's tokenizer is its first 16 layers, pooled by 4, quantised.
WHISPER_LARGE = dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                     num_mel_bins=128, max_source_positions=1500)
GLM4_VOICE = dict(pooling_kernel_size=4, pooling_type="avg", pooling_position=16, quantize_position=16,
                  quantize_vocab_size=16384, quantize_causal_block_size=200, quantize_causal_encoder=False,
                  encoder_causal_attention=False, encoder_causal_convolution=True)


def kimi_7b_backend(device: torch.device, tmp: Path):
    """The tiny model's tokenizer and feature extractors around 7B-shaped modules."""
    import dataclasses

    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from aqa.models.kimi_audio import KimiAudioConfig, KimiAudioForCausalLM
    from aqa.models.registry import load_backend
    from aqa.models.tiny.kimi_audio import TinyKimiSpec, build_tiny_kimi
    from aqa.models.whisper_vq import WhisperVQTokenizer

    tiny = load_backend(str(build_tiny_kimi(tmp / "kimi", TinyKimiSpec(speech_codes=16384))), device="cpu",
                        dtype="fp32")
    small = tiny.model.config
    # The tiny vocabulary's ids (specials, speech-token offset) all fall inside the 7B one.
    cfg = KimiAudioConfig(**KIMI_7B, **{k: getattr(small, k) for k in (
        "kimia_token_offset", "kimia_media_begin", "kimia_media_end", "bos_token_id", "eos_token_id", "pad_token_id")})
    cfg._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    enc_cfg = WhisperConfig(**WHISPER_LARGE)
    enc_cfg._attn_implementation = "sdpa"
    vq_cfg = WhisperConfig(**WHISPER_LARGE, **GLM4_VOICE)
    vq_cfg._attn_implementation = "sdpa"
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the compute dtype: no float32 copy of 8 B parameters
    try:
        with torch.device(device):
            model = KimiAudioForCausalLM(cfg)
            model.speech_encoder = WhisperEncoder(enc_cfg)
    finally:
        torch.set_default_dtype(default)
    with torch.device(device):
        vq = WhisperVQTokenizer(vq_cfg)  # float32, as the backend runs it
    model.eval()
    processor = dataclasses.replace(tiny.processor, speech_tokenizer=vq)
    return type(tiny)(model, processor, device)


def kimi_forward(args) -> int:
    device = torch.device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        if args.shapes == "7b":
            backend = kimi_7b_backend(device, Path(tmp))
        else:  # the CPU check of this script
            from aqa.models.registry import load_backend
            from aqa.models.tiny.kimi_audio import build_tiny_kimi

            backend = load_backend(str(build_tiny_kimi(Path(tmp) / "kimi")), device=str(device))
    from aqa.models.base import Example

    rng = np.random.default_rng(0)
    examples = [Example((0.1 * rng.standard_normal(int(args.clip_seconds * 16000))).astype(np.float32),
                        f"Which sound is heard first? A. dog B. car horn C. bird D. rain ({i})")
                for i in range(args.batch)]
    n_params = sum(p.numel() for p in backend.model.parameters()) + sum(
        p.numel() for p in backend.processor.speech_tokenizer.parameters())

    @torch.no_grad()
    def score():
        return backend.option_logits(backend.collate(examples), [4] * len(examples))

    score()  # warm-up; the speech tokens are cached from here on, as in every epoch after the first
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    logits = score()
    sync(device)
    seconds = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    print(json.dumps({"shapes": args.shapes, "params_b": round(n_params / 1e9, 2), "batch": len(examples),
                      "clip_seconds": args.clip_seconds, "seconds": round(seconds, 3),
                      "peak_gib": None if peak is None else round(peak, 2),
                      "finite": bool(torch.isfinite(logits).all())}))
    return 0


def detail(kind: str, path: Path) -> str:
    """The few numbers of one stage that go in the table's details column."""
    if kind == "train":
        rows = [json.loads(x) for x in (path / "train_log.jsonl").read_text().splitlines()]
        last = rows[-1]
        what = "loss" if "loss" in last and "reward" not in last else "reward"
        return (f"{len(rows)} steps, {last['samples_per_s']:.1f} items/s, {what} {rows[0][what]:.3f} -> "
                f"{last[what]:.3f}, adapter {'saved' if (path / 'adapter').is_dir() else 'MISSING'}")
    if kind == "zero2":
        ckpt = max((path / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        shards = len(list(ckpt.rglob("*optim_states.pt")))
        rows = [json.loads(x) for x in (path / "train_log.jsonl").read_text().splitlines()]
        return (f"stopped at 2, resumed to {len(rows)} steps; {shards} ZeRO optimizer shard(s) in {ckpt.name}; "
                f"loss {rows[-1]['loss']:.3f}, adapter {'saved' if (path / 'adapter').is_dir() else 'MISSING'}")
    if kind == "eval":
        m = json.loads((path / "metrics.json").read_text())
        return f"{m['n']} items, accuracy {100 * m['weighted_mean']['value']:.1f}%"
    if kind == "speed":  # bench/speed.py's table: one line per row
        out = []
        for line in path.read_text().splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) == 7 and cells[0] not in ("what", "---") and not cells[0].startswith("-"):
                what, unit, plain, ours, ratio, mp, ma = cells
                out.append(f"{what}: {ours} {unit} ({ratio} plain), peak {ma} GiB")
        return "; ".join(out)
    if kind == "pytest":  # its closing line: "N passed, M failed in S s"
        return [x for x in path.read_text().splitlines() if " in " in x and ("passed" in x or "failed" in x)][-1]
    if kind == "kimi":
        r = json.loads([x for x in path.read_text().splitlines() if x.startswith("{")][-1])
        peak = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.1f} GiB"
        return (f"{r['params_b']} B parameters, batch {r['batch']} x {r['clip_seconds']:g} s: {r['seconds']:.2f} s, "
                f"peak {peak}, logits finite: {r['finite']}")
    raise ValueError(kind)


def table(args) -> int:
    out = Path(args.out)
    rows = [line.split("\t") for line in (out / "rows.tsv").read_text().splitlines() if line.strip()]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{platform.machine()}, no GPU"
    lines = [f"## {datetime.date.today().isoformat()}, {gpu}, GPU check", "",
             f"Command: `{args.command}`; torch {torch.__version__}"
             f"{', CUDA ' + torch.version.cuda if torch.version.cuda else ''}; "
             f"{sum(r[1] == 'ok' for r in rows)} of {len(rows)} checks passed.", "",
             "| check | result | seconds | details |", "|---|---|---:|---|"]
    lines += [f"| {name} | {status} | {secs} | {info.replace('|', '/')} |" for name, status, secs, info in rows]
    res = Path(args.results) if args.results else out / "gpu_check.md"
    res.touch()
    publish(lines, res)
    return 0 if all(r[1] == "ok" for r in rows) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kimi-forward")
    k.add_argument("--device", default="cuda")
    k.add_argument("--shapes", choices=["7b", "tiny"], default="7b")
    k.add_argument("--batch", type=int, default=4)
    k.add_argument("--clip-seconds", type=float, default=30.0)
    d = sub.add_parser("detail")
    d.add_argument("kind", choices=["train", "zero2", "eval", "speed", "kimi", "pytest"])
    d.add_argument("path", type=Path)
    t = sub.add_parser("table")
    t.add_argument("out")
    t.add_argument("--command", required=True)
    t.add_argument("--results", help="append here (default: OUT/gpu_check.md)")
    args = ap.parse_args()
    if args.what == "kimi-forward":
        return kimi_forward(args)
    if args.what == "detail":
        try:
            print(detail(args.kind, args.path))
        except (OSError, ValueError, KeyError, IndexError) as e:
            print(f"no numbers ({type(e).__name__}: {e})")
        return 0
    return table(args)


if __name__ == "__main__":
    sys.exit(main())
