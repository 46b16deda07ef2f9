"""Speed of the native Kimi-Audio backend: where the time goes, and batching against upstream's
one-prompt-at-a-time inference, on the same random weights and clips, in one process.

    python bench/kimi_audio.py                 # CPU, a mid-sized random Kimi-Audio (minutes)
    python bench/kimi_audio.py --device cuda   # one GPU

Upstream's `KimiAudio.generate` takes one conversation at a time and its forward computes the
text logits over the whole vocabulary at every position (and the audio branch's, which this
baseline leaves out, so it flatters upstream). The baseline here does the same with aqa's
modules: one prompt per forward, full logits. aqa's path scores a batch, left-padded, with the
option letters' logits only. The two must give the same answer-letter logits (checked). The
backend keeps each clip's GLM-4-Voice tokens after the first collate (as every epoch after the
first and every repeated evaluation does), so the rows after the first time the tokenizer only
in their warm-up call; the first row times the tokenizer itself.

Prints a table and appends it to bench/RESULTS.md with the machine, the date and the command.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import fmt_mem, heading, publish, timed  # noqa: E402

SHAPES = {
    # For the test that keeps this script working; its numbers mean nothing.
    "tiny": dict(),
    # Runs in minutes on 2 CPU cores and keeps the proportions that matter: GLM-4-Voice's 16,384
    # speech codes in the vocabulary, a Whisper encoder on 30 s windows, a 4-layer decoder.
    "mid": dict(decoder_layers=4, decoder_dim=384, decoder_heads=6, decoder_kv_heads=2, whisper_dim=256,
                whisper_layers=4, tokenizer_dim=256, speech_codes=16384),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shapes", choices=list(SHAPES), default="mid")
    ap.add_argument("--clip-seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args()
    from aqa.models.base import Example
    from aqa.models.registry import load_backend
    from aqa.models.tiny.kimi_audio import TinyKimiSpec, build_tiny_kimi

    device = torch.device(args.device)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_kimi(Path(tmp) / "model", TinyKimiSpec(**SHAPES[args.shapes]))
        backend = load_backend(str(folder), device=str(device))
    n_params = sum(p.numel() for p in backend.model.parameters())
    examples = [Example((0.1 * rng.standard_normal(int(args.clip_seconds * 16000))).astype(np.float32),
                        f"Which sound is heard first? A. dog B. car horn C. bird D. rain ({i})")
                for i in range(args.batch)]
    B = len(examples)
    p = backend.processor

    def speech_tokens():
        for e in examples:
            p.speech_tokenizer.tokenize(e.audio, p.tokenizer_features, device=device)

    batch = backend.collate(examples)

    @torch.no_grad()
    def whisper():
        backend.whisper_features(batch["input_features"], batch["segment_tokens"])

    with torch.no_grad():
        embeds = backend.input_embeddings(batch)

    @torch.no_grad()
    def decoder():
        backend.base_model().model(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                   position_ids=batch["position_ids"], use_cache=False)

    @torch.no_grad()
    def one_at_a_time():
        out = []
        for e in examples:
            b = backend.collate([e])
            out.append(backend.output_embedding()(backend.hidden_states(b))[0, -1])  # (V,) after (T, V)
        return torch.stack(out)

    @torch.no_grad()
    def batched():
        return backend.option_logits(backend.collate(examples), [4] * B)

    @torch.no_grad()
    def generate():
        backend.generate_ids(backend.collate(examples), max_new_tokens=args.new_tokens)

    letters = backend.letter_token_ids(4)
    diff = (one_at_a_time()[:, letters].float() - batched().float()).abs().max().item()
    if diff > 1e-3:
        raise SystemExit(f"batched and one-at-a-time answer logits differ by {diff:.2e}; not timing them")
    rows = []
    for what, unit, fn, per in [
        ("GLM-4-Voice tokens (collate)", "clips/s", speech_tokens, B),
        ("Whisper features, 30 s windows", "clips/s", whisper, B),
        ("decoder forward (embeddings given)", "prompts/s", decoder, B),
        ("scoring: one prompt at a time, full logits", "items/s", one_at_a_time, B),
        ("scoring: aqa batched, letter logits", "items/s", batched, B),
        (f"greedy generation, {args.new_tokens} tokens, cached", "items/s", generate, B),
    ]:
        t, mem = timed(fn, device, args.repeats)
        rows.append((what, unit, per / t, mem))
    speedup = rows[4][2] / rows[3][2]

    lines = heading(device, f"Kimi-Audio {args.shapes} shapes ({n_params / 1e6:.1f} M parameters)")
    lines[-1] += (f"{args.clip_seconds:g} s clips, batch {B}, median of {args.repeats} after a warm-up; "
                  f"batched vs one-at-a-time answer logits agree to {diff:.1e}; batched scoring is {speedup:.2f}x "
                  "one prompt at a time.")
    lines += ["", "| what | unit | rate | peak GiB |", "|---|---|---:|---:|"]
    lines += [f"| {w} | {u} | {r:.2f} | {fmt_mem(m)} |" for w, u, r, m in rows]
    publish(lines, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
