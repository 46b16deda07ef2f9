"""Run upstream MOSS-Audio's own code (github.com/OpenMOSS/MOSS-Audio, `src/`) on a checkpoint
folder, on a CPU in float32, and save what tools/check_moss_equivalence.py compares.

Runs in the reference environment (tools/moss_reference_requirements.txt: transformers 4.57.1,
the release upstream pins), never in aqa's; it imports nothing of aqa. Upstream's files are
imported from the user's clone (`--upstream`, the repository root, so that `src.*` resolves as
upstream's own scripts import it) and are not changed on disk. What is changed, at run time only:

- `torchaudio`: `src/processing_moss_audio.py` imports it at the top but uses it only to read
  files (`src/audio_io.py`); when it is not installed (the CPU wheel of torch 2.13 has no
  torchaudio build to match) an empty module stands in, and the clip is read here with
  soundfile from a float WAV, the same samples aqa reads;
- the device and dtype: `MossAudioModel.from_pretrained(..., dtype=float32)` on the CPU (no
  device map, which would need accelerate) where upstream's infer.py asks dtype "auto" and
  `device_map="cuda:0"``;
- the processor's audio ids: `MossAudioProcessor.from_pretrained` ignores processor_config.json
  and takes the ids as arguments (defaults 151654, 151669, 151670); they are read from the
  folder's processor_config.json and passed, which for a released checkpoint are the defaults.
  Its time-marker digits are constants (ids 15-24); the runner refuses a tokenizer whose digits
  are elsewhere rather than patch them.

Each case is one clip and one question, as upstream's processor takes them (one prompt; its
model checks the audio-token count of the whole batch against one clip's length). Per case it
writes CASE.npz: `features` (the processor's log-mels as the model reads them, float32),
`input_ids`, `logits` (float32, every position), `generated` (greedy `model.generate`, new ids).

    REF/bin/python tools/moss_reference_runner.py --upstream MOSS-Audio --ckpt MODEL \\
        --cases cases.json --out-dir OUT
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np


def import_upstream(root: Path):
    import transformers  # noqa: F401  (it probes torchaudio itself: before the stand-in exists)

    if importlib.util.find_spec("torchaudio") is None:
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    sys.path.insert(0, str(root))
    from src.modeling_moss_audio import MossAudioModel
    from src.processing_moss_audio import MossAudioProcessor

    return MossAudioModel, MossAudioProcessor


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, type=Path, help="the MOSS-Audio clone (repository root)")
    ap.add_argument("--ckpt", required=True, type=Path, help="checkpoint folder (official layout)")
    ap.add_argument("--cases", required=True, type=Path, help="JSON list of {id, wav, question, max_new_tokens, "
                                                              "time_markers}")
    ap.add_argument("--out-dir", required=True, type=Path)
    args = ap.parse_args(argv)
    import soundfile as sf
    import torch

    torch.manual_seed(0)
    MossAudioModel, MossAudioProcessor = import_upstream(args.upstream.resolve())
    model = MossAudioModel.from_pretrained(str(args.ckpt), dtype=torch.float32).eval()
    pc = json.loads((args.ckpt / "processor_config.json").read_text())
    ids = {k: pc[k] for k in ("audio_token_id", "audio_start_id", "audio_end_id") if k in pc}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for case in json.loads(args.cases.read_text()):
        processor = MossAudioProcessor.from_pretrained(str(args.ckpt), enable_time_marker=case["time_markers"], **ids)
        digits = [processor._base_tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
        if digits != [processor._digit_token_ids[str(d)] for d in range(10)]:
            raise SystemExit(f"{args.ckpt}: the tokenizer's digits are {digits}, upstream's time markers write "
                             f"{list(processor._digit_token_ids.values())}")
        wav, sr = sf.read(case["wav"], dtype="float32")
        if sr != 16000:
            raise SystemExit(f"{case['wav']}: {sr} Hz, the runner takes 16 kHz clips")
        inputs = processor(text=case["question"], audios=[wav], return_tensors="pt")
        inputs["audio_data"] = inputs["audio_data"].to(model.dtype)  # as infer.py does
        inputs["audio_input_mask"] = inputs["input_ids"] == processor.audio_token_id
        with torch.no_grad():
            logits = model(**inputs).logits[0].float().numpy()
            out = model.generate(**inputs, max_new_tokens=case["max_new_tokens"], do_sample=False, num_beams=1,
                                 use_cache=True)
        new = out[0, inputs["input_ids"].shape[1]:].numpy()
        np.savez(args.out_dir / f"{case['id']}.npz", features=inputs["audio_data"][0].float().numpy(),
                 input_ids=inputs["input_ids"][0].numpy(), logits=logits, generated=new)
        print(f"{case['id']}: {inputs['input_ids'].shape[1]} ids, {int(inputs['audio_input_mask'].sum())} audio "
              f"tokens, generated {new.tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
