"""Voxtral backend: `VoxtralForConditionalGeneration` (a Whisper-large-v3-style encoder, a
two-layer projector and a Llama-layout Ministral-3B decoder) and the real `VoxtralProcessor`,
whose tokenizer is mistral-common's Tekken (transformers' `MistralCommonBackend`; install
`aqa[voxtral]`), no remote code; mistralai/Voxtral-Mini-3B-2507 on GPUs in bf16, the tiny
random model of `aqa model tiny --family voxtral` on CPU. Apache-2.0 weights (model card).

Prompt: Mistral's instruct format, which mistral-common encodes from the chat request (there is
no Jinja chat template; `VoxtralProcessor.apply_chat_template` hands the conversation to
mistral-common, the path the model card uses for audio questions):

    <s>[INST][BEGIN_AUDIO][AUDIO] x N{question}[/INST]

and the answer is the option letter then `</s>`, as mistral-common encodes an assistant turn
(checked against its own fine-tuning encoding in tests/test_voxtral.py). The clip travels to
mistral-common as a base64 float WAV, so it reads exactly the samples given (no resampling at
16 kHz). Left padding, explicit positions `cumsum(attention_mask) - 1` (aqa/models/chat_backend.py;
the decoder is a plain Llama with 1-D RoPE).

Audio window: mistral-common pads a clip with zeros to a whole number of windows
(`chunk_length_s` of the tokenizer's audio config: 30 s) and gives each window
`chunk_length_s * frame_rate` audio tokens (375 at 12.5 Hz: 3000 mel frames, halved by the
encoder's stride-2 convolution, then 4 encoder frames stacked per token by the projector's
input reshape). The processor cuts the log-mels into the same windows
(`max_source_positions` mel frames each) and the encoder runs on each one.

Audio limit: nothing in the processor or tokenizer caps a clip; the bound is the 32k-token
context the model was trained for, which the model card states as "40 minutes for
understanding": `audio_seconds` = MAX_WINDOWS (80) windows = 2400 s, 30,000 audio tokens.
It is not derived from `max_position_embeddings`, which sizes RoPE (131,072 in transformers'
default text config) beyond the trained context.

Encoder on the real frames: does not hold exactly, so it is not done. The model gives the
encoder no attention mask (transformers' VoxtralEncoder: it "does not support masking of the
input_features") and the encoder refuses anything but whole windows: every frame of a window,
the zero padding's too, attends to every other, so a real frame's state depends on the
padding, and the padding's own frames become audio tokens of the prompt (mistral-common counts
tokens over the padded length). Trimming would change both.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch

from aqa.models.base import Example
from aqa.models.chat_backend import ChatProcessorBackend

#: Windows one prompt carries: the model card's 40 minutes of audio for understanding, in 30 s
#: windows of 375 tokens (30,000 of the 32k context).
MAX_WINDOWS = 80


def require_mistral_common(path) -> None:
    """Refuse, in one line naming `path`, a Voxtral folder when mistral-common is missing:
    without it transformers falls back to another tokenizer class or fails deep inside."""
    import importlib.util

    from aqa.io import UserError

    if importlib.util.find_spec("mistral_common") is None:
        raise UserError(f"{path}: Voxtral's tokenizer needs the mistral-common package (pip install 'aqa[voxtral]')")


def wav_base64(clip: np.ndarray, sampling_rate: int) -> str:
    """`clip` as a base64 float32 WAV: what mistral-common decodes back to the same samples."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.asarray(clip, dtype=np.float32), sampling_rate, format="WAV", subtype="FLOAT")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class VoxtralBackend(ChatProcessorBackend):
    family = "voxtral"
    transformers_class = "VoxtralForConditionalGeneration"
    #: mistral-common's Tekken encodes text with a tiktoken encoding that has no special tokens
    #: (its control tokens are ids below `num_special_tokens`, added only by the instruct
    #: encoder), so `[INST]` or `[AUDIO]` in a question is its characters (tests/test_special_text.py).
    text_is_plain = True

    @classmethod
    def load(cls, path: str, **kw):
        require_mistral_common(path)
        return super().load(path, **kw)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The answer ends with </s>, which mistral-common never encodes from text.
        self.end_ids = [self.tokenizer.eos_token_id]

    @property
    def audio_config(self):
        """mistral-common's audio settings of the tokenizer (window, token rate)."""
        return self.tokenizer.tokenizer.instruct_tokenizer.audio_encoder.audio_config

    @property
    def window_seconds(self) -> float:
        return float(self.audio_config.chunk_length_s)

    @property
    def audio_seconds(self) -> float:
        return MAX_WINDOWS * self.window_seconds

    def prompt(self, text: str, with_audio: bool = True) -> str:
        """The prompt as text, special tokens written out, with one window of silence standing
        for the clip (for reading; `process` encodes the real clip)."""
        clip = np.zeros(int(self.window_seconds * self.audio_config.sampling_rate), np.float32) if with_audio else None
        ids = self.process(text, clip)["input_ids"][0].tolist()
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def process(self, text: str, clip: np.ndarray | None):
        content = [{"type": "text", "text": text}]
        if clip is not None:
            sr = self.audio_config.sampling_rate
            content.insert(0, {"type": "audio", "base64": wav_base64(clip, sr)})
        window = int(self.window_seconds * self.audio_config.sampling_rate)
        # The processor's defaults are the 30 s window (480,000 samples, 3000 mel frames); read
        # from the tokenizer they also fit a checkpoint with another window (the tiny models).
        kw = {"audio_kwargs": {"pad_to_multiple_of": window,
                               "max_source_positions": window // self.processor.feature_extractor.hop_length}}
        return self.processor.apply_chat_template([{"role": "user", "content": content}], processor_kwargs=kw)

    @classmethod
    def without_weights(cls, path: str, **kw):
        require_mistral_common(path)
        return super().without_weights(path, **kw)

    def audio_tokens_of(self, samples: int) -> int:
        # mistral-common pads the clip to whole windows and gives each its tokens.
        sr, window = self.audio_config.sampling_rate, self.window_seconds
        per_window = int(window * self.audio_config.frame_rate)
        return max(1, -(-samples // int(window * sr))) * per_window

    def prompt_token_counts(self, items: list[tuple[str, float | None, str | None]]) -> list[int]:
        # mistral-common encodes the request itself (no text template to tokenise), so each
        # question is encoded without its clip; a clip adds its audio tokens and the tokens that
        # frame them ([BEGIN_AUDIO]), measured once on one window of silence.
        cache = self.__dict__
        if "_audio_frame" not in cache:
            silence = np.zeros(int(self.window_seconds * self.audio_config.sampling_rate), np.float32)
            with_clip = len(self.process("?", silence)["input_ids"][0])
            cache["_audio_frame"] = with_clip - len(self.process("?", None)["input_ids"][0]) - self.audio_tokens_of(
                len(silence))
        counts = []
        for text, seconds, target in items:
            n = len(self.process(text, None)["input_ids"][0])
            if seconds is not None:
                n += self.clip_tokens(seconds) + cache["_audio_frame"]
            counts.append(n + self.target_length(target))
        return counts

    def encode(self, example: Example) -> tuple[list[int], dict[str, torch.Tensor] | None]:
        ids, audio = super().encode(example)
        if audio is not None:
            # The real frames of each window: mistral-common pads the clip with zeros to whole
            # windows, and the encoder hears the padding (no mask), but SpecAugment's fill must
            # not average it (`feature_lengths`).
            hop = self.processor.feature_extractor.hop_length
            samples = self.prompt_samples(len(example.audio))
            window = int(self.window_seconds * self.audio_config.sampling_rate)
            audio["feature_lengths"] = torch.tensor([self.whisper_frames(min(window, samples - lo), window, hop)
                                                     for lo in range(0, audio["input_features"].shape[0] * window,
                                                                     window)])
        return ids, audio

    def audio_inputs(self, enc) -> dict[str, torch.Tensor]:
        # (windows, n_mels, window frames): a clip's windows, in order.
        return {"input_features": enc["input_features"]}

    def merge_audio(self, parts):
        return {k: torch.cat([p[k] for p in parts]) for k in ("input_features", "feature_lengths")}

    def feature_lengths(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return batch.get("feature_lengths")

    def audio_embeddings(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.base_model().model.get_audio_features(batch["input_features"], return_dict=True).pooler_output
