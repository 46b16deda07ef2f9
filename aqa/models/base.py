"""The backend interface: everything outside `aqa/models/` talks to a model through this.

A backend turns `Example`s (audio + user text + optional target text) into a batch, returns
the decoder's last hidden states, and exposes the output embedding. The computations that
every recipe needs are written once here, on top of that:

- `option_logits`: logits of the option letters at the answer position (scoring, GRPO
  `choice` rollouts). Only the letters' rows of the output embedding are used, so the full
  (B, T, V) logits are never built.
- `target_logprobs`: log-probabilities of the target tokens (SFT loss, GRPO ratios),
  computed only at the target positions.

Text from data (a question, its options, an answer) is plain text: a special-token string in
it (`<|im_end|>`, the audio placeholder) is encoded as the characters it is, never as the
token, so it can neither forge a turn nor add an audio slot (`hide_special`, `restore_text`).

Both multiply the hidden states by the head in float32, also in a bf16 model
(`float32_logits`), and so does generation's next-token choice.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aqa.data.audio import TARGET_SR
from aqa.prompts import (LETTERS, THINK_CLOSE, THINK_OPEN, Reasoned, ThinkFormat, question_text, split_reasoning,
                         target_text)


@dataclass
class Example:
    """One model input: a clip, the user's text, and what the assistant should answer."""

    audio: np.ndarray | None  # (N,) float32 mono at 16 kHz; None: a prompt without audio
    text: str
    target: str | None = None
    #: The answer as token ids (a sampled completion, its end token included); overrides `target`.
    target_ids: list[int] | None = None
    #: A reasoning the answer starts with, in the family's think block before `target` (None: none,
    #: but on a thinking checkpoint every answer starts with a think block, empty when None).
    rationale: str | None = None


class Backend:
    """Base class of model backends. Subclasses set `family` and implement the hooks."""

    family: str = ""

    def __init__(self, model, processor, device: torch.device, config=None):
        self.model = model
        self.processor = processor
        self.device = device
        #: The model's config; given apart when there is no model (`without_weights`).
        self.config = config if config is not None else self.base_model().config

    # --- hooks a backend implements -------------------------------------------------------
    #: For a family that transformers reads as it is: its model class's name, which the
    #: default `load` uses with the folder's AutoProcessor.
    transformers_class: str = ""

    @classmethod
    def load(cls, path: str, *, adapter: str | None = None, device: str | None = None,
             dtype: str | torch.dtype | None = None, trust_remote_code: bool = False,
             is_trainable: bool = False) -> Backend:
        """The backend of the checkpoint at `path` (a folder or a Hugging Face id), with
        `adapter` on top. Each weight goes from the file straight to `device`
        (`device_load_kwargs`): no process holds a host copy of the model on its way there."""
        import transformers
        from transformers import AutoProcessor

        if not cls.transformers_class:
            raise NotImplementedError(f"{cls.__name__} loads its checkpoint its own way")
        dev = default_device(device)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = getattr(transformers, cls.transformers_class).from_pretrained(
            path, dtype=default_dtype(dev, dtype), trust_remote_code=trust_remote_code, attn_implementation="sdpa",
            **device_load_kwargs(dev))
        return cls.from_parts(model, processor, dev, adapter=adapter, is_trainable=is_trainable)

    @classmethod
    def without_weights(cls, path: str, *, trust_remote_code: bool = False) -> Backend:
        """The backend of the checkpoint at `path` with its processor and config but no model
        (`model` is None): enough for `audio_seconds`, `max_prompt_tokens` and
        `prompt_tokens`, without reading or downloading the weights."""
        from transformers import AutoConfig, AutoProcessor

        if not cls.transformers_class:
            raise NotImplementedError(f"{cls.__name__} reads its checkpoint its own way")
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        return cls(None, processor, torch.device("cpu"), config=config)

    #: Token ids that end the assistant's answer (appended to every target).
    end_ids: list[int]

    @classmethod
    def from_parts(cls, model, processor, device: torch.device, *, adapter: str | None = None,
                   is_trainable: bool = False):
        """The tail every `load` shares: the model, loaded onto `device`, with its adapter (and
        the adapters under it), in training or evaluation mode. It does not move the model: a
        weight found elsewhere is an error, so that a loader that reads to the CPU first (the
        whole model in each process's host memory) cannot pass unseen."""
        from transformers.integrations import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled():  # loaded without a device map (`device_load_kwargs`)
            model.to(device)
        else:
            require_on_device(model, device)
        if adapter:
            model = attach_adapter(model, adapter, is_trainable=is_trainable)
        model.train(is_trainable)
        return cls(model, processor, device)

    @property
    def audio_seconds(self) -> float | None:
        """The longest clip the model hears at once (None: no limit); a longer clip is cut
        to it (`prompt_samples`)."""
        raise NotImplementedError

    # --- prompt length (no model run) --------------------------------------------------------
    @property
    def max_prompt_tokens(self) -> int | None:
        """The longest prompt the model takes: its decoder's context
        (`max_position_embeddings`), or the tokenizer's `model_max_length` when smaller."""
        n = getattr(self.config.get_text_config(), "max_position_embeddings", None)
        tok = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok, int) and tok < 10**9:  # tokenizers without a limit say ~1e30
            n = min(n, tok) if n else tok
        return n

    def prompt_samples(self, samples: int) -> int:
        """Samples of a clip of `samples` (16 kHz) that the model hears: cut to `audio_seconds`."""
        if self.audio_seconds is None:
            return samples
        return min(samples, int(self.audio_seconds * TARGET_SR))

    def audio_tokens_of(self, samples: int) -> int:
        """Prompt positions a clip of `samples` (16 kHz, already cut by `prompt_samples`) takes."""
        raise NotImplementedError

    def clip_tokens(self, seconds: float) -> int:
        """Prompt positions a clip of `seconds` takes once cut to `audio_seconds`."""
        return self.audio_tokens_of(self.prompt_samples(round(seconds * TARGET_SR)))

    #: The id of the token the processor repeats once per audio token (the families whose
    #: prompt holds one placeholder per clip, which the processor expands).
    audio_token_id: int

    def target_ids(self, example: Example) -> list[int]:
        """The answer's token ids, its end token(s) included: the whole assistant turn, so on a
        thinking checkpoint (or with a rationale) its think block first (`think_ids`)."""
        if example.target_ids is not None:
            return list(example.target_ids)
        ids = self.text_ids(example.target) + self.end_ids
        if example.rationale is not None or self.thinks:
            ids = self.think_ids(example.rationale) + ids
        return ids

    # --- reasoning ---------------------------------------------------------------------------
    #: The family's think delimiters (Qwen3's unless a family says otherwise).
    think_delimiters: tuple[str, str] = (THINK_OPEN, THINK_CLOSE)
    #: The family's empty think block, where it documents another than Qwen3's (empty: Qwen3's).
    think_empty: str = ""

    def chat_template_text(self) -> str:
        """The checkpoint's chat template(s) as text (empty for a family without one)."""
        parts = []
        for owner in (self.processor, getattr(self.processor, "tokenizer", None)):
            t = getattr(owner, "chat_template", None)
            for v in (t.values() if isinstance(t, dict) else [t]):
                if isinstance(v, str) and v not in parts:
                    parts.append(v)
        return "\n".join(parts)

    @property
    def thinks(self) -> bool:
        """Whether the checkpoint reasons before it answers: its chat template mentions the think
        delimiter or an `enable_thinking` switch (Qwen3, Qwen3-Omni-Thinking), unless
        `set_thinking` said otherwise. Letter scoring on a thinking checkpoint reads the letter
        after an empty think block (thinking switched off), SFT targets start with one, and
        `aqa eval --mode generate` reads the answer after the block."""
        cache = self.__dict__
        if "_thinks" not in cache:
            t = self.chat_template_text()
            cache["_thinks"] = bool(t) and (self.think_delimiters[0] in t or "enable_thinking" in t)
        return cache["_thinks"]

    def set_thinking(self, on: bool | None) -> None:
        """Override `thinks` (None: detect it from the chat template again)."""
        cache = self.__dict__
        cache.pop("_thinks", None)
        cache.pop("_target_lengths", None)
        if on is not None:
            cache["_thinks"] = bool(on)

    @property
    def think_format(self) -> ThinkFormat:
        """The family's think block: its delimiters, and what the rendered generation prompt
        already holds of the block (a template that opens it itself; Qwen3-Omni-Thinking's
        leaves the assistant turn open and the model writes `<think>`)."""
        cache = self.__dict__
        if "_think_format" not in cache:
            opening, closing = self.think_delimiters
            start = ""
            if opening in self.chat_template_text():
                try:
                    rendered = self.prompt("", with_audio=False)
                except NotImplementedError:
                    rendered = ""
                start = next((s for s in (opening + "\n", opening) if rendered.endswith(s)), "")
            cache["_think_format"] = ThinkFormat(opening, closing, start, self.think_empty)
        return cache["_think_format"]

    def template_ids(self, text: str) -> list[int]:
        """Token ids of text the chat template writes (delimiters: the tokenizer's own tokens)."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def think_ids(self, rationale: str | None) -> list[int]:
        """Ids of the think block around `rationale` (None: the empty block) that the assistant
        writes after the prompt, the blank line before the answer included. Tokenised as the
        whole rendered block is (the delimiters as the tokenizer's tokens); a rationale holding a
        special-token string is plain text between them."""
        fmt = self.think_format
        r = (rationale or "").strip()
        if not self.has_special(r):
            return self.template_ids(fmt.after_start(fmt.block(r)))
        cut = len(fmt.start) if fmt.block(r).startswith(fmt.start) else 0
        out = []
        for piece, data in ((fmt.open, False), (f"\n{r}\n", True), (f"{fmt.close}\n\n", False)):
            take = min(cut, len(piece))
            piece, cut = piece[take:], cut - take
            if piece:
                out += self.plain_ids(piece) if data else self.template_ids(piece)
        return out

    def answer_prefix_ids(self) -> list[int]:
        """What the assistant writes before the letter when it answers directly: on a thinking
        checkpoint the empty think block (thinking switched off, as Qwen3's template does with
        `enable_thinking=False`), else nothing."""
        return self.think_ids(None) if self.thinks else []

    def answer_batch(self, examples: list[Example], prefixes: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
        """`collate(examples)` whose last position is where the answer's letter goes: each prompt,
        then `prefixes` (per example, ids the assistant wrote first: a reasoning through its
        closing delimiter), by default `answer_prefix_ids`. What letter scoring reads."""
        if prefixes is None:
            if not self.thinks:
                return self.collate(examples)
            prefixes = [self.answer_prefix_ids()] * len(examples)
        batch = self.collate(with_prefix(examples, prefixes), with_target=True)
        batch.pop("labels", None)
        return batch

    def stop_ids(self) -> set[int]:
        """Ids that end the assistant's turn in generation."""
        return set(self.end_ids)

    def unsampled_ids(self) -> list[int]:
        """Ids generation never emits: the audio placeholder, a slot the processor fills with a
        clip's features. A weak model at temperature 1 draws it, and GRPO feeds completions back
        as targets, where it would be a slot with no audio to fill it."""
        token = getattr(self, "audio_token_id", None)
        return [] if token is None else [int(token)]

    def close_reasoning(self, ids: list[int]) -> tuple[list[int], Reasoned]:
        """A reasoning the model generated after the prompt (`ids`, as `generate_ids` gives them)
        made ready for the answer: (the ids the assistant wrote through the closing delimiter and
        the blank line after it, closing the block first when the budget cut it; the reasoning
        read from them). A completion that opened no block gets the empty block: the answer
        position of thinking switched off."""
        fmt = self.think_format
        stops = self.stop_ids()
        ids = list(ids)
        while ids and ids[-1] in stops:
            ids.pop()
        text = self.decode([ids])[0]
        r = split_reasoning(text, fmt)
        if r.reasoning is None:
            return self.think_ids(None), r
        if r.unfinished:
            return ids + self.template_ids(("" if text.endswith("\n") else "\n") + fmt.close + "\n\n"), r
        # The shortest head of the ids whose text holds the closing delimiter (monotone in length).
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if fmt.close in self.decode([ids[:mid]])[0]:
                hi = mid
            else:
                lo = mid + 1
        # A tokenizer that merges the delimiter's end with the blank line (a BPE trained on think
        # blocks: '>\n\n' one token) has written part or all of it already: add only the rest,
        # or the letter would be read after a blank line too many, where training never put it.
        past = self.decode([ids[:lo]])[0].rsplit(fmt.close, 1)[1]
        rest = "\n\n"[len(past):] if "\n\n".startswith(past) else "\n\n"
        return ids[:lo] + (self.template_ids(rest) if rest else []), r

    # --- text from data ----------------------------------------------------------------------
    #: True for a family whose tokenizer already encodes any text as plain text (never as one
    #: of its special tokens), so that nothing has to be hidden from it.
    text_is_plain: bool = False

    @property
    def special_strings(self) -> tuple[str, ...]:
        """The strings of the tokenizer's own tokens that plain text never gives: its added
        tokens, special or not (Qwen's `<tool_call>` is not special, yet one id), less those
        that are whitespace or that its plain encoding gives anyway."""
        cache = self.__dict__
        if "_special_strings" not in cache:
            tok = self.tokenizer
            added = getattr(tok, "added_tokens_decoder", None)
            names = [t.content for t in added.values()] if isinstance(added, dict) else list(tok.all_special_tokens)
            cache["_special_strings"] = tuple(
                s for s in dict.fromkeys(names)
                if s.strip() and self.plain_ids(s) != [tok.convert_tokens_to_ids(s)])
        return cache["_special_strings"]

    def plain_ids(self, text: str) -> list[int]:
        """`text`'s token ids as plain text: the tokenizer's normalizer, pre-tokenizer and
        model over the whole text, which is what it does to text between two added tokens,
        without matching any added token inside it. (A SentencePiece-style pre-tokenizer would
        put its prefix space here; every family here is byte-level.)"""
        if self.text_is_plain:
            return self.tokenizer.encode(text, add_special_tokens=False)
        bt = self.tokenizer.backend_tokenizer
        if bt.normalizer is not None:
            text = bt.normalizer.normalize_str(text)
        parts = [p for p, _ in bt.pre_tokenizer.pre_tokenize_str(text)] if bt.pre_tokenizer is not None else [text]
        return [t.id for p in parts for t in bt.model.tokenize(p)]

    def text_ids(self, text: str) -> list[int]:
        """Token ids of `text` from data, alone (an answer): as the tokenizer encodes it, and
        as plain text when it holds a special-token string."""
        if self.has_special(text):
            return self.plain_ids(text)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def has_special(self, text: str) -> bool:
        """Whether `text` holds a special-token string that this tokenizer would read as the token."""
        if self.text_is_plain:
            return False
        cache = self.__dict__
        if "_special_re" not in cache:
            names = sorted(self.special_strings, key=len, reverse=True)
            cache["_special_re"] = re.compile("|".join(map(re.escape, names))) if names else None
        return cache["_special_re"] is not None and cache["_special_re"].search(text) is not None

    @property
    def sentinel(self) -> tuple[str, int]:
        """(token, id) that stands in the rendered prompt for a user text holding a special-token
        string: one of the tokenizer's special tokens that the chat template does not write and
        that the processor does not expand (its audio, image and video placeholders)."""
        cache = self.__dict__
        if "_sentinel" not in cache:
            tok = self.tokenizer
            rendered = self.prompt("", with_audio=True) + self.prompt("", with_audio=False)
            placeholders = {getattr(self.processor, a, None) for a in ("audio_token", "image_token", "video_token")}
            for s in (tok.pad_token, tok.eos_token, *self.special_strings):
                if s in self.special_strings and s not in rendered and s not in placeholders:
                    cache["_sentinel"] = s, tok.convert_tokens_to_ids(s)
                    break
            else:
                raise ValueError(f"the {self.family} tokenizer has no special token that its chat template leaves "
                                 f"free to stand for a question holding a special-token string")
        return cache["_sentinel"]

    def hide_special(self, text: str) -> tuple[str, list[int] | None]:
        """(what the chat template renders in place of the user `text`, the ids that take the
        sentinel's place once the prompt is tokenised; None: `text` itself, as it is).

        Text without a special-token string goes through the template and the processor as it
        is, so its ids are exactly the processor's. Text with one is replaced by the sentinel
        token, which the processor tokenises as one id, and the text's plain ids go in its
        place after (`restore_text`): the processor counts and expands only the template's
        audio placeholder, and every special id in the row is one the template wrote."""
        if not self.has_special(text):
            return text, None
        if not all(isinstance(self.prompt_around(with_audio), str) for with_audio in (True, False)):
            # The template changes the text it is given, which the sentinel would not show.
            raise ValueError(f"the {self.family} chat template changes the question's text, so a question holding "
                             f"a special-token string cannot be encoded as plain text")
        return self.sentinel[0], self.plain_ids(text)

    def restore_text(self, ids: list[int], plain: list[int] | None) -> list[int]:
        """The prompt ids of `hide_special`'s text with the sentinel replaced by the text's plain ids."""
        if plain is None:
            return ids
        at = [i for i, t in enumerate(ids) if t == self.sentinel[1]]
        if len(at) != 1:
            raise RuntimeError(f"the {self.family} prompt holds the sentinel {self.sentinel[0]} {len(at)} times, "
                               f"not once")
        return ids[:at[0]] + plain + ids[at[0] + 1:]

    def prompt_tokens(self, text: str, seconds: float | None, target: str | None = None) -> int:
        """Length of the batch row `collate` makes for the question `text` with a clip of
        `seconds` (None: no audio) and, given, the answer `target`, counted without running
        the model or decoding the clip: the text tokens of the rendered prompt, the audio
        tokens the clip takes once cut to `audio_seconds`, the answer's tokens."""
        return self.prompt_token_counts([(text, seconds, target)])[0]

    def prompt_token_counts(self, items: list[tuple[str, float | None, str | None]]) -> list[int]:
        """`prompt_tokens` of many (text, seconds, target) at once: the prompts are tokenised
        in one batch (one call per item took twice as long on 10,000 items)."""
        hidden = [self.hide_special(text) for text, _, _ in items]
        prompts = [self.prompt_around(seconds is not None).format(text=shown)
                   for (shown, _), (_, seconds, _) in zip(hidden, items)]
        counts = []
        for ids, (_, plain), (text, seconds, target) in zip(self.tokenizer(prompts)["input_ids"], hidden, items):
            n = len(ids) + (0 if plain is None else len(plain) - 1)
            if seconds is not None:
                # The rendered prompt holds one placeholder, which the processor repeats per audio token.
                n += self.clip_tokens(seconds) - ids.count(self.audio_token_id)
            counts.append(n + self.target_length(target))
        return counts

    def target_length(self, target: str | tuple[str, str] | None) -> int:
        """Tokens of the answer `target` with its end (0 for None), remembered per answer text:
        a file's answers are a few letters. A (rationale, answer) pair is an answer that starts
        with that reasoning (SFT's `target=reasoning`), counted each time."""
        if isinstance(target, tuple):
            return len(self.target_ids(Example(None, "", target[1], rationale=target[0])))
        cache = self.__dict__.setdefault("_target_lengths", {})
        if target not in cache:
            cache[target] = 0 if target is None else len(self.target_ids(Example(None, "", target)))
        return cache[target]

    def prompt_around(self, with_audio: bool) -> str:
        """`prompt(text)` as a format string with `{text}` where the text goes: the chat
        template rendered once, not per item of a large file. Checked once against a full
        rendering; a template that changes the text (trims it, say) is rendered per item instead."""
        cache = self.__dict__.setdefault("_prompt_around", {})
        if with_audio not in cache:
            mark, probe = "\x00AQA-TEXT\x00", " probe {text}: \"A\" \n"
            whole = self.prompt(mark, with_audio=with_audio)
            fmt = whole.replace("{", "{{").replace("}", "}}").replace(mark, "{text}")
            ok = whole.count(mark) == 1 and fmt.format(text=probe) == self.prompt(probe, with_audio=with_audio)
            cache[with_audio] = fmt if ok else None
        fmt = cache[with_audio]
        return fmt if fmt is not None else _Rendered(self, with_audio)

    def record_prompt_tokens(self, record, seconds: float | None, *, with_target: bool = False) -> int:
        """`prompt_tokens` of an AQA record as `aqa eval` and the recipes ask it (its options in
        the file's order; a shuffled order may tokenise a token or so apart), its clip lasting
        `seconds`; with `with_target`, its answer as SFT's target."""
        return self.prompt_token_counts([self.record_prompt(record, seconds, with_target)])[0]

    @staticmethod
    def record_prompt(record, seconds: float | None, with_target: bool,
                      rationale: bool = False) -> tuple[str, float | None, str | tuple[str, str] | None]:
        """The (text, seconds, target) `prompt_token_counts` takes for an AQA record; with
        `rationale`, the target is (its rationale, its letter)."""
        target = target_text(record.answer) if with_target and record.answer is not None else None
        if target is not None and rationale:
            target = (getattr(record, "rationale", None) or "", target)
        return question_text(record.question, record.choices), seconds, target

    def too_long(self, records, seconds, *, limit: int | None = None, with_target: bool = False,
                 rationale: bool = False) -> list[tuple]:
        """(record, prompt tokens) of the records whose prompt is longer than `limit` (None: the
        model's `max_prompt_tokens`); `seconds(record)` is its clip's length (None: no audio);
        with `rationale`, the answer starts with the record's rationale."""
        limit = limit or self.max_prompt_tokens
        if not limit:
            return []
        over = []
        for lo in range(0, len(records), 1024):
            chunk = records[lo:lo + 1024]
            counts = self.prompt_token_counts([self.record_prompt(r, seconds(r), with_target, rationale)
                                               for r in chunk])
            over += [(r, n) for r, n in zip(chunk, counts) if n > limit]
        return over

    def prompt(self, text: str, with_audio: bool = True) -> str:
        """The prompt text of one user turn (the clip, then `text`) and the assistant's start."""
        raise NotImplementedError

    def collate(self, examples: list[Example], *, with_target: bool = False) -> dict[str, torch.Tensor]:
        """Batch on `self.device`, left-padded so that the answer position is the last prompt
        token. With targets, `labels` holds the target ids and -100 elsewhere."""
        raise NotImplementedError

    def prompt_with_target(self, example: Example, ids: list[int], with_target: bool) -> tuple[list[int], list[int]]:
        """A prompt's `ids` with the example's target ids appended when `with_target`, and their
        labels (-100 over the prompt). The target is tokenised apart, so that the prompt's tokens
        are exactly those that scoring sees."""
        if not with_target:
            return ids, [-100] * len(ids)
        if example.target is None and example.target_ids is None:
            raise ValueError("with_target=True needs a target on every example")
        t = self.target_ids(example)
        return ids + t, [-100] * len(ids) + t

    def left_padded(self, rows: list[list[int]], label_rows: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
        """(B, T) input_ids, attention_mask and position_ids of token `rows` padded on the left to
        the longest, and `labels` of `label_rows` (-100 on the padding) when given. Explicit
        positions make a left-padded row compute exactly what it would alone."""
        T, pad = max(len(r) for r in rows), self.tokenizer.pad_token_id
        batch = {"input_ids": torch.tensor([[pad] * (T - len(r)) + r for r in rows]),
                 "attention_mask": torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])}
        if label_rows is not None:
            batch["labels"] = torch.tensor([[-100] * (T - len(r)) + r for r in label_rows])
        batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)
        return batch

    def host_collate(self):
        """`collate` for DataLoader workers: a callable `(examples, with_target=...)` that runs
        no model and makes a host batch on the CPU, which `to_device` finishes in the training
        process; `to_device(host_collate()(x))` is `collate(x)` on a CPU. The default runs
        `collate` on a copy of this backend without the model whose device is the CPU: right
        for a family whose collate runs no model (a family that does overrides both)."""
        import copy

        clone = copy.copy(self)
        clone.model, clone.device = None, torch.device("cpu")
        return clone.collate

    def to_device(self, host) -> dict[str, torch.Tensor]:
        """The batch of a `host_collate` result on `self.device` (non-blocking: a DataLoader
        pins host batches on GPU machines)."""
        return {k: v.to(self.device, non_blocking=True) for k, v in host.items()}

    def set_cache_dir(self, folder: str | Path | None) -> None:
        """A folder in which the family may keep work that depends only on a clip, never on
        the weights being trained, to do it once per clip (None: keep it in memory only).
        Families with no such work ignore it."""

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T, H) last hidden states of the decoder."""
        raise NotImplementedError

    def output_embedding(self) -> torch.nn.Module:
        raise NotImplementedError

    def generate_ids(self, batch: dict[str, torch.Tensor], *, max_new_tokens: int = 16, do_sample: bool = False,
                     temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1) -> list[list[int]]:
        """New token ids per sequence (B * num_return_sequences, grouped by prompt), cut after
        the first end token, which is kept."""
        raise NotImplementedError

    def lora_target_modules(self, audio_tower: bool = False) -> str | list[str]:
        """A regex over module names for peft's `target_modules` (or the list of those names):
        the language model's linear layers, and the audio encoder's too when asked."""
        raise NotImplementedError

    def lora_target_parameters(self, audio_tower: bool = False) -> list[str]:
        """Weights outside linear layers that LoRA also adapts (peft's `target_parameters`: e.g.
        a mixture-of-experts block's stacked expert weights and its router), as names or name
        suffixes; empty (the default) for families whose adapted weights are all linear layers."""
        return []

    def spec_augment(self, batch: dict[str, torch.Tensor], num_masks: int, max_width: int,
                     generator: torch.Generator) -> dict[str, torch.Tensor]:
        """SpecAugment frequency masks on the log-mels the audio encoder reads (`input_features`,
        (rows, n_mels, frames): a clip, or one window or segment of a clip), in place of the
        batch's features (a batch without audio is returned as it is). A masked band is filled
        with the mean of its row's real frames (`feature_lengths`), never with padding's: a
        0.5 s clip batched with a 3 s one had a fill of 0.048 over the padded row where its real
        frames' mean is 0.287."""
        from aqa.data.augment import freq_mask

        x = batch.get("input_features")
        if num_masks > 0 and x is not None:
            lengths = self.feature_lengths(batch)
            # Drawn on the CPU so that the masks do not depend on the device.
            batch["input_features"] = freq_mask(x.cpu(), num_masks, max_width, generator,
                                                lengths=None if lengths is None else lengths.cpu()).to(x.device)
        return batch

    def feature_lengths(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """(rows,) real log-mel frames of each row of the batch's `input_features` (None: every
        frame of every row is real)."""
        raise NotImplementedError

    # Pretraining an audio encoder from scratch (`aqa model pretrain`, tiny models only).
    def audio_encoder(self) -> torch.nn.Module:
        """The audio encoder module (its parameters are trained, then frozen)."""
        raise NotImplementedError(f"the {self.family} backend has no audio-encoder pretraining hooks")

    def encoder_inputs(self, clips: list[np.ndarray]) -> torch.Tensor:
        """(N, ...) CPU encoder inputs of whole clips (16 kHz mono)."""
        raise NotImplementedError(f"the {self.family} backend has no audio-encoder pretraining hooks")

    def encoder_states(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, F, D) encoder output states of `encoder_inputs` rows: F frames spread evenly over
        the clip (pretraining reads F and D from these states, `pretrain.encoder_output_shape`)."""
        raise NotImplementedError(f"the {self.family} backend has no audio-encoder pretraining hooks")

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def letter_token_ids(self, n: int) -> list[int]:
        """Token ids of the option letters 'A'.. as the first answer token."""
        tok = self.tokenizer
        ids = []
        for letter in LETTERS[:n]:
            t = tok.encode(letter, add_special_tokens=False)
            if len(t) != 1:
                raise ValueError(f"option letter {letter!r} is not a single token for this tokenizer: {t}")
            ids.append(t[0])
        return ids

    def decode(self, sequences: list[list[int]]) -> list[str]:
        """Answer text of generated ids: what `aqa eval` parses and GRPO rewards read."""
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=True)

    def generate(self, batch: dict[str, torch.Tensor], **kwargs) -> list[str]:
        """Decoded answers (see `generate_ids` for the arguments)."""
        return self.decode(self.generate_ids(batch, **kwargs))

    @staticmethod
    def whisper_frames(samples: int, padded: int, hop: int = 160) -> int:
        """Real log-mel frames (the feature-attention mask's count) that transformers'
        `WhisperFeatureExtractor` gives `samples` padded to `padded`: one per started hop,
        at most `padded // hop` (its mask drops a last, partial hop)."""
        return min(-(-samples // hop), padded // hop)

    # --- adapters -----------------------------------------------------------------------------
    def add_lora(self, *, r: int, alpha: int, dropout: float, audio_tower: bool = False,
                 adapter_name: str = "default"):
        """Wrap the model with a new trainable LoRA adapter; the base stays frozen."""
        from peft import LoraConfig, PeftModel, get_peft_model

        params = self.lora_target_parameters(audio_tower)
        if params and dropout:
            # peft cannot factor dropout out of a LoRA update applied to a weight tensor.
            raise ValueError(f"the {self.family} backend puts LoRA on {', '.join(params)} (peft target_parameters), "
                             f"which takes no LoRA dropout: set lora_dropout=0 (got {dropout})")
        cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                         target_modules=self.lora_target_modules(audio_tower), target_parameters=params or None)
        if isinstance(self.model, PeftModel):
            self.model.add_adapter(adapter_name, cfg)
            self.model.set_adapter(adapter_name)
        else:
            self.model = get_peft_model(self.model, cfg, adapter_name=adapter_name)
        return self.model

    def merge_adapters(self, adapter: str | Path, *, allow_pickle: bool = False) -> list[str]:
        """Merge `adapter` (and the adapters it was trained on) into the weights; returns the
        folders merged, in order."""
        self.model, merged = merge_adapter_stack(self.model, adapter, allow_pickle=allow_pickle)
        return merged

    def scale_adapter(self, scale: float) -> int:
        """Scale the active LoRA adapter's update by `scale` (peft `LoraLayer.set_scale`: its
        alpha / r times `scale`; 0 computes as the weights under it, 1 as trained). Adapters
        merged into the weights under it (a GRPO adapter's SFT stack) are not scaled. Returns the
        layers scaled."""
        from peft.tuners.lora import LoraLayer

        n = 0
        for m in self.model.modules():
            if isinstance(m, LoraLayer):
                for name in m.active_adapters:
                    if name in m.scaling:
                        m.set_scale(name, scale)
                        n += 1
        if not n:
            raise ValueError("the model has no LoRA adapter to scale")
        return n

    def set_lora_dropout(self, p: float) -> None:
        """Dropout on the LoRA input of an adapter loaded from disk (its config's value
        otherwise), so the recipe's `lora_dropout` holds for an adapter trained on too."""
        for name, m in self.model.named_modules():
            if isinstance(m, torch.nn.Dropout) and ".lora_dropout." in f"{name}.":
                m.p = p

    def without_adapter(self):
        """Context in which the model computes without its active LoRA adapter."""
        return self.model.disable_adapter()

    def adapter_weights_from(self, adapter: str | Path, *, allow_pickle: bool = False) -> AdapterWeights:
        """The weights saved in `adapter` for the active adapter, read once onto the device
        beside its own: `swapped_in()` is the context in which the model computes with them
        (GRPO's `policy=sft` reference), for as many passes as asked, without reading the
        folder or copying weights again. Make it on the model as it will run (after
        accelerate's `prepare`, which may change the weights' dtype and storage)."""
        from peft import load_peft_weights, set_peft_model_state_dict

        require_safetensors(adapter, allow_pickle=allow_pickle)
        name = getattr(self.model, "active_adapter", "default")
        # Keyed as load_state_dict reports them; peft puts the adapter's name in the key of every
        # tensor of that adapter, never in a base weight's.
        live = {k: t for k, t in [*self.model.named_parameters(remove_duplicate=False),
                                  *self.model.named_buffers(remove_duplicate=False)] if f".{name}." in f".{k}."}
        # Read to the CPU: the device then holds one more copy of the adapter, never two.
        saved = load_peft_weights(str(adapter), device="cpu")
        own = {k: t.data for k, t in live.items()}
        with torch.no_grad():
            try:
                # peft maps the file's keys to the model's (adapter name, transformers' weight
                # conversions, `target_parameters` wrappers) and casts to each tensor's dtype: here
                # into fresh tensors, which become the held weights; the model's own are untouched.
                for t in live.values():
                    t.data = torch.empty_like(t)
                result = set_peft_model_state_dict(self.model, saved, adapter_name=name)
                missing = set(result.missing_keys)
                fresh = {k: t.data for k, t in live.items() if k not in missing}
            finally:
                for k, t in live.items():
                    t.data = own[k]
        # Whatever peft wrote outside the fresh tensors went into the model's own weights.
        outside = sorted(self.model.state_dict().keys() - missing - live.keys())
        if outside:
            raise RuntimeError(f"{adapter}: peft loaded weights outside adapter {name!r} ({', '.join(outside[:5])}); "
                               f"the model is no longer the one trained")
        if result.unexpected_keys or not fresh:
            raise ValueError(f"{adapter}: its weights do not fit the model's adapter {name!r} (not in the model: "
                             f"{', '.join(result.unexpected_keys[:5]) or 'none'}; {len(fresh)} tensors loaded)")
        # A tensor under two names (tied) is swapped once.
        unique = {id(live[k]): (live[k], v) for k, v in fresh.items()}
        return AdapterWeights([t for t, _ in unique.values()], [v for _, v in unique.values()])

    def compile_decoder(self, **options) -> None:
        """Run the language model's decoder through `torch.compile` (`options`: its keyword
        arguments). In place (`nn.Module.compile`): module names and state-dict keys stay, so
        LoRA, checkpoints and saved adapters are those of the eager model."""
        self.base_model().get_decoder().compile(**options)

    def enable_gradient_checkpointing(self) -> None:
        self.base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # --- shared computations ----------------------------------------------------------------
    def base_model(self):
        """The transformers model under any peft wrapper."""
        m = self.model
        return m.get_base_model() if hasattr(m, "get_base_model") else m

    def option_logits(self, batch: dict[str, torch.Tensor], n_options: list[int]) -> torch.Tensor:
        """(B, max_n) float32 logits of the letters at the answer position; options beyond an
        item's count are -inf."""
        h = self.hidden_states(batch)[:, -1]  # (B, H): left padding puts the answer position last
        n_max = max(n_options)
        ids = torch.tensor(self.letter_token_ids(n_max), device=h.device)
        logits = float32_logits(h, self.output_embedding(), rows=ids)  # (B, n_max)
        mask = torch.arange(n_max, device=h.device)[None, :] >= torch.tensor(n_options, device=h.device)[:, None]
        return logits.masked_fill(mask, float("-inf"))

    def target_logprobs(self, batch: dict[str, torch.Tensor], with_entropy: bool = False, temperature: float = 1.0):
        """Log-probabilities of the labelled tokens. Returns (logp (B, L), mask (B, L)) with
        L the longest target, right-aligned; the logits are built only at the L positions that
        predict them. With `with_entropy`, also the (B, L) entropy of each of those positions.
        `temperature` divides the logits first: the distribution sampled completions came from."""
        labels = batch["labels"]
        h = self.hidden_states(batch)  # (B, T, H)
        # The token at t is predicted by the hidden state at t-1.
        tgt = labels[:, 1:] != -100  # (B, T-1)
        counts = tgt.sum(1)
        L = int(counts.max())
        # Gather the predicting positions of each row, right-aligned into (B, L).
        order = torch.argsort(tgt.int(), dim=1, stable=True)[:, -L:]  # the L last True positions
        pos_mask = torch.gather(tgt, 1, order)
        hs = torch.gather(h[:, :-1], 1, order[..., None].expand(-1, -1, h.size(-1)))  # (B, L, H)
        ys = torch.gather(labels[:, 1:], 1, order).clamp_min(0)
        logits = float32_logits(hs, self.output_embedding())  # (B, L, V) only at target positions
        if temperature != 1.0:
            logits = logits / temperature
        logp_all = torch.log_softmax(logits, -1)
        logp = logp_all.gather(-1, ys[..., None]).squeeze(-1)
        if with_entropy:
            ent = -(logp_all.exp() * logp_all).sum(-1)
            return logp * pos_mask, pos_mask, ent * pos_mask
        return logp * pos_mask, pos_mask


def sample_loop(logits_of, embed_next, x: torch.Tensor, att: torch.Tensor, pos: torch.Tensor, *, ends: set[int],
                never: list[int], pad: int, max_new_tokens: int, do_sample: bool, temperature: float,
                top_p: float) -> list[list[int]]:
    """The token-by-token loop of the families whose generation aqa writes itself (a decoder fed
    embeddings on its own cache). `logits_of(x, att, pos)` runs the decoder on `x` (B, T, H) and
    returns the last position's (B, V) float32 logits; `embed_next(nxt)` gives the (B, 1, H) input
    of the sampled (B,) ids. `never` are ids no row may take (`Backend.unsampled_ids`); a row that
    ended gets `pad`. Returns each row's new ids, cut after its first id in `ends` (kept)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    warpers = [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)] if do_sample else []
    end_ids = torch.tensor(sorted(ends), device=x.device)
    out = torch.empty(x.shape[0], 0, dtype=torch.long, device=x.device)
    done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(max_new_tokens):
        logits = logits_of(x, att, pos)  # (B, V)
        if never:
            logits[:, never] = float("-inf")
        for w in warpers:
            logits = w(out, logits)
        nxt = torch.multinomial(logits.softmax(-1), 1)[:, 0] if do_sample else logits.argmax(-1)
        nxt = nxt.masked_fill(done, pad)
        out = torch.cat([out, nxt[:, None]], 1)
        done |= torch.isin(nxt, end_ids)
        if bool(done.all()):
            break
        x = embed_next(nxt)
        att = torch.cat([att, torch.ones_like(att[:, :1])], 1)
        pos = pos[:, -1:] + 1
    return [row[:next((i + 1 for i, t in enumerate(row) if t in ends), len(row))] for row in out.tolist()]


def float32_logits(hidden: torch.Tensor, head: torch.nn.Module, rows: torch.Tensor | None = None) -> torch.Tensor:
    """(..., V) float32 logits of `hidden` (..., H) through the linear `head` (only its `rows`
    of the vocabulary when given), multiplied in float32 with autocast off.

    Why: a bf16 product rounds a logit to 8 significant bits, a step of 0.125 at the 16-32 that
    real letter logits reach, so close options tie (argmax then takes the earlier letter) and
    GRPO's ratios and KL get a floor of rounding noise. The hidden states and weights of a bf16
    model are exact in float32, so this is the float32 computation of the same numbers.

    Memory: the float32 copy of a 7B head (152k x 3584, 2.2 GB) is not kept for the backward
    pass: with gradients on, the product runs under activation checkpointing, which saves the
    bf16 inputs and redoes the cast in the backward pass (the head is frozen under LoRA, but
    the gradient to `hidden` goes through it)."""
    weight, bias = head.weight, getattr(head, "bias", None)
    if rows is not None:
        weight, bias = weight[rows], None if bias is None else bias[rows]

    def product(h, w, b):
        with torch.autocast(device_type=h.device.type, enabled=False):
            out = h.float() @ w.float().T
            return out if b is None else out + b.float()

    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        from torch.utils.checkpoint import checkpoint

        return checkpoint(product, hidden, weight, bias, use_reentrant=False)
    return product(hidden, weight, bias)


def with_prefix(examples: list[Example], prefixes: list[list[int]]) -> list[Example]:
    """`examples` whose answers are `prefixes` (ids, no end token): collated with targets, each
    row ends where the assistant's next token goes."""
    import dataclasses

    return [dataclasses.replace(e, target=None, rationale=None, target_ids=list(p)) for e, p in zip(examples, prefixes)]


class _Rendered:
    """`prompt_around`'s stand-in for a template that does not take the text as it is."""

    def __init__(self, backend: Backend, with_audio: bool):
        self.backend, self.with_audio = backend, with_audio

    def format(self, text: str) -> str:
        return self.backend.prompt(text, with_audio=self.with_audio)


#: Written into an adapter folder trained on top of merged adapters (GRPO after SFT): the
#: adapters to merge, in order, before this one is applied.
STACK_FILE = "aqa_merge_first.json"


#: Weight files that are Python pickles: loading one can run code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def require_safetensors(folder: str | Path, *, allow_pickle: bool = False) -> None:
    """Refuse a local model or adapter folder whose weights exist only as pickles, unless the
    user allows them: aqa loads safetensors, which hold tensors and nothing that runs."""
    f = Path(folder)
    if allow_pickle or not f.is_dir() or any(f.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in f.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        from aqa.io import UserError  # one line from `aqa`, not a traceback

        raise UserError(f"{f}: weights only as pickle files ({', '.join(pickles)}), which can run code when "
                         f"loaded; aqa loads safetensors. Convert them by loading once where you trust them and "
                         f"calling save_pretrained(folder, safe_serialization=True), or allow pickles "
                         f"(aqa eval --allow-pickle, or allow_pickle=true in a training config)")


def adapter_stack(adapter: str | Path) -> list[str]:
    """The adapter folders `adapter` was trained on top of (merged first), in order."""
    stack = Path(adapter) / STACK_FILE
    return json.loads(stack.read_text())["merge_first"] if stack.is_file() else []


#: Written into an adapter folder whose answers start with a think block (SFT `target=reasoning`):
#: the model it makes reasons, whatever its base's chat template says.
REASONING_FILE = "aqa_reasoning.json"


def adapter_reasons(adapter: str | Path | None) -> bool:
    """Whether `adapter`, or one of the adapters merged under it, was trained to reason first."""
    if not adapter:
        return False
    return any((Path(a) / REASONING_FILE).is_file() for a in [*adapter_stack(adapter), adapter])


def merge_adapter_stack(model, adapter: str | Path, *, include_self: bool = True, allow_pickle: bool = False):
    """Merge into `model`'s weights the adapters that `adapter`'s STACK_FILE names, in order,
    then (with `include_self`) `adapter` itself. Returns the merged transformers model and the
    list of adapter folders merged (what an adapter trained on top must record)."""
    merged = adapter_stack(adapter) + ([str(Path(adapter).resolve())] if include_self else [])
    for path in merged:
        if not Path(path).is_dir():
            from aqa.io import UserError

            raise UserError(f"{Path(adapter) / STACK_FILE}: names {path}, the adapter this one was trained on top "
                            f"of, which is not there any more; put it back, or train again")
        require_safetensors(path, allow_pickle=allow_pickle)
        model = load_peft_adapter(model, path).merge_and_unload()
    return model, merged


def attach_adapter(model, adapter: str, *, is_trainable: bool = False):
    """Wrap `model` with the peft adapter at `adapter`, first merging the adapters its
    STACK_FILE names (so a GRPO adapter loads on top of the SFT weights it was trained on)."""
    model, _ = merge_adapter_stack(model, adapter, include_self=False)
    return load_peft_adapter(model, adapter, is_trainable=is_trainable)


def _model_name(name_or_path: str) -> str:
    """The name a model goes by, whatever folder holds it: the last part of a path or Hugging
    Face id, and for a snapshot in the Hub's cache (models--owner--name/snapshots/HASH) its name."""
    parts = Path(str(name_or_path).rstrip("/")).parts
    for part in reversed(parts):
        if part.startswith("models--"):
            return part.split("--")[-1].lower()
    return parts[-1].lower() if parts else ""


def _shape_mismatch(line: str) -> str:
    """torch's "size mismatch for NAME: copying a param with shape torch.Size([2, 32]) from
    checkpoint, the shape in current model is torch.Size([2, 48])." said shortly."""
    import re

    m = re.match(r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[(.*?)\]\) from checkpoint, "
                 r"the shape in current model is torch\.Size\(\[(.*?)\]\)", line)
    if not m:
        return line
    name = m.group(1).removeprefix("base_model.model.").removesuffix(".weight").removesuffix(".default")
    return f"{name} is [{m.group(2)}] in the adapter, [{m.group(3)}] in the model"


def load_peft_adapter(model, adapter: str | Path, *, is_trainable: bool = False):
    """`PeftModel.from_pretrained`, with an adapter made for another model refused in one line
    naming both (peft raises a page of shape mismatches, or only warns of LoRA weights it did
    not find, which leaves the adapter doing nothing); an adapter whose config names another
    base model than this one's, and that loads, is a warning: the same shapes may be another
    checkpoint (an instruct model's base), or the same one moved."""
    import logging
    import warnings

    from peft import NoMatchingPeftModuleError, PeftModel

    from aqa.io import UserError

    log = logging.getLogger(__name__)
    here = str(getattr(model, "name_or_path", "") or "")
    try:
        config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    except (OSError, ValueError):  # a Hub id, or a broken config that the loader names
        config = {}
    config = config if isinstance(config, dict) else {}
    base = str(config.get("base_model_name_or_path") or "")
    made_for = f" (made for {base}, says its adapter_config.json)" if base else ""

    def misfit(why: str) -> UserError:
        return UserError(f"{adapter}: this adapter does not fit the model {here or 'loaded'}{made_for}: {why}")

    # peft records the class of the model an adapter was made on (for a model it has no task
    # type for, as aqa's are): another class is another architecture, even where the shapes agree.
    mapping = config.get("auto_mapping")
    made_on = mapping.get("base_model_class") if isinstance(mapping, dict) else None
    if made_on and made_on != type(model).__name__:
        raise misfit(f"it adapts a {made_on}, this model is a {type(model).__name__}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            loaded = PeftModel.from_pretrained(model, str(adapter), is_trainable=is_trainable)
        except RuntimeError as e:
            mismatches = [line.strip() for line in str(e).splitlines() if line.strip().startswith("size mismatch")]
            if not mismatches:
                raise
            more = f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
            raise misfit(_shape_mismatch(mismatches[0]) + more) from None
        except NoMatchingPeftModuleError:
            raise misfit("none of the layers it adapts is in this model") from None
    for w in caught:
        text = str(w.message)
        if "Found missing adapter keys" in text:
            keys = text.split(": ", 1)[-1]
            keys = keys if len(keys) <= 200 else keys[:200] + "..."
            raise misfit(f"this model has LoRA layers the adapter holds no weights for ({keys})")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if base and here and _model_name(base) != _model_name(here):
        log.warning("%s was made for %s (its adapter_config.json), and is loaded on %s: it fits, but is this "
                    "the model it was trained on?", adapter, base, here)
    return loaded


class AdapterWeights:
    """Weights held on the device for some of a model's tensors (`Backend.adapter_weights_from`),
    which `swapped_in()` puts in their place for a no-grad pass.

    The swap exchanges each tensor's storage with the held one (`.data`) and back: nothing is
    allocated or copied, and the model keeps its parameter objects, so the optimizer's state,
    DDP's gradient hooks and a ZeRO-1/2 flat buffer (whose views the parameters are, and which
    the optimizer step writes through) all find theirs again on exit, exactly as they were."""

    def __init__(self, tensors: list[torch.Tensor], held: list[torch.Tensor]):
        self._tensors, self._held = tensors, held
        self._inside = False

    def __len__(self) -> int:
        return len(self._tensors)

    @contextmanager
    def swapped_in(self):
        """Context in which the model's tensors hold these weights."""
        if torch.is_grad_enabled():
            # A graph built inside would save the held weights under the model's names (the
            # swap bumps no version counter), and its backward would run after they are gone.
            raise RuntimeError("AdapterWeights.swapped_in is for passes without gradients (torch.no_grad)")
        if self._inside:
            raise RuntimeError("AdapterWeights.swapped_in is already active")
        self._swap()
        self._inside = True
        try:
            yield
        finally:
            self._swap()
            self._inside = False

    def _swap(self) -> None:
        for i, t in enumerate(self._tensors):
            if (t.shape, t.dtype, t.device) != (self._held[i].shape, self._held[i].dtype, self._held[i].device):
                # Setting .data of another dtype or device would drop the parameter's gradient
                # accumulator and with it DDP's hooks: the module was changed since (prepare()?).
                raise RuntimeError(f"a model tensor changed to {tuple(t.shape)} {t.dtype} {t.device} since its "
                                   f"weights were held; make the AdapterWeights after accelerate's prepare()")
        for i, t in enumerate(self._tensors):
            self._held[i], t.data = t.data, self._held[i]


def device_load_kwargs(device: torch.device) -> dict:
    """`from_pretrained`'s keyword arguments that read every weight of the model straight onto
    `device`, rather than building the model on the CPU and moving it after, and that keep
    transformers' own layers (no hub kernels).

    Why, from transformers 5.25's loading code (`modeling_utils.from_pretrained`,
    `core_model_loading.convert_and_load_state_dict_in_model`) and safetensors 0.8:
    - the model is built on the meta device (no weights allocated); each checkpoint tensor
      is a view of the memory-mapped safetensors file (file-backed page cache, which
      processes share; nothing copied) until `.to(device, dtype)` is called on it, one tensor
      at a time on 4 reader threads, `device` from the device map (`{"": "cpu"}` without one);
    - so without a map every weight lands on the CPU: in the file's dtype still a view of the
      file, but converted (a bf16 load of an fp32 file, an fp32 load of a bf16 one) a private
      copy, the whole model in anonymous host memory in every process until `.to(device)`
      moved it; with the map the host holds only the tensors in flight (PyTorch's copy to
      a GPU converts a tensor's dtype on the CPU first);
    - a converter of the model's weight mapping works on the device the pieces were read to:
      Qwen3-Omni's checkpoint holds one tensor per expert, which the qwen2_moe mapping that
      transformers applies to qwen3_omni_moe stacks (`MergeModulelist`, `Concatenate`) into
      `mlp.experts.gate_up_proj` / `down_proj`, new tensors; read to the CPU they are a
      private host copy of nearly all of the 30B model even without a dtype change, read to
      the device they are made there;
    - one device in the map attaches no accelerate hooks (only several devices or "disk" do),
      and non-persistent buffers (rotary `inv_freq`) are made on the map's device;
    - after loading, transformers "kernelizes" the model for the map's device (`use_kernels`
      is on by default and `kernels` is one of its requirements): for CUDA that swaps in hub
      kernels (RMSNorm, activations, rotary embedding) fetched from the Hugging Face Hub. A
      model loaded to the CPU was kernelized for the CPU, for which none is mapped, so aqa
      has always run transformers' own layers; `use_kernels=False` keeps it so;
    - DeepSpeed ZeRO-3 refuses a device map (`check_and_set_device_map`): transformers then
      builds the model under `zero.Init`, reads it on rank 0 only and partitions it, so no
      map is given there."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        return {"use_kernels": False}
    return {"device_map": {"": device}, "use_kernels": False}


def same_device(have: torch.device, want: torch.device) -> bool:
    """Whether a tensor on `have` is on `want`: "cuda" without an index is the current GPU, and
    a CPU tensor is on "cpu" whatever the index asked (accelerate's CPU processes ask "cpu:0";
    PyTorch's CPU tensors have none)."""
    if have.type != want.type:
        return False
    if have.type == "cpu" or (want.index is None and want.type != "cuda"):
        return True
    if want.index is None:
        return have.index == torch.cuda.current_device()
    return have.index == want.index


def require_on_device(model: torch.nn.Module, device: torch.device) -> None:
    """Refuse a model with a parameter or buffer outside `device` (see `Backend.from_parts`)."""
    elsewhere = [(n, t.device) for n, t in [*model.named_parameters(), *model.named_buffers()]
                 if not same_device(t.device, device)]
    if elsewhere:
        name, where = elsewhere[0]
        raise ValueError(f"{len(elsewhere)} weights of the loaded {type(model).__name__} are not on {device} "
                         f"(e.g. {name} on {where}): a loader must read them onto the device it is given")


def default_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU, unless the user says otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype and dtype != "auto":
        return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}[dtype]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class BackendModule(torch.nn.Module):
    """One `forward` around a backend's computations, so that DDP and DeepSpeed (which hook
    a module's forward) wrap exactly what training calls."""

    def __init__(self, backend: Backend):
        super().__init__()
        self.model = backend.model
        self._backend = (backend,)  # a tuple keeps it out of the module tree

    def forward(self, batch: dict[str, torch.Tensor], what: str = "target_logprobs",
                n_options: list[int] | None = None, temperature: float = 1.0):
        b = self._backend[0]
        if what == "target_logprobs":
            return b.target_logprobs(batch)
        if what == "option_logits":
            return b.option_logits(batch, n_options)
        if what == "target_logprobs_entropy":
            return b.target_logprobs(batch, with_entropy=True, temperature=temperature)
        raise ValueError(what)
