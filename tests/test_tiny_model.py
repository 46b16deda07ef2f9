import json

import numpy as np
import torch
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

from aqa.cli import main
from aqa.models.registry import load_backend
from aqa.models.tiny.qwen2_audio import SPECIAL_TOKENS


def test_tiny_loads_like_a_checkpoint(tiny_model):
    proc = AutoProcessor.from_pretrained(tiny_model)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_model)
    assert isinstance(proc, Qwen2AudioProcessor)
    tok = proc.tokenizer
    for t in SPECIAL_TOKENS:
        ids = tok.encode(t, add_special_tokens=False)
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids[0]) == t
    assert model.config.audio_token_index == tok.convert_tokens_to_ids("<|AUDIO|>")
    assert proc.feature_extractor.chunk_length == 2
    # The encoder's positions follow the window: 100 frames/s, halved by the strided conv.
    assert model.config.audio_config.max_source_positions == 100
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "audio", "audio_url": "x"},
                                                                  {"type": "text", "text": "Q?"}]}],
                                    add_generation_prompt=True, tokenize=False)
    assert "<|audio_bos|><|AUDIO|><|audio_eos|>" in text and text.endswith("<|im_start|>assistant\n")
    enc = proc(text=[text], audio=[np.zeros(16000, np.float32) + 0.01], sampling_rate=16000, return_tensors="pt")
    # 1 s: 100 mel frames, 50 after the strided conv, 25 after the pooling.
    assert (enc["input_ids"] == model.config.audio_token_index).sum() == 25
    with torch.no_grad():
        assert model(**enc).logits.shape[-1] == model.config.text_config.vocab_size


def test_cli_builds_with_sizes(tmp_path):
    out = tmp_path / "m"
    assert main(["model", "tiny", "-o", str(out), "--audio-seconds", "3", "--decoder-layers", "1",
                 "--encoder-dim", "32", "--decoder-dim", "32", "--num-mel-bins", "16"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["text_config"]["num_hidden_layers"] == 1 and cfg["audio_config"]["num_mel_bins"] == 16
    b = load_backend(str(out))
    assert b.audio_seconds == 3.0 and b.letter_token_ids(8) == sorted(set(b.letter_token_ids(8)))
