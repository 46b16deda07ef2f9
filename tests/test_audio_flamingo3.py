"""The Audio Flamingo 3 backend on its tiny random model with the real classes: prompt layout,
30 s-style windows and the prompt's limit, the tiny builder's command line. What every family
does (scoring against transformers' own forward, batching, LoRA, SFT, GRPO, generation, the
configs, the commands) is tested in tests/test_families.py."""

import json

import pytest

from aqa.models.base import Example
from aqa.models.registry import load_backend
from conftest import noise

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def b(tiny_family):
    return load_backend(str(tiny_family("audio-flamingo3")), device="cpu")


def test_prompt_is_the_chat_template_with_25_audio_tokens_a_second(b):
    # The released template: `<sound>` directly before the text, no newline (transformers'
    # convert_audioflamingo3_to_hf.py and test_processing_audioflamingo3.py).
    tok = b.tokenizer
    q = "Which sound? A. dog B. cat"
    batch = b.collate([Example(noise(1.0), q, "B")], with_target=True)
    want = tok.encode("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                      + "<sound>" * 25 + f"{q}<|im_end|>\n<|im_start|>assistant\nB<|im_end|>", add_special_tokens=False)
    assert batch["input_ids"][0].tolist() == want
    assert batch["labels"][0, -2:].tolist() == want[-2:] and int((batch["labels"] != -100).sum()) == 2


def test_clips_are_cut_into_windows_up_to_the_processors_limit(b):
    assert b.audio_seconds == 6.0  # 3 windows of 2 s (20 windows of 30 s in AF3)
    batch = b.collate([Example(noise(4.5), "What?"), Example(noise(7.0, 1), "And?")])
    # 4.5 s: windows of 2, 2 and 0.5 s; 7 s: cut to 3 whole windows. Each window padded whole.
    assert batch["input_features"].shape == (6, 32, 200)
    assert batch["input_features_mask"].sum(1).tolist() == [200, 200, 50, 200, 200, 200]
    assert (batch["input_ids"] == b.audio_token_id).sum(1).tolist() == [112, 150]


def test_cli_builds_the_family_with_sizes(tmp_path):
    from aqa.cli import main

    out = tmp_path / "m"
    assert main(["model", "tiny", "--family", "audio-flamingo3", "-o", str(out), "--audio-seconds", "3",
                 "--max-windows", "2", "--decoder-layers", "1", "--decoder-dim", "32", "--encoder-dim", "32",
                 "--num-mel-bins", "16", "--vocab-size", "300"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "audioflamingo3" and cfg["audio_config"]["max_source_positions"] == 150
    assert load_backend(str(out), device="cpu").audio_seconds == 6.0
