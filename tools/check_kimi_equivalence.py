"""Check aqa's native Kimi-Audio backend against upstream's own code on the same weights.

Upstream's code is not part of aqa and is never committed. The person running this check
clones it (docs/kimi_audio.md gives the commands and commits) and makes a Python environment
for it; tools/kimi_reference_runner.py (ours) imports it from those clones and runs it on a CPU
in float32. Upstream's tokenizer (the checkpoint's tokenization_kimia.py) tokenizes the raw
question: nothing of aqa's reaches the reference side but the checkpoint folder and the WAVs.

For each tiny random checkpoint (built here with `aqa model tiny-kimi-audio`, in the official
layout) the check compares, each measure against a threshold that fails it:

- one clip per prompt (12 s; 35 s, which is two 30 s segments): the question's token ids, the
  prompt (audio stream, text stream, continuous mask), the GLM-4-Voice tokens, the Whisper
  features, the text logits at every position, and greedy generation token by token;
- a left-padded batch of all the clips: each row's features, prompt, logits at its real positions
  and greedy tokens (aqa's batched `generate_ids`) against upstream run on that clip alone.

    python tools/check_kimi_equivalence.py --ref-python /path/venv/bin/python \\
        --upstream /path/upstream -o runs/kimi-equivalence [--seconds 12 35] [--seeds 0 1] \\
        [--clip a.wav --clip b.wav] [--question "..."]

Exit status 0: every row is within every threshold (EQUIVALENT); 1: some measure is not.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from equivalence import clip as noise_clip, git_commit, verdict  # noqa: E402
from equivalence import compare as compare_rows  # noqa: E402

CLIPS = [("12 s noise + tones", 12.0), ("35 s (two 30 s segments)", 35.0)]
SPECS = {"tiny (default)": {}, "wider (4 layers, 128 wide)": dict(decoder_layers=4, decoder_dim=128, decoder_heads=8,
                                                                  decoder_kv_heads=2, whisper_dim=64, tokenizer_dim=64)}
QUESTION = "Which sound is heard first in the clip? A. dog barking B. car horn C. bird singing D. speech"
#: Compared for equality.
EXACT = ("question_ids", "audio_input_ids", "text_input_ids", "is_continuous_mask", "glm_tokens", "generated")
#: Float32 rounding between two implementations of the same arithmetic is ~1e-6 here (logits
#: of scale ~5); 1e-4 is far above that and far below any real difference in the model.
TOLERANCES = {"whisper_feature": 1e-4, "text_logits": 1e-4}


def clip(seconds: float, seed: int) -> np.ndarray:
    """The test clip (tools/equivalence.py) with this checker's tone period, as its recorded results used."""
    return noise_clip(seconds, seed, 1.5)


def compare(mine: dict, ref, tolerances: dict[str, float] = TOLERANCES) -> dict:
    """One row of the table (tools/equivalence.py `compare`) with this family's measures."""
    row = compare_rows(mine, ref, exact=EXACT, tolerances=tolerances, logits="text_logits")
    row["speech_tokens"] = int(len(np.asarray(ref["glm_tokens"])))
    return row


RUNNER = Path(__file__).resolve().parent / "kimi_reference_runner.py"


def ours(backend, audios: list[np.ndarray], question: str, max_new_tokens: int) -> list[dict]:
    """What aqa computes for one batch of clips (each with `question`): per row, the same
    measures as the reference runner writes, cut to the row's real (not padding) positions."""
    import torch

    from aqa.models.base import Example

    batch = backend.collate([Example(a, question) for a in audios])
    with torch.no_grad():
        logits = backend.output_embedding()(backend.hidden_states(batch)).float().numpy()
        feats = backend.whisper_features(batch["input_features"], batch["segment_tokens"]).numpy()
    generated = backend.generate_ids(batch, max_new_tokens=max_new_tokens)
    q = backend.tokenizer.encode(question, add_special_tokens=False)
    offset = backend.processor.token_offset
    rows, start = [], 0
    for i in range(len(audios)):
        real = batch["attention_mask"][i].bool().numpy()
        cont = batch["continuous"][i].numpy()[real]
        audio_ids = batch["audio_ids"][i].numpy()[real]
        n = int(cont.sum())  # the features are the rows' continuous positions, row after row
        rows.append(dict(question_ids=np.array(q), audio_input_ids=audio_ids,
                         text_input_ids=batch["text_ids"][i].numpy()[real], is_continuous_mask=cont,
                         glm_tokens=audio_ids[cont] - offset, whisper_feature=feats[start:start + n],
                         text_logits=logits[i][real], generated=np.array(generated[i]), padding=int((~real).sum()),
                         letters=backend.letter_token_ids(4)))
        start += n
    return rows


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref-python", required=True, help="python of the reference environment (docs/kimi_audio.md)")
    ap.add_argument("--upstream", required=True, type=Path,
                    help="folder holding the clones Kimi-Audio/, GLM-4-Voice/ and Kimi-Audio-7B-Instruct/ (code files)")
    ap.add_argument("--lm-code", type=Path, help="LM file folder for the runner (default: Kimi-Audio/finetune_codes)")
    ap.add_argument("--clip", action="append", default=[], type=Path,
                    help="a 16 kHz mono WAV to use (repeatable; default: synthetic clips of --seconds and --seeds)")
    ap.add_argument("--seconds", type=float, nargs="+", default=[s for _, s in CLIPS],
                    help="lengths of the synthetic clips")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(len(CLIPS))),
                    help="one noise seed per synthetic clip")
    ap.add_argument("--question", default=QUESTION, help="the question asked with every clip")
    ap.add_argument("--max-new-tokens", type=int, default=8, help="greedy tokens compared per prompt")
    ap.add_argument("--logits-tol", type=float, default=TOLERANCES["text_logits"], help="max abs logit difference")
    ap.add_argument("--feature-tol", type=float, default=TOLERANCES["whisper_feature"],
                    help="max abs Whisper feature difference")
    ap.add_argument("-o", "--output", required=True, type=Path, help="folder for results.json")
    args = ap.parse_args(argv)
    if args.max_new_tokens < 1:
        ap.error("--max-new-tokens must be at least 1")
    if not args.clip and len(args.seeds) != len(args.seconds):
        ap.error(f"--seeds gives {len(args.seeds)} seeds for {len(args.seconds)} --seconds: one per clip")
    for c in args.clip:
        if not c.is_file():
            ap.error(f"{c}: no such file")
    for name in ("Kimi-Audio", "GLM-4-Voice", "Kimi-Audio-7B-Instruct"):
        if not (args.upstream / name).is_dir():
            ap.error(f"{args.upstream / name}: not a folder (clone it as docs/kimi_audio.md says)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import soundfile as sf
    import torch

    from aqa.data.audio import load_audio
    from aqa.io import write_json
    from aqa.models.registry import load_backend
    from aqa.models.tiny.kimi_audio import TinyKimiSpec, build_tiny_kimi

    tolerances = {"whisper_feature": args.feature_tol, "text_logits": args.logits_tol}
    up = args.upstream.resolve()
    runner_args = ["--kimi-audio", str(up / "Kimi-Audio"), "--glm-4-voice", str(up / "GLM-4-Voice"),
                   "--tokenizer-code", str(up / "Kimi-Audio-7B-Instruct")]
    if args.lm_code:
        runner_args += ["--lm-code", str(args.lm_code.resolve())]
    args.output.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.clip:
            names = [str(c) for c in args.clip]
            audios = [load_audio(str(c), max_seconds=None).samples for c in args.clip]
        else:
            known = dict((s, n) for n, s in CLIPS)
            names = [f"{known.get(s, f'{s:g} s noise + tones')}, seed {seed}" for s, seed in zip(args.seconds, args.seeds)]
            audios = [clip(s, seed=seed) for s, seed in zip(args.seconds, args.seeds)]
        cases = []
        for ci in range(len(audios)):
            wav = tmp / f"clip{ci}.wav"
            sf.write(wav, audios[-1], 16000, subtype="FLOAT")  # float WAV: both sides read identical samples
            cases.append({"id": f"clip{ci}", "wav": str(wav), "question": args.question, "max_new_tokens": args.max_new_tokens})
        (tmp / "cases.json").write_text(json.dumps(cases))
        for si, (spec_name, kw) in enumerate(SPECS.items()):
            model = build_tiny_kimi(tmp / f"model{si}", TinyKimiSpec(seed=si, **kw))
            ref_dir = tmp / f"ref{si}"
            subprocess.run([args.ref_python, str(RUNNER), *runner_args, "--ckpt", str(model),
                            "--cases", str(tmp / "cases.json"), "--out-dir", str(ref_dir)], check=True)
            refs = [np.load(ref_dir / f"{c['id']}.npz") for c in cases]
            backend = load_backend(str(model), device="cpu", dtype="fp32")
            singles = [ours(backend, [a], args.question, args.max_new_tokens)[0] for a in audios]
            batch = ours(backend, audios, args.question, args.max_new_tokens)
            for label, mine_rows in (("one clip", singles), (f"batch of {len(audios)}, left-padded", batch)):
                for clip_name, mine, ref in zip(names, mine_rows, refs):
                    row = dict(model=spec_name, case=label, clip=clip_name, padding=mine["padding"],
                               **compare(mine, ref, tolerances))
                    rows.append(row)
                    print(json.dumps(row))
    ok = verdict(rows)
    write_json(args.output / "results.json", {
        "verdict": "EQUIVALENT" if ok else "DIFFERENT", "question": args.question, "clips": names, "tolerances": tolerances,
        "max_new_tokens": args.max_new_tokens, "rows": rows, "torch": torch.__version__, "platform": sys.platform,
        "upstream_commits": {n: git_commit(up / n) for n in ("Kimi-Audio", "GLM-4-Voice", "Kimi-Audio-7B-Instruct")}})
    print(f"{'EQUIVALENT' if ok else 'DIFFERENT'}: {len(rows)} rows; results in {args.output / 'results.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
