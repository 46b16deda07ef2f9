"""`aqa model tiny`: a random-weight Qwen2-Audio built offline with the real classes.

The model is `Qwen2AudioForConditionalGeneration` from a `Qwen2AudioConfig`; the processor is
the real `Qwen2AudioProcessor` around a `WhisperFeatureExtractor` and a `Qwen2Tokenizer`
whose byte-level BPE is trained here on a small corpus (optionally the user's own questions),
with Qwen2-Audio's special tokens and chat template. Both are saved with `save_pretrained`,
so the folder loads exactly like a downloaded checkpoint.

The audio window is configurable: a tiny model may listen to 5-10 s instead of Whisper's 30 s;
the encoder's `max_source_positions` follows from it (100 mel frames per second, halved by
the encoder's strided convolution).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from aqa.io import ordinary_modes
from aqa.models.tiny.builder import BASE_CORPUS, TinyAudioEncoderSpec, add_builder_command, train_byte_level_bpe

log = logging.getLogger(__name__)

#: Qwen2-Audio's special tokens, in the order the real tokenizer adds them after <|endoftext|>.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]


@dataclass
class TinySpec(TinyAudioEncoderSpec):
    """Sizes of a tiny Qwen2-Audio; defaults fit a CPU test in seconds."""

    audio_seconds: int = 5
    """Length of the audio window the model listens to (Whisper's is 30)."""


def train_tokenizer(corpus: list[str], vocab_size: int):
    """A Qwen2Tokenizer whose BPE merges are trained on `corpus`, with Qwen2-Audio's special
    tokens. The pre-tokenizer is Qwen2's own (regex split, then byte level)."""
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    vocab, merges = train_byte_level_bpe(corpus, vocab_size, PRETOKENIZE_REGEX, special_tokens=SPECIAL_TOKENS[:1])
    qtok = Qwen2Tokenizer(vocab=vocab, merges=merges, errors="replace")
    qtok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    qtok.padding_side = "left"
    return qtok


def tiny_processor_and_config(spec: TinySpec, corpus: list[str] | None = None):
    """The processor (trained tokenizer, Whisper features) and the model config of a spec."""
    from transformers import Qwen2AudioConfig, Qwen2AudioProcessor, WhisperFeatureExtractor

    tokenizer = train_tokenizer([BASE_CORPUS, *(corpus or [])], spec.vocab_size)
    feature_extractor = WhisperFeatureExtractor(feature_size=spec.num_mel_bins, chunk_length=spec.audio_seconds,
                                                sampling_rate=16000, hop_length=160, n_fft=400)
    processor = Qwen2AudioProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    vocab = max(len(tokenizer), spec.model_vocab)
    # Whisper: 100 mel frames a second; conv2 has stride 2, so half as many encoder positions.
    positions = spec.audio_seconds * 100 // 2
    config = Qwen2AudioConfig(
        audio_config=dict(
            model_type="qwen2_audio_encoder", d_model=spec.encoder_dim, encoder_layers=spec.encoder_layers,
            encoder_attention_heads=spec.encoder_heads, encoder_ffn_dim=4 * spec.encoder_dim,
            num_mel_bins=spec.num_mel_bins, max_source_positions=positions, scale_embedding=False,
            activation_function="gelu"),
        text_config=dict(
            model_type="qwen2", vocab_size=vocab, hidden_size=spec.decoder_dim,
            intermediate_size=int(2.6875 * spec.decoder_dim) // 8 * 8,  # Qwen2-7B's ratio 11008/4096
            num_hidden_layers=spec.decoder_layers, num_attention_heads=spec.decoder_heads,
            num_key_value_heads=spec.decoder_kv_heads, max_position_embeddings=4096,
            rope_theta=10000.0, tie_word_embeddings=False,
            bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    return processor, config


def random_model(spec: TinySpec, config, tokenizer):
    """Random weights for `config`, output rows at a trained model's logit scale."""
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    torch.manual_seed(spec.seed)
    model = Qwen2AudioForConditionalGeneration(config)
    # A trained model's output rows are large enough for peaked next-token distributions; at
    # the default init (std 0.02) a tiny model's logits span a fraction of a nat, and an adapter
    # that cannot touch lm_head could never make any answer likely. std 1/sqrt(width) gives
    # unit-scale logits, as in a trained model.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, spec.decoder_dim ** -0.5)
    model.generation_config.eos_token_id = [config.text_config.eos_token_id,
                                            tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_tiny(out_dir: str | Path, spec: TinySpec | None = None, corpus: list[str] | None = None) -> Path:
    """Build, save and return the folder of a random-weight Qwen2-Audio and its processor."""
    spec = spec or TinySpec()
    out = Path(out_dir)
    processor, config = tiny_processor_and_config(spec, corpus)
    tokenizer = processor.tokenizer
    vocab = config.text_config.vocab_size
    model = random_model(spec, config, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    (out / "aqa_tiny.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    ordinary_modes(out)  # save_pretrained leaves model.safetensors 0600
    n = sum(p.numel() for p in model.parameters())
    log.info("tiny Qwen2-Audio: %.2f M parameters, vocabulary %d, window %d s", n / 1e6, vocab, spec.audio_seconds)
    return out
