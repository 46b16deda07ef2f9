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

log = logging.getLogger(__name__)

#: Qwen2-Audio's special tokens, in the order the real tokenizer adds them after <|endoftext|>.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]

#: A small English corpus so that common prompt words become single tokens.
BASE_CORPUS = """
You are a helpful assistant. Audio 1: What sound is heard in the audio clip? Answer with the
option's letter from the given choices directly. Options: A. B. C. D. E. F. G. H.
How many different sounds are in the audio clip? What is the sequence of the first two sounds
in the audio? What is the duration of the sound? How many times does the sound occur?
Which of these sounds occurs in the clip? Which sound is heard first? Which sound comes last?
once twice three times four times five times six times seven times eight times more than
one two three four five six seven eight nine ten seconds second about half a second
then followed by before after during the and of in a is are what which how many times
dog barking cat meowing car horn bird singing speech music engine rain wind water siren
beep chirp knock hiss hum trill click train whistle buzz drum bell alarm footsteps
the answer is none of the above all of the above male female voice instrument guitar piano
"""


@dataclass
class TinySpec:
    """Sizes of a tiny Qwen2-Audio; defaults fit a CPU test in seconds."""

    audio_seconds: int = 5
    """Length of the audio window the model listens to (Whisper's is 30)."""
    num_mel_bins: int = 64
    """Mel bins of the feature extractor and the encoder's input channels."""
    encoder_layers: int = 2
    """Transformer layers in the audio encoder."""
    encoder_dim: int = 64
    """Width of the audio encoder."""
    encoder_heads: int = 4
    """Attention heads in the audio encoder."""
    decoder_layers: int = 2
    """Transformer layers in the language model."""
    decoder_dim: int = 64
    """Width of the language model."""
    decoder_heads: int = 4
    """Attention heads in the language model."""
    decoder_kv_heads: int = 2
    """Key/value heads (grouped-query attention, as in real Qwen2 checkpoints)."""
    vocab_size: int = 600
    """Target size of the trained BPE vocabulary (special tokens come on top)."""
    seed: int = 0
    """Seed of the random weights."""
    model_vocab: int = 0
    """Rows of the embedding and output layers, if more than the tokenizer has (7B shapes: 156032)."""


def train_tokenizer(corpus: list[str], vocab_size: int):
    """A Qwen2Tokenizer whose BPE merges are trained on `corpus`, with Qwen2-Audio's special
    tokens. The pre-tokenizer is Qwen2's own (regex split, then byte level)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
    from tokenizers import Regex

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS[:1],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    qtok = Qwen2Tokenizer(vocab=state["vocab"], merges=merges, errors="replace")
    qtok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    qtok.padding_side = "left"
    return qtok


def corpus_from_records(path: str | Path) -> list[str]:
    """Questions and option texts of an AQA JSONL, so the tiny tokenizer fits the data."""
    from aqa.io import iter_jsonl

    out = []
    for _, r in iter_jsonl(path, skip_bad=True):
        if isinstance(r, dict):
            out.append(str(r.get("question", "")))
            out.extend(str(c) for c in r.get("choices") or [])
    return out


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
    n = sum(p.numel() for p in model.parameters())
    log.info("tiny Qwen2-Audio: %.2f M parameters, vocabulary %d, window %d s", n / 1e6, vocab, spec.audio_seconds)
    return out


def add_builder_command(msub, name: str, help: str, spec_cls, build, wrote: str) -> None:
    """`aqa model NAME -o DIR [--corpus JSONL] [--FIELD VALUE ...]`: one option per field of
    the `spec_cls` dataclass; `build(out, spec, corpus)` writes the folder."""
    t = msub.add_parser(name, help=help)
    t.add_argument("-o", "--output", required=True, help="folder to write")
    t.add_argument("--corpus", action="append", default=[],
                   help="AQA JSONL whose questions and options train the tokenizer (repeatable)")
    for f, default in asdict(spec_cls()).items():
        t.add_argument(f"--{f.replace('_', '-')}", type=type(default), default=default)

    def run(args) -> int:
        spec = spec_cls(**{f: getattr(args, f) for f in asdict(spec_cls())})
        corpus = [line for c in args.corpus for line in corpus_from_records(c)]
        out = build(args.output, spec, corpus)
        print(f"wrote {out}/ ({wrote})")
        return 0

    t.set_defaults(func=run)


def register(sub: argparse._SubParsersAction) -> None:
    from aqa.models.tiny_kimi_audio import TinyKimiSpec, build_tiny_kimi
    from aqa.train.pretrain import register_model_command

    p = sub.add_parser("model", help="model utilities")
    msub = p.add_subparsers(dest="model_command", required=True)
    add_builder_command(msub, "tiny", "build a random-weight Qwen2-Audio and processor offline", TinySpec, build_tiny,
                        "config.json, model.safetensors, processor and tokenizer files")
    add_builder_command(msub, "tiny-kimi-audio", "build a random-weight Kimi-Audio folder offline (official layout)",
                        TinyKimiSpec, build_tiny_kimi,
                        "config.json, model.safetensors, tiktoken.model, whisper-large-v3/, glm-4-voice-tokenizer/")
    register_model_command(msub)
