"""Side-by-side speed of the plain transformers + peft path and aqa's path, same inputs, one process.

    python bench/speed.py                      # CPU, a mid-sized random model (minutes)
    python bench/speed.py --device cuda --shapes 7b   # one GPU, Qwen2-Audio-7B-Instruct's shapes

Plain path: what a user writes with transformers and peft alone: the processor pads every clip
to the 30 s window and the model computes logits over the whole vocabulary at every position
(its own loss for SFT, the last position for scoring, `generate` for rollouts). aqa's path:
the backend (encoder on the real frames, logits only at the answer tokens or option letters)
and GRPO's `choice` rollouts. Both use the same random weights and the same clips.

Prints a table and appends it to bench/RESULTS.md with the machine, the date and the command.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

SHAPES = {
    # For the test that keeps this script working; its numbers mean nothing.
    "tiny": dict(audio_seconds=30, num_mel_bins=16, encoder_dim=32, encoder_layers=1, encoder_heads=2,
                 decoder_dim=32, decoder_layers=1, decoder_heads=2, decoder_kv_heads=2, model_vocab=1000),
    # A model that runs in seconds on 2 CPU cores but keeps the costs' proportions: a 30 s window
    # and a vocabulary large enough for the full logits to matter.
    "mid": dict(audio_seconds=30, num_mel_bins=80, encoder_dim=256, encoder_layers=4, encoder_heads=4,
                decoder_dim=384, decoder_layers=4, decoder_heads=6, decoder_kv_heads=6, model_vocab=32000),
    # Qwen2-Audio-7B-Instruct: Whisper-large-v3 encoder, 32 x 4096 decoder, vocabulary 156,032.
    "7b": dict(audio_seconds=30, num_mel_bins=128, encoder_dim=1280, encoder_layers=32, encoder_heads=20,
               decoder_dim=4096, decoder_layers=32, decoder_heads=32, decoder_kv_heads=32, model_vocab=156032),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int) -> tuple[float, float | None]:
    """Median seconds of `fn` after one warm-up call, and peak GPU memory in GiB (None on CPU)."""
    fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return float(np.median(times)), peak


def heading(device, what: str) -> list[str]:
    """A results section's first lines: date, machine and what was measured, then the command."""
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else None
    machine = gpu or f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads"
    return [f"## {datetime.date.today().isoformat()}, {machine}, {what}", "",
            f"Command: `{' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}`; torch {torch.__version__}, "]


def fmt_mem(m: float | None) -> str:
    return "n/a" if m is None else f"{m:.1f}"


def publish(lines: list[str], results: str | Path) -> None:
    """Print the table and append it to the results file."""
    text = "\n".join(lines) + "\n"
    print(text)
    res = Path(results)
    with res.open("a") as fh:
        fh.write(("" if res.stat().st_size == 0 else "\n") + text)
    print(f"appended to {res}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shapes", choices=list(SHAPES), default="mid")
    ap.add_argument("--clip-seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--group", type=int, default=6, help="GRPO answers per question")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    from peft import LoraConfig, get_peft_model

    from aqa.models.base import Example
    from aqa.models.qwen2_audio import Qwen2AudioBackend
    from aqa.models.tiny.qwen2_audio import TinySpec, random_model, tiny_processor_and_config
    from aqa.prompts import question_text
    from aqa.train.grpo_loss import grpo_loss, group_advantages

    spec = TinySpec(**SHAPES[args.shapes])
    processor, config = tiny_processor_and_config(spec)
    with torch.device(device):
        model = random_model(spec, config, processor.tokenizer).to(dtype)
    backend = Qwen2AudioBackend(model, processor, device)
    backend.model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=backend.lora_target_modules()))
    peft_model = backend.model
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    n_params = sum(p.numel() for p in peft_model.parameters())

    rng = np.random.default_rng(0)
    n = int(args.clip_seconds * 16000)
    choices = ["a dog barking", "a car horn", "rain on a roof", "a bell ringing"]
    examples = [Example((0.1 * rng.standard_normal(n)).astype(np.float32),
                        question_text("Which sound is heard in the clip?", choices), "B") for _ in range(args.batch)]
    letters = backend.letter_token_ids(4)
    tok = processor.tokenizer

    # ---- plain transformers + peft -------------------------------------------------------
    def plain_inputs(with_target: bool):
        texts = [backend.prompt(e.text) + (e.target + "<|im_end|>" if with_target else "") for e in examples]
        enc = processor(text=texts, audio=[e.audio for e in examples], sampling_rate=16000, padding=True,
                        return_tensors="pt").to(device)
        enc.pop("num_audio_tokens", None)
        if with_target:
            labels = enc["input_ids"].clone()
            labels[:, :-2] = -100  # left padding: the letter and <|im_end|> are the last two tokens
            enc["labels"] = labels
        return enc

    def plain_sft():
        out = peft_model(**plain_inputs(True))
        out.loss.backward()
        opt.step()
        opt.zero_grad()

    def aqa_sft():
        logp, mask = backend.target_logprobs(backend.collate(examples, with_target=True))
        (-(logp.sum() / mask.sum())).backward()
        opt.step()
        opt.zero_grad()

    @torch.no_grad()
    def plain_score():
        logits = peft_model(**plain_inputs(False)).logits[:, -1, letters]
        return torch.softmax(logits.float(), -1)

    @torch.no_grad()
    def aqa_score():
        return torch.softmax(backend.option_logits(backend.collate(examples), [4] * len(examples)), -1)

    @torch.no_grad()
    def generate_eval():
        peft_model.generate(**plain_inputs(False), max_new_tokens=args.new_tokens, do_sample=False,
                            pad_token_id=tok.pad_token_id)

    G = args.group

    def plain_grpo():
        enc = plain_inputs(False)
        with torch.no_grad():
            out = peft_model.generate(**enc, max_new_tokens=args.new_tokens, do_sample=True,
                                      num_return_sequences=G, pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        feats = {k: v.repeat_interleave(G, 0) for k, v in enc.items() if k in ("input_features", "feature_attention_mask")}
        att = torch.cat([enc["attention_mask"].repeat_interleave(G, 0), (new != tok.pad_token_id).long()], 1)

        def token_logp():
            logits = peft_model(input_ids=out, attention_mask=att, **feats).logits[:, -new.shape[1] - 1:-1]
            return torch.log_softmax(logits.float(), -1).gather(-1, new[..., None]).squeeze(-1)

        with torch.no_grad(), peft_model.disable_adapter():
            ref = token_logp()
        logp = token_logp()
        rewards = torch.from_numpy(rng.integers(0, 2, (len(examples), G)).astype(np.float32))
        mask = (new != tok.pad_token_id).float()
        loss, _ = grpo_loss(logp, logp.detach(), ref, mask, group_advantages(rewards).reshape(-1).to(device))
        loss.backward()
        opt.step()
        opt.zero_grad()

    def aqa_grpo():
        batch = backend.collate(examples)
        nopt = [4] * len(examples)
        with torch.no_grad(), peft_model.disable_adapter():
            ref_all = torch.log_softmax(backend.option_logits(batch, nopt), -1)
        logp_all = torch.log_softmax(backend.option_logits(batch, nopt), -1)
        samples = torch.multinomial(logp_all.detach().exp(), G, replacement=True)
        logp = logp_all.gather(1, samples).reshape(-1, 1)
        ref = ref_all.gather(1, samples).reshape(-1, 1)
        rewards = (samples == 1).float().cpu()
        loss, _ = grpo_loss(logp, logp.detach(), ref, torch.ones_like(logp), group_advantages(rewards).reshape(-1).to(device))
        loss.backward()
        opt.step()
        opt.zero_grad()

    # The two scoring paths must agree before their speeds are compared.
    diff = (plain_score().float() - aqa_score().float()).abs().max().item()
    B = len(examples)
    rows = []
    for what, unit, plain, ours, per in [
        ("LoRA SFT step", "samples/s", plain_sft, aqa_sft, B),
        ("scoring eval", "items/s", plain_score, aqa_score, B),
        ("generate eval (same path)", "items/s", generate_eval, generate_eval, B),
        (f"GRPO step, G={G} (generate vs choice)", "questions/s", plain_grpo, aqa_grpo, B),
    ]:
        tp, mp = timed(plain, device, args.repeats)
        ta, ma = timed(ours, device, args.repeats)
        rows.append((what, unit, per / tp, per / ta, tp / ta, mp, ma))

    lines = heading(device, f"{args.shapes} shapes ({n_params / 1e6:.0f} M parameters)")
    lines[-1] += (f"{args.clip_seconds:g} s clips, batch {B}, median of {args.repeats} after a warm-up; "
                  f"scoring paths agree to {diff:.1e}.")
    lines += ["", "| what | unit | plain | aqa | aqa / plain | peak GiB plain | peak GiB aqa |",
              "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {w} | {u} | {p:.2f} | {a:.2f} | {r:.2f}x | {fmt_mem(mp)} | {fmt_mem(ma)} |"
              for w, u, p, a, r, mp, ma in rows]
    publish(lines, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
