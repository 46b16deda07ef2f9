"""The Qwen2.5-Omni thinker backend on its tiny random thinker with the real classes: prompt
layout, the window and its short padding, the whole-model checkpoint layout, LoRA's targets,
the tiny builder's command line. What every family does (scoring against transformers' own
forward, batching, LoRA round trip, SFT, GRPO, generation, the configs, the commands) is tested
in tests/test_families.py."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from aqa.models.base import Example
from aqa.models.registry import load_backend
from aqa.prompts import question_text
from conftest import noise

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_q25(tiny_family):
    return tiny_family("qwen2.5-omni")


@pytest.fixture(scope="module")
def b(tiny_q25):
    return load_backend(str(tiny_q25), device="cpu")


def examples(seconds=(0.5, 2.0, 1.3), target="B"):
    return [Example(noise(s, k), question_text("Which sound?" + " really" * k, ["beep", "hum", "hiss"][: 2 + k % 2]),
                    target) for k, s in enumerate(seconds)]


N_OPTIONS = [2, 3, 2]


def test_prompt_is_the_familys_chat_template_with_one_audio_token_per_40_ms(b):
    tok = b.tokenizer
    q = "Which sound? A. dog B. cat"
    batch = b.collate([Example(noise(1.0), q, "B")], with_target=True)
    ids = batch["input_ids"][0].tolist()
    # The released template's default system turn (transformers' test_processor_qwen2_5_omni.py).
    system = "You are a helpful assistant."
    # 1 s: 100 mel frames, 50 after the stride-2 convolution, 25 after the pooling.
    want = tok.encode(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<|audio_bos|>"
                      + "<|AUDIO|>" * 25 + f"<|audio_eos|>{q}<|im_end|>\n<|im_start|>assistant\nB<|im_end|>",
                      add_special_tokens=False)
    assert ids == want
    assert (batch["labels"][0] != -100).sum() == 2 and batch["labels"][0, -2:].tolist() == want[-2:]
    assert b.end_ids == [tok.convert_tokens_to_ids("<|im_end|>")]
    text_only = b.collate([Example(None, q)])["input_ids"][0].tolist()
    assert tok.decode(text_only) == f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n" \
                                    "<|im_start|>assistant\n"


def test_clips_are_cut_at_the_processors_window(b):
    assert b.audio_seconds == 3.0  # n_samples of the feature extractor (300 s in Qwen2.5-Omni-7B)
    batch = b.collate([Example(noise(4.5), "What?")])
    assert int((batch["input_ids"] == b.audio_token_id).sum()) == 75
    assert batch["input_features"].shape[-1] == 300


@torch.no_grad()
def test_one_second_of_padding_gives_the_windows_log_mels(b):
    """The processor's own padding to the whole window and the backend's short padding give
    the same real frames, hence the same scores."""
    e = examples()[2]
    fe = b.processor.feature_extractor
    whole = b.processor(text=[b.prompt(e.text)], audio=[e.audio], return_tensors="pt")
    assert whole["input_features"].shape[-1] == 300
    ours = b.collate([e])
    frames = int(whole["feature_attention_mask"].sum())
    assert ours["input_features"].shape[-1] == frames == 130
    assert torch.allclose(ours["input_features"][0], whole["input_features"][0, :, :frames], atol=1e-6)
    assert torch.equal(ours["input_ids"], whole["input_ids"])
    own = b.model(**whole).logits[0, -1, b.letter_token_ids(2)]
    assert torch.allclose(b.option_logits(ours, [2])[0], own, atol=1e-5)
    assert fe.n_samples == 48000


def whole_model_folder(thinker: Path, out: Path) -> Path:
    """The official whole-model layout around a thinker: config.json of model_type
    qwen2_5_omni, weights under thinker.* (legacy names) in one shard and talker.* /
    token2wav.* in another, which is left out: loading must not need it."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, Qwen2_5OmniConfig

    out.mkdir()
    for f in thinker.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, out / f.name)
    Qwen2_5OmniConfig(thinker_config=AutoConfig.from_pretrained(thinker).to_dict()).save_pretrained(out)
    state = {f"thinker.{k}": v for k, v in load_file(thinker / "model.safetensors").items()}
    save_file(state, str(out / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    weight_map = {k: "model-00001-of-00002.safetensors" for k in state}
    weight_map.update({"talker.model.embed_tokens.weight": "model-00002-of-00002.safetensors",
                       "token2wav.code2wav_bigvgan_model.conv_pre.weight": "model-00002-of-00002.safetensors"})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


@torch.no_grad()
def test_thinker_loads_from_the_whole_model_layout_without_the_talker(b, tiny_q25, tmp_path):
    from safetensors import safe_open

    with safe_open(str(tiny_q25 / "model.safetensors"), "pt") as f:
        assert any(k.startswith("model.layers.") for k in f.keys())  # the legacy names are what is saved
    full = whole_model_folder(tiny_q25, tmp_path / "full")
    whole = load_backend(str(full), device="cpu")
    assert type(whole) is type(b) and whole.base_model().config.model_type == "qwen2_5_omni_thinker"
    batch = b.collate(examples())
    assert torch.allclose(whole.option_logits(batch, N_OPTIONS), b.option_logits(batch, N_OPTIONS))


def test_lora_targets_the_decoder_and_the_audio_encoder_when_asked(b):
    decoder, audio = b.lora_target_modules(), b.lora_target_modules(audio_tower=True)
    assert re.match(decoder, "model.language_model.layers.1.mlp.up_proj")
    assert not re.match(decoder, "model.audio_tower.layers.1.fc2")
    assert re.match(audio, "model.audio_tower.layers.1.fc2") and not re.match(audio, "model.visual.blocks.0.mlp.up_proj")


def test_cli_builds_the_family_with_sizes(tmp_path):
    from aqa.cli import main

    out = tmp_path / "m"
    assert main(["model", "tiny", "--family", "qwen2.5-omni", "-o", str(out), "--audio-seconds", "2",
                 "--decoder-layers", "1", "--decoder-dim", "32", "--encoder-dim", "32", "--num-mel-bins", "16",
                 "--encoder-window", "100", "--vocab-size", "300"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "qwen2_5_omni_thinker" and cfg["text_config"]["num_hidden_layers"] == 1
    assert (cfg["audio_config"]["num_mel_bins"], cfg["audio_config"]["n_window"]) == (16, 50)
    lb = load_backend(str(out), device="cpu")
    assert lb.audio_seconds == 2.0 and lb.letter_token_ids(8) == sorted(set(lb.letter_token_ids(8)))
    # A size another family has is refused rather than ignored.
    with pytest.raises(SystemExit):
        main(["model", "tiny", "--family", "qwen2.5-omni", "-o", str(tmp_path / "x"), "--num-experts", "8"])
    assert not (tmp_path / "x").exists()

