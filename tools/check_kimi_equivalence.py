"""Check aqa's native Kimi-Audio backend against upstream's reference code on the same weights.

Upstream's code (MoonshotAI/Kimi-Audio's prompt manager and Whisper feature code,
GLM-4-Voice's speech tokenizer, the checkpoint's modeling_moonshot_kimia.py) is not part of
aqa and is never committed; this script only talks to a *reference runner* built from it
(how: docs/kimi_audio.md). The runner is called once per case as

    REF_PYTHON REF_SCRIPT --ckpt DIR --wav FILE --text-ids JSON --out OUT.npz --order text_first

and writes the upstream prompt (audio_input_ids, text_input_ids, is_continuous_mask), the
GLM-4-Voice tokens (glm_tokens), the Whisper features (whisper_feature) and the text logits
(text_logits, (T, V) float32) of one user turn holding the question and then the clip.

For each tiny random checkpoint (built here with `aqa model tiny-kimi-audio`, in the official
layout) and each clip, this script compares token ids exactly and features/logits in float32,
prints a table, and writes it as JSON.

    python tools/check_kimi_equivalence.py --ref-python /path/venv/bin/python \\
        --ref-script /path/reference_logits.py -o runs/kimi-equivalence
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

CASES = [("12 s noise + tones", 12.0), ("35 s (two 30 s segments)", 35.0)]
SPECS = {"tiny (default)": {}, "wider (4 layers, 128 wide)": dict(decoder_layers=4, decoder_dim=128, decoder_heads=8,
                                                                  decoder_kv_heads=2, whisper_dim=64, tokenizer_dim=64)}
QUESTION = "Which sound is heard first in the clip? A. dog barking B. car horn C. bird singing D. speech"


def clip(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    x = 0.05 * rng.standard_normal(t.size)
    for k, f in enumerate((440.0, 880.0, 1250.0)):  # tones switching on and off, so tokens vary
        x += 0.2 * np.sin(2 * np.pi * f * t) * ((t // (1.5 + k)) % 2 == 0)
    return x.astype(np.float32)


def ours(model: Path, audio: np.ndarray) -> dict:
    from aqa.models.base import Example
    from aqa.models.registry import load_backend

    b = load_backend(str(model), device="cpu", dtype="fp32")
    batch = b.collate([Example(audio, QUESTION)])
    with torch.no_grad():
        logits = b.output_embedding()(b.hidden_states(batch))[0].float().numpy()
        feats = b.whisper_features(batch["input_features"], batch["segment_tokens"]).numpy()
    q = b.tokenizer.encode(QUESTION, add_special_tokens=False)
    return dict(audio_input_ids=batch["audio_ids"][0].numpy(), text_input_ids=batch["text_ids"][0].numpy(),
                is_continuous_mask=batch["continuous"][0].numpy(), whisper_feature=feats, text_logits=logits,
                glm_tokens=b.processor.speech_tokenizer.tokenize(audio, b.processor.tokenizer_features),
                question_ids=q, letters=b.letter_token_ids(4))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref-python", required=True, help="python of the reference runner's environment")
    ap.add_argument("--ref-script", required=True, help="the reference runner (see docs/kimi_audio.md)")
    ap.add_argument("-o", "--output", required=True, help="folder for results.json")
    args = ap.parse_args(argv)
    from aqa.io import write_json
    from aqa.models.kimi_audio import special_token_names
    from aqa.models.tiny_kimi_audio import TinyKimiSpec, build_tiny_kimi

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for si, (spec_name, kw) in enumerate(SPECS.items()):
            model = build_tiny_kimi(tmp / f"model{si}", TinyKimiSpec(seed=si, **kw))
            # The runner's stand-in for tokenization_kimia.py needs the special tokens' ids.
            base = json.loads((model / "config.json").read_text())["num_base_tokens"]
            names = special_token_names()
            write_json(model / "special_tokens.json", {**{n: base + i for i, n in enumerate(names)},
                                                       "pad_id": base + len(names) - 1})
            for ci, (case, seconds) in enumerate(CASES):
                audio = clip(seconds, seed=ci)
                wav = tmp / f"clip{ci}.wav"
                sf.write(wav, audio, 16000, subtype="FLOAT")  # float WAV: both sides read identical samples
                mine = ours(model, audio)
                ref_file = tmp / f"ref{si}{ci}.npz"
                subprocess.run([args.ref_python, args.ref_script, "--ckpt", str(model), "--wav", str(wav),
                                "--text-ids", json.dumps(mine["question_ids"]), "--out", str(ref_file),
                                "--order", "text_first"], check=True)
                ref = np.load(ref_file)
                same = {k: bool(np.array_equal(np.asarray(mine[k]), ref[k]))
                        for k in ("audio_input_ids", "text_input_ids", "is_continuous_mask", "glm_tokens")}
                a, r = mine["text_logits"], ref["text_logits"]
                ok_shape = a.shape == r.shape
                diff = float(np.abs(a - r).max()) if ok_shape else float("nan")
                letters = mine["letters"]
                row = dict(model=spec_name, clip=case, positions=int(r.shape[0]), speech_tokens=len(mine["glm_tokens"]),
                           **{f"same_{k}": v for k, v in same.items()},
                           whisper_feature_max_abs_diff=float(np.abs(mine["whisper_feature"] - ref["whisper_feature"]).max()),
                           logits_max_abs_diff=diff, logits_scale=float(np.abs(r).max()),
                           argmax_agree=float((a.argmax(-1) == r.argmax(-1)).mean()) if ok_shape else 0.0,
                           answer_logits_max_abs_diff=float(np.abs(a[-1, letters] - r[-1, letters]).max()))
                rows.append(row)
                print(json.dumps(row))
    write_json(out / "results.json", {"question": QUESTION, "rows": rows,
                                      "torch": torch.__version__, "platform": sys.platform})
    ok = all(r[f"same_{k}"] for r in rows for k in ("audio_input_ids", "text_input_ids", "is_continuous_mask",
                                                     "glm_tokens")) and all(r["logits_max_abs_diff"] < 1e-4 for r in rows)
    print(f"{'EQUIVALENT' if ok else 'DIFFERENT'}: {len(rows)} cases; results in {out / 'results.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
