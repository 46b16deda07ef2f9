"""`aqa model tiny --family voxtral`: a random-weight Voxtral built offline with the real classes
(`VoxtralForConditionalGeneration` from a `VoxtralConfig` with a small encoder and a small Llama
decoder) and the real `VoxtralProcessor` around a `WhisperFeatureExtractor` and transformers'
`MistralCommonBackend` over a Tekken tokenizer file (`tekken.json`) written here. Saved with
`save_pretrained`, so `load_backend(folder)` loads it like a download (transformers picks
`MistralCommonBackend` for a `voxtral` folder with a tekken.json).

tekken.json, in the format mistral_common's `Tekkenizer.from_file` reads: `vocab` is a list of
{rank, token_bytes (base64), token_str}, the 256 single bytes first in byte order, then the
merges of a byte-level BPE trained here with Tekken's split pattern (read from the Tekken file
mistral_common ships); `special_tokens` are {rank, token_str, is_control}, ids 0..S-1 before the
text tokens: ranks 0-19 as mistral_common's default list (`Tekkenizer.DEPRECATED_SPECIAL_TOKENS`:
<unk>, <s>, </s>, [INST], [/INST], ..., <pad> at 11), [AUDIO] at 24 (transformers'
`VoxtralProcessor` fixes `audio_token_id = 24`), [BEGIN_AUDIO] at 25 and [TRANSCRIBE] at 34 as in
the released tokenizer, the rest fillers; `audio` holds the window (`chunk_length_s`), the token
rate (`frame_rate`, 12.5 a second) and the log-mel settings. Tokenizer version v7, whose
instruct encoder takes audio (the released file's version was not checked here).

The window sets the encoder's positions: 100 mel frames a second, halved by its stride-2
convolution, so `max_source_positions` = 50 x window (1500 for the real 30 s); 8 mel frames make
one audio token (12.5 a second), so a window must be an even number of seconds.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from aqa.io import UserError, ordinary_modes, write_json
from aqa.models.tiny.builder import BASE_CORPUS, TinyAudioEncoderSpec, train_tiktoken_ranks

log = logging.getLogger(__name__)

#: Audio tokens a second (mistral-common's `frame_rate` in Voxtral's tekken.json).
FRAME_RATE = 12.5
#: Special tokens at fixed ids beyond mistral_common's default first 20.
AUDIO_SPECIALS = {24: "[AUDIO]", 25: "[BEGIN_AUDIO]", 34: "[TRANSCRIBE]"}
#: Special-token ids before the text tokens (1000 in the released tokenizer).
NUM_SPECIAL = 40


@dataclass
class TinyVoxtralSpec(TinyAudioEncoderSpec):
    """Sizes of a tiny Voxtral; the fields Qwen2-Audio's tiny spec has keep its defaults."""

    window_seconds: int = 2
    """The audio window (30 in Voxtral), an even number of seconds: a clip is padded to whole windows."""


def write_tekken(path: Path, corpus: list[str], vocab_size: int, num_mel_bins: int, window_seconds: int) -> None:
    """A Tekken tokenizer file: byte-level BPE trained on `corpus`, Voxtral's special tokens and
    audio settings (see the module docstring)."""
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    bundled = Path(__import__("mistral_common").__file__).parent / "data" / "tekken_240911.json"
    pattern = json.loads(bundled.read_text())["config"]["pattern"]
    ranks = train_tiktoken_ranks(corpus, vocab_size, pattern)
    names = {t["rank"]: t["token_str"] for t in Tekkenizer.DEPRECATED_SPECIAL_TOKENS} | AUDIO_SPECIALS
    special = [{"rank": i, "token_str": names.get(i, Tekkenizer.SPECIAL_TOKEN_TEMPLATE.format(id=i)),
                "is_control": True} for i in range(NUM_SPECIAL)]
    vocab = [{"rank": r, "token_bytes": base64.b64encode(piece).decode("ascii"),
              "token_str": piece.decode("utf-8", errors="replace")} for piece, r in ranks.items()]
    write_json(path, {
        "config": {"pattern": pattern, "num_vocab_tokens": len(vocab), "default_vocab_size": len(vocab) + NUM_SPECIAL,
                   "default_num_special_tokens": NUM_SPECIAL, "version": "v7"},
        "vocab": vocab, "special_tokens": special,
        "audio": {"sampling_rate": 16000, "frame_rate": FRAME_RATE, "chunk_length_s": float(window_seconds),
                  "audio_encoding_config": {"num_mel_bins": num_mel_bins, "hop_length": 160, "window_size": 400}}})


def build_tiny_voxtral(out_dir: str | Path, spec: TinyVoxtralSpec | None = None,
                       corpus: list[str] | None = None) -> Path:
    """Build, save and return the folder of a random-weight Voxtral and its processor."""
    import torch
    from transformers import (MistralCommonBackend, VoxtralConfig, VoxtralForConditionalGeneration, VoxtralProcessor,
                              WhisperFeatureExtractor)

    from aqa.models.voxtral import require_mistral_common

    spec = spec or TinyVoxtralSpec()
    require_mistral_common(out_dir)
    if spec.window_seconds <= 0 or spec.window_seconds % 2:
        raise UserError(f"window_seconds must be a positive even number (8 mel frames per audio token), "
                         f"got {spec.window_seconds}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_tekken(out / "tekken.json", [BASE_CORPUS, *(corpus or [])], spec.vocab_size, spec.num_mel_bins,
                 spec.window_seconds)
    tok = MistralCommonBackend(str(out / "tekken.json"))
    fe = WhisperFeatureExtractor(feature_size=spec.num_mel_bins, chunk_length=spec.window_seconds,
                                 sampling_rate=16000, hop_length=160, n_fft=400)
    processor = VoxtralProcessor(feature_extractor=fe, tokenizer=tok)
    d = spec.decoder_dim
    config = VoxtralConfig(
        # The encoder's intermediate_size is 4 x its width, which the projector's input also
        # needs: it reads 4 stacked encoder frames per audio token.
        audio_config=spec.whisper_encoder_config("voxtral_encoder", spec.window_seconds),
        text_config=spec.text_config("llama", max(len(tok), spec.model_vocab), head_dim=d // spec.decoder_heads,
                                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id),
        audio_token_id=processor.audio_token_id)
    torch.manual_seed(spec.seed)
    model = VoxtralForConditionalGeneration(config)
    with torch.no_grad():
        # Unit-scale logits, as in a trained model (see aqa/models/tiny/qwen2_audio.py).
        model.lm_head.weight.normal_(0.0, d ** -0.5)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    ordinary_modes(out)  # save_pretrained leaves model.safetensors 0600
    (out / "aqa_tiny.json").write_text(json.dumps({"family": "voxtral", **asdict(spec)}, indent=2) + "\n")
    log.info("tiny Voxtral: %.2f M parameters, vocabulary %d, window %d s",
             sum(p.numel() for p in model.parameters()) / 1e6, config.text_config.vocab_size, spec.window_seconds)
    return out
