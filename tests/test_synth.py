import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from aqa.data.audio import load_audio
from aqa.data.events import read_labels, read_strong_tsv
from aqa.data.records import read_records
from aqa.data.synth import CLASSES, MIN_SAME_CLASS_GAP_S, SR, plan_clip, synthesize, wav_bytes


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = synthesize(out, n=24, seed=5, duration=6.0, snr_db=10, dev_fraction=0.25, workers=1)
    return out, summary


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_classes():
    assert len(CLASSES) >= 8
    assert len({c.mid for c in CLASSES}) == len({c.name for c in CLASSES}) == len(CLASSES)
    assert all(c.mid.startswith("/synth/") and 0 < c.min_s <= c.max_s for c in CLASSES)


def test_files_and_formats(synth_dir):
    out, summary = synth_dir
    for name in ("strong.tsv", "labels.tsv", "qa.jsonl", "train.jsonl", "dev.jsonl"):
        assert (out / name).is_file() and str(out / name) in summary["files"]
    wavs = sorted((out / "wav").glob("*.wav"))
    assert len(wavs) == 24
    info = sf.info(wavs[0])
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 6 * SR)
    assert read_labels(out / "labels.tsv") == {c.mid: c.name for c in CLASSES}
    problems = []
    clips = read_strong_tsv(out / "strong.tsv", problems=problems)
    assert not problems and set(clips) == {p.stem for p in wavs}
    assert summary["events"] == sum(len(v) for v in clips.values())


def test_timeline_rules():
    rng = np.random.default_rng(0)
    for _ in range(300):
        plan = plan_clip(rng, 10.0)
        assert plan and all(0 <= on < off <= 10_000 for _, on, off in plan)
        by_class = defaultdict(list)
        for mid, on, off in plan:
            by_class[mid].append((on, off))
        assert 1 <= len(by_class) <= 4
        for spans in by_class.values():
            spans.sort()
            assert all(b[0] - a[1] >= MIN_SAME_CLASS_GAP_S * 1000 for a, b in zip(spans, spans[1:]))
        for t in range(0, 10_000, 10):  # never more than two sounds at once
            assert sum(on <= t < off for _, on, off in plan) <= 2


def test_onsets_match_the_audio(synth_dir):
    """Energy rises at each written onset that no other event masks."""
    out, _ = synth_dir
    clips = read_strong_tsv(out / "strong.tsv")
    ratios = []
    for cid, events in clips.items():
        x = load_audio(out / "wav" / f"{cid}.wav").samples.astype(np.float64)
        for e in events:
            others = [o for o in events if o is not e]
            if e.onset < 0.15 or any(o.onset - 0.15 < e.onset < o.offset + 0.15 for o in others):
                continue
            a = int(e.onset * SR)
            before = np.mean(x[a - int(0.11 * SR):a - int(0.01 * SR)] ** 2)
            after = np.mean(x[a:a + int(0.1 * SR)] ** 2)
            # local pink-noise bursts make single windows vary; the SNR is 10 +- 3 dB
            assert after > 2 * before, (cid, e)
            ratios.append(after / before)
    assert len(ratios) >= 20 and np.median(ratios) > 6


def test_split_by_clip(synth_dir):
    out, summary = synth_dir
    train, errs1 = read_records(out / "train.jsonl")
    dev, errs2 = read_records(out / "dev.jsonl")
    allq, errs3 = read_records(out / "qa.jsonl")
    assert not errs1 and not errs2 and not errs3
    assert train and dev and len(train) + len(dev) == len(allq) == summary["questions"]
    assert not {r.audio for r in train} & {r.audio for r in dev}
    assert {r.split for r in train} == {"train"} and {r.split for r in dev} == {"dev"}
    assert all(r.audio.startswith("wav/") and r.audio_path.is_file() for r in allq)
    assert len({r.audio for r in dev}) == summary["dev_clips"] == 6


def test_questions_agree_with_the_tsv(synth_dir):
    out, summary = synth_dir
    clips = read_strong_tsv(out / "strong.tsv")
    names = {c.mid: c.name for c in CLASSES}
    recs, _ = read_records(out / "qa.jsonl")
    types = {r.question_type for r in recs}
    assert types == {"counting", "sequencing", "duration", "frequency", "identification"}
    for r in recs:
        events = clips[r.meta["segment_id"]]
        present = {names[e.label] for e in events}
        ans = r.choices[r.answer]
        assert len(set(r.choices)) == len(r.choices) == 4 and r.source == "synth"
        if r.question_type == "identification":
            assert ans in present and not (set(r.choices) - {ans}) & present
        elif r.question_type == "counting":
            assert ans == str(len(present))
        elif r.question_type == "frequency":
            n = sum(e.label == r.meta["label"] for e in events)
            assert ans == {1: "once", 2: "twice", 3: "three times"}[n]


def test_deterministic_and_independent_of_workers(synth_dir, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synthesize(a, n=6, seed=11, duration=4.0, dev_fraction=0.3, workers=1)
    synthesize(b, n=6, seed=11, duration=4.0, dev_fraction=0.3, workers=2)
    synthesize(c, n=6, seed=12, duration=4.0, dev_fraction=0.3, workers=1)
    assert _digest(a) == _digest(b)
    assert (a / "strong.tsv").read_bytes() != (c / "strong.tsv").read_bytes()
    assert (a / "wav" / "synth_000000.wav").read_bytes() != (c / "wav" / "synth_000000.wav").read_bytes()


def test_wav_writer_matches_soundfile(tmp_path):
    x = (np.sin(np.arange(1000) / 7) * 0.9).astype(np.float32)
    p = tmp_path / "x.wav"
    p.write_bytes(wav_bytes(x))
    y, sr = sf.read(p, dtype="int16")  # libsndfile parses the hand-made header
    assert sr == SR and sf.info(p).subtype == "PCM_16" and len(y) == len(x)
    assert np.max(np.abs(y - np.round(x.astype(np.float64) * 32767))) <= 1


def test_questions_per_clip_and_types(tmp_path):
    s = synthesize(tmp_path, n=5, seed=1, duration=5.0, types=("counting", "identification", "frequency"),
                   questions_per_clip=2, workers=1)
    recs, _ = read_records(tmp_path / "qa.jsonl")
    per_clip = defaultdict(int)
    for r in recs:
        per_clip[r.meta["segment_id"]] += 1
    assert max(per_clip.values()) == 2 and len(recs) == s["questions"]
    assert {r.question_type for r in recs} <= {"counting", "identification", "frequency"}
    assert not (tmp_path / "dev.jsonl").exists()


def test_cli(tmp_path, capsys):
    from aqa.cli import main

    out = tmp_path / "synth"
    rc = main(["data", "synth", "-n", "4", "-o", str(out), "--duration", "5", "--workers", "1",
               "--seed", "2", "--dev-fraction", "0.25"])
    assert rc == 0
    text = capsys.readouterr().out
    for name in ("strong.tsv", "labels.tsv", "qa.jsonl", "train.jsonl", "dev.jsonl"):
        assert str(out / name) in text
    assert len(list((out / "wav").glob("*.wav"))) == 4
    first = json.loads((out / "qa.jsonl").read_text().splitlines()[0])
    assert first["subset"] == "temporal" and first["audio"].startswith("wav/")
    assert main(["data", "synth", "-n", "2", "-o", str(out), "--duration", "1"]) == 2
