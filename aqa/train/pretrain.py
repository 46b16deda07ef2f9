"""Pretraining from strong labels: what stands in for an audio-language model's pretraining
when the base is a tiny random model (`aqa demo`, tests). Real bases arrive with an audio
encoder pretrained on its own, with audio-text alignment, and with a language model that knows
the multiple-choice format from text; a random model has none of these, so two stages give them:

1. Encoder: sound event detection. The audio tower plus a temporary linear head is trained
   with binary cross-entropy on frame-level targets (which classes sound in each encoder
   frame), as Whisper-style encoders are pretrained apart from the language model.
2. Alignment: every weight except the (now frozen) encoder is trained with cross-entropy on
   two kinds of text targets, mixed half and half:
   - captions: the labelled sounds in order of first onset with how often each occurs
     ("beep twice, then knock once");
   - text-only multiple-choice drills: "Which option is hum?" with lettered options and the
     letter as the answer. These make the letters real output tokens, as instruction tuning
     does for real models; without them LoRA cannot raise a letter's probability past a few
     percent, because the output rows of never-trained tokens stay at their random scale.

Nothing here shows the model a question about the audio in the multiple-choice format, so
zero-shot it still answers such questions at about chance; SFT then teaches the task.

Why the encoder is trained first and then frozen: trained jointly from random weights on
captions, the encoder collapses to a constant output (the caption prior lowers the loss
faster than listening does), measured here: the projected audio of different clips differed
by 0.3% of its scale after 300 steps.

Launch:
    aqa model pretrain models/tiny --strong data/synth/strong.tsv --labels data/synth/labels.tsv \\
        --audio-root data/synth/wav -o models/tiny-pretrained
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

INSTRUCTION = "Describe the sounds you hear, in order."
#: The weight files of a model folder, which the pretrained model's own save replaces.
WEIGHT_FILE = re.compile(r"\.(safetensors|bin|pt|pth)(\.index\.json)?$")


def caption(events: Sequence, names: Mapping[str, str]) -> str:
    """'beep twice, then knock once': sounds in order of first onset, with their counts."""
    from aqa.data.events import onsets_and_counts
    from aqa.data.spoken import format_times

    parts = [f"{names.get(m, m)} {format_times(n)}" for m, (_, n) in onsets_and_counts(events).items()]
    return ", then ".join(parts) if parts else "no sound"


def drill(rng, pool: Sequence[str], n_options: int = 4) -> tuple[str, str]:
    """A text-only multiple-choice item: (user text, answer letter)."""
    from aqa.prompts import question_text, target_text

    options = [pool[i] for i in rng.choice(len(pool), size=min(n_options, len(pool)), replace=False)]
    k = int(rng.integers(len(options)))
    # No quotes around the option: '"hum' and ' hum' are different tokens, and the drill is
    # meant to teach looking an option up by its own tokens.
    return question_text(f"Which option is {options[k]}?", options), target_text(k)


def frame_targets(events: Sequence, mids: Sequence[str], n_frames: int, seconds: float):
    """(n_frames, n_classes) 0/1: which classes sound during each encoder frame."""
    import numpy as np

    y = np.zeros((n_frames, len(mids)), np.float32)
    fps = n_frames / seconds
    for e in events:
        if e.label in mids:
            lo = min(n_frames - 1, int(e.onset * fps))
            y[lo:max(lo + 1, int(math.ceil(e.offset * fps))), mids.index(e.label)] = 1.0
    return y


def _step(loss, params, opt, sched) -> None:
    """Backward, clip at 1.0, step the optimizer and the schedule."""
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad()


def load_clips(clips: Mapping[str, Sequence], audio_root: str | Path, seconds: float,
               progress: bool = True) -> tuple[list, list]:
    """(audio samples, merged events) of every clip whose audio decodes, in clip-id order."""
    from tqdm.auto import tqdm

    from aqa.data.audio import AudioError, load_audio
    from aqa.data.events import find_audio, merge_occurrences

    audio, events = [], []
    for cid in tqdm(sorted(clips), desc="load clips", disable=not progress):
        path = find_audio(audio_root, cid)
        if path is None:
            log.warning("no audio for clip %s under %s; skipped", cid, audio_root)
            continue
        try:
            audio.append(load_audio(path, max_seconds=seconds).samples)
        except AudioError as e:
            log.warning("skipped: %s", e)
            continue
        events.append(merge_occurrences(clips[cid]))
    return audio, events


def encoder_output_shape(backend, feats) -> tuple[int, int]:
    """(frames, width) of the encoder's states for one row of `encoder_inputs`: read from the
    encoder itself, so the frame targets match what it outputs in every family (a model without
    a fixed window has no frame count apart from its clips). Run in eval mode so that dropout
    draws nothing from the RNG the training then uses."""
    import torch

    encoder = backend.audio_encoder()
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        states = backend.encoder_states(feats[:1].to(backend.device))
    encoder.train(was_training)
    return int(states.shape[1]), int(states.shape[2])


def pretraining_window(backend, audio: list) -> float:
    """Seconds of audio each clip stands for in the frame targets: the model's window, or for a
    model that hears any length (`audio_seconds` None) the longest clip, the others padded to it."""
    from aqa.data.audio import TARGET_SR

    return backend.audio_seconds or max(len(a) for a in audio) / TARGET_SR


def pad_clips(audio: list, seconds: float) -> list:
    """Every clip padded with silence to `seconds`: one length, so that the encoder inputs stack
    and each row's frames stand for the same time (a windowed model's extractor pads so itself)."""
    import numpy as np

    from aqa.data.audio import TARGET_SR

    n = round(seconds * TARGET_SR)
    return [np.pad(a, (0, n - len(a))) if len(a) < n else a for a in audio]


def train_encoder(backend, audio: list, events: list, mids: Sequence[str], rng, *, seconds: float, steps: int,
                  batch_size: int, lr: float, warmup: int, progress: bool = True) -> list[float]:
    """Stage 1: the audio encoder (with a temporary linear head) learns sound event detection
    on clips of `seconds` (`pretraining_window`); returns each step's loss."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from aqa.train.recipe import lr_lambda

    encoder, dev = backend.audio_encoder(), backend.device
    feats = backend.encoder_inputs(audio)  # (N, ...)
    n_frames, width = encoder_output_shape(backend, feats)
    targets = torch.tensor(np.stack([frame_targets(ev, mids, n_frames, seconds) for ev in events]))
    head = torch.nn.Linear(width, len(mids)).to(dev)
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(min(warmup, steps // 5), steps, "cosine"))
    encoder.train()
    bar = tqdm(range(steps), desc="encoder: event detection", disable=not progress)
    losses = []
    for _ in bar:
        idx = torch.as_tensor(rng.choice(len(audio), size=min(batch_size, len(audio)), replace=False))
        logits = head(backend.encoder_states(feats[idx].to(dev)))  # (B, frames, classes)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets[idx].to(dev))
        _step(loss, params, opt, sched)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    log.info("encoder pretraining: %d steps, last loss %.4f", steps, losses[-1] if losses else float("nan"))
    return losses


def train_alignment(backend, audio: list, events: list, names: Mapping[str, str], rng, *, steps: int,
                    batch_size: int, lr: float, warmup: int, progress: bool = True) -> None:
    """Stage 2: every weight but the (frozen) encoder learns captions and text-only
    multiple-choice drills, half and half."""
    import torch
    from tqdm.auto import tqdm

    from aqa.data.spoken import format_times
    from aqa.models.base import Example
    from aqa.train.recipe import lr_lambda

    backend.audio_encoder().requires_grad_(False)
    model = backend.model
    pool = [names[m] for m in sorted(names)] + [format_times(k) for k in range(1, 6)] + [str(k) for k in range(1, 6)]
    capts = [caption(ev, names) for ev in events]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warmup, steps, "cosine"))
    model.train()
    bar = tqdm(range(steps), desc="alignment: captions + drills", disable=not progress)
    for _ in bar:
        batch = []
        for i in rng.choice(len(audio), size=batch_size, replace=len(audio) < batch_size):
            if rng.random() < 0.5:
                batch.append(Example(audio[i], INSTRUCTION, capts[i]))
            else:
                text, letter = drill(rng, pool)
                batch.append(Example(audio[i], text, letter))
        logp, mask = backend.target_logprobs(backend.collate(batch, with_target=True))
        loss = -(logp.sum() / mask.sum())
        _step(loss, params, opt, sched)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    log.info("alignment pretraining: %d clips, %d steps, last loss %.3f", len(audio), steps, loss.item())


def save_base(backend, model_dir: str | Path, out_dir: str | Path) -> Path:
    """The pretrained model as a checkpoint folder (weights, processor, the tiny model's sizes),
    written beside `out_dir` and renamed into place."""
    from aqa.io import ordinary_modes

    out, src = Path(out_dir), Path(model_dir)
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    backend.model.eval()
    backend.model.save_pretrained(tmp, safe_serialization=True)
    if src.is_dir():
        # Pretraining changes weights only: the folder's other files (tokenizer, processor and
        # generation settings, aqa_tiny.json) are carried over as they are, which keeps each
        # family's own layout (MOSS-Audio's processor is no transformers class that saves itself).
        for f in src.iterdir():
            if f.is_file() and not (tmp / f.name).exists() and not WEIGHT_FILE.search(f.name):
                shutil.copy(f, tmp / f.name)
    else:  # a hub id
        backend.processor.save_pretrained(tmp)
    ordinary_modes(tmp)  # save_pretrained leaves model.safetensors 0600
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def pretrain(model_dir: str | Path, strong_tsv: str | Path, labels_tsv: str | Path, audio_root: str | Path,
             out_dir: str | Path, *, encoder_steps: int = 200, steps: int = 300, batch_size: int = 16,
             lr: float = 5e-4, encoder_lr: float = 1e-3, warmup: int = 30, seed: int = 0,
             device: str | None = None, clip_ids: Iterable[str] | None = None, progress: bool = True) -> Path:
    """Both stages on the clips of `strong_tsv` (only `clip_ids` if given); the result is
    saved as a checkpoint folder at `out_dir`."""
    import time

    import numpy as np
    import torch

    from aqa.data.events import read_labels, read_strong_tsv
    from aqa.io import UserError
    from aqa.models.registry import load_backend

    clips = read_strong_tsv(strong_tsv)
    names = read_labels(labels_tsv)
    if clip_ids is not None:
        keep = set(clip_ids)
        clips = {k: v for k, v in clips.items() if k in keep}
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)  # one stream through both stages: the clips and drills each step draws
    backend = load_backend(str(model_dir), device=device, is_trainable=True)
    try:
        backend.audio_encoder()
    except NotImplementedError as e:
        raise UserError(f"{model_dir}: `aqa model pretrain` cannot train this model ({e})") from None
    audio, events = load_clips(clips, audio_root, backend.audio_seconds, progress)
    if not audio:
        raise ValueError(f"{strong_tsv}: no clip with decodable audio to pretrain on")
    seconds = pretraining_window(backend, audio)
    if backend.audio_seconds is None:
        audio = pad_clips(audio, seconds)
    t = time.time()
    try:
        train_encoder(backend, audio, events, sorted(names), rng, seconds=seconds, steps=encoder_steps,
                      batch_size=batch_size, lr=encoder_lr, warmup=warmup, progress=progress)
    except NotImplementedError as e:  # a family with some of the hooks but not all
        raise UserError(f"{model_dir}: `aqa model pretrain` cannot train this model ({e})") from None
    t_encoder, t = time.time() - t, time.time()
    train_alignment(backend, audio, events, names, rng, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                    progress=progress)
    log.info("pretraining: encoder %.0f s, alignment %.0f s", t_encoder, time.time() - t)
    return save_base(backend, model_dir, out_dir)


def register(msub: argparse._SubParsersAction) -> None:
    """`aqa model pretrain`, in the `aqa model` group."""
    p = msub.add_parser("pretrain", help="pretrain a tiny base from strong labels (encoder, then alignment)",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model folder to start from")
    p.add_argument("--strong", required=True, help="AudioSet-Strong-format TSV")
    p.add_argument("--labels", required=True, help="mid_to_display_name TSV")
    p.add_argument("--audio-root", required=True, help="folder holding <segment_id>.wav")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--encoder-steps", type=int, default=200)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.set_defaults(func=_run)


def _run(a) -> int:
    out = pretrain(a.model, a.strong, a.labels, a.audio_root, a.output, encoder_steps=a.encoder_steps,
                   steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed, device=a.device)
    print(f"wrote {out}/")
    return 0
