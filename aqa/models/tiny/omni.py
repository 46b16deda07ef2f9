"""`aqa model tiny --family qwen2.5-omni | qwen3-omni`: a random-weight Qwen-Omni thinker built
offline with the real classes, saved like a downloaded thinker checkpoint.

The model is the family's thinker class (`Qwen2_5OmniThinkerForConditionalGeneration`,
`Qwen3OmniMoeThinkerForConditionalGeneration`) from its thinker config at toy sizes; the
processor is the family's real processor class around a `WhisperFeatureExtractor`, a
`Qwen2Tokenizer` whose byte-level BPE is trained here (optionally on the user's questions) with
the family's special tokens as named tokens (`audio_token`, `audio_bos_token`, ...), and a chat
template written here in the family's layout:

- Qwen2.5-Omni: the default system turn "You are a helpful assistant." when none is given,
  then `<|audio_bos|><|AUDIO|><|audio_eos|>` directly before the text, as the released template
  renders them (transformers' tests/models/qwen2_5_omni/test_processor_qwen2_5_omni.py holds
  a copy of it in `prepare_processor_dict`);
- Qwen3-Omni: no default system turn, `<|audio_start|><|audio_pad|><|audio_end|>` for audio;
- Qwen3-Omni-Thinking (`qwen3-omni-thinking`): Qwen3-Omni with the Thinking checkpoint's
  reasoning layout (`THINKING_TEMPLATE`) and `<think>`/`</think>` as the tokenizer's own
  (non-special) tokens, as in Qwen3's vocabulary.

The vision encoder is built too (the thinker class always has one), at the smallest size.
Folders load with `load_backend(folder)` like a checkpoint; the talker and vocoder of the
real models are not part of them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from aqa.io import ordinary_modes
from aqa.models.tiny.builder import BASE_CORPUS, TinyAudioEncoderSpec, train_byte_level_bpe

log = logging.getLogger(__name__)


@dataclass
class TinyOmniSpec(TinyAudioEncoderSpec):
    """Sizes every tiny Qwen-Omni thinker has; defaults fit a CPU test in seconds. The fields
    Qwen2-Audio's tiny spec also has keep its defaults (one `aqa model tiny` command line)."""


@dataclass
class TinyQwen25OmniSpec(TinyOmniSpec):
    """Sizes of a tiny Qwen2.5-Omni thinker."""

    audio_seconds: int = 5
    """The feature extractor's window: the longest clip one prompt carries (300 in the real model)."""
    encoder_window: int = 50
    """Mel frames per encoder attention chunk, 2 * n_window (200, i.e. 2 s, in the real model)."""


@dataclass
class TinyQwen3OmniSpec(TinyOmniSpec):
    """Sizes of a tiny Qwen3-Omni (30B-A3B) thinker: every decoder layer a mixture of experts."""

    num_experts: int = 4
    """Experts per mixture-of-experts layer (128 in the real model)."""
    experts_per_token: int = 2
    """Experts each token is routed to (8 in the real model)."""
    expert_dim: int = 48
    """Hidden width of one expert (768 in the real model)."""
    attention_window: int = 200
    """Mel frames an audio encoder attention window spans, n_window_infer (800 in the real model)."""


@dataclass(frozen=True)
class Family:
    name: str
    thinker_config: str
    thinker_class: str
    processor_class: str
    #: Named special tokens, as the real tokenizer_config.json names them.
    named_tokens: dict
    chat_template: str
    #: Tokens the tokenizer has as its own, not special (Qwen3's `<think>`, `</think>`).
    added_tokens: tuple[str, ...] = ()


def _parts(audio: str, image: str, video: str) -> str:
    """A message's content: a string as is, or its parts in order, audio, image and video as
    their placeholder triples, text as is."""
    return ("{% if message['content'] is string %}{{ message['content'] }}"
            "{% else %}{% for part in message['content'] %}"
            "{% if part['type'] == 'audio' %}" + audio +
            "{% elif part['type'] == 'image' %}" + image +
            "{% elif part['type'] == 'video' %}" + video +
            "{% elif part['type'] == 'text' %}{{ part['text'] }}"
            "{% endif %}{% endfor %}{% endif %}")


def _template(system: str | None, audio: str, image: str, video: str) -> str:
    """A chat template in the Qwen-Omni layout: ChatML turns, a default system turn when given
    and the conversation has none, content parts in order (`_parts`)."""
    default_system = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\n" + system + "<|im_end|>\n"
                      "{% endif %}") if system else ""
    return (default_system +
            "{% for message in messages %}<|im_start|>{{ message['role'] }}\n" + _parts(audio, image, video) +
            "<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _thinking_template(audio: str, image: str, video: str) -> str:
    """Qwen3-Omni-30B-A3B-Thinking's layout, written here (its chat_template.json is not in the
    stored sources; what is known of it comes from two reports that quote it, Qwen's Qwen3
    template it follows, and ms-swift's `qwen3_omni` template):

    - no default system turn (ms-swift: `default_system=None`); audio directly before the text;
    - an assistant turn after the last user query renders its reasoning (`reasoning_content`, or
      the content's text up to `</think>`) as `<think>\n{reasoning}\n</think>\n\n{answer}`, the
      layout of Qwen3's template, which the reports quote from the Thinking checkpoint's
      (`'<|im_start|>' + message.role + '\n<think>\n' + reasoning_content + '\n</think>\n\n'
      + content`, under `loop.index0 > ns.last_query_index`);
    - the generation prompt is `<|im_start|>assistant\n`, left open: the model writes `<think>`
      itself (the reports: "the model generates freely from `<|im_start|>assistant\n`,
      including `<think>` tags");
    - `enable_thinking=False` adds the empty block `<think>\n\n</think>\n\n` after it: the
      switch of Qwen3's documented template, not confirmed for this checkpoint (aqa never passes
      it; it writes the empty block itself, `Backend.answer_prefix_ids`)."""
    return ("{% set ns = namespace(last_query=-1) %}"
            "{% for message in messages %}{% if message['role'] == 'user' %}"
            "{% set ns.last_query = loop.index0 %}{% endif %}{% endfor %}"
            "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
            "{% if message['role'] == 'assistant' %}"
            "{% set content = message['content'] if message['content'] is string else "
            "message['content'] | map(attribute='text') | join('') %}"
            "{% set reasoning = message['reasoning_content'] if message['reasoning_content'] is string else '' %}"
            "{% if not reasoning and '</think>' in content %}"
            "{% set reasoning = content.split('</think>')[0].split('<think>')[-1] %}"
            "{% set content = content.split('</think>')[-1] %}{% endif %}"
            "{% if loop.index0 > ns.last_query %}<think>\n{{ reasoning.strip('\\n') }}\n</think>\n\n{% endif %}"
            "{{ content.lstrip('\\n') }}"
            "{% else %}" + _parts(audio, image, video) + "{% endif %}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n"
            "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
            "{% endif %}")


QWEN2_5_OMNI = Family(
    name="qwen2.5-omni", thinker_config="Qwen2_5OmniThinkerConfig",
    thinker_class="Qwen2_5OmniThinkerForConditionalGeneration", processor_class="Qwen2_5OmniProcessor",
    named_tokens={"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
                  "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
                  "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>"},
    chat_template=_template("You are a helpful assistant.", "<|audio_bos|><|AUDIO|><|audio_eos|>",
                            "<|vision_bos|><|IMAGE|><|vision_eos|>",
                            "<|vision_bos|><|VIDEO|><|vision_eos|>"))

QWEN3_OMNI = Family(
    name="qwen3-omni", thinker_config="Qwen3OmniMoeThinkerConfig",
    thinker_class="Qwen3OmniMoeThinkerForConditionalGeneration", processor_class="Qwen3OmniMoeProcessor",
    named_tokens={"audio_token": "<|audio_pad|>", "audio_bos_token": "<|audio_start|>",
                  "audio_eos_token": "<|audio_end|>", "vision_bos_token": "<|vision_start|>",
                  "vision_eos_token": "<|vision_end|>", "image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    chat_template=_template(None, "<|audio_start|><|audio_pad|><|audio_end|>",
                            "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"))

QWEN3_OMNI_THINKING = Family(
    name="qwen3-omni-thinking", thinker_config=QWEN3_OMNI.thinker_config, thinker_class=QWEN3_OMNI.thinker_class,
    processor_class=QWEN3_OMNI.processor_class, named_tokens=QWEN3_OMNI.named_tokens,
    chat_template=_thinking_template("<|audio_start|><|audio_pad|><|audio_end|>",
                                     "<|vision_start|><|image_pad|><|vision_end|>",
                                     "<|vision_start|><|video_pad|><|vision_end|>"),
    added_tokens=("<think>", "</think>"))


def train_tokenizer(family: Family, corpus: list[str], vocab_size: int):
    """A Qwen2Tokenizer trained on `corpus` (Qwen2's pre-tokenizer split) with the family's
    ChatML and named multimodal special tokens."""
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    vocab, merges = train_byte_level_bpe(corpus, vocab_size, PRETOKENIZE_REGEX, special_tokens=["<|endoftext|>"])
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, errors="replace", extra_special_tokens=dict(family.named_tokens))
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]},
                           replace_extra_special_tokens=False)
    if family.added_tokens:
        tok.add_tokens(list(family.added_tokens))
    tok.padding_side = "left"
    return tok


def build_processor(family: Family, tokenizer, num_mel_bins: int, audio_seconds: int):
    import transformers
    from transformers import WhisperFeatureExtractor
    from transformers.video_processing_utils import BaseVideoProcessor

    from aqa.models.omni import processor_class_without_video_check

    # The image processor without torchvision is its PIL twin; it is saved under the same type.
    image_cls = (transformers.Qwen2VLImageProcessor if transformers.utils.is_torchvision_available()
                 else transformers.Qwen2VLImageProcessorPil)
    fe = WhisperFeatureExtractor(feature_size=num_mel_bins, chunk_length=audio_seconds, sampling_rate=16000,
                                 hop_length=160, n_fft=400, return_attention_mask=True)
    cls = processor_class_without_video_check(getattr(transformers, family.processor_class))
    return cls(image_processor=image_cls(), video_processor=BaseVideoProcessor(), feature_extractor=fe,
               tokenizer=tokenizer, chat_template=family.chat_template)


def thinker_config(family: Family, spec: TinyOmniSpec, tokenizer):
    import transformers

    ids = tokenizer.convert_tokens_to_ids
    t = family.named_tokens
    vocab = max(len(tokenizer), spec.model_vocab)
    d, heads = spec.decoder_dim, spec.decoder_heads
    half = d // heads // 2  # rotary frequencies per head, split over the time/height/width axes
    text = dict(vocab_size=vocab, hidden_size=d, num_hidden_layers=spec.decoder_layers, num_attention_heads=heads,
                num_key_value_heads=spec.decoder_kv_heads, max_position_embeddings=4096, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                 "mrope_section": [half - 2 * (half // 4), half // 4, half // 4]},
                bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id)
    audio = dict(d_model=spec.encoder_dim, encoder_layers=spec.encoder_layers,
                 encoder_attention_heads=spec.encoder_heads, encoder_ffn_dim=2 * spec.encoder_dim,
                 num_mel_bins=spec.num_mel_bins, output_dim=d)
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=d)
    tokens = dict(audio_token_id=ids(t["audio_token"]), image_token_id=ids(t["image_token"]),
                  video_token_id=ids(t["video_token"]), audio_start_token_id=ids(t["audio_bos_token"]),
                  audio_end_token_id=ids(t["audio_eos_token"]), vision_start_token_id=ids(t["vision_bos_token"]),
                  vision_end_token_id=ids(t["vision_eos_token"]))
    if isinstance(spec, TinyQwen3OmniSpec):
        text.update(intermediate_size=2 * d, moe_intermediate_size=spec.expert_dim, num_experts=spec.num_experts,
                    num_experts_per_tok=spec.experts_per_token, decoder_sparse_step=1, mlp_only_layers=[],
                    norm_topk_prob=True)
        # The processor counts 13 audio tokens per 100-frame chunk (n_window 50): keep the model's n_window.
        audio.update(n_window=50, n_window_infer=spec.attention_window, downsample_hidden_size=16,
                     max_source_positions=100)
        vision.update(deepstack_visual_indexes=[0], num_position_embeddings=64, patch_size=16)
    else:
        text.update(intermediate_size=int(2.6875 * d) // 8 * 8)
        # Positions restart in every chunk: the chunk's frames after the stride-2 convolution.
        audio.update(n_window=spec.encoder_window // 2, max_source_positions=spec.encoder_window // 2)
        vision.update(fullatt_block_indexes=[0])
    return getattr(transformers, family.thinker_config)(audio_config=audio, vision_config=vision, text_config=text,
                                                        **tokens)


def build_tiny_omni(family: Family, out_dir: str | Path, spec: TinyOmniSpec, corpus: list[str] | None = None) -> Path:
    """Build, save and return the folder of a random-weight thinker and its processor."""
    import torch
    import transformers

    out = Path(out_dir)
    tokenizer = train_tokenizer(family, [BASE_CORPUS, *(corpus or [])], spec.vocab_size)
    # Qwen3-Omni's processor pads to the batch's longest clip and never truncates; the window
    # only matters to Qwen2.5-Omni's.
    processor = build_processor(family, tokenizer, spec.num_mel_bins, getattr(spec, "audio_seconds", 300))
    config = thinker_config(family, spec, tokenizer)
    torch.manual_seed(spec.seed)
    model = getattr(transformers, family.thinker_class)(config)
    with torch.no_grad():
        # Unit-scale logits, as in a trained model (see aqa/models/tiny/qwen2_audio.py).
        model.lm_head.weight.normal_(0.0, spec.decoder_dim ** -0.5)
    model.generation_config.eos_token_id = [config.text_config.eos_token_id,
                                            tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    ordinary_modes(out)  # save_pretrained leaves model.safetensors 0600
    (out / "aqa_tiny.json").write_text(json.dumps({"family": family.name, **asdict(spec)}, indent=2) + "\n")
    n = sum(p.numel() for p in model.parameters())
    log.info("tiny %s thinker: %.2f M parameters, vocabulary %d", family.name, n / 1e6, config.text_config.vocab_size)
    return out


def build_tiny_qwen2_5_omni(out_dir: str | Path, spec: TinyQwen25OmniSpec | None = None,
                            corpus: list[str] | None = None) -> Path:
    return build_tiny_omni(QWEN2_5_OMNI, out_dir, spec or TinyQwen25OmniSpec(), corpus)


def build_tiny_qwen3_omni(out_dir: str | Path, spec: TinyQwen3OmniSpec | None = None,
                          corpus: list[str] | None = None) -> Path:
    return build_tiny_omni(QWEN3_OMNI, out_dir, spec or TinyQwen3OmniSpec(), corpus)


def build_tiny_qwen3_omni_thinking(out_dir: str | Path, spec: TinyQwen3OmniSpec | None = None,
                                   corpus: list[str] | None = None) -> Path:
    return build_tiny_omni(QWEN3_OMNI_THINKING, out_dir, spec or TinyQwen3OmniSpec(), corpus)
