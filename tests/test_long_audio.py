"""What one prompt of each family takes: how much audio (a real 95-second WAV is heard whole, or
cut to the model's window and counted), and how many tokens (the count made without running the
model equals the length of the row `collate` builds)."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from aqa.data.audio import load_audio
from aqa.models.base import Example
from aqa.models.registry import load_backend, load_without_weights
from aqa.prompts import question_text, target_text

LONG_S = 95.0


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models gain nothing from intra-op threads on a shared machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def build(family: str, out, corpus):
    """A tiny checkpoint of `family` whose audio limit is the real model's kind of limit: Qwen2-Audio
    a 30 s window; the others long enough for 95 s (Qwen2.5-Omni and Audio Flamingo 3 cut to 120 s
    here, 300 s and 600 s in the real models; Qwen3-Omni bounded by its context; Kimi-Audio none)."""
    small = dict(num_mel_bins=32, encoder_dim=32, decoder_dim=32, vocab_size=400)
    if family == "qwen2-audio":
        from aqa.models.tiny import TinySpec, build_tiny
        return build_tiny(out, TinySpec(audio_seconds=30, **small), corpus)
    if family == "kimi-audio":
        from aqa.models.tiny_kimi_audio import build_tiny_kimi
        return build_tiny_kimi(out, corpus=corpus)
    if family == "qwen2.5-omni":
        from aqa.models.tiny_omni import TinyQwen25OmniSpec, build_tiny_qwen2_5_omni
        return build_tiny_qwen2_5_omni(out, TinyQwen25OmniSpec(audio_seconds=120, **small), corpus)
    if family == "qwen3-omni":
        from aqa.models.tiny_omni import TinyQwen3OmniSpec, build_tiny_qwen3_omni
        return build_tiny_qwen3_omni(out, TinyQwen3OmniSpec(**small), corpus)
    from aqa.models.tiny_audio_flamingo3 import TinyAudioFlamingo3Spec, build_tiny_audio_flamingo3
    return build_tiny_audio_flamingo3(out, TinyAudioFlamingo3Spec(audio_seconds=30, max_windows=4, **small), corpus)


#: family -> (the audio limit its tiny model must state, seconds of a 95 s clip it hears)
LIMITS = {"qwen2-audio": (30.0, 30.0), "kimi-audio": (None, LONG_S), "qwen2.5-omni": (120.0, LONG_S),
          "qwen3-omni": ((4096 - 1024) / 13, LONG_S), "audio-flamingo3": (120.0, LONG_S)}
FAMILIES = list(LIMITS)


def heard_seconds(family: str, batch: dict) -> float:
    """Seconds of audio in a one-clip batch, read from what the model is given: the real log-mel
    frames (100 a second) or, for Kimi-Audio, its speech tokens (12.5 a second)."""
    if family == "kimi-audio":
        assert int(batch["continuous"].sum()) == int(batch["segment_tokens"].sum())
        return int(batch["segment_tokens"].sum()) / 12.5
    mask = batch["input_features_mask" if family == "audio-flamingo3" else "feature_attention_mask"]
    return int(mask.sum()) / 100


_MODELS: dict = {}


@pytest.fixture(scope="module")
def model(request, tmp_path_factory, synth_data):
    from aqa.models.tiny_builder import corpus_from_records

    family = request.param
    if family not in _MODELS:
        path = build(family, tmp_path_factory.mktemp(family) / "model", corpus_from_records(synth_data / "qa.jsonl"))
        _MODELS[family] = (path, load_backend(str(path), device="cpu"))
    return (family, *_MODELS[family])


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory):
    """A real 95 s WAV (16 kHz, 16-bit), written with soundfile."""
    path = tmp_path_factory.mktemp("long") / "long.wav"
    t = np.arange(int(LONG_S * 16000)) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, subtype="PCM_16")
    return path


@pytest.mark.parametrize("model", FAMILIES, indirect=True)
def test_95_second_clip_heard_whole_or_cut_to_the_stated_limit(model, long_wav):
    family, path, b = model
    limit, heard = LIMITS[family]
    assert b.audio_seconds == pytest.approx(limit) if limit else b.audio_seconds is None
    a = load_audio(long_wav, max_seconds=b.audio_seconds, long_policy="truncate")
    assert a.duration == pytest.approx(LONG_S) and a.too_long == (limit is not None and limit < LONG_S)
    batch = b.collate([Example(a.samples, question_text("What is heard?", ["a dog", "a cat"]))])
    assert heard_seconds(family, batch) == pytest.approx(heard, abs=0.1)
    # The model runs on all of it: the letters' logits come out finite.
    with torch.no_grad():
        assert torch.isfinite(b.option_logits(batch, [2])).all()
    # What the config alone says (no weights read) is what the loaded model says.
    light = load_without_weights(str(path))
    assert light.model is None and light.audio_seconds == b.audio_seconds
    assert light.max_prompt_tokens == b.max_prompt_tokens


@pytest.mark.parametrize("model", FAMILIES, indirect=True)
def test_eval_counts_clips_heard_truncated(model, long_wav, tmp_path):
    from aqa.eval.run import EvalSettings, evaluate

    family, path, b = model
    data = long_wav.parent / f"{family}.jsonl"
    data.write_text(json.dumps({"id": "long", "audio": long_wav.name, "question": "What is heard?",
                                "choices": ["a dog", "a cat"], "answer": 0, "subset": "x"}) + "\n")
    m = evaluate(EvalSettings(model=str(path), adapter=None, data=str(data)), tmp_path / "ev", backend=b,
                 progress=False, n_boot=10)
    truncated = LIMITS[family][1] < LONG_S
    assert m["audio_truncated"] == {"n": int(truncated), "limit_s": b.audio_seconds if truncated else None}
    row = json.loads((tmp_path / "ev" / "predictions.jsonl").read_text())
    assert row.get("truncated") == ({"clip_s": LONG_S, "heard_s": 30.0} if truncated else None)


@pytest.mark.parametrize("model", FAMILIES, indirect=True)
def test_counted_prompt_length_equals_the_collated_row(model, long_wav):
    family, path, b = model
    light = load_without_weights(str(path))
    text = question_text("How many times does the dog bark? " * 3, ["1", "2", "3", "4"])
    clips = [load_audio(long_wav, max_seconds=None, long_policy="keep").samples[:n]
             for n in (int(LONG_S * 16000), 16000 * 7 + 123, 5917)]
    for clip in [*clips, None]:
        for target in (None, target_text(2)):
            batch = b.collate([Example(clip, text, target)], with_target=target is not None)
            real = int(batch["attention_mask"].sum())
            seconds = None if clip is None else len(clip) / 16000
            assert b.prompt_tokens(text, seconds, target) == real, (family, seconds, target)
            assert light.prompt_tokens(text, seconds, target) == real
    assert b.max_prompt_tokens == 4096 if family != "kimi-audio" else 8192
