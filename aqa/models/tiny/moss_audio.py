"""`aqa model tiny --family moss-audio`: a random-weight MOSS-Audio written in the official layout,
so that aqa's backend and upstream's own code (tools/moss_reference_runner.py) read the same folder.

The folder holds what the released repositories hold besides their remote code
(OpenMOSS-Team/MOSS-Audio-*: config.json, model.safetensors, processor_config.json,
generation_config.json, tokenizer_config.json, vocab.json, merges.txt; no tokenizer.json):
- config.json: `audio_config` with every field of upstream's `MossAudioEncoderConfig`,
  `language_config` a Qwen3 config, `adapter_hidden_size`, `deepstack_num_inject_layers`;
- the weights under upstream's names (`audio_encoder.*`, `audio_adapter.*`,
  `deepstack_audio_merger_list.K.*`, `language_model.*`, `lm_head.weight`);
- a Qwen2-style byte-level BPE trained here, laid out as Qwen's vocabulary is: the 256 byte
  symbols first in GPT-2's byte order (so the digits are ids 15-24, which upstream's time markers
  write as constants), the merges after, then Qwen3's 26 added tokens; `<|audio_bos|>` and
  `<|audio_eos|>` are not in the tokenizer (as in the released one) but at the ids after it
  (151669/151670 in the real vocabulary: base + 26, base + 27), `<|AUDIO|>` is `<|vision_pad|>`'s
  id (151654 = base + 11), all three written to processor_config.json;
- `chat_template.jinja` of the release is not written: neither aqa nor upstream's processor reads it.

Upstream's encoder hard-codes 128 mel bins (`stem_proj` takes `channels * 16`), so a tiny model
that upstream's code should load needs `--num-mel-bins 128` (tools/check_moss_equivalence.py
builds it so); aqa's backend reads any number.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from aqa.io import ordinary_modes, write_json
from aqa.models.tiny.builder import BASE_CORPUS, TinyAudioEncoderSpec, train_byte_level_bpe

log = logging.getLogger(__name__)

#: Qwen3's added tokens from id 151643 on, in order, and whether each is special.
QWEN3_ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
               ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
               ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
               ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
               ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
               ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False),
               ("</tool_response>", False), ("<think>", False), ("</think>", False)]


@dataclass
class TinyMossAudioSpec(TinyAudioEncoderSpec):
    """Sizes of a tiny MOSS-Audio; the shared fields mean what they mean for every family."""

    stem_channels: int = 8
    """Channels of the three stride-2 convolutions (480 in the real encoder)."""
    adapter_dim: int = 64
    """Hidden width of the SwiGLU adapters (8192 in the real models)."""
    deepstack_layers: int = 2
    """Encoder layers injected into the first LLM layers (3 in the real models: 8, 16, 24 of 32)."""


def qwen_vocab(corpus: list[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE in Qwen's vocabulary order: the 256 byte symbols in GPT-2's order, then
    each merge's result in the order learned."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    _, merges = train_byte_level_bpe(corpus, vocab_size, PRETOKENIZE_REGEX)
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    kept = []
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
            kept.append((a, b))
    return vocab, kept


def build_tiny_moss_audio(out_dir: str | Path, spec: TinyMossAudioSpec | None = None,
                          corpus: list[str] | None = None) -> Path:
    """Build, save and return the folder of a random-weight MOSS-Audio in the official layout."""
    import torch
    from safetensors.torch import save_file

    from aqa.models.moss_audio import ENCODER_DEFAULTS, MossAudioConfig, MossAudioModel

    spec = spec or TinyMossAudioSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = qwen_vocab([BASE_CORPUS, *(corpus or [])], spec.vocab_size)
    base = len(vocab)
    ids = {name: base + i for i, (name, _) in enumerate(QWEN3_ADDED)}
    audio_ids = dict(audio_token_id=ids["<|vision_pad|>"], audio_start_id=base + len(QWEN3_ADDED),
                     audio_end_id=base + len(QWEN3_ADDED) + 1)
    write_json(out / "vocab.json", vocab)
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    write_json(out / "tokenizer_config.json", {
        "add_bos_token": False, "add_prefix_space": False, "bos_token": None, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None, "errors": "replace",
        "model_max_length": 131072, "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": {str(ids[n]): {"content": n, "lstrip": False, "normalized": False, "rstrip": False,
                                               "single_word": False, "special": s} for n, s in QWEN3_ADDED}})
    vocab_rows = max(-(-(audio_ids["audio_end_id"] + 1) // 64) * 64, spec.model_vocab)
    d = spec.decoder_dim
    n_enc = spec.encoder_layers
    deep = sorted({min(n_enc - 1, i * n_enc // (spec.deepstack_layers + 1)) for i in range(1, spec.deepstack_layers + 1)})
    audio = dict(ENCODER_DEFAULTS, d_model=spec.encoder_dim, output_dim=spec.encoder_dim, num_mel_bins=spec.num_mel_bins,
                 encoder_layers=n_enc, encoder_attention_heads=spec.encoder_heads, encoder_ffn_dim=4 * spec.encoder_dim,
                 downsample_hidden_size=spec.stem_channels, dropout=0.0, attention_dropout=0.0,
                 deepstack_encoder_layer_indexes=deep)
    language = dict(
        architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=vocab_rows, hidden_size=d,
        intermediate_size=3 * d, num_hidden_layers=spec.decoder_layers, num_attention_heads=spec.decoder_heads,
        num_key_value_heads=spec.decoder_kv_heads, head_dim=d // spec.decoder_heads, hidden_act="silu",
        max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1000000.0, rope_scaling=None,
        attention_bias=False, attention_dropout=0.0, tie_word_embeddings=False, use_sliding_window=False,
        sliding_window=None, max_window_layers=spec.decoder_layers, initializer_range=0.02, use_cache=True,
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"])
    fields = dict(architectures=["MossAudioModel"], model_type="moss_audio",
                  auto_map={"AutoConfig": "configuration_moss_audio.MossAudioConfig",
                            "AutoProcessor": "processing_moss_audio.MossAudioProcessor"},
                  audio_config=audio, language_config=language, adapter_hidden_size=spec.adapter_dim,
                  deepstack_num_inject_layers=len(deep), ignore_index=-100, bos_token_id=ids["<|endoftext|>"],
                  eos_token_id=ids["<|im_end|>"], num_hidden_layers=spec.decoder_layers, vocab_size=vocab_rows,
                  tie_word_embeddings=False, dtype="float32")
    write_json(out / "config.json", fields)
    write_json(out / "processor_config.json", {
        "processor_class": "MossAudioProcessor",
        "auto_map": {"AutoProcessor": "processing_moss_audio.MossAudioProcessor"},
        "mel_config": {"mel_sr": 16000, "mel_dim": spec.num_mel_bins, "mel_n_fft": 400, "mel_hop_length": 160,
                       "mel_dtype": "bfloat16", "use_whisper_feature_extractor": True},
        "enable_time_marker": True, **audio_ids})
    write_json(out / "generation_config.json", {"bos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"],
                                                "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]]})

    config = MossAudioConfig(**{k: v for k, v in fields.items() if k != "model_type"})
    config._attn_implementation = "sdpa"
    torch.manual_seed(spec.seed)
    model = MossAudioModel(config)
    with torch.no_grad():
        # Unit-scale logits, as in a trained model (see aqa/models/tiny/qwen2_audio.py); adapters and DeepStack
        # mergers at a scale that lets audio move the decoder's states.
        model.lm_head.weight.normal_(0.0, d ** -0.5)
        for m in [model.audio_adapter, *model.deepstack_audio_merger_list]:
            for lin in (m.gate_proj, m.up_proj, m.down_proj):
                lin.weight.normal_(0.0, lin.in_features ** -0.5)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "aqa_tiny.json").write_text(json.dumps({"family": "moss-audio", **asdict(spec)}, indent=2) + "\n")
    ordinary_modes(out)
    log.info("tiny MOSS-Audio: %.2f M parameters, vocabulary %d (+%d added), DeepStack layers %s",
             sum(v.numel() for v in state.values()) / 1e6, base, len(QWEN3_ADDED), deep)
    return out
