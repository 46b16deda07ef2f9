"""Shared fixtures: real audio files written to disk in every format the data layer meets."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SHARED = Path(os.environ.get("AQA_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MMAU_JSON = SHARED / "data" / "mmau-test-mini.json"


def tone(seconds: float = 1.0, sr: int = 16000, freq: float = 440.0, channels: int = 1,
         amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def audio_bytes(x: np.ndarray, sr: int, fmt: str) -> bytes:
    """Encode with libsndfile: fmt is WAV, FLAC, OGG or MP3."""
    buf = io.BytesIO()
    subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}[fmt]
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def write_audio(path: str | os.PathLike, x: np.ndarray | None = None, sr: int = 16000,
                fmt: str = "WAV") -> Path:
    """Write real encoded audio; the format follows `fmt`, never the file name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(audio_bytes(tone(sr=sr) if x is None else x, sr, fmt))
    return path


@pytest.fixture
def audio_zoo(tmp_path) -> dict[str, Path]:
    """One file of each kind a real dataset holds, good and bad, keyed by what it is."""
    d = tmp_path / "zoo"
    good = {
        "wav": write_audio(d / "ok.wav", tone(1.0, 16000)),
        "flac": write_audio(d / "ok.flac", tone(1.0, 22050, channels=2), 22050, "FLAC"),
        "ogg": write_audio(d / "ok.ogg", tone(1.0, 44100), 44100, "OGG"),
        "mp3": write_audio(d / "ok.mp3", tone(1.0, 16000), 16000, "MP3"),
        "mp3_as_wav": write_audio(d / "really_mp3.wav", tone(1.0, 16000), 16000, "MP3"),
        "stereo48k": write_audio(d / "stereo.wav", tone(2.0, 48000, channels=2), 48000),
        "long": write_audio(d / "long.wav", tone(31.0, 8000, freq=200), 8000),
    }
    wav = audio_bytes(tone(1.0), 16000, "WAV")
    bad = {}
    bad["missing"] = d / "missing.wav"
    (bad_empty := d / "empty.wav").write_bytes(b"")
    bad["empty"] = bad_empty
    (bad_trunc := d / "truncated.wav").write_bytes(wav[: len(wav) // 2])
    bad["truncated"] = bad_trunc
    (bad_text := d / "notes.wav").write_bytes(b"this is a text file, not audio\n" * 20)
    bad["not-audio"] = bad_text
    bad["silent"] = write_audio(d / "silent.wav", np.zeros(16000, np.float32))
    nan = np.full(1000, 0.1, np.float32)
    nan[10] = np.nan
    buf = io.BytesIO()
    sf.write(buf, nan, 16000, format="WAV", subtype="FLOAT")
    (bad_nan := d / "nan.wav").write_bytes(buf.getvalue())
    bad["nan"] = bad_nan
    return {**good, **{f"bad_{k}": v for k, v in bad.items()}}


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small synthetic dataset (real WAVs, strong labels, QA with train/dev splits)."""
    from aqa.data.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, n=24, seed=3, duration=2.0, dev_fraction=0.25, workers=1)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, synth_data) -> Path:
    """A random-weight Qwen2-Audio saved like a downloaded checkpoint (2-second window)."""
    from aqa.models.tiny.qwen2_audio import TinySpec, build_tiny
    from aqa.models.tiny.builder import corpus_from_records

    out = tmp_path_factory.mktemp("tiny") / "model"
    return build_tiny(out, TinySpec(audio_seconds=2, num_mel_bins=32, encoder_dim=32, decoder_dim=32,
                                    vocab_size=400), corpus_from_records(synth_data / "qa.jsonl"))


@pytest.fixture(scope="session")
def sft_adapter(tiny_model, synth_data, tmp_path_factory) -> Path:
    """A LoRA SFT adapter of the tiny model (2 steps): where GRPO starts (tests/test_grpo.py,
    tests/test_distributed.py, tests/test_bench.py)."""
    from aqa.train.sft import SFTConfig, train

    out = tmp_path_factory.mktemp("sft")
    train(SFTConfig(model=str(tiny_model), train_data=[str(synth_data / "train.jsonl")], output_dir=str(out),
                    batch_size=4, micro_batch_size=4, max_steps=2, lr=1e-3, lora_r=4, device="cpu"))
    return out / "adapter"


#: Sizes of the tiny models the family tests share (tests/test_families.py and one file per
#: family): small enough for CPU seconds; per family, what its own tests rely on.
TINY_SIZES = dict(num_mel_bins=32, encoder_dim=32, decoder_dim=32, vocab_size=400)
TINY_FAMILY_SIZES = {
    "qwen2.5-omni": dict(audio_seconds=3),
    "qwen3-omni": {},
    "qwen3-omni-thinking": {},
    "audio-flamingo3": dict(audio_seconds=2, max_windows=3),
    "voxtral": dict(window_seconds=2),
    "moss-audio": {},
}


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory, synth_data, request):
    """`tiny_family(name)`: the folder of the tiny random model of that `aqa model tiny --family`
    (or "kimi-audio": `aqa model tiny-kimi-audio`), built once per session with a tokenizer
    trained on the synthetic questions; "qwen2-audio" is `tiny_model`."""
    import importlib

    from aqa.models.tiny import FAMILIES
    from aqa.models.tiny.builder import corpus_from_records

    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name == "qwen2-audio":
            return request.getfixturevalue("tiny_model")
        if name == "kimi-audio" and name not in built:
            from aqa.models.tiny.kimi_audio import build_tiny_kimi

            built[name] = build_tiny_kimi(tmp_path_factory.mktemp(name) / "model",
                                          corpus=corpus_from_records(synth_data / "qa.jsonl"))
        if name not in built:
            build, spec = (getattr(importlib.import_module(m), f) for m, f in (r.split(":") for r in FAMILIES[name]))
            built[name] = build(tmp_path_factory.mktemp(name) / "model", spec(**TINY_SIZES, **TINY_FAMILY_SIZES[name]),
                                corpus_from_records(synth_data / "qa.jsonl"))
        return built[name]

    return get


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine the
    threads' spin-waits made the family tests several times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    """`seconds` of white noise at 16 kHz (amplitude 0.1)."""
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def overfit_sft_run(folder: Path, synth_data: Path, out: Path) -> Path:
    """A family's tiny model tuned by LoRA SFT for 6 steps on 4 training questions (copied with
    their clips into `out`), hot enough that the loss must fall: the run folder."""
    import json
    import shutil

    from aqa.train.sft import SFTConfig, train

    rows = [json.loads(x) for x in (synth_data / "train.jsonl").read_text().splitlines()][:4]
    d = out / "data"
    shutil.copytree(synth_data / "wav", d / "wav")
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train(SFTConfig(model=str(folder), train_data=[str(d / "train.jsonl")], output_dir=str(out / "run"),
                    batch_size=4, micro_batch_size=4, max_steps=6, lr=2e-2, lora_r=4, lora_dropout=0.0,
                    shuffle_options=False, spec_augment_masks=0, device="cpu"))
    return out / "run"


def assert_adapter_round_trips(lb, folder: Path, batch: dict, n_options: list[int], tmp_path: Path) -> None:
    """`lb` (a backend of `folder` with a fresh LoRA) given a non-zero update: it moves the option
    logits of `batch`, and the adapter saved and loaded back gives the same logits."""
    import torch

    from aqa.models.registry import load_backend

    with torch.no_grad():
        for n, p in lb.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
        lb.model.save_pretrained(tmp_path / "adapter")
        tuned = lb.option_logits(batch, n_options)
        with lb.without_adapter():
            assert not torch.allclose(lb.option_logits(batch, n_options), tuned, atol=1e-3)
        back = load_backend(str(folder), device="cpu", adapter=str(tmp_path / "adapter"))
        assert torch.allclose(back.option_logits(batch, n_options), tuned, atol=1e-5)
