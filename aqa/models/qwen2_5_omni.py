"""Qwen2.5-Omni backend: the thinker (`Qwen2_5OmniThinkerForConditionalGeneration`) and the
real `Qwen2_5OmniProcessor`, no remote code. Qwen/Qwen2.5-Omni-7B (and -3B) on GPUs in bf16,
the tiny random thinker of `aqa model tiny --family qwen2.5-omni` on CPU.

Loading (aqa/models/omni.py): the talker and token2wav are never loaded. A whole-model
checkpoint (config.json `model_type` qwen2_5_omni, weights under `thinker.`, `talker.`,
`token2wav.`) is read through the thinker class with `config.thinker_config`; transformers'
conversion for this class strips `thinker.` and moves the legacy names (`thinker.model.*`,
`thinker.audio_tower.*`, `thinker.visual.*`) under `model.language_model` / `model.audio_tower`
/ `model.visual`. Only the shards holding `thinker.` weights are opened (or downloaded).

Prompt (the checkpoint's chat template, one user turn, audio then question):

    [the template's system turn, if it adds one]
    <|im_start|>user\\n<|audio_bos|><|AUDIO|> x N<|audio_eos|>{question}<|im_end|>\\n<|im_start|>assistant\\n

with N the clip's audio tokens (25 a second: the encoder's stride-2 convolution and its
average pooling halve the 100 mel frames a second twice). The answer is the option letter then
`<|im_end|>`. Left padding, explicit positions (aqa/models/omni.py: for audio and text the
model's multimodal RoPE positions are the running token count on all three axes).

Audio limit: the processor pads or truncates every clip to the feature extractor's window
(`n_samples`: 4,800,000 samples, 300 s, in the official preprocessor_config.json), so one
prompt hears at most that much (`audio_seconds`). To spare the log-mel of up to 300 s of
padding per clip, the backend pads each clip with only one second of zeros (the feature
extractor's `max_length`): the real frames' log-mels are the same, because a frame reads at most
200 samples past its centre and the log-mel's clamp is set by the loudest real frame either
way (tests/test_qwen2_5_omni.py checks it against the 300 s padding).

Encoder on the real frames: already what the model does, exactly. Unlike Qwen2-Audio's
Whisper encoder, which runs on the whole padded 30 s window, this encoder takes only the
frames under `feature_attention_mask`, cut into chunks of 2 * n_window frames (2 s) that attend
only within themselves, with the first convolution's output zeroed past each chunk's end, so a
clip's audio tokens do not depend on the other clips in the batch or on padding. No trim is
added; the batch's log-mels are only cut to its longest clip (frames past a clip's end are never
read). Tested: batched equals one at a time, and option logits equal transformers' own forward.
"""

from __future__ import annotations

import numpy as np
import torch

from aqa.models.omni import OmniThinkerBackend


class Qwen25OmniBackend(OmniThinkerBackend):
    family = "qwen2_5_omni"
    thinker_class_name = "Qwen2_5OmniThinkerForConditionalGeneration"
    processor_class_name = "Qwen2_5OmniProcessor"
    full_model_type = "qwen2_5_omni"

    @property
    def audio_seconds(self) -> float:
        fe = self.processor.feature_extractor
        return fe.n_samples / fe.sampling_rate

    def processor_audio_kwargs(self, clip: np.ndarray) -> dict:
        return {"max_length": self.padded_samples(len(clip))}

    def padded_samples(self, samples: int) -> int:
        # One second of zeros instead of the whole window: same real frames (see the docstring).
        fe = self.processor.feature_extractor
        return min(fe.n_samples, samples + fe.sampling_rate)

    def audio_tokens_of(self, samples: int) -> int:
        # The processor's count (transformers' processing_qwen2_5_omni): the encoder's stride-2
        # convolution, then its average pooling by 2, over the real frames.
        fe = self.processor.feature_extractor
        frames = self.whisper_frames(samples, self.padded_samples(samples), fe.hop_length)
        return ((frames - 1) // 2 + 1 - 2) // 2 + 1

    # Pretraining hooks (`aqa model pretrain`, tiny models): whole windows, so every clip has
    # the same frames and one batch is one concatenated encoder call.
    def audio_encoder(self) -> torch.nn.Module:
        return self.base_model().model.audio_tower

    def encoder_inputs(self, clips: list[np.ndarray]) -> torch.Tensor:
        fe = self.processor.feature_extractor
        return torch.tensor(np.stack([fe(a, sampling_rate=fe.sampling_rate, padding="max_length",
                                         return_tensors="np")["input_features"][0] for a in clips]))  # (N, mels, F)

    def encoder_states(self, inputs: torch.Tensor) -> torch.Tensor:
        B, _, F = inputs.shape
        mask = torch.ones(B, F, dtype=torch.long, device=inputs.device)
        states = self.audio_embeddings({"input_features": inputs, "feature_attention_mask": mask})  # (B * T, D)
        return states.view(B, -1, states.shape[-1])
