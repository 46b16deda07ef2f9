"""LoRA SFT of MOSS-Audio, aqa's way against upstream's, side by side in one run (CPU, mid shapes):

    python bench/moss_sft.py [--seconds 10] [--batch 4] [--pad-to 8192] [--repeats 3]

- aqa: micro-batches of `--batch` items, each row as long as its own prompt (left padding to
  the batch's longest), the loss on the answer tokens only;
- upstream's `finetune/finetune.py` (OpenMOSS/MOSS-Audio at 2c9984b): one sample per step, its
  row padded to 8,192 tokens (`--pad-to`), which every layer still computes over (masked).
Both run aqa's own MOSS-Audio model on the same random-weight checkpoint with the same LoRA
(r 8 on the LLM's attention and MLP), so the ratio measures only the batching and padding: the
step's forward and backward, in samples per second. Prints one table and appends it to
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import heading, publish, timed  # noqa: E402

#: Mid shapes: big enough that the padding's cost shows, small enough for minutes on 2 cores.
MID = dict(decoder_layers=4, decoder_dim=256, decoder_heads=4, decoder_kv_heads=2, encoder_layers=4, encoder_dim=128,
           encoder_heads=4, num_mel_bins=128, vocab_size=1000, stem_channels=32, adapter_dim=256)


def padded_to(batch: dict, length: int, pad_id: int) -> dict:
    """One row left-padded to `length` tokens, masked as upstream's padding is (the positions of
    the real tokens unchanged)."""
    T = batch["input_ids"].shape[1]
    if T >= length:
        return batch
    extra = length - T
    out = dict(batch)
    out["input_ids"] = torch.cat([torch.full((1, extra), pad_id), batch["input_ids"]], 1)
    out["attention_mask"] = torch.cat([torch.zeros(1, extra, dtype=batch["attention_mask"].dtype),
                                       batch["attention_mask"]], 1)
    out["position_ids"] = torch.cat([torch.zeros(1, extra, dtype=batch["position_ids"].dtype),
                                     batch["position_ids"]], 1)
    if "labels" in batch:
        out["labels"] = torch.cat([torch.full((1, extra), -100), batch["labels"]], 1)
    return out


def main() -> int:
    from aqa.models.base import Example
    from aqa.models.registry import load_backend
    from aqa.models.tiny import build_tiny_family
    from aqa.prompts import question_text

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="clip length (DCASE clips are 10 s)")
    ap.add_argument("--batch", type=int, default=4, help="aqa's micro-batch")
    ap.add_argument("--pad-to", type=int, default=8192, help="upstream's padded length")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        b = load_backend(str(build_tiny_family("moss-audio", Path(tmp) / "moss", None, **MID)), device="cpu")
    b.add_lora(r=8, alpha=16, dropout=0.0)
    b.model.train()
    examples = [Example((0.1 * rng.standard_normal(int(args.seconds * 16000))).astype(np.float32),
                        question_text(f"Which sound is heard first? ({i})", ["dog", "car horn", "bird", "rain"]), "B")
                for i in range(args.batch)]
    pad_id = b.tokenizer.pad_token_id if b.tokenizer.pad_token_id is not None else 0

    def step(batch):
        logp, mask = b.target_logprobs(batch)
        (-(logp.sum() / mask.sum())).backward()
        b.model.zero_grad(set_to_none=True)

    ours = b.collate(examples, with_target=True)
    theirs = padded_to(b.collate(examples[:1], with_target=True), args.pad_to, pad_id)
    t_ours, _ = timed(lambda: step(ours), torch.device("cpu"), args.repeats)
    t_theirs, _ = timed(lambda: step(theirs), torch.device("cpu"), args.repeats)
    rows = [("aqa: micro-batch of %d, rows as long as their prompts" % args.batch, ours["input_ids"].shape,
             args.batch / t_ours),
            ("upstream's way: 1 sample, padded to %d tokens" % args.pad_to, theirs["input_ids"].shape, 1 / t_theirs)]
    n = sum(p.numel() for p in b.model.parameters())
    lines = heading(torch.device("cpu"), "MOSS-Audio LoRA SFT, aqa vs upstream's way")
    lines[-1] += (f"MOSS-Audio at mid shapes ({n / 1e6:.1f} M parameters, random weights), {args.seconds:g} s clips, "
                  f"LoRA r 8, forward + backward, median of {args.repeats}.")
    lines += ["", "| path | batch (rows x tokens) | samples/s |", "|---|---|---:|"]
    lines += [f"| {what} | {shape[0]} x {shape[1]} | {sps:.2f} |" for what, shape, sps in rows]
    lines += ["", f"Ratio: aqa trains {rows[0][2] / rows[1][2]:.1f}x the samples per second of one sample padded to "
                  f"{args.pad_to} tokens, on the same model and LoRA. What it does not show: a GPU (where padded "
                  f"attention costs less per token but the 8,192-token rows still bound the micro-batch), upstream's "
                  f"own code (its model class, flash attention), real weights."]
    publish(lines, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
