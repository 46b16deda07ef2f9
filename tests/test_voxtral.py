"""The Voxtral backend on its tiny random model with the real classes and a real Tekken
tokenizer: prompt layout against mistral-common's own encoding, 30 s-style windows and the
prompt's limit, why the encoder is not trimmed, the tiny builder. What every family does
(scoring against transformers' own forward, batching, LoRA, SFT, GRPO, generation, the configs,
the commands) is tested in tests/test_families.py."""

import json

import numpy as np
import pytest
import torch

from aqa.models.base import Example
from aqa.models.registry import load_backend
from conftest import noise

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tiny_family):
    return tiny_family("voxtral")


@pytest.fixture(scope="module")
def b(folder):
    return load_backend(str(folder), device="cpu")


def test_prompt_and_answer_are_mistral_commons_own_encoding(b, folder):
    """The model's own format, as mistral-common encodes a training conversation (the user's
    audio and question, the assistant's answer): <s>[INST][BEGIN_AUDIO][AUDIO] x N question
    [/INST] answer </s>, with 12.5 audio tokens a second of whole 2 s windows."""
    from mistral_common.protocol.instruct.chunk import AudioChunk, TextChunk
    from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    from aqa.models.voxtral import wav_base64

    q = "Which sound? A. dog B. cat"
    clip = noise(3.0)
    batch = b.collate([Example(clip, q, "B")], with_target=True)
    ids = batch["input_ids"][0].tolist()
    mc = MistralTokenizer.from_file(str(folder / "tekken.json"), mode=ValidationMode.finetuning)
    want = mc.encode_chat_completion(ChatCompletionRequest(messages=[
        UserMessage(content=[AudioChunk(input_audio=wav_base64(clip, 16000)), TextChunk(text=q)]),
        AssistantMessage(content="B")])).tokens
    assert ids == want
    text = b.tokenizer.encode(q, add_special_tokens=False)
    assert ids == [1, 3, 25] + [24] * 50 + text + [4] + b.tokenizer.encode("B", add_special_tokens=False) + [2]
    assert b.end_ids == [2] and 2 in b.stop_ids() and int((batch["labels"] != -100).sum()) == 2
    assert b.collate([Example(None, q)])["input_ids"][0].tolist() == [1, 3] + text + [4]
    assert b.prompt(q) == "<s>[INST][BEGIN_AUDIO]" + "[AUDIO]" * 25 + q + "[/INST]"


def test_clips_fill_whole_windows_up_to_the_limit(b, monkeypatch):
    import aqa.models.voxtral as voxtral

    assert b.window_seconds == 2.0 and b.audio_seconds == 160.0  # 80 windows (2400 s of 30 s in Voxtral Mini)
    batch = b.collate([Example(noise(0.5), "What?"), Example(noise(4.5, 1), "And?")])
    # 0.5 s: one window; 4.5 s: three, the last 0.5 s of audio and 1.5 s of zeros.
    assert batch["input_features"].shape == (4, 32, 200)
    assert (batch["input_ids"] == b.audio_token_id).sum(1).tolist() == [25, 75]
    monkeypatch.setattr(voxtral, "MAX_WINDOWS", 2)
    cut = b.collate([Example(noise(4.5, 1), "And?")])
    assert b.audio_seconds == 4.0 and int((cut["input_ids"] == b.audio_token_id).sum()) == 50
    assert cut["input_features"].shape == (2, 32, 200)


@torch.no_grad()
def test_the_padding_is_audio_the_model_reads_so_the_encoder_is_not_trimmed(b):
    """mistral-common pads a clip with zeros to whole windows and gives the padding audio
    tokens; the encoder takes only whole windows and no mask."""
    short = noise(0.5)
    padded = np.concatenate([short, np.zeros(16000 * 2 - len(short), np.float32)])
    a, c = b.collate([Example(short, "What?")]), b.collate([Example(padded, "What?")])
    assert torch.equal(a["input_ids"], c["input_ids"]) and torch.equal(a["input_features"], c["input_features"])
    with pytest.raises(ValueError, match="expects the mel input features to be of length 200"):
        b.base_model().model.audio_tower(a["input_features"][..., :50])


def test_wav_round_trip_is_exact():
    from mistral_common.tokens.tokenizers.audio import Audio

    from aqa.models.voxtral import wav_base64

    clip = noise(0.7, 3)
    assert np.array_equal(Audio.from_base64(wav_base64(clip, 16000)).audio_array, clip)


def test_without_mistral_common_loading_and_building_say_what_to_install(folder, monkeypatch, tmp_path):
    import importlib.util

    from aqa.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mistral_common" else real(name, *a))
    with pytest.raises(ValueError, match=r"mistral-common package \(pip install 'aqa\[voxtral\]'\)"):
        load_backend(str(folder), device="cpu")
    assert main(["model", "tiny", "--family", "voxtral", "-o", str(tmp_path / "m")]) == 2
    assert not (tmp_path / "m").exists()


def test_cli_builds_the_family_with_sizes(tmp_path):
    from aqa.cli import main

    out = tmp_path / "m"
    assert main(["model", "tiny", "--family", "voxtral", "-o", str(out), "--window-seconds", "4",
                 "--decoder-layers", "1", "--decoder-dim", "32", "--encoder-dim", "32", "--num-mel-bins", "16",
                 "--vocab-size", "300"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "voxtral" and cfg["audio_config"]["max_source_positions"] == 200
    assert cfg["audio_config"]["intermediate_size"] == 4 * 32 and cfg["audio_token_id"] == 24
    lb = load_backend(str(out), device="cpu")
    assert lb.window_seconds == 4.0 and lb.letter_token_ids(8) == sorted(set(lb.letter_token_ids(8)))
    assert main(["model", "tiny", "--family", "voxtral", "-o", str(tmp_path / "x"), "--window-seconds", "3"]) == 2
    assert not (tmp_path / "x").exists()
