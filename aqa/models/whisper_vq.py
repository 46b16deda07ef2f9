"""GLM-4-Voice's Whisper-VQ speech tokenizer: 16 kHz audio in, discrete tokens out at 12.5 Hz.

Kimi-Audio's audio stream holds these tokens (plus the model's `kimia_token_offset`). The
tokenizer is the first `quantize_position` layers of a Whisper encoder with causal
convolutions and a block-causal attention mask, average-pooled by 4 after layer
`pooling_position` and snapped to the nearest codebook row (THUDM/glm-4-voice-tokenizer:
1280 wide, pooled and quantised after layer 16 of 32, 16,384 codes). Everything after the
quantiser only serves GLM-4-Voice's own training, so it is neither built nor loaded.

Written on transformers' `WhisperEncoderLayer`; the weight names are the checkpoint's
(`conv1`, `conv2`, `embed_positions`, `layers.N.*`, `codebook`, with or without a
`model.encoder.` prefix), so the official folder loads as it is. The audio is cut into 30 s
segments and padded to a multiple of 1,280 samples (one token), as upstream's
`extract_speech_token` does, so a clip of any length gets ceil(seconds * 12.5) tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

SAMPLE_RATE = 16000
SEGMENT_SECONDS = 30

#: Upstream's `WhisperVQConfig.__init__` defaults (GLM-4-Voice, speech_tokenizer/configuration_whisper.py):
#: a config.json that leaves a key out means this value, as it does to upstream's loader.
VQ_DEFAULTS = dict(pooling_kernel_size=None, pooling_type="max", pooling_position=0, quantize_vocab_size=None,
                   quantize_position=16, quantize_causal_encoder=False, quantize_causal_block_size=None,
                   encoder_causal_attention=False, encoder_causal_convolution=False)


def tokens_for(n_samples: int, samples_per_token: int = 1280) -> int:
    """Tokens of a segment of `n_samples` (one per started 80 ms)."""
    return (n_samples - 1) // samples_per_token + 1


def segments(audio: np.ndarray, seconds: int = SEGMENT_SECONDS) -> list[np.ndarray]:
    """30 s pieces of a clip, the last one shorter; an empty clip gives one empty piece."""
    step = seconds * SAMPLE_RATE
    return [audio[i:i + step] for i in range(0, max(len(audio), 1), step)]


class WhisperVQTokenizer(nn.Module):
    """The quantising half of GLM-4-Voice's Whisper-VQ encoder."""

    def __init__(self, config):
        from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

        super().__init__()
        for key, value in VQ_DEFAULTS.items():
            if not hasattr(config, key):
                setattr(config, key, value)
        if config.quantize_vocab_size is None or config.quantize_position is None:
            raise ValueError("a Whisper-VQ config needs quantize_vocab_size and quantize_position")
        self.config = config
        d = config.d_model
        # Causal convolutions are left-padded by (kernel - 1), so a frame never sees the future.
        self.conv1 = nn.Conv1d(config.num_mel_bins, d, kernel_size=3)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2)
        # Upstream's WhisperVQConfig defaults to symmetric convolutions; the released
        # glm-4-voice-tokenizer's config.json sets causal ones explicitly.
        self.causal_conv = bool(config.encoder_causal_convolution)
        self.embed_positions = nn.Embedding(config.max_source_positions, d)
        self.layers = nn.ModuleList(WhisperEncoderLayer(config) for _ in range(config.quantize_position))
        k = config.pooling_kernel_size
        self.pooling = (None if not k else nn.AvgPool1d(k) if config.pooling_type == "avg" else nn.MaxPool1d(k))
        self.codebook = nn.Embedding(config.quantize_vocab_size, d)

    @property
    def samples_per_token(self) -> int:
        return 160 * 2 * (self.config.pooling_kernel_size or 1)  # hop * conv2 stride * pooling

    def _conv(self, conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        pad = (conv.kernel_size[0] - 1, 0) if self.causal_conv else (1, 1)
        return conv(nn.functional.pad(x, pad))

    def _mask(self, keep: torch.Tensor, block: int | None, causal: bool, dtype) -> torch.Tensor:
        """(B, 1, T, T) additive mask, as upstream builds it: with a block size, a frame sees
        every earlier frame and its own block of `block` frames (block-causal); without one, a
        causal encoder sees the earlier frames and a non-causal one every frame; never padding."""
        T = keep.shape[1]
        i = torch.arange(T, device=keep.device)
        if causal:
            allowed = (i[None, :] <= i[:, None])[None].expand(keep.shape[0], T, T)
        else:
            if block:
                allowed = (i[None, :] <= i[:, None]) | ((i[:, None] // block) == (i[None, :] // block))
            else:
                allowed = torch.ones(T, T, dtype=torch.bool, device=keep.device)
            allowed = allowed[None] & keep[:, None, :].bool()
        return torch.zeros(allowed.shape, dtype=dtype, device=keep.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)[:, None]

    @torch.no_grad()
    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """Token ids (B, ceil(frames / 8)) of log-mel `features` (B, n_mels, frames) whose
        real frames `frame_mask` (B, frames) marks; ids at padded positions are meaningless."""
        cfg = self.config
        x = features.to(self.conv1.weight.dtype)
        x = nn.functional.gelu(self._conv(self.conv1, x))
        x = nn.functional.gelu(self._conv(self.conv2, x)).permute(0, 2, 1)  # (B, T, D)
        T = x.shape[1]
        x = x + self.embed_positions.weight[:T]
        keep = frame_mask[:, ::2][:, :T]
        causal = bool(cfg.encoder_causal_attention or cfg.quantize_causal_encoder)
        block = cfg.quantize_causal_block_size
        mask = self._mask(keep, block, causal, x.dtype)
        for idx, layer in enumerate(self.layers):
            x = layer(x, mask)
            if isinstance(x, tuple):
                x = x[0]
            if idx + 1 == cfg.pooling_position and self.pooling is not None:
                k = cfg.pooling_kernel_size
                x = x.permute(0, 2, 1)
                if x.shape[-1] % k:
                    x = nn.functional.pad(x, (0, k - x.shape[-1] % k))
                x = self.pooling(x).permute(0, 2, 1)
                keep = keep[:, ::k]
                mask = self._mask(keep, block // k if block else None, causal, x.dtype)
        # Nearest codebook row by squared distance, in float32 so ties do not flip with dtype.
        flat = x.float().reshape(-1, x.shape[-1])
        book = self.codebook.weight.float()
        dist = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.T + book.pow(2).sum(1)[None])
        return dist.argmin(1).reshape(x.shape[0], x.shape[1])

    @classmethod
    def from_folder(cls, folder: str | Path, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> WhisperVQTokenizer:
        """Load from a checkpoint folder (config.json + *.safetensors), e.g. a copy of
        THUDM/glm-4-voice-tokenizer, its weights read straight onto `device`
        (`weights.load_module_weights`). Its config is a Whisper config with GLM-4-Voice's
        extra pooling and quantiser fields, read without remote code."""
        from transformers import WhisperConfig

        from aqa.models.weights import load_module_weights

        folder = Path(folder)
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{folder}: no config.json (expected a GLM-4-Voice speech tokenizer folder)")
        raw = json.loads(cfg_path.read_text())
        for key in ("auto_map", "architectures", "model_type"):
            raw.pop(key, None)
        config = WhisperConfig(**{**VQ_DEFAULTS, **raw})
        config._attn_implementation = "sdpa"
        # Full WhisperVQ checkpoints prefix the encoder's names with `model.encoder.`.
        return load_module_weights(lambda: cls(config), folder, dtype=dtype, device=device,
                                   rename=lambda k: k.removeprefix("model.").removeprefix("encoder."))

    def tokenize(self, audio: np.ndarray, feature_extractor, device: torch.device | str = "cpu") -> list[int]:
        """GLM-4-Voice tokens of one 16 kHz clip: its 30 s segments in one batch, padded to
        whole tokens (`device`: where the log-mel is computed)."""
        segs = segments(audio)
        enc = feature_extractor(segs, sampling_rate=SAMPLE_RATE, return_attention_mask=True, return_tensors="pt",
                                padding="longest", pad_to_multiple_of=self.samples_per_token, device=str(device))
        dev = self.conv1.weight.device
        ids = self(enc["input_features"].to(dev), enc["attention_mask"].to(dev))
        out = []
        for row, seg in zip(ids.tolist(), segs):
            out.extend(row[:tokens_for(len(seg), self.samples_per_token)])
        return out
