"""MOSS-Audio backend, native: OpenMOSS's MOSS-Audio (4B/8B, Instruct/Thinking) on transformers'
Qwen3 and Whisper building blocks, without its remote code or its pinned transformers (4.57.1).

Facts from upstream (github.com/OpenMOSS/MOSS-Audio at 2c9984b, `src/`; read, not copied):
- `config.json`: model_type "moss_audio"; `audio_config` (upstream's `MossAudioEncoderConfig`
  dataclass: d_model 1280, 32 layers, 20 heads, ffn 5120, 128 mel bins, conv stem of
  `downsample_hidden_size` 480 channels, `deepstack_encoder_layer_indexes` [8, 16, 24], ...),
  `language_config` (a Qwen3 config), `adapter_hidden_size` (8192), `deepstack_num_inject_layers`.
- weights, named by `MossAudioModel`'s module tree (base_model_prefix ""): `audio_encoder.*`
  (conv1-3, stem_proj, layers.N as Whisper encoder layers, layer_norm), `audio_adapter.*` and
  `deepstack_audio_merger_list.K.*` (SwiGLU: gate_proj, up_proj, down_proj, no bias),
  `language_model.*` (Qwen3Model), `lm_head`.
- encoder (`MossAudioEncoder.forward`): log-mels (B, 128, T) as a 1-channel image through three
  3x3 stride-2 Conv2d + GELU (T/8: 12.5 tokens a second), channels x remaining mel bins
  flattened and projected (`stem_proj`), sinusoidal positions (computed per call, float32), the
  Whisper layers with a key-padding mask, a final LayerNorm. The states after layers 8, 16, 24
  (before the final norm) are the DeepStack features. `encoder_attention_window_size` (100) is
  in the config but the code at 2c9984b never reads it: every audio position attends to every
  other one of its clip, and so it does here.
- fusion (`MossAudioModel.forward`): the adapted last states replace the embeddings at the
  `<|AUDIO|>` positions (id 151654); DeepStack feature K, through its own adapter, is added to
  the output of LLM layer K at the same positions (upstream uses forward hooks, registered for
  one call; here a permanent hook reads them from the call's keyword arguments).
- processor (`MossAudioProcessor`): Whisper log-mels of the clip alone (no 30 s padding:
  `WhisperFeatureExtractor._np_extract_fbank_features`, 128 bins, n_fft 400, hop 160), rounded
  to bfloat16 (`MelConfig.mel_dtype`) and cast to the model's dtype by the caller (infer.py);
  `conv_out(conv_out(conv_out(frames)))` audio tokens, `conv_out(n) = (n - 1) // 2 + 1`; the
  prompt `_build_default_prompt`; `<|audio_bos|>` (151669) and `<|audio_eos|>` (151670) around the
  audio tokens, ids the hub tokenizer does not hold, written straight into the ids; the text
  around them tokenized as a whole.
- time markers (`_build_audio_tokens_with_time_markers`): after every 25 audio tokens (2 s at
  12.5 a second) up to the clip's last whole second, the digits of the elapsed second, one
  token per digit (ids 15-24, the Qwen digits). `infer.py`, `hf_inference.py`, `app.py` and the
  released `processor_config.json` turn them on; `MossAudioProcessor.from_pretrained` defaults to
  off and upstream's fine-tuning data (`finetune/finetune.py`) has none. aqa: on, unless the
  folder's processor_config.json says otherwise, `time_markers=` or AQA_MOSS_TIME_MARKERS=0/1.
- the answer: the assistant text then `<|im_end|>` (finetune.py's labels). The Thinking models
  answer `<think>...</think>\\n\\n{answer}` (Qwen3's format; moss_audio_usage_guide.md shows
  `<think>\\n</think>\\n\\n...` for a transcription, the empty block `think_empty` takes).
  A Thinking checkpoint is known by its name or `aqa_thinking` in config.json (`is_thinking`), not
  by a chat template: the hub folder's Qwen3 template mentions `<think>` in either variant.

Left padding with explicit positions `cumsum(attention_mask) - 1`; the clips of a batch are
padded to the longest and the encoder masks each clip's padding after every convolution and in
attention, so a clip's audio tokens are those it gets alone (upstream runs one prompt at a time:
its forward checks the audio-token count of the whole batch against one clip's length).
Equivalence with upstream's code: docs/moss_audio.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel, Qwen3Config, WhisperConfig
from transformers.models.qwen3.modeling_qwen3 import Qwen3Model
from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

from aqa.models.base import (Backend, Example, default_device, default_dtype, device_load_kwargs,
                             float32_logits, sample_loop)

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
HOP = 160
#: Audio tokens a second: 100 log-mel frames, three stride-2 convolutions.
TOKENS_PER_SECOND = 12.5
#: Seconds between two time markers (upstream's `time_marker_every_seconds`).
MARKER_EVERY_SECONDS = 2
#: Upstream's processor defaults (`MossAudioProcessor.__init__`), also the released processor_config.json's.
AUDIO_TOKEN_ID, AUDIO_START_ID, AUDIO_END_ID = 151654, 151669, 151670
SYSTEM = "You are a helpful assistant."

#: Upstream's `MossAudioEncoderConfig` defaults: a key a config.json leaves out reads as these.
ENCODER_DEFAULTS = dict(
    d_model=1280, output_dim=1280, num_mel_bins=128, encoder_layers=32, encoder_attention_heads=20,
    encoder_ffn_dim=5120, downsample_rate=8, downsample_hidden_size=480, encoder_attention_window_size=100,
    max_source_positions=1500, dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
    activation_function="gelu", layer_norm_eps=1e-5, _attn_implementation="eager", pretrained_path="",
    deepstack_encoder_layer_indexes=[8, 16, 24])


def conv_out(n):
    """Frames after one 3x3 stride-2 convolution with padding 1."""
    return (n - 1) // 2 + 1


def audio_token_count(frames: int) -> int:
    return conv_out(conv_out(conv_out(frames)))


def mel_frames(samples: int) -> int:
    """Log-mel frames of a clip: Whisper's centred STFT gives 1 + samples // hop, less the last."""
    return samples // HOP


def time_marker_layout(n_audio: int, digit_ids: list[int], audio_id: int) -> list[int]:
    """The ids between `<|audio_bos|>` and `<|audio_eos|>` for `n_audio` audio tokens with time
    markers: after each 2 s of audio up to the last whole second, that second's digits."""
    ids, used = [], 0
    per_marker = int(TOKENS_PER_SECOND * MARKER_EVERY_SECONDS)
    for second in range(MARKER_EVERY_SECONDS, int(n_audio / TOKENS_PER_SECOND) + 1, MARKER_EVERY_SECONDS):
        upto = second // MARKER_EVERY_SECONDS * per_marker
        ids += [audio_id] * (upto - used)
        used = upto
        ids += [digit_ids[int(d)] for d in str(second)]
    return ids + [audio_id] * (n_audio - used)


# --- config and model ------------------------------------------------------------------------------
class MossAudioConfig(PreTrainedConfig):
    """config.json of a MOSS-Audio checkpoint: `audio_config` (a dict of upstream's encoder
    fields, defaults filled in), `language_config` (Qwen3), the adapters' width."""

    model_type = "moss_audio"
    sub_configs = {"language_config": Qwen3Config}

    def __init__(self, audio_config: dict | None = None, language_config: dict | Qwen3Config | None = None,
                 adapter_hidden_size: int = 8192, ignore_index: int = -100,
                 deepstack_num_inject_layers: int | None = None, **kwargs):
        audio = dict(ENCODER_DEFAULTS)
        audio.update({k: v for k, v in (audio_config or {}).items() if k in ENCODER_DEFAULTS})
        self.audio_config = audio
        if isinstance(language_config, dict):
            language_config = Qwen3Config(**{k: v for k, v in language_config.items() if k != "model_type"})
        self.language_config = language_config if language_config is not None else Qwen3Config()
        self.adapter_hidden_size = adapter_hidden_size
        self.ignore_index = ignore_index
        self.deepstack_num_inject_layers = deepstack_num_inject_layers
        # Upstream's class copies these from the language config when the root leaves them out.
        for key in ("eos_token_id", "bos_token_id", "vocab_size"):
            kwargs.setdefault(key, getattr(self.language_config, key, None))
        kwargs.setdefault("tie_word_embeddings", False)
        kwargs.pop("auto_map", None)  # upstream's remote code, never run here
        super().__init__(**kwargs)

    def get_text_config(self, decoder=None, encoder=None):
        return self.language_config

    @property
    def deepstack_layers(self) -> list[int]:
        """Encoder layers whose states are injected, in the order of the LLM layers they go to."""
        idx = list(self.audio_config["deepstack_encoder_layer_indexes"] or [])
        if self.deepstack_num_inject_layers is not None:
            idx = idx[: int(self.deepstack_num_inject_layers)]
        return idx


def whisper_layer_config(audio: dict) -> WhisperConfig:
    cfg = WhisperConfig(d_model=audio["d_model"], encoder_attention_heads=audio["encoder_attention_heads"],
                        encoder_ffn_dim=audio["encoder_ffn_dim"], dropout=audio["dropout"],
                        attention_dropout=audio["attention_dropout"], activation_dropout=audio["activation_dropout"],
                        activation_function=audio["activation_function"], num_mel_bins=audio["num_mel_bins"])
    cfg._attn_implementation = "sdpa"
    return cfg


class MossAudioEncoder(nn.Module):
    """The audio encoder (see the module docstring); `forward` also returns the DeepStack states."""

    def __init__(self, audio: dict):
        super().__init__()
        c, d = audio["downsample_hidden_size"], audio["d_model"]
        self.conv1 = nn.Conv2d(1, c, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(c, c, kernel_size=3, stride=2, padding=1)
        # Upstream writes `c * 16`: its 128 bins after three halvings.
        self.stem_proj = nn.Linear(c * audio_token_count(audio["num_mel_bins"]), d)
        self.layers = nn.ModuleList([WhisperEncoderLayer(whisper_layer_config(audio))
                                     for _ in range(audio["encoder_layers"])])
        self.layer_norm = nn.LayerNorm(d, eps=audio["layer_norm_eps"])
        self.out_proj = (nn.Linear(d, audio["output_dim"], bias=False) if audio["output_dim"] != d else nn.Identity())
        self.deepstack_layers = []  # set by the model

    def positions(self, n: int, device) -> torch.Tensor:
        d = self.stem_proj.out_features
        step = math.log(10000.0) / (d // 2 - 1)
        inv = torch.exp(-step * torch.arange(d // 2, device=device, dtype=torch.float32))
        t = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv[None]
        return torch.cat([t.sin(), t.cos()], 1)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor):
        """(last states (B, T', out), DeepStack states [(B, T', d)], token lengths (B,)) of
        log-mels (B, n_mels, T) whose rows hold `lengths` real frames. Frames past a row's
        length are zeroed before each convolution, as the convolution's own zero padding would
        be for the clip alone, so a row's tokens do not depend on the batch."""
        x = features.to(self.conv1.weight.dtype)[:, None]  # (B, 1, mels, T)
        n = lengths
        for conv in (self.conv1, self.conv2, self.conv3):
            keep = torch.arange(x.shape[-1], device=x.device)[None, :] < n[:, None]
            x = nn.functional.gelu(conv(x * keep[:, None, None, :].to(x.dtype)))
            n = conv_out(n)
        x = self.stem_proj(x.permute(0, 3, 1, 2).flatten(2))  # (B, T', channels x bins)
        x = x[:, : int(n.max())]
        x = x + self.positions(x.shape[1], x.device).to(x.dtype)
        pad = torch.arange(x.shape[1], device=x.device)[None, :] >= n[:, None]
        mask = None
        if bool(pad.any()):
            mask = torch.zeros(pad.shape, dtype=x.dtype, device=x.device).masked_fill(pad, torch.finfo(x.dtype).min)
            mask = mask[:, None, None, :]
        deep = []
        for i, layer in enumerate(self.layers):
            x = layer(x, mask)
            if i in self.deepstack_layers:
                deep.append(x)
        return self.out_proj(self.layer_norm(x)), [deep[self.deepstack_layers.index(i)] for i in self.deepstack_layers
                                                   if i < len(self.layers)], n


class GatedMLP(nn.Module):
    """SwiGLU adapter: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_in, hidden, bias=False)
        self.up_proj = nn.Linear(d_in, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_out, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def _deepstack_hook(k: int):
    """Forward hook of LLM layer `k`: add DeepStack feature `k` at the audio positions when the
    call carries `audio_deepstack=(mask (B, T), [features (N, H)])`. It is a keyword argument of
    the decoder call, which hands it to every layer (and gradient checkpointing re-runs the layer
    with it), so nothing outlives the call."""

    def hook(module, args, kwargs, output):
        extra = kwargs.get("audio_deepstack")
        if extra is None or k >= len(extra[1]):
            return None
        mask, feats = extra
        h = output[0] if isinstance(output, tuple) else output
        added = h.masked_scatter(mask[..., None], h[mask] + feats[k].to(h.dtype))
        return (added, *output[1:]) if isinstance(output, tuple) else added

    return hook


class MossAudioModel(PreTrainedModel):
    """Encoder, adapters, Qwen3 decoder and head, under upstream's weight names."""

    config_class = MossAudioConfig
    base_model_prefix = ""
    _no_split_modules = ["Qwen3DecoderLayer", "WhisperEncoderLayer"]
    _supports_sdpa = True
    _supports_attention_backend = True
    supports_gradient_checkpointing = True

    def __init__(self, config: MossAudioConfig):
        super().__init__(config)
        audio, h = config.audio_config, config.language_config.hidden_size
        config.language_config._attn_implementation = config._attn_implementation or "sdpa"
        self.audio_encoder = MossAudioEncoder(audio)
        self.audio_encoder.deepstack_layers = config.deepstack_layers
        self.language_model = Qwen3Model(config.language_config)
        self.audio_adapter = GatedMLP(audio["output_dim"], config.adapter_hidden_size, h)
        self.deepstack_audio_merger_list = nn.ModuleList(
            [GatedMLP(audio["output_dim"], config.adapter_hidden_size, h) for _ in config.deepstack_layers])
        self.lm_head = nn.Linear(h, config.language_config.vocab_size, bias=False)
        for k, layer in enumerate(self.language_model.layers[: len(config.deepstack_layers)]):
            layer.register_forward_hook(_deepstack_hook(k), with_kwargs=True)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def get_decoder(self):
        return self.language_model

    def audio_features(self, features: torch.Tensor, lengths: torch.Tensor):
        """(adapted audio tokens (N, H), [DeepStack features (N, H)]) of every clip's real
        tokens, clip after clip."""
        last, deep, n = self.audio_encoder(features, lengths)
        real = torch.arange(last.shape[1], device=last.device)[None, :] < n[:, None]
        return self.audio_adapter(last[real]), [m(d[real]) for m, d in zip(self.deepstack_audio_merger_list, deep)]

    def embed(self, input_ids, audio_mask, input_features=None, feature_lengths=None):
        """(decoder input (B, T, H), the DeepStack keyword argument or None)."""
        x = self.language_model.embed_tokens(input_ids)
        if input_features is None:
            return x, None
        audio, deep = self.audio_features(input_features, feature_lengths)
        if int(audio_mask.sum()) != audio.shape[0]:
            raise ValueError(f"{int(audio_mask.sum())} audio positions for {audio.shape[0]} audio tokens")
        x = x.masked_scatter(audio_mask[..., None], audio.to(x.dtype))
        return x, (audio_mask, deep)

    def forward(self, input_ids, attention_mask=None, position_ids=None, input_features=None,
                feature_lengths=None, labels=None, audio_token_id: int = AUDIO_TOKEN_ID, **kwargs):
        """The whole model in one call, as upstream's forward: logits at every position, and
        with `labels` the mean next-token cross-entropy."""
        from transformers.modeling_outputs import CausalLMOutputWithPast

        x, deep = self.embed(input_ids, input_ids == audio_token_id, input_features, feature_lengths)
        h = self.language_model(inputs_embeds=x, attention_mask=attention_mask, position_ids=position_ids,
                                audio_deepstack=deep, **kwargs).last_hidden_state
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                               ignore_index=self.config.ignore_index)
        return CausalLMOutputWithPast(loss=loss, logits=logits)


# --- processor --------------------------------------------------------------------------------------
@dataclass
class MossAudioProcessor:
    """What turns a clip and a question into MOSS-Audio's ids and log-mels."""

    tokenizer: object
    feature_extractor: object | None
    audio_token_id: int = AUDIO_TOKEN_ID
    audio_start_id: int = AUDIO_START_ID
    audio_end_id: int = AUDIO_END_ID
    time_markers: bool = True
    #: The dtype the log-mels are rounded to (upstream's MelConfig.mel_dtype).
    mel_dtype: torch.dtype = torch.bfloat16
    digit_ids: list[int] = field(default_factory=list)

    def features(self, clip: np.ndarray) -> torch.Tensor:
        """(n_mels, frames) log-mels of the clip alone, rounded as upstream rounds them."""
        fe = self.feature_extractor
        mel = fe._np_extract_fbank_features(np.asarray(clip, dtype=np.float32)[None], "cpu")[0]
        return torch.from_numpy(np.ascontiguousarray(mel)).float().to(self.mel_dtype).float()

    def audio_span(self, n_audio: int) -> list[int]:
        """`<|audio_bos|>`, the audio tokens (with time markers when on), `<|audio_eos|>`."""
        inner = (time_marker_layout(n_audio, self.digit_ids, self.audio_token_id) if self.time_markers
                 else [self.audio_token_id] * n_audio)
        return [self.audio_start_id, *inner, self.audio_end_id]


def read_processor_config(folder: Path | None) -> dict:
    f = folder / "processor_config.json" if folder is not None else None
    return json.loads(f.read_text()) if f is not None and f.is_file() else {}


def hub_file(path: str, name: str) -> Path | None:
    """`name` of a local folder or a hub repository (None when it has none)."""
    p = Path(path)
    if p.is_dir():
        return p / name if (p / name).is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(path, name))
    except Exception:  # the repository has no such file
        return None


def env_time_markers() -> bool | None:
    v = os.environ.get("AQA_MOSS_TIME_MARKERS")
    if v is None or v == "":
        return None
    if v not in ("0", "1"):
        raise ValueError(f"AQA_MOSS_TIME_MARKERS={v!r}: say 0 (off) or 1 (on)")
    return v == "1"


def make_processor(path: str, tokenizer, time_markers: bool | None = None) -> MossAudioProcessor:
    from transformers import WhisperFeatureExtractor

    pc_file = hub_file(path, "processor_config.json")
    pc = json.loads(pc_file.read_text()) if pc_file else {}
    mel = pc.get("mel_config") or {}
    fe = WhisperFeatureExtractor(feature_size=int(mel.get("mel_dim", 128)), sampling_rate=int(mel.get("mel_sr", SAMPLE_RATE)),
                                 hop_length=int(mel.get("mel_hop_length", HOP)), n_fft=int(mel.get("mel_n_fft", 400)))
    if fe.sampling_rate != SAMPLE_RATE or fe.hop_length != HOP:
        raise ValueError(f"{path}: MOSS-Audio's features are 16 kHz with a 160-sample hop; processor_config.json "
                         f"says {fe.sampling_rate} Hz, hop {fe.hop_length}")
    if time_markers is None:
        time_markers = env_time_markers()
    if time_markers is None:
        time_markers = bool(pc.get("enable_time_marker", True))
    # Upstream writes the Qwen digit ids (15-24); read from the tokenizer they are the same there.
    digits = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    return MossAudioProcessor(tokenizer=tokenizer, feature_extractor=fe,
                              audio_token_id=int(pc.get("audio_token_id", AUDIO_TOKEN_ID)),
                              audio_start_id=int(pc.get("audio_start_id", AUDIO_START_ID)),
                              audio_end_id=int(pc.get("audio_end_id", AUDIO_END_ID)), time_markers=time_markers,
                              mel_dtype=getattr(torch, str(mel.get("mel_dtype", "bfloat16"))), digit_ids=digits)


def load_tokenizer(path: str, config: MossAudioConfig):
    from transformers import AutoTokenizer

    # With the config given, AutoTokenizer does not try to read config.json as a model type it
    # does not know; the class comes from tokenizer_config.json.
    tok = AutoTokenizer.from_pretrained(path, config=config, trust_remote_code=False)
    tok.padding_side = "left"
    return tok


def is_thinking(path: str, config) -> bool:
    """The Thinking checkpoints are named so (OpenMOSS-Team/MOSS-Audio-{4B,8B}-Thinking); their
    config.json is laid out as the Instruct ones'. `aqa_thinking` in config.json overrides."""
    flag = getattr(config, "aqa_thinking", None)
    if flag is not None:
        return bool(flag)
    from aqa.models.base import _model_name

    return "thinking" in _model_name(path)


class MossAudioBackend(Backend):
    family = "moss_audio"
    #: Prompt layout of `prompt` (upstream's `_build_default_prompt`).
    PREFIX = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
    AUDIO_SPAN = "<|audio_bos|><|AUDIO|><|audio_eos|>"
    SUFFIX = "{text}<|im_end|>\n<|im_start|>assistant\n"

    @classmethod
    def load(cls, path: str, *, adapter: str | None = None, device: str | None = None,
             dtype: str | torch.dtype | None = None, trust_remote_code: bool = False,
             is_trainable: bool = False, time_markers: bool | None = None) -> MossAudioBackend:
        dev = default_device(device)
        config = MossAudioConfig.from_pretrained(path)
        model = MossAudioModel.from_pretrained(path, config=config, dtype=default_dtype(dev, dtype),
                                               attn_implementation="sdpa", **device_load_kwargs(dev))
        processor = make_processor(path, load_tokenizer(path, config), time_markers)
        if hub_file(path, "generation_config.json") is not None:
            from transformers import GenerationConfig

            # Its end tokens stop generation (`stop_ids`), as upstream's model.generate reads them.
            model.generation_config = GenerationConfig.from_pretrained(path)
        backend = cls.from_parts(model, processor, dev, adapter=adapter, is_trainable=is_trainable)
        backend.mark_thinking(is_thinking(path, config))
        return backend

    @classmethod
    def without_weights(cls, path: str, *, trust_remote_code: bool = False) -> MossAudioBackend:
        config = MossAudioConfig.from_pretrained(path)
        b = cls(None, make_processor(path, load_tokenizer(path, config)), torch.device("cpu"), config=config)
        b.mark_thinking(is_thinking(path, config))
        return b

    def __init__(self, model, processor: MossAudioProcessor, device, config=None):
        super().__init__(model, processor, device, config)
        self.tokenizer.padding_side = "left"
        self.end_ids = self.tokenizer.encode("<|im_end|>", add_special_tokens=False)
        self.audio_token_id = processor.audio_token_id
        self.set_thinking(False)  # until `mark_thinking`: the template cannot tell (module docstring)

    #: The empty block of moss_audio_usage_guide.md (Qwen3's template writes `<think>\n\n</think>\n\n`).
    think_empty = "<think>\n</think>\n\n"

    def mark_thinking(self, on: bool) -> None:
        """Whether the checkpoint is a Thinking model, as its name or config says (`is_thinking`)."""
        self.set_thinking(bool(on))

    @property
    def time_markers(self) -> bool:
        return self.processor.time_markers

    @time_markers.setter
    def time_markers(self, on: bool) -> None:
        self.processor.time_markers = bool(on)

    # --- prompt ----------------------------------------------------------------------------------
    @property
    def audio_seconds(self) -> None:
        return None  # upstream's encoder takes a clip of any length (its positions are computed)

    def audio_tokens_of(self, samples: int) -> int:
        # The span's inner ids: the audio tokens and the time markers' digits.
        return len(self.processor.audio_span(audio_token_count(mel_frames(samples)))) - 2

    def prompt(self, text: str, with_audio: bool = True) -> str:
        return self.PREFIX + (self.AUDIO_SPAN + "\n" if with_audio else "") + self.SUFFIX.format(text=text)

    def prompt_ids(self, text: str, n_audio: int | None) -> list[int]:
        """The prompt's ids as upstream's processor makes them: the text before and after the audio
        span each tokenized as a whole, the span's ids written in; `text` as plain text."""
        shown, plain = self.hide_special(text)
        if n_audio is None:
            ids = self.tokenizer.encode(self.prompt(shown, with_audio=False), add_special_tokens=False)
        else:
            ids = (self.tokenizer.encode(self.PREFIX, add_special_tokens=False) + self.processor.audio_span(n_audio)
                   + self.tokenizer.encode("\n" + self.SUFFIX.format(text=shown), add_special_tokens=False))
        return self.restore_text(ids, plain)

    def prompt_token_counts(self, items):
        counts = []
        for text, seconds, target in items:
            n = None if seconds is None else audio_token_count(mel_frames(round(seconds * SAMPLE_RATE)))
            counts.append(len(self.prompt_ids(text, n)) + self.target_length(target))
        return counts

    def collate(self, examples: list[Example], *, with_target: bool = False) -> dict[str, torch.Tensor]:
        text_only = [e.audio is None for e in examples]
        if any(text_only) and not all(text_only):
            raise ValueError("a batch mixes examples with and without audio")
        rows, lab_rows, mels = [], [], []
        for e in examples:
            n = None
            if e.audio is not None:
                mel = self.processor.features(e.audio)
                n = audio_token_count(mel.shape[-1])
                if n < 1:
                    raise ValueError(f"a clip of {len(e.audio)} samples gives no audio token")
                mels.append(mel)
            ids, labels = self.prompt_with_target(e, self.prompt_ids(e.text, n), with_target)
            rows.append(ids)
            lab_rows.append(labels)
        batch = self.left_padded(rows, lab_rows if with_target else None)
        if mels:
            F = max(m.shape[-1] for m in mels)
            batch["input_features"] = torch.stack([nn.functional.pad(m, (0, F - m.shape[-1])) for m in mels])
            batch["feature_lengths"] = torch.tensor([m.shape[-1] for m in mels])
        return {k: v.to(self.device) for k, v in batch.items()}

    # --- forward ---------------------------------------------------------------------------------
    def feature_lengths(self, batch):
        return batch.get("feature_lengths")

    def embed(self, batch):
        lm = self.base_model()
        return lm.embed(batch["input_ids"], batch["input_ids"] == self.audio_token_id, batch.get("input_features"),
                        batch.get("feature_lengths"))

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x, deep = self.embed(batch)
        out = self.base_model().language_model(inputs_embeds=x, attention_mask=batch["attention_mask"],
                                               position_ids=batch["position_ids"], use_cache=False,
                                               audio_deepstack=deep)
        return out.last_hidden_state

    def output_embedding(self) -> torch.nn.Module:
        return self.base_model().lm_head

    # --- audio-encoder pretraining (tiny models) --------------------------------------------
    # The log-mels `collate` makes (bf16-rounded) and the encoder `embed` runs, so event
    # detection trains the very path SFT and eval read. The encoder has no window: pretraining
    # hands it clips of one length, and one clip's frames are the states the encoder returns.
    def audio_encoder(self) -> torch.nn.Module:
        return self.base_model().audio_encoder

    def encoder_inputs(self, clips: list[np.ndarray]) -> torch.Tensor:
        mels = [self.processor.features(c) for c in clips]
        if len({m.shape[-1] for m in mels}) > 1:
            raise ValueError("MOSS-Audio's pretraining inputs stack clips of one length (pad them to one first)")
        return torch.stack(mels)  # (N, mels, frames)

    def encoder_states(self, inputs: torch.Tensor) -> torch.Tensor:
        lengths = torch.full((inputs.shape[0],), inputs.shape[-1], dtype=torch.long, device=inputs.device)
        return self.audio_encoder()(inputs, lengths)[0]  # (B, tokens, output_dim): what the adapter reads

    def lora_target_modules(self, audio_tower: bool = False) -> str:
        # Upstream's finetune.py adapts the same decoder projections, and with
        # --lora_on_audio_encoder the encoder's q/k/v; here its whole attention (out_proj too).
        lm = r"language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
        at = r"audio_encoder\.layers\.\d+\.self_attn\.(q|k|v|out)_proj"
        return rf"^(base_model\.model\.)?({lm}|{at})$" if audio_tower else rf"^(base_model\.model\.)?{lm}$"

    def stop_ids(self) -> set[int]:
        eos = getattr(getattr(self.base_model(), "generation_config", None), "eos_token_id", None)
        return set(self.end_ids) | set(eos if isinstance(eos, list) else [] if eos is None else [eos])

    @torch.no_grad()
    def generate_ids(self, batch: dict[str, torch.Tensor], *, max_new_tokens: int = 16, do_sample: bool = False,
                     temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1) -> list[list[int]]:
        """New token ids per sequence (B * num_return_sequences, grouped by prompt), cut after the
        first end token, which is kept: the prompt once through the decoder (DeepStack included),
        then one token at a time on its cache."""
        from transformers import DynamicCache

        lm, head = self.base_model().language_model, self.output_embedding()
        n = num_return_sequences
        x, deep = self.embed(batch)
        if deep is not None:
            deep = (deep[0].repeat_interleave(n, 0), [self._repeat_rows(f, deep[0], n) for f in deep[1]])
        cache = DynamicCache(config=lm.config)

        def logits_of(x, att, pos):
            nonlocal deep
            h = lm(inputs_embeds=x, attention_mask=att, position_ids=pos, cache=cache, use_cache=True,
                   audio_deepstack=deep)
            deep = None  # DeepStack feeds the prompt's pass only
            return float32_logits(h.last_hidden_state[:, -1], head)  # (B*n, V)

        return sample_loop(logits_of, lambda nxt: lm.embed_tokens(nxt[:, None]), x.repeat_interleave(n, 0),
                           batch["attention_mask"].repeat_interleave(n, 0),
                           batch["position_ids"].repeat_interleave(n, 0),
                           ends=self.stop_ids(), never=self.unsampled_ids(), pad=self.tokenizer.pad_token_id,
                           max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p)

    @staticmethod
    def _repeat_rows(feats: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
        """DeepStack features (N, H), row after row, with each row's repeated `n` times."""
        parts = feats.split(mask.sum(1).tolist())
        return torch.cat([p for p in parts for _ in range(n)])
