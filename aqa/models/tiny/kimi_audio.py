"""`aqa model tiny-kimi-audio`: a random-weight Kimi-Audio in the official checkpoint's layout.

The folder has what moonshotai/Kimi-Audio-7B-Instruct has, at toy sizes: config.json
(model_type `moonshot_kimia`, the kimia_* fields), model.safetensors under the official names
(the audio-generation branch `mimo_*` included, so upstream's code loads it too),
`tiktoken.model` (a byte-level BPE trained here, written as tiktoken ranks) with the 421
special tokens after it, `whisper-large-v3/` (a small `WhisperModel`, 128 mel bins, 30 s
window) and `glm-4-voice-tokenizer/` (a small Whisper-VQ tokenizer, pooled after layer 1 and
quantised after layer 2, so both of its attention masks are used).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from aqa.io import ordinary_modes
from aqa.models.tiny.builder import BASE_CORPUS, TinyDecoderSpec, add_builder_command, train_tiktoken_ranks

log = logging.getLogger(__name__)


@dataclass
class TinyKimiSpec(TinyDecoderSpec):
    """Sizes of a tiny Kimi-Audio; defaults fit a CPU test in seconds."""

    mimo_layers: int = 1
    """Layers of the audio-generation branch (saved for upstream's code; aqa skips them)."""
    whisper_dim: int = 32
    """Width of the Whisper encoder of the continuous features."""
    whisper_layers: int = 2
    """Layers of that encoder."""
    tokenizer_dim: int = 32
    """Width of the GLM-4-Voice speech tokenizer."""
    speech_codes: int = 64
    """Codebook size of the speech tokenizer (16,384 in GLM-4-Voice)."""


def build_tiny_kimi(out_dir: str | Path, spec: TinyKimiSpec | None = None, corpus: list[str] | None = None) -> Path:
    """Build and save a random-weight Kimi-Audio folder; returns its path."""
    import torch
    from safetensors.torch import save_file
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm

    from aqa.io import write_json
    from aqa.models.kimi_audio import (SPLIT_PATTERN, KimiAudioConfig, KimiAudioForCausalLM, special_token_names,
                                       write_tiktoken)
    from aqa.models.whisper_vq import WhisperVQTokenizer

    spec = spec or TinyKimiSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)

    # Text vocabulary: base tokens, then the special tokens, then the speech tokens.
    ranks = train_tiktoken_ranks([BASE_CORPUS, *(corpus or [])], spec.vocab_size, SPLIT_PATTERN)
    write_tiktoken(ranks, out / "tiktoken.model")
    specials = special_token_names()
    base = len(ranks)
    sid = {name: base + i for i, name in enumerate(specials)}
    offset = base + len(specials)
    write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "TikTokenTokenizer", "bos_token": "[BOS]", "eos_token": "[EOS]",
        "pad_token": specials[-1], "model_max_length": 8192,
        "added_tokens_decoder": {str(i): {"content": n, "special": True} for n, i in sid.items()}})

    d = spec.decoder_dim
    fields = dict(
        architectures=["MoonshotKimiaForCausalLM"], model_type="moonshot_kimia",
        vocab_size=offset + spec.speech_codes, hidden_size=d, intermediate_size=int(5.2857 * d) // 8 * 8,
        num_hidden_layers=spec.decoder_layers, num_attention_heads=spec.decoder_heads,
        num_key_value_heads=spec.decoder_kv_heads, hidden_act="silu", max_position_embeddings=8192,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=sid["[BOS]"], eos_token_id=sid["[EOS]"], pad_token_id=sid[specials[-1]],
        kimia_mimo_layers=spec.mimo_layers, kimia_mimo_audiodelaytokens=6,
        kimia_mimo_transformer_from_layer_index=spec.decoder_layers - 1,
        kimia_audio_output_vocab=spec.speech_codes + 512, kimia_text_output_vocab=offset,
        num_audio_special_tokens=512, num_base_tokens=base, kimia_token_offset=offset,
        use_whisper_feature=True, kimia_adaptor_input_dim=4 * spec.whisper_dim,
        kimia_media_begin=sid["<|im_media_begin|>"], kimia_media_end=sid["<|im_media_end|>"],
        torch_dtype="float32")
    write_json(out / "config.json", fields)
    config = KimiAudioConfig(**{k: v for k, v in fields.items() if k != "model_type"})
    config._attn_implementation = "sdpa"
    model = KimiAudioForCausalLM(config)
    with torch.no_grad():
        # Unit-scale logits, as in a trained model (see aqa/models/tiny/qwen2_audio.py).
        model.lm_head.weight.normal_(0.0, d ** -0.5)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    # The audio-generation branch, under upstream's names, so upstream's code finds every weight.
    for i in range(spec.mimo_layers):
        layer = Qwen2DecoderLayer(config, 0)  # the index only picks the attention type
        state.update({f"model.mimo_layers.{i}.{k}": v for k, v in layer.state_dict().items()})
    state["model.mimo_norm.weight"] = Qwen2RMSNorm(d).weight.detach().clone()
    state["mimo_output.weight"] = torch.randn(config.vocab_size, d) * d ** -0.5
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})

    # Continuous features: a small Whisper with Whisper-large-v3's 128 mel bins and 30 s window.
    w = spec.whisper_dim
    wcfg = WhisperConfig(d_model=w, encoder_layers=spec.whisper_layers, encoder_attention_heads=4,
                         encoder_ffn_dim=4 * w, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=4 * w,
                         num_mel_bins=128, max_source_positions=1500, max_target_positions=32, vocab_size=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3)
    WhisperModel(wcfg).save_pretrained(out / "whisper-large-v3", safe_serialization=True)
    WhisperFeatureExtractor(feature_size=128).save_pretrained(out / "whisper-large-v3")

    # Discrete tokens: a small GLM-4-Voice Whisper-VQ tokenizer.
    t = spec.tokenizer_dim
    vq_fields = dict(
        architectures=["WhisperVQEncoder"], model_type="whisper", d_model=t, encoder_layers=2,
        encoder_attention_heads=4, encoder_ffn_dim=4 * t, decoder_layers=1, decoder_attention_heads=4,
        decoder_ffn_dim=4 * t, num_mel_bins=128, max_source_positions=1500, vocab_size=64, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
        pooling_kernel_size=4, pooling_type="avg", pooling_position=1, quantize_position=2,
        quantize_vocab_size=spec.speech_codes, quantize_causal_block_size=200, quantize_causal_encoder=False,
        quantize_encoder_only=True, quantize_ema_decay=0.99, encoder_causal_attention=False,
        encoder_causal_convolution=True, scale_embedding=False, activation_function="gelu")
    tdir = out / "glm-4-voice-tokenizer"
    tdir.mkdir(exist_ok=True)
    write_json(tdir / "config.json", vq_fields)
    vcfg = WhisperConfig(**{k: v for k, v in vq_fields.items() if k not in ("architectures", "model_type")})
    vcfg._attn_implementation = "sdpa"
    vq = WhisperVQTokenizer(vcfg)
    vstate = {k: v.contiguous() for k, v in vq.state_dict().items()}
    # What the real checkpoint also holds (GLM-4-Voice's training state), for upstream's loader.
    vstate["embed_positions2.weight"] = vstate["embed_positions.weight"][:375].clone()
    vstate["ema_count"] = torch.ones(spec.speech_codes)
    vstate["ema_weight"] = vstate["codebook.weight"].clone()
    save_file(vstate, str(tdir / "model.safetensors"), metadata={"format": "pt"})
    WhisperFeatureExtractor(feature_size=128).save_pretrained(tdir)

    (out / "aqa_tiny.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    ordinary_modes(out)  # safetensors' save_file and save_pretrained leave their files 0600
    n = sum(v.numel() for v in state.values())
    log.info("tiny Kimi-Audio: %.2f M decoder parameters, text vocabulary %d + %d special, %d speech codes",
             n / 1e6, base, len(specials), spec.speech_codes)
    return out


def register(msub) -> None:
    """`aqa model tiny-kimi-audio`."""
    add_builder_command(msub, "tiny-kimi-audio", "build a random-weight Kimi-Audio folder offline (official layout)",
                        TinyKimiSpec, build_tiny_kimi,
                        "config.json, model.safetensors, tiktoken.model, whisper-large-v3/, glm-4-voice-tokenizer/")
