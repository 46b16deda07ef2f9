"""Audio Flamingo 3 backend: `AudioFlamingo3ForConditionalGeneration` (a Whisper-style encoder,
a two-layer projector and a Qwen2.5-7B decoder) and the real `AudioFlamingo3Processor`, no
remote code; nvidia/audio-flamingo-3-hf on GPUs in bf16, the tiny random model of
`aqa model tiny --family audio-flamingo3` on CPU. The weights' licence is non-commercial
(NVIDIA OneWay Noncommercial License, per the model card): see docs/models.md.

Prompt (the checkpoint's chat template, one user turn, audio then question):

    <|im_start|>...user\\n<sound> x N ... {question}<|im_end|>\\n<|im_start|>assistant\\n

where the template decides the exact text around the audio placeholder `<sound>`, which the
processor expands to N tokens: 25 a second (the encoder's stride-2 convolution and its average
pooling halve the 100 mel frames a second twice), 750 per 30 s window. The answer is the option
letter then `<|im_end|>`. Left padding, explicit positions `cumsum(attention_mask) - 1` (the
decoder is a plain Qwen2 with 1-D RoPE; its own forward would number the padding too, a constant
shift that RoPE's relative attention cancels only up to rounding), aqa/models/chat_backend.py.

Audio limit: the processor cuts a clip into 30 s windows (the feature extractor's
`chunk_length`), each padded to the whole window and encoded apart, and keeps at most
`max_audio_len` // `chunk_length` of them (600 s: 20 windows, in the released processor), so one
prompt hears up to 600 s (`audio_seconds`).

Encoder on the real frames: not done. The encoder is Qwen2-Audio's (Whisper's convolutions and
positional table over a full 30 s window, padded frames masked in attention), so the exact trim
of aqa/models/qwen2_audio.py would carry over, but it is not implemented or tested here: every
window of every clip runs over its whole 3000 frames, as in transformers.
"""

from __future__ import annotations

import torch

from aqa.models.chat_backend import ChatProcessorBackend


class AudioFlamingo3Backend(ChatProcessorBackend):
    family = "audioflamingo3"
    transformers_class = "AudioFlamingo3ForConditionalGeneration"

    @property
    def audio_seconds(self) -> float:
        window = self.processor.feature_extractor.chunk_length
        return float(int(self.processor.max_audio_len // window) * window)

    def audio_tokens_of(self, samples: int) -> int:
        # The processor's count (transformers' processing_audioflamingo3): the clip cut into
        # windows, each padded whole; the formula runs on the real frames of all windows together.
        fe = self.processor.feature_extractor
        window = fe.chunk_length * fe.sampling_rate
        frames = sum(self.whisper_frames(min(window, samples - lo), fe.n_samples, fe.hop_length)
                     for lo in range(0, max(samples, 1), window))
        return ((frames - 1) // 2 + 1 - 2) // 2 + 1

    def audio_inputs(self, enc) -> dict[str, torch.Tensor]:
        # (windows, n_mels, window frames) and (windows, window frames): each window padded whole.
        return {"input_features": enc["input_features"], "input_features_mask": enc["input_features_mask"]}

    def merge_audio(self, parts):
        return {k: torch.cat([p[k] for p in parts]) for k in ("input_features", "input_features_mask")}

    def audio_embeddings(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        core = self.base_model().model
        # transformers' AF3 encoder feeds the processor's float32 log-mels to its convolutions as
        # they come (unlike the Qwen-Omni, Voxtral and Qwen2-Audio encoders, which cast them), so a
        # bf16 model, as DeepSpeed runs it with autocast off, fails on a dtype mismatch.
        features = batch["input_features"].to(core.audio_tower.conv1.weight.dtype)
        return core.get_audio_features(features, batch["input_features_mask"], return_dict=True).pooler_output

    def feature_lengths(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        mask = batch.get("input_features_mask")  # (windows, frames): each window padded whole
        return None if mask is None else mask.sum(-1)
