"""`aqa model tiny --family audio-flamingo3`: a random-weight Audio Flamingo 3 built offline with
the real classes (`AudioFlamingo3ForConditionalGeneration` from an `AudioFlamingo3Config` with a
small encoder and a small Qwen2 decoder) and the real `AudioFlamingo3Processor` around a
`WhisperFeatureExtractor` and a `Qwen2Tokenizer` whose byte-level BPE is trained here, with
ChatML tokens and AF3's audio placeholder `<sound>`. The chat template is written here in the
released checkpoint's layout (transformers' convert_audioflamingo3_to_hf.py writes it, and
tests/models/audioflamingo3/test_processing_audioflamingo3.py checks it): the default system
turn "You are a helpful assistant." when none is given, then one `<sound>` directly before the
question's text, no newline between; the real checkpoint's own template is what the backend uses
on it. Saved with `save_pretrained`, so
`load_backend(folder)` loads it like a download.

The window (`audio_seconds`) sets the encoder's positions: 100 mel frames a second, halved by
its stride-2 convolution, so `max_source_positions` = 50 x window (1500 for AF3's 30 s).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from aqa.io import ordinary_modes
from aqa.models.tiny.builder import BASE_CORPUS, TinyAudioEncoderSpec, train_byte_level_bpe

log = logging.getLogger(__name__)

AUDIO_TOKEN = "<sound>"

CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'audio' %}" + AUDIO_TOKEN +
    "{% endif %}{% endfor %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@dataclass
class TinyAudioFlamingo3Spec(TinyAudioEncoderSpec):
    """Sizes of a tiny Audio Flamingo 3; the fields Qwen2-Audio's tiny spec has keep its defaults."""

    audio_seconds: int = 5
    """The encoder's window (30 in AF3): a clip is cut into windows of this length."""
    max_windows: int = 3
    """Windows one prompt carries (20 in AF3); longer clips are cut."""


def build_tiny_audio_flamingo3(out_dir: str | Path, spec: TinyAudioFlamingo3Spec | None = None,
                               corpus: list[str] | None = None) -> Path:
    """Build, save and return the folder of a random-weight Audio Flamingo 3 and its processor."""
    import torch
    from transformers import (AudioFlamingo3Config, AudioFlamingo3ForConditionalGeneration, AudioFlamingo3Processor,
                              Qwen2Tokenizer, WhisperFeatureExtractor)
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    spec = spec or TinyAudioFlamingo3Spec()
    out = Path(out_dir)
    vocab, merges = train_byte_level_bpe([BASE_CORPUS, *(corpus or [])], spec.vocab_size, PRETOKENIZE_REGEX,
                                         special_tokens=["<|endoftext|>"])
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, errors="replace")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", AUDIO_TOKEN]})
    tok.padding_side = "left"
    fe = WhisperFeatureExtractor(feature_size=spec.num_mel_bins, chunk_length=spec.audio_seconds, sampling_rate=16000,
                                 hop_length=160, n_fft=400, return_attention_mask=True)
    processor = AudioFlamingo3Processor(feature_extractor=fe, tokenizer=tok, chat_template=CHAT_TEMPLATE,
                                        audio_token=AUDIO_TOKEN, max_audio_len=spec.audio_seconds * spec.max_windows)
    d = spec.decoder_dim
    ids = tok.convert_tokens_to_ids
    config = AudioFlamingo3Config(
        audio_config=spec.whisper_encoder_config("audioflamingo3_encoder", spec.audio_seconds),
        text_config=spec.text_config("qwen2", max(len(tok), spec.model_vocab), bos_token_id=ids("<|endoftext|>"),
                                     eos_token_id=ids("<|im_end|>"), pad_token_id=tok.pad_token_id),
        audio_token_id=ids(AUDIO_TOKEN))
    torch.manual_seed(spec.seed)
    model = AudioFlamingo3ForConditionalGeneration(config)
    with torch.no_grad():
        # Unit-scale logits, as in a trained model (see aqa/models/tiny/qwen2_audio.py).
        model.lm_head.weight.normal_(0.0, d ** -0.5)
    model.generation_config.eos_token_id = [ids("<|im_end|>"), ids("<|endoftext|>")]
    model.generation_config.pad_token_id = tok.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    ordinary_modes(out)  # save_pretrained leaves model.safetensors 0600
    (out / "aqa_tiny.json").write_text(json.dumps({"family": "audio-flamingo3", **asdict(spec)}, indent=2) + "\n")
    log.info("tiny Audio Flamingo 3: %.2f M parameters, vocabulary %d, %d windows of %d s",
             sum(p.numel() for p in model.parameters()) / 1e6, config.text_config.vocab_size, spec.max_windows,
             spec.audio_seconds)
    return out
