"""Kimi-Audio backend, native: Kimi-Audio-7B-Instruct's text path in PyTorch on transformers'
Qwen2 building blocks, without the upstream package, flash-attn, CUDA or remote code.

What it loads from the official checkpoint folder (moonshotai/Kimi-Audio-7B-Instruct):
- `config.json` (model_type `moonshot_kimia`: Qwen2 fields plus the kimia_* fields) and the
  safetensors shards under their own names (`model.embed_tokens`, `model.layers.N.*`,
  `model.norm`, `model.vq_adaptor.layers.{0,3,4}`, `lm_head`). The audio-generation branch
  (`model.mimo_layers`, `model.mimo_norm`, `mimo_output`) is skipped: text output only.
- `whisper-large-v3/`: the Whisper encoder for the continuous features (transformers'
  `WhisperEncoder`, weights read with or without the `model.encoder.` prefix).
- `tiktoken.model`: the text tokenizer, turned into a fast tokenizer with Kimi-Audio's split
  pattern and its 421 special tokens at `num_base_tokens + i`.
- the GLM-4-Voice speech tokenizer (aqa/models/whisper_vq.py): from `speech_tokenizer=` or the
  environment variable AQA_SPEECH_TOKENIZER (a folder or hub id), else
  `<checkpoint>/glm-4-voice-tokenizer/`, else THUDM/glm-4-voice-tokenizer.

The audio path, as upstream's `KimiAPromptManager` and `MoonshotKimiaModel` do it:
- discrete: GLM-4-Voice tokens at 12.5 Hz, plus `kimia_token_offset`, between
  `<|im_media_begin|>` and `<|im_media_end|>` in the audio stream;
- continuous: Whisper-large-v3 encoder states (50 Hz, 1280 wide) of each 30 s segment, cut to
  4 frames per token and regrouped to 12.5 Hz x 5120, through `vq_adaptor`, added to the token
  embeddings at the audio positions and scaled by sqrt(2);
- the input at each position is embed(audio stream) + embed(text stream). Clips longer than
  30 s are cut into 30 s segments (no length limit).

Prompt (text output; question then audio in one user turn, as Kimi-Audio-Evalkit asks
multiple-choice questions):

    audio stream: <kimia_user_msg_start> blank*len(q) <media_begin> tokens <media_end> <ct> <msg_end> <kimia_assistant_msg_start>
    text stream:  blank                  q            blank         blank  blank       blank blank     blank

The answer goes in the text stream with blanks beside it in the audio stream and ends with
`<|im_kimia_text_eos|>`. Equivalence with upstream's code: docs/kimi_audio.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2ForCausalLM, Qwen2Model, Qwen2PreTrainedModel

from aqa.models.base import (Backend, Example, default_device, default_dtype, device_load_kwargs,
                             float32_logits, sample_loop)
from aqa.models.whisper_vq import SAMPLE_RATE, SEGMENT_SECONDS, WhisperVQTokenizer, segments, tokens_for

log = logging.getLogger(__name__)

#: Kimi-Audio's text pre-tokenizer split (Qwen2's, with single digits); from the checkpoint's
#: tokenization_kimia.py.
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def special_token_names() -> list[str]:
    """Kimi-Audio's 421 special tokens in id order (id = num_base_tokens + index), as the
    checkpoint's tokenization_kimia.py assigns them; the pad token is the last one."""
    used = (["[BOS]", "[EOS]", "<|im_msg_end|>", "<|im_user_msg_start|>", "<|im_assistant_msg_start|>"]
            + [f"<|reserved_token_{i}|>" for i in range(0, 4)] + ["[EOT]"]
            + [f"<|reserved_token_{i}|>" for i in range(4, 12)] + ["<|im_media_begin|>", "<|reserved_token_12|>",
                                                                    "<|im_media_end|>"]
            + [f"<|reserved_token_{i}|>" for i in range(13, 15)]
            + ["<|im_kimia_text_blank|>", "<|im_kimia_text_eos|>"]
            + [f"<|reserved_token_{i}|>" for i in range(15, 17)]
            + ["<|im_kimia_user_msg_start|>", "<|im_kimia_assistant_msg_start|>"]
            + [f"<|reserved_token_{i}|>" for i in range(17, 20)]
            + ["<|im_kimia_speech_ct_id|>", "<|im_kimia_speech_ctd_id|>"])
    return used + [f"<|reserved_token_{i}|>" for i in range(20, 421 - len(used) + 20)]


# --- text tokenizer ----------------------------------------------------------------------------
def read_tiktoken(path: str | Path) -> dict[bytes, int]:
    """A tiktoken BPE file: one `base64(token) rank` per line."""
    ranks = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
        except ValueError as e:
            raise ValueError(f"{path}:{n}: not a tiktoken line ({e})") from None
    return ranks


def write_tiktoken(ranks: dict[bytes, int], path: str | Path) -> None:
    from aqa.io import atomic_write_text

    atomic_write_text(path, "".join(f"{base64.b64encode(t).decode()} {r}\n"
                                    for t, r in sorted(ranks.items(), key=lambda x: x[1])))


def load_text_tokenizer(folder: str | Path):
    """Kimi-Audio's tiktoken vocabulary as a transformers fast tokenizer, without running the
    checkpoint's tokenization_kimia.py: byte-level BPE with merges recovered from the ranks,
    Kimi-Audio's split pattern, and the special tokens after the base vocabulary."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = Path(folder) / "tiktoken.model"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no tiktoken.model (Kimi-Audio's text vocabulary)")
    ranks = read_tiktoken(path)

    class Converter(TikTokenConverter):
        # The rank file is parsed here, so the `tiktoken` package is not needed.
        @staticmethod
        def load_tiktoken_bpe(url):
            return ranks

    specials = special_token_names()
    tok = Converter(vocab_file=str(path), pattern=SPLIT_PATTERN, extra_special_tokens=specials).converted()
    tok.post_processor = None
    # Upstream encodes with tiktoken's disallowed_special=(): a special token's text in a
    # question is plain text, never the special id; split_special_tokens does the same.
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]",
                                   pad_token=specials[-1], unk_token=specials[-1], split_special_tokens=True)
    if fast.convert_tokens_to_ids("[BOS]") != len(ranks):
        raise ValueError(f"{path}: special tokens do not follow the {len(ranks)} base tokens")
    # The special-token table is tokenization_kimia.py's; a tokenizer_config.json that says
    # otherwise means a different vocabulary, which must not load silently.
    cfg = Path(folder) / "tokenizer_config.json"
    declared = (json.loads(cfg.read_text()).get("added_tokens_decoder") or {}) if cfg.is_file() else {}
    for i, tok_ in declared.items():
        name = tok_["content"] if isinstance(tok_, dict) else str(tok_)
        if name in fast.get_vocab() and fast.convert_tokens_to_ids(name) != int(i):
            raise ValueError(f"{cfg}: {name} has id {i}, Kimi-Audio's tokenizer gives it "
                             f"{fast.convert_tokens_to_ids(name)}")
    fast.padding_side = "left"
    return fast


# --- model ---------------------------------------------------------------------------------------
class KimiAudioConfig(Qwen2Config):
    """Qwen2 fields plus Kimi-Audio's (kimia_token_offset, kimia_media_begin/end,
    use_whisper_feature, kimia_adaptor_input_dim, ...), read from the official config.json."""

    model_type = "moonshot_kimia"

    def __init__(self, rope_theta: float = 10000.0, tie_word_embeddings: bool = False, **kwargs):
        # Upstream's config class defaults; the checkpoint's config.json overrides them.
        kwargs.setdefault("kimia_token_offset", 152064)
        kwargs.setdefault("kimia_media_begin", 151661)
        kwargs.setdefault("kimia_media_end", 151663)
        kwargs.setdefault("use_whisper_feature", True)
        kwargs.setdefault("kimia_adaptor_input_dim", 5120)
        for key in ("auto_map", "speech_tokenizer_config", "speech_encoder_config"):
            kwargs.pop(key, None)
        super().__init__(rope_theta=rope_theta, tie_word_embeddings=tie_word_embeddings, **kwargs)


class VQAdaptor(nn.Module):
    """Whisper features (12.5 Hz x 5120) to the decoder's width; upstream's layer indices
    (0: Linear, 3: Linear, 4: LayerNorm) are kept so the checkpoint's names load."""

    def __init__(self, config):
        super().__init__()
        h = config.hidden_size
        self.layers = nn.Sequential(nn.Linear(config.kimia_adaptor_input_dim, h), nn.SiLU(), nn.Dropout(0.0),
                                    nn.Linear(h, h), nn.LayerNorm(h, eps=config.rms_norm_eps))

    def forward(self, x):
        return self.layers(x)


class KimiAudioDecoder(Qwen2Model):
    """Qwen2 decoder plus the adaptor of the continuous audio features."""

    def __init__(self, config):
        super().__init__(config)
        self.vq_adaptor = VQAdaptor(config) if config.use_whisper_feature else None


class KimiAudioForCausalLM(Qwen2ForCausalLM):
    """The decoder and the text head. The speech encoder (`speech_encoder`, Whisper) is
    attached after loading, so LoRA may reach it and `.to()` moves it with the rest."""

    config_class = KimiAudioConfig
    # The audio-generation branch is not needed for text output. The official index is said to
    # list 453 tensors where this model and that branch have 419; 34 is one per decoder layer,
    # so presumably rotary `inv_freq` buffers, which upstream recomputes from the config.
    _keys_to_ignore_on_load_unexpected = [r"^model\.mimo_layers\.", r"^model\.mimo_norm\.", r"^mimo_output\.",
                                          r"rotary_emb\.inv_freq$"]

    def __init__(self, config):
        Qwen2PreTrainedModel.__init__(self, config)
        self.model = KimiAudioDecoder(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def audio_text_embeddings(self, audio_ids: torch.Tensor, text_ids: torch.Tensor, continuous: torch.Tensor,
                              features: torch.Tensor | None) -> torch.Tensor:
        """(B, T, H) decoder input: embed(audio stream) + embed(text stream), with the adapted
        Whisper `features` (N, 5120), N = continuous.sum(), added at the `continuous` positions
        (row-major order) and those positions scaled by sqrt(2), as upstream does."""
        embed = self.model.embed_tokens
        x = embed(audio_ids)  # (B, T, H)
        if features is not None and self.model.vq_adaptor is not None and bool(continuous.any()):
            w = self.model.vq_adaptor(features.to(x.dtype))  # (N, H)
            slots = continuous[..., None]
            fused = (x[continuous] + w) * torch.tensor(2.0, dtype=x.dtype, device=x.device).sqrt()
            x = x.masked_scatter(slots, fused)
        return x + embed(text_ids)


def cache_keyword() -> str:
    """The name under which this transformers' Qwen2 decoder takes its KV cache: `cache` in
    recent releases, `past_key_values` before; read from the signature, not the version."""
    import inspect

    params = inspect.signature(Qwen2Model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise RuntimeError("this transformers' Qwen2Model.forward takes no KV cache argument (cache or "
                       "past_key_values): Kimi-Audio generation cannot run; install transformers >= 5.17")


def check_mel_bins(feature_extractor, encoder_config, where: Path) -> None:
    """Features with another number of mel bins than the encoder reads would run silently
    wrong through the first convolution (or fail deep inside it)."""
    if feature_extractor.feature_size != encoder_config.num_mel_bins:
        raise ValueError(f"{where}: the feature extractor makes {feature_extractor.feature_size} mel bins, "
                         f"the encoder reads {encoder_config.num_mel_bins}")


def load_speech_encoder(folder: Path, dtype: torch.dtype, device: torch.device | str = "cpu"):
    """The Whisper encoder of `folder` (a WhisperModel / WhisperForConditionalGeneration
    checkpoint), its weights read straight onto `device`; the decoder's weights are not read."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from aqa.models.weights import load_module_weights

    config = WhisperConfig.from_pretrained(folder)
    config._attn_implementation = "sdpa"
    return load_module_weights(lambda: WhisperEncoder(config), folder, dtype=dtype, device=device,
                               rename=lambda k: k.removeprefix("model.").removeprefix("encoder."))


def local_folder(path: str, what: str, *, weights: bool = True) -> Path:
    """A local folder for `path`, downloading a hub id when it is not one (without the
    audio-generation parts: the detokenizer and vocoder are about 20 GB; with `weights=False`,
    only the top folder's config and tokenizer files)."""
    p = Path(path)
    if p.is_dir():
        return p
    if p.exists() or path.startswith((".", "/")):
        raise FileNotFoundError(f"{path}: not a folder ({what})")
    from huggingface_hub import snapshot_download

    if not weights:
        return Path(snapshot_download(path, allow_patterns=["*.json", "tiktoken.model"]))
    return Path(snapshot_download(path, ignore_patterns=["audio_detokenizer/*", "vocoder/*", "*.pt"]))


@dataclass
class KimiAudioProcessor:
    """Everything that turns audio and text into Kimi-Audio's two streams."""

    tokenizer: object
    #: Log-mel features of the Whisper encoder (128 bins, 30 s windows).
    feature_extractor: object
    #: Log-mel features of the GLM-4-Voice tokenizer (padded to whole tokens, not to 30 s).
    tokenizer_features: object
    speech_tokenizer: WhisperVQTokenizer
    token_offset: int

    def ids(self, name: str) -> int:
        return self.tokenizer.convert_tokens_to_ids(name)


class SpeechTokenCache:
    """GLM-4-Voice tokens of clips, keyed by the clip's content (a hash of its 16 kHz float32
    samples) under the tokenizer's identity: a clip's tokens do not change between epochs (they
    are computed from the clean audio), so they are computed once and reused exactly. The last
    `memo` clips stay in memory; with a `folder`, every clip's tokens are also kept on disk,
    one .npy file each, for DataLoader workers, later epochs and later runs."""

    def __init__(self, identity, folder: Path | None = None, memo: int = 4096):
        from collections import OrderedDict

        self._identity = identity  # the hash, or a function computing it when first needed
        self.folder = folder
        self.memo_size = memo
        self.memo: OrderedDict[str, list[int]] = OrderedDict()

    @property
    def identity(self) -> str:
        if callable(self._identity):
            self._identity = self._identity()
        return self._identity

    @staticmethod
    def key(audio: np.ndarray) -> str:
        return hashlib.blake2b(np.ascontiguousarray(audio, dtype=np.float32), digest_size=20).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / f"glm4-voice-tokens-{self.identity[:16]}" / key[:2] / f"{key}.npy"

    def get(self, key: str) -> list[int] | None:
        if key in self.memo:
            self.memo.move_to_end(key)
            return self.memo[key]
        if self.folder is None or not self.path(key).is_file():
            return None
        tokens = np.load(self.path(key)).tolist()
        self._remember(key, tokens)
        return tokens

    def put(self, key: str, tokens: list[int]) -> None:
        import io

        from aqa.io import atomic_write_bytes

        self._remember(key, tokens)
        if self.folder is not None:
            buf = io.BytesIO()
            np.save(buf, np.asarray(tokens, dtype=np.int32))
            atomic_write_bytes(self.path(key), buf.getvalue())  # processes may write the same clip at once

    def _remember(self, key: str, tokens: list[int]) -> None:
        self.memo[key] = tokens
        while len(self.memo) > self.memo_size:
            self.memo.popitem(last=False)

    def for_worker(self) -> SpeechTokenCache:
        """The same cache for a DataLoader worker: the identity computed here, where the
        tokenizer is; a memory of its own."""
        return SpeechTokenCache(self.identity, self.folder, self.memo_size)


class KimiAudioBackend(Backend):
    family = "moonshot_kimia"
    #: The text tokenizer encodes with split_special_tokens (`load_text_tokenizer`), as upstream
    #: encodes with tiktoken's disallowed_special=(); every one of its added tokens is special.
    text_is_plain = True

    @classmethod
    def load(cls, path: str, *, adapter: str | None = None, device: str | None = None,
             dtype: str | torch.dtype | None = None, trust_remote_code: bool = False,
             is_trainable: bool = False, speech_tokenizer: str | None = None) -> KimiAudioBackend:
        from transformers import WhisperFeatureExtractor

        dev = default_device(device)
        dt = default_dtype(dev, dtype)
        folder = local_folder(path, "a Kimi-Audio checkpoint")
        raw = json.loads((folder / "config.json").read_text())
        raw.pop("model_type", None)
        config = KimiAudioConfig(**raw)
        # Every part is read straight onto `dev` (base.device_load_kwargs), the decoder, the
        # speech encoder and the speech tokenizer alike.
        model = KimiAudioForCausalLM.from_pretrained(folder, config=config, dtype=dt, attn_implementation="sdpa",
                                                     **device_load_kwargs(dev))
        whisper_dir = folder / "whisper-large-v3"
        model.speech_encoder = load_speech_encoder(whisper_dir, dt, dev)
        if (whisper_dir / "preprocessor_config.json").is_file():
            fe = WhisperFeatureExtractor.from_pretrained(whisper_dir)
            check_mel_bins(fe, model.speech_encoder.config, whisper_dir / "preprocessor_config.json")
        else:  # upstream computes Whisper-large-v3's 128-bin log-mel itself
            fe = WhisperFeatureExtractor(feature_size=model.speech_encoder.config.num_mel_bins)
        speech_tokenizer = speech_tokenizer or os.environ.get("AQA_SPEECH_TOKENIZER")
        tok_dir = (local_folder(speech_tokenizer, "a GLM-4-Voice speech tokenizer") if speech_tokenizer
                   else folder / "glm-4-voice-tokenizer" if (folder / "glm-4-voice-tokenizer").is_dir()
                   else local_folder("THUDM/glm-4-voice-tokenizer", "the GLM-4-Voice speech tokenizer"))
        # Token ids must not depend on the compute dtype: the tokenizer always runs in float32.
        vq = WhisperVQTokenizer.from_folder(tok_dir, device=dev)
        vq_fe = (WhisperFeatureExtractor.from_pretrained(tok_dir) if (tok_dir / "preprocessor_config.json").is_file()
                 else WhisperFeatureExtractor(feature_size=vq.config.num_mel_bins))
        check_mel_bins(vq_fe, vq.config, tok_dir / "preprocessor_config.json")
        processor = KimiAudioProcessor(tokenizer=load_text_tokenizer(folder), feature_extractor=fe,
                                       tokenizer_features=vq_fe, speech_tokenizer=vq,
                                       token_offset=config.kimia_token_offset)
        return cls.from_parts(model, processor, dev, adapter=adapter, is_trainable=is_trainable)

    @classmethod
    def without_weights(cls, path: str, *, trust_remote_code: bool = False) -> KimiAudioBackend:
        # The text tokenizer and the config: counting a prompt needs neither encoder.
        folder = local_folder(path, "a Kimi-Audio checkpoint", weights=False)
        raw = json.loads((folder / "config.json").read_text())
        raw.pop("model_type", None)
        config = KimiAudioConfig(**raw)
        processor = KimiAudioProcessor(tokenizer=load_text_tokenizer(folder), feature_extractor=None,
                                       tokenizer_features=None, speech_tokenizer=None,
                                       token_offset=config.kimia_token_offset)
        return cls(None, processor, torch.device("cpu"), config=config)

    def __init__(self, model, processor: KimiAudioProcessor, device, config=None):
        super().__init__(model, processor, device, config)
        p = processor
        self.blank = p.ids("<|im_kimia_text_blank|>")
        self.pad_id = self.tokenizer.pad_token_id
        #: The text stream's end of answer.
        self.end_ids = [p.ids("<|im_kimia_text_eos|>")]
        self.special = {k: p.ids(v) for k, v in dict(
            user="<|im_kimia_user_msg_start|>", assistant="<|im_kimia_assistant_msg_start|>",
            media_begin="<|im_media_begin|>", media_end="<|im_media_end|>",
            ct="<|im_kimia_speech_ct_id|>", msg_end="<|im_msg_end|>").items()}
        self.speech_cache = SpeechTokenCache(self._speech_tokenizer_identity)

    def _speech_tokenizer_identity(self) -> str:
        """A hash of everything the speech tokens depend on besides the clip: the tokenizer's
        config and weights, its feature extractor, and the kind of device it runs on (float
        rounding differs between kinds, and a nearest-codebook tie can flip with it)."""
        p = self.processor
        h = hashlib.blake2b(digest_size=20)
        h.update(p.speech_tokenizer.config.to_json_string(use_diff=False).encode())
        h.update(p.tokenizer_features.to_json_string().encode())
        h.update(self.device.type.encode())
        for name, t in p.speech_tokenizer.state_dict().items():
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        return h.hexdigest()

    @property
    def audio_seconds(self) -> None:
        return None  # 30 s segments, any number of them

    def audio_tokens_of(self, samples: int) -> int:
        # One speech token per started 80 ms of each 30 s segment, as the speech tokenizer makes them.
        step = SEGMENT_SECONDS * SAMPLE_RATE
        return sum(tokens_for(min(step, samples - lo)) for lo in range(0, samples, step))

    def prompt_token_counts(self, items: list[tuple[str, float | None, str | None]]) -> list[int]:
        # The question's tokens in Kimi-Audio's two-stream layout (`streams`), its speech tokens, the answer.
        questions = self.tokenizer([text for text, _, _ in items], add_special_tokens=False)["input_ids"]
        counts = []
        for q, (_, seconds, target) in zip(questions, items):
            speech = None if seconds is None else [0] * self.clip_tokens(seconds)
            counts.append(len(self.streams(q, speech)[0]) + self.target_length(target))
        return counts

    # --- prompt ------------------------------------------------------------------------------
    def streams(self, question: list[int], speech: list[int] | None) -> tuple[list[int], list[int], list[bool]]:
        """(audio stream, text stream, continuous mask) of one user turn (the question's
        token ids, then the clip's speech tokens) and the assistant's start, laid out as
        upstream's `KimiAPromptManager.get_prompt` does for text output."""
        s, b = self.special, self.blank
        audio, text = [s["user"]] + [b] * len(question), [b] + list(question)
        cont = [False] * len(audio)
        if speech is not None:
            audio += [s["media_begin"]] + [t + self.processor.token_offset for t in speech] + [s["media_end"], s["ct"]]
            text += [b] * (len(speech) + 3)
            cont += [False] + [True] * len(speech) + [False, False]
        audio += [s["msg_end"], s["assistant"]]
        text += [b, b]
        cont += [False, False]
        return audio, text, cont

    def collate(self, examples: list[Example], *, with_target: bool = False) -> dict[str, torch.Tensor]:
        return self.to_device(self._host_batch(examples, with_target=with_target))

    def host_collate(self):
        # The speech tokenizer is a model: it stays in the training process, on the model's
        # device (`to_device`); workers read the tokens of clips it has seen from the cache.
        import copy
        import dataclasses

        clone = copy.copy(self)
        clone.model, clone.device = None, torch.device("cpu")
        clone.processor = dataclasses.replace(self.processor, speech_tokenizer=None)
        clone.speech_cache = self.speech_cache.for_worker()
        return clone._host_batch

    def set_cache_dir(self, folder) -> None:
        self.speech_cache.folder = Path(folder) if folder else None

    def speech_tokens(self, audio: np.ndarray, key: str | None = None) -> list[int]:
        """GLM-4-Voice tokens of a 16 kHz clip: the cached ones if this tokenizer made them
        before, else computed on the model's device and kept. `key`: the clip's cache key."""
        key = key or self.speech_cache.key(audio)
        tokens = self.speech_cache.get(key)
        if tokens is None:
            p = self.processor
            tokens = p.speech_tokenizer.tokenize(audio, p.tokenizer_features, device=self.device)
            self.speech_cache.put(key, tokens)
        return tokens

    def _host_batch(self, examples: list[Example], *, with_target: bool = False) -> dict:
        """What `collate` computes without running a model: question and target ids, Whisper
        log-mels (on `self.device`: the CPU in a DataLoader worker), the cached speech tokens of
        each clip, or the clip itself where the cache has none."""
        if any(e.audio is None for e in examples) and not all(e.audio is None for e in examples):
            raise ValueError("a batch mixes examples with and without audio")
        p = self.processor
        questions, targets, speech, mels, seg_tokens = [], [], [], [], []
        for e in examples:
            questions.append(self.tokenizer.encode(e.text, add_special_tokens=False))
            if with_target:
                if e.target is None and e.target_ids is None:
                    raise ValueError("with_target=True needs a target on every example")
                targets.append(self.target_ids(e))
            if e.audio is None:
                speech.append(None)
                continue
            audio = np.asarray(e.audio, dtype=np.float32)
            key = self.speech_cache.key(audio)
            tokens = self.speech_cache.get(key)
            speech.append((key, tokens, audio if tokens is None else None))
            segs = segments(audio)
            mels.append(p.feature_extractor(segs, sampling_rate=SAMPLE_RATE, return_tensors="pt",
                                            padding="max_length", device=str(self.device))["input_features"])
            seg_tokens += [tokens_for(len(s)) for s in segs]
        host = {"questions": questions, "targets": targets if with_target else None, "speech": speech}
        if mels:
            host["input_features"] = torch.cat(mels)  # (segments, 128, 3000)
            host["segment_tokens"] = torch.tensor(seg_tokens)
        return host

    def to_device(self, host: dict) -> dict[str, torch.Tensor]:
        """The two streams of a host batch, its missing speech tokens computed, on `self.device`."""
        rows = []
        for i, q in enumerate(host["questions"]):
            clip = host["speech"][i]
            speech = None if clip is None else clip[1] if clip[1] is not None else self.speech_tokens(clip[2], clip[0])
            a, t, c = self.streams(q, speech)
            labels = [-100] * len(t)
            if host["targets"] is not None:
                tgt = host["targets"][i]
                a, t, c, labels = a + [self.blank] * len(tgt), t + tgt, c + [False] * len(tgt), labels + tgt
            rows.append((a, t, c, labels))
        T = max(len(r[0]) for r in rows)

        def left(xs, fill):
            return [[fill] * (T - len(x)) + list(x) for x in xs]

        batch = {
            "audio_ids": torch.tensor(left([r[0] for r in rows], self.pad_id)),
            "text_ids": torch.tensor(left([r[1] for r in rows], self.pad_id)),
            "continuous": torch.tensor(left([r[2] for r in rows], False)),
            "attention_mask": torch.tensor(left([[1] * len(r[0]) for r in rows], 0)),
        }
        if host["targets"] is not None:
            batch["labels"] = torch.tensor(left([r[3] for r in rows], -100))
        # Explicit positions make a left-padded row compute exactly what it would alone.
        batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)
        if "input_features" in host:
            batch["input_features"] = host["input_features"]
            batch["segment_tokens"] = host["segment_tokens"]
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    # --- forward -----------------------------------------------------------------------------
    def whisper_features(self, mel: torch.Tensor, seg_tokens: torch.Tensor) -> torch.Tensor:
        """(N, 4 * D) continuous features: each 30 s segment's encoder states cut to 4 frames
        per speech token and regrouped to 12.5 Hz, the segments of all clips in order."""
        enc = self.base_model().speech_encoder
        h = enc(mel.to(enc.conv1.weight.dtype)).last_hidden_state  # (S, 1500, D)
        keep = torch.arange(h.shape[1], device=h.device)[None, :] < 4 * seg_tokens[:, None]
        return h[keep].reshape(-1, 4 * h.shape[-1])

    def input_embeddings(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        lm = self.base_model()
        feats = (self.whisper_features(batch["input_features"], batch["segment_tokens"])
                 if "input_features" in batch else None)
        return lm.audio_text_embeddings(batch["audio_ids"], batch["text_ids"], batch["continuous"], feats)

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.base_model().model(inputs_embeds=self.input_embeddings(batch), attention_mask=batch["attention_mask"],
                                      position_ids=batch["position_ids"], use_cache=False)
        return out.last_hidden_state

    def output_embedding(self) -> torch.nn.Module:
        return self.base_model().lm_head

    def lora_target_modules(self, audio_tower: bool = False) -> str:
        # Module names: model.layers.N.{self_attn,mlp}.X and speech_encoder.layers.N.{self_attn.X, fc1, fc2};
        # the adaptor stays frozen, like Qwen2-Audio's projector.
        lm = r"model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
        at = r"speech_encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|fc1|fc2)"
        return rf"^(base_model\.model\.)?({lm}|{at})$" if audio_tower else rf"^(base_model\.model\.)?{lm}$"

    @torch.no_grad()
    def generate_ids(self, batch: dict[str, torch.Tensor], *, max_new_tokens: int = 16, do_sample: bool = False,
                     temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1) -> list[list[int]]:
        """New text-stream token ids per sequence (B * num_return_sequences, grouped by
        prompt), cut after the first end token, which is kept. Each step feeds the sampled
        token to the text stream and a blank to the audio stream, as upstream's text output."""
        from transformers import DynamicCache

        lm = self.base_model()
        n = num_return_sequences
        x = self.input_embeddings(batch).repeat_interleave(n, 0)
        cache = {cache_keyword(): DynamicCache(config=lm.config)}
        embed = lm.model.embed_tokens
        blank = embed(torch.tensor([[self.blank]], device=x.device))  # (1, 1, H)

        def logits_of(x, att, pos):
            h = lm.model(inputs_embeds=x, attention_mask=att, position_ids=pos, use_cache=True, **cache)
            return float32_logits(h.last_hidden_state[:, -1], lm.lm_head)  # (B, V)

        # Upstream's LM adds the text stream only when its ids sum to non-zero: a generated
        # token 0 (one prompt per step upstream) leaves the blank alone.
        return sample_loop(logits_of, lambda nxt: blank + embed(nxt[:, None]) * (nxt != 0)[:, None, None], x,
                           batch["attention_mask"].repeat_interleave(n, 0),
                           batch["position_ids"].repeat_interleave(n, 0),
                           ends=set(self.end_ids), never=self.unsampled_ids(), pad=self.pad_id,
                           max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p)

    def decode(self, sequences: list[list[int]]) -> list[str]:
        # Audio-token ids (>= kimia_token_offset) are not text; upstream drops them as well.
        off = self.processor.token_offset
        return super().decode([[t for t in s if t < off] for s in sequences])

    def feature_lengths(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """SpecAugment masks the Whisper encoder's log-mels only, one 30 s segment per row: the
        GLM-4-Voice tokens were computed from the clean audio in `collate`. A segment's real
        frames are its speech tokens x 8 (a token is 1,280 samples, a log-mel frame 160)."""
        tokens = batch.get("segment_tokens")
        return None if tokens is None else tokens * 8
