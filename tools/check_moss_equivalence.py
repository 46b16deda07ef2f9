"""Check aqa's native MOSS-Audio backend against upstream's own code on the same weights.

Upstream's code is not part of aqa and is never committed. The person running this check clones
github.com/OpenMOSS/MOSS-Audio (docs/moss_audio.md gives the commit) and makes a Python
environment for it (tools/moss_reference_requirements.txt); tools/moss_reference_runner.py
(ours) imports upstream's `src/` from that clone and runs it on a CPU in float32. Nothing of
aqa's reaches the reference side but the checkpoint folder and the WAVs.

On a tiny random checkpoint in the official layout (built here with `aqa model tiny --family
moss-audio --num-mel-bins 128`, the bins upstream's encoder code needs, or `--model FOLDER`), for time markers on and off, it compares:

- one clip per prompt: the log-mel features, the prompt ids, the logits at every position (and
  the answer letters' logits at the last one), and greedy generation token by token;
- a left-padded batch of all the clips: each row's features, ids, logits at its real positions
  and greedy tokens (aqa's batched `generate_ids`) against upstream run on that clip alone
  (upstream's model takes one prompt at a time).

    python tools/check_moss_equivalence.py --ref-python /path/venv/bin/python \\
        --upstream /path/MOSS-Audio -o runs/moss-equivalence [--seconds 3.3 7.9] [--seeds 0 1] \\
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

QUESTION = "Which sound is heard first in the clip? A. dog barking B. car horn C. bird singing D. speech"
#: Compared for equality.
EXACT = ("input_ids", "generated")
#: The features are the same numpy STFT in both transformers releases, rounded to bfloat16: equal
#: or a bfloat16 step apart. Logits of scale ~5 differ by ~1e-6 between two float32
#: implementations of the same arithmetic; 1e-4 is far above that, far below any real difference.
TOLERANCES = {"features": 1e-6, "logits": 1e-4}


def clip(seconds: float, seed: int) -> np.ndarray:
    """The test clip (tools/equivalence.py) with this checker's tone period, as its recorded results used."""
    return noise_clip(seconds, seed, 0.7)


def compare(mine: dict, ref, tolerances: dict[str, float] = TOLERANCES) -> dict:
    """One row of the table (tools/equivalence.py `compare`) with this family's measures."""
    row = compare_rows(mine, ref, exact=EXACT, tolerances=tolerances, logits="logits")
    return row


RUNNER = Path(__file__).resolve().parent / "moss_reference_runner.py"


def ours(backend, audios: list[np.ndarray], question: str, max_new_tokens: int) -> list[dict]:
    """What aqa computes for one batch of clips (each with `question`): per row, the measures the
    reference runner writes, cut to the row's real (not padding) positions and frames."""
    import torch

    from aqa.models.base import Example

    batch = backend.collate([Example(a, question) for a in audios])
    with torch.no_grad():
        logits = backend.output_embedding()(backend.hidden_states(batch)).float().numpy()
    generated = backend.generate_ids(batch, max_new_tokens=max_new_tokens)
    rows = []
    for i in range(len(audios)):
        real = batch["attention_mask"][i].bool().numpy()
        frames = int(batch["feature_lengths"][i])
        rows.append(dict(input_ids=batch["input_ids"][i].numpy()[real], logits=logits[i][real],
                         features=batch["input_features"][i, :, :frames].numpy(), generated=np.array(generated[i]),
                         padding=int((~real).sum()), letters=backend.letter_token_ids(4)))
    return rows


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref-python", required=True, help="python of the reference environment (docs/moss_audio.md)")
    ap.add_argument("--upstream", required=True, type=Path, help="the MOSS-Audio clone (repository root, with src/)")
    ap.add_argument("--model", type=Path, help="checkpoint folder in the official layout (default: a tiny random one "
                                               "built here)")
    ap.add_argument("--clip", action="append", default=[], type=Path,
                    help="a 16 kHz mono WAV to use (repeatable; default: synthetic clips of --seconds and --seeds)")
    ap.add_argument("--seconds", type=float, nargs="+", default=[3.3, 7.9], help="lengths of the synthetic clips")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                    help="one seed per synthetic clip (noise), and the first also seeds the tiny model's weights")
    ap.add_argument("--question", default=QUESTION, help="the question asked with every clip")
    ap.add_argument("--max-new-tokens", type=int, default=8, help="greedy tokens compared per prompt")
    ap.add_argument("--logits-tol", type=float, default=TOLERANCES["logits"], help="max abs logit difference")
    ap.add_argument("--feature-tol", type=float, default=TOLERANCES["features"], help="max abs log-mel difference")
    ap.add_argument("-o", "--output", required=True, type=Path, help="folder for results.json")
    args = ap.parse_args(argv)
    if args.max_new_tokens < 1:
        ap.error("--max-new-tokens must be at least 1")
    if not (args.upstream / "src" / "modeling_moss_audio.py").is_file():
        ap.error(f"{args.upstream}: no src/modeling_moss_audio.py (clone MOSS-Audio as docs/moss_audio.md says)")
    if not args.clip and len(args.seeds) != len(args.seconds):
        ap.error(f"--seeds gives {len(args.seeds)} seeds for {len(args.seconds)} --seconds: one per clip")
    for c in args.clip:
        if not c.is_file():
            ap.error(f"{c}: no such file")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import soundfile as sf
    import torch

    from aqa.data.audio import load_audio
    from aqa.io import write_json
    from aqa.models.registry import load_backend
    from aqa.models.tiny.moss_audio import TinyMossAudioSpec, build_tiny_moss_audio

    tolerances = {"features": args.feature_tol, "logits": args.logits_tol}
    args.output.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.clip:
            names = [str(c) for c in args.clip]
            audios = [load_audio(str(c), max_seconds=None).samples for c in args.clip]
        else:
            names = [f"{s:g} s, seed {seed}" for s, seed in zip(args.seconds, args.seeds)]
            audios = [clip(s, seed) for s, seed in zip(args.seconds, args.seeds)]
        model = args.model or build_tiny_moss_audio(tmp / "model", TinyMossAudioSpec(seed=args.seeds[0], num_mel_bins=128))
        cases = []
        for ci, a in enumerate(audios):
            wav = tmp / f"clip{ci}.wav"
            sf.write(wav, a, 16000, subtype="FLOAT")  # float WAV: both sides read identical samples
            for markers in (True, False):
                cases.append({"id": f"clip{ci}-{'on' if markers else 'off'}", "wav": str(wav), "question": args.question,
                              "max_new_tokens": args.max_new_tokens, "time_markers": markers})
        (tmp / "cases.json").write_text(json.dumps(cases))
        subprocess.run([args.ref_python, str(RUNNER), "--upstream", str(args.upstream.resolve()), "--ckpt", str(model),
                        "--cases", str(tmp / "cases.json"), "--out-dir", str(tmp / "ref")], check=True)
        backend = load_backend(str(model), device="cpu", dtype="fp32")
        for markers in (True, False):
            backend.time_markers = markers
            refs = [np.load(tmp / "ref" / f"clip{ci}-{'on' if markers else 'off'}.npz") for ci in range(len(audios))]
            singles = [ours(backend, [a], args.question, args.max_new_tokens)[0] for a in audios]
            batch = ours(backend, audios, args.question, args.max_new_tokens)
            for label, mine_rows in (("one clip", singles), (f"batch of {len(audios)}, left-padded", batch)):
                for name, mine, ref in zip(names, mine_rows, refs):
                    row = dict(time_markers=markers, case=label, clip=name, padding=mine["padding"],
                               **compare(mine, ref, tolerances))
                    rows.append(row)
                    print(json.dumps(row))
    ok = verdict(rows)
    write_json(args.output / "results.json", {
        "verdict": "EQUIVALENT" if ok else "DIFFERENT", "question": args.question, "tolerances": tolerances,
        "max_new_tokens": args.max_new_tokens, "clips": names, "model": str(args.model or "tiny (built here)"),
        "rows": rows, "torch": torch.__version__, "platform": sys.platform,
        "upstream_commit": git_commit(args.upstream)})
    print(f"{'EQUIVALENT' if ok else 'DIFFERENT'}: {len(rows)} rows; results in {args.output / 'results.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
