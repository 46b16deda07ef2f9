"""A backend on a transformers audio-language model whose real processor renders the chat
template and expands the audio placeholder itself (Qwen2.5-Omni, Qwen3-Omni, Audio Flamingo 3, Voxtral).

Batches: every example goes through the processor alone, then the rows are left-padded (ids)
and the per-example audio inputs merged by the family (`merge_audio`). A row therefore holds
exactly what the processor gives that example alone, whatever else is in the batch: a
processor that pads a batch's clips to the longest one (and so changes the last log-mel frames
of the shorter ones, whose STFT then reads zeros instead of the reflected signal) cannot make
batched scoring differ from one-at-a-time scoring.

Positions: `cumsum(attention_mask) - 1`, explicit, so that a left-padded row computes what it
would alone. For the families here these are the model's own positions (1-D RoPE, or for the
Qwen-Omni multimodal RoPE with audio and text only, the same count on all three axes; each
family's tests compare with transformers' own forward).

Generation: the decoder runs on the same input embeddings and positions as scoring, then one
token at a time on its cache, each new token one position after the last.
"""

from __future__ import annotations

import numpy as np
import torch

from aqa.models.base import Backend, Example, float32_logits, sample_loop

END_OF_TURN = "<|im_end|>"


class ChatProcessorBackend(Backend):
    """A family sets `audio_embeddings`, `merge_audio` and the audio-input hooks."""

    #: The user turn's audio part, as the chat template expects it (rendered, never loaded).
    audio_part = {"type": "audio", "audio": "clip"}

    def __init__(self, model, processor, device, config=None):
        super().__init__(model, processor, device, config)
        self.tokenizer.padding_side = "left"
        #: Token ids that end the assistant's turn (after every target).
        self.end_ids = self.tokenizer.encode(END_OF_TURN, add_special_tokens=False)
        self.audio_token_id = self.config.audio_token_id

    # --- family hooks --------------------------------------------------------------------------
    def processor_audio_kwargs(self, clip: np.ndarray) -> dict:
        """Extra feature-extractor arguments for one clip."""
        return {}

    def audio_inputs(self, enc) -> dict[str, torch.Tensor]:
        """The audio part of the processor's output for one example."""
        raise NotImplementedError

    def merge_audio(self, parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """One batch's audio inputs from the examples' `audio_inputs`, in order."""
        raise NotImplementedError

    def audio_embeddings(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(sum of audio tokens, H) projected audio tokens of every clip, in batch order."""
        raise NotImplementedError

    def decoder(self) -> torch.nn.Module:
        """The language model under the audio fusion (takes inputs_embeds, returns hidden states)."""
        return self.base_model().model.language_model

    def lora_target_modules(self, audio_tower: bool = False) -> str:
        """The decoder's attention and MLP projections, and with `audio_tower` the Whisper-style
        encoder's attention and feed-forward layers; the projector and any other encoder stay
        frozen. Module names: model.language_model.layers.N.{self_attn,mlp}.X and
        model.audio_tower.layers.N.{self_attn.X, fc1, fc2}."""
        lm = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
        at = r"model\.audio_tower\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|fc1|fc2)"
        return rf"^(base_model\.model\.)?({lm}|{at})$" if audio_tower else rf"^(base_model\.model\.)?{lm}$"

    # --- prompt ----------------------------------------------------------------------------------
    def prompt(self, text: str, with_audio: bool = True) -> str:
        """The chat template's rendering of one user turn (the clip, then the question) and the
        assistant's start."""
        content = ([dict(self.audio_part)] if with_audio else []) + [{"type": "text", "text": text}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                  add_generation_prompt=True, tokenize=False)

    def encode(self, example: Example) -> tuple[list[int], dict[str, torch.Tensor] | None]:
        """Prompt ids of one example and its audio inputs, as the processor gives them for the
        example alone (the clip cut to `audio_seconds` first), its text as plain text."""
        text, plain = self.hide_special(example.text)
        if example.audio is None:
            return self.restore_text(self.process(text, None)["input_ids"][0].tolist(), plain), None
        clip = np.asarray(example.audio, dtype=np.float32)
        if self.audio_seconds is not None:
            clip = clip[: int(self.audio_seconds * self.processor.feature_extractor.sampling_rate)]
        enc = self.process(text, clip)
        return self.restore_text(enc["input_ids"][0].tolist(), plain), self.audio_inputs(enc)

    def process(self, text: str, clip: np.ndarray | None):
        """The processor's output (`input_ids` and the audio inputs) for one user turn: `clip`
        (None: none), then `text`."""
        if clip is None:
            return self.processor(text=[self.prompt(text, with_audio=False)], return_tensors="pt")
        fe = self.processor.feature_extractor
        return self.processor(text=[self.prompt(text)], audio=[clip], return_tensors="pt",
                              audio_kwargs={"sampling_rate": fe.sampling_rate, **self.processor_audio_kwargs(clip)})

    def collate(self, examples: list[Example], *, with_target: bool = False) -> dict[str, torch.Tensor]:
        text_only = [e.audio is None for e in examples]
        if any(text_only) and not all(text_only):
            raise ValueError("a batch mixes examples with and without audio")
        rows, lab_rows, audio = [], [], []
        for e in examples:
            ids, a = self.encode(e)
            ids, labels = self.prompt_with_target(e, ids, with_target)
            rows.append(ids)
            lab_rows.append(labels)
            if a is not None:
                audio.append(a)
        batch = self.left_padded(rows, lab_rows if with_target else None)
        if audio:
            batch.update(self.merge_audio(audio))
        return {k: v.to(self.device) for k, v in batch.items()}

    # --- forward ---------------------------------------------------------------------------------
    def input_embeddings(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T, H) decoder input: token embeddings with the projected audio tokens at the audio
        placeholders."""
        ids = batch["input_ids"]
        x = self.base_model().get_input_embeddings()(ids)
        if batch.get("input_features") is not None:
            audio = self.audio_embeddings(batch)
            slots = (ids == self.audio_token_id)[..., None]
            if int(slots.sum()) != audio.shape[0]:
                raise ValueError(f"{int(slots.sum())} audio placeholders for {audio.shape[0]} audio tokens")
            x = x.masked_scatter(slots, audio.to(x.dtype))
        return x

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.decoder()(inputs_embeds=self.input_embeddings(batch), attention_mask=batch["attention_mask"],
                             position_ids=batch["position_ids"], use_cache=False)
        return out.last_hidden_state

    def output_embedding(self) -> torch.nn.Module:
        return self.base_model().lm_head

    def feature_lengths(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        mask = batch.get("feature_attention_mask")  # the Qwen-Omni batches: clips right-padded to the longest
        return None if mask is None else mask.sum(-1)

    def stop_ids(self) -> set[int]:
        eos = getattr(self.base_model().generation_config, "eos_token_id", None)
        return set(self.end_ids) | set(eos if isinstance(eos, list) else [] if eos is None else [eos])

    @torch.no_grad()
    def generate_ids(self, batch: dict[str, torch.Tensor], *, max_new_tokens: int = 16, do_sample: bool = False,
                     temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1) -> list[list[int]]:
        """New token ids per sequence (B * num_return_sequences, grouped by prompt), cut after
        the first end token, which is kept. The first token comes from the scored position."""
        from transformers import DynamicCache

        lm, embed, head = self.decoder(), self.base_model().get_input_embeddings(), self.output_embedding()
        n = num_return_sequences
        cache = DynamicCache(config=lm.config)

        def logits_of(x, att, pos):
            h = lm(inputs_embeds=x, attention_mask=att, position_ids=pos, cache=cache, use_cache=True)
            return float32_logits(h.last_hidden_state[:, -1], head)  # (B*n, V)

        return sample_loop(logits_of, lambda nxt: embed(nxt[:, None]),
                           self.input_embeddings(batch).repeat_interleave(n, 0),  # (B*n, T, H)
                           batch["attention_mask"].repeat_interleave(n, 0),
                           batch["position_ids"].repeat_interleave(n, 0),
                           ends=self.stop_ids(), never=self.unsampled_ids(), pad=self.tokenizer.pad_token_id,
                           max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p)
