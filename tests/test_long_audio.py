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
        from aqa.models.tiny.qwen2_audio import TinySpec, build_tiny
        return build_tiny(out, TinySpec(audio_seconds=30, **small), corpus)
    if family == "kimi-audio":
        from aqa.models.tiny.kimi_audio import build_tiny_kimi
        return build_tiny_kimi(out, corpus=corpus)
    if family == "qwen2.5-omni":
        from aqa.models.tiny.omni import TinyQwen25OmniSpec, build_tiny_qwen2_5_omni
        return build_tiny_qwen2_5_omni(out, TinyQwen25OmniSpec(audio_seconds=120, **small), corpus)
    if family == "qwen3-omni":
        from aqa.models.tiny.omni import TinyQwen3OmniSpec, build_tiny_qwen3_omni
        return build_tiny_qwen3_omni(out, TinyQwen3OmniSpec(**small), corpus)
    if family == "voxtral":
        from aqa.models.tiny.voxtral import TinyVoxtralSpec, build_tiny_voxtral
        return build_tiny_voxtral(out, TinyVoxtralSpec(**small), corpus)
    from aqa.models.tiny.audio_flamingo3 import TinyAudioFlamingo3Spec, build_tiny_audio_flamingo3
    return build_tiny_audio_flamingo3(out, TinyAudioFlamingo3Spec(audio_seconds=30, max_windows=4, **small), corpus)


#: family -> (the audio limit its tiny model must state, seconds of a 95 s clip it hears)
LIMITS = {"qwen2-audio": (30.0, 30.0), "kimi-audio": (None, LONG_S), "qwen2.5-omni": (120.0, LONG_S),
          "qwen3-omni": ((4096 - 1024) / 13, LONG_S), "audio-flamingo3": (120.0, LONG_S),
          # 80 windows of the tiny model's 2 s (of 30 s in the real one); 95 s fills 48 windows.
          "voxtral": (160.0, 96.0)}
FAMILIES = list(LIMITS)


def heard_seconds(family: str, batch: dict) -> float:
    """Seconds of audio in a one-clip batch, read from what the model is given: the real log-mel
    frames (100 a second) or, for Kimi-Audio, its speech tokens (12.5 a second)."""
    if family == "kimi-audio":
        assert int(batch["continuous"].sum()) == int(batch["segment_tokens"].sum())
        return int(batch["segment_tokens"].sum()) / 12.5
    if family == "voxtral":  # whole windows of 200 frames (2 s), no mask: the padding is heard too
        return batch["input_features"].shape[0] * batch["input_features"].shape[-1] / 100
    mask = batch["input_features_mask" if family == "audio-flamingo3" else "feature_attention_mask"]
    return int(mask.sum()) / 100


_MODELS: dict = {}


@pytest.fixture(scope="module")
def model(request, tmp_path_factory, synth_data):
    from aqa.models.tiny.builder import corpus_from_records

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
    m = evaluate(EvalSettings(model=str(path), adapter=None, data=str(data), progress=False, n_boot=10),
                 tmp_path / "ev", backend=b)
    truncated = LIMITS[family][1] < LONG_S
    assert m["audio_truncated"] == {"n": int(truncated), "limit_s": b.audio_seconds if truncated else None}
    row = json.loads((tmp_path / "ev" / "predictions.jsonl").read_text())
    assert row.get("truncated") == ({"clip_s": LONG_S, "heard_s": 30.0} if truncated else None)
    # aqa data check --model says the same before any run, reading no weights.
    from aqa.data.check import check_records

    rep = check_records(data, model=load_without_weights(str(path)), model_name=str(path))
    assert [c["ids"] for c in rep.long_clips] == ([["long"]] if truncated else [])
    assert rep.audio_limit_s == b.audio_seconds and not rep.long_prompts


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


# --- the prompt-length guard (issue 16 item 7) ---------------------------------------------------
@pytest.fixture(scope="module")
def long_question(tiny_model, synth_data):
    """A records file beside real WAVs: 8 ordinary items, one question of 40,000 words, one whose
    prompt is exactly at the limit (kept) and one a token or more over it (skipped). The limit
    is the at-limit item's length: far below the tiny model's 4096, so the test runs in seconds."""
    b = load_without_weights(str(tiny_model))
    rows = [json.loads(x) for x in (synth_data / "train.jsonl").read_text().splitlines()[:8]]
    base = rows[0]
    at = {**base, "id": "at-limit", "question": base["question"] + " Listen closely." * 20}
    over = {**at, "id": "over-limit", "question": at["question"] + " Closely!"}
    huge = {**base, "id": "huge", "question": " ".join(["word"] * 40_000) + "?"}
    path = synth_data / "long_question.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, at, huge, over]))
    from aqa.data.records import load_records

    recs = {r.id: r for r in load_records(path)}
    seconds = len(load_audio(recs["at-limit"].audio_path).samples) / 16000
    limit = b.record_prompt_tokens(recs["at-limit"], seconds)
    assert b.record_prompt_tokens(recs["over-limit"], seconds) > limit
    assert b.record_prompt_tokens(recs["huge"], seconds) > 40_000 > b.max_prompt_tokens == 4096
    return path, limit


def test_eval_skips_an_overlong_prompt_with_its_reason(tiny_model, long_question, tmp_path):
    from aqa.cli import main

    path, limit = long_question
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(tiny_model), "--data", str(path), "-o", str(out), "--batch-size", "4",
                 "--max-prompt-tokens", str(limit)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_skipped"] == 2 and m["skipped"] == {"prompt_too_long": 2}
    skipped = {r["id"]: r for r in map(json.loads, (out / "skipped.jsonl").read_text().splitlines())}
    assert set(skipped) == {"huge", "over-limit"}
    assert skipped["huge"]["kind"] == "prompt_too_long"
    assert f"is longer than the {limit} the model takes" in skipped["huge"]["problem"]
    answered = {json.loads(x)["id"] for x in (out / "predictions.jsonl").read_text().splitlines()}
    assert "at-limit" in answered and len(answered) == 9
    # Without the override the model's own context (4096) is the limit: only the huge one goes.
    out2 = tmp_path / "ev2"
    assert main(["eval", "--model", str(tiny_model), "--data", str(path), "-o", str(out2), "--limit", "10"]) == 0
    assert json.loads((out2 / "metrics.json").read_text())["skipped"] == {"prompt_too_long": 1}


def test_sft_trains_on_the_rest_and_refuses_when_nothing_is_left(tiny_model, long_question, tmp_path, caplog):
    from aqa.data.records import NoRecords
    from aqa.train.sft import SFTConfig, train

    path, limit = long_question
    cfg = dict(model=str(tiny_model), output_dir=str(tmp_path / "run"), batch_size=4, micro_batch_size=2,
               max_steps=1, lora_r=4, lora_alpha=8, device="cpu", num_workers=0)
    # The limit counts the answer too (the letter and the end of turn): 3 tokens on top of the prompt.
    summary = train(SFTConfig(train_data=[str(path)], max_prompt_tokens=limit + 3, **cfg))
    assert summary["prompt_too_long"] == 2 and summary["items"] == 9 and summary["audio_truncated"] == 0
    warned = [r.message for r in caplog.records if "left out" in r.message]
    assert len(warned) == 1 and "2 training item(s)" in warned[0] and "huge: " in warned[0]
    assert "over-limit: " in warned[0]
    only = path.parent / "only_huge.jsonl"
    only.write_text([x for x in path.read_text().splitlines(keepends=True) if '"huge"' in x][0])
    with pytest.raises(NoRecords, match="every item's prompt is longer than the 4096 tokens"):
        train(SFTConfig(train_data=[str(only)], **{**cfg, "output_dir": str(tmp_path / "run2")}))


def test_data_check_flags_overlong_prompts_and_long_clips(tiny_model, long_question, tmp_path, capsys):
    from aqa.cli import main

    path, limit = long_question
    report = tmp_path / "rep.json"
    args = ["data", "check", str(path), "--model", str(tiny_model), "--json", str(report)]
    assert main(args) == 0
    rep = json.loads(report.read_text())
    assert [p["id"] for p in rep["long_prompts"]] == ["huge"] and rep["prompt_limit"] == 4096
    assert rep["audio_limit_s"] == 2.0  # the tiny model's window
    assert "1 prompt(s) longer than the model's 4096 tokens" in capsys.readouterr().out
    assert main([*args, "--max-prompt-tokens", str(limit)]) == 0
    assert {p["id"] for p in json.loads(report.read_text())["long_prompts"]} == {"huge", "over-limit"}
    assert main([*args, "--strict"]) == 1


def test_report_shows_skipped_and_truncated_counts():
    from aqa.eval.report.tables import details_table

    class Run:
        name, metrics = "r", {"n": 9, "n_skipped": 2, "skipped": {"not-audio": 1, "prompt_too_long": 1},
                              "audio_truncated": {"n": 3, "limit_s": 30.0}}

    t = details_table([Run()], {})
    row = dict(zip(t.header, t.rows[0]))
    assert row["skipped"] == "2 (not-audio 1, prompt_too_long 1)" and row["audio truncated"] == "3 (to 30 s)"
