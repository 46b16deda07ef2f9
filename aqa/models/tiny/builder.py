"""What the tiny builders (`aqa model tiny`, `aqa model tiny-kimi-audio`) share: for their
tokenizers a small English corpus, the questions of the user's own data and a byte-level BPE
trained on them with the family's own pre-tokenizer split; and their command line."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

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
class TinyDecoderSpec:
    """The language-model sizes every tiny family has; each family's spec adds its own."""

    decoder_layers: int = 2
    """Transformer layers in the language model."""
    decoder_dim: int = 64
    """Width of the language model."""
    decoder_heads: int = 4
    """Attention heads in the language model."""
    decoder_kv_heads: int = 2
    """Key/value heads (grouped-query attention, as in the real Qwen2 and Kimi-Audio checkpoints)."""
    vocab_size: int = 600
    """Target size of the trained BPE vocabulary (the family's special and audio tokens come on top)."""
    seed: int = 0
    """Seed of the random weights."""

    def text_config(self, model_type: str, vocab: int, **extra) -> dict:
        """A decoder config of these sizes (`model_type`: "qwen2", "llama", ...), with Qwen2-7B's
        MLP ratio (11008 / 4096) and untied output embeddings; `extra` adds or overrides."""
        d = self.decoder_dim
        return dict(model_type=model_type, vocab_size=vocab, hidden_size=d, intermediate_size=int(2.6875 * d) // 8 * 8,
                    num_hidden_layers=self.decoder_layers, num_attention_heads=self.decoder_heads,
                    num_key_value_heads=self.decoder_kv_heads, max_position_embeddings=4096,
                    tie_word_embeddings=False, **extra)


@dataclass
class TinyAudioEncoderSpec(TinyDecoderSpec):
    """The sizes of a Whisper-style audio encoder (Qwen2-Audio, Audio Flamingo 3, the Qwen
    Omni thinkers) on top of the decoder's; one `aqa model tiny` flag means the same in each."""

    num_mel_bins: int = 64
    """Mel bins of the feature extractor and the encoder's input channels (128 in the real models)."""
    encoder_layers: int = 2
    """Transformer layers in the audio encoder."""
    encoder_dim: int = 64
    """Width of the audio encoder."""
    encoder_heads: int = 4
    """Attention heads in the audio encoder."""
    model_vocab: int = 0
    """Rows of the embedding and output layers, if more than the tokenizer has (7B shapes: 156032)."""

    def whisper_encoder_config(self, model_type: str, window_seconds: int) -> dict:
        """A Whisper-style encoder config of these sizes (`model_type`: the family's encoder)
        over windows of `window_seconds`: 100 mel frames a second, halved by the stride-2
        convolution, so 50 positions a second."""
        e = self.encoder_dim
        return dict(model_type=model_type, hidden_size=e, num_hidden_layers=self.encoder_layers,
                    num_attention_heads=self.encoder_heads, intermediate_size=4 * e, num_mel_bins=self.num_mel_bins,
                    max_source_positions=window_seconds * 50)


def corpus_from_records(path: str | Path) -> list[str]:
    """Questions and option texts of an AQA JSONL, so the tiny tokenizer fits the data."""
    from aqa.io import iter_jsonl

    out = []
    for _, r in iter_jsonl(path, skip_bad=True):
        if isinstance(r, dict):
            out.append(str(r.get("question", "")))
            out.extend(str(c) for c in r.get("choices") or [])
    return out


def train_byte_level_bpe(corpus: list[str], vocab_size: int, split_pattern: str,
                         special_tokens: list[str] = ()) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE trained on `corpus` after the regex split `split_pattern`: its
    vocabulary (byte-level unicode strings -> ids) and its merges in the order learned."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return state["vocab"], merges


def train_tiktoken_ranks(corpus: list[str], vocab_size: int, split_pattern: str) -> dict[bytes, int]:
    """tiktoken ranks (the form of Kimi-Audio's tiktoken.model and of Mistral's tekken.json) of a
    byte-level BPE trained on `corpus` after the regex split `split_pattern`: the 256 bytes
    first, in byte order, then each merge's result in the order it was learned."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    _, merges = train_byte_level_bpe(corpus, vocab_size, split_pattern)
    decode = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes([b]): b for b in range(256)}
    for a, b in merges:
        ranks.setdefault(bytes(decode[c] for c in a + b), len(ranks))
    return ranks


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
