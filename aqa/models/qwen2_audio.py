"""Qwen2-Audio backend through transformers' own classes (`Qwen2AudioForConditionalGeneration`
and its processor). The same code serves Qwen2-Audio-7B-Instruct on GPUs and the tiny
random model of `aqa model tiny` on CPU: nothing here knows which it has.

Prompt: the checkpoint's chat template with one user turn holding the audio and the question
text; the assistant's answer (the option letter) follows `<|im_start|>assistant\\n` and ends
with `<|im_end|>`.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from aqa.models.base import Backend, Example

log = logging.getLogger(__name__)

END_OF_TURN = "<|im_end|>"


class Qwen2AudioBackend(Backend):
    family = "qwen2_audio"
    transformers_class = "Qwen2AudioForConditionalGeneration"

    def __init__(self, model, processor, device, config=None):
        super().__init__(model, processor, device, config)
        self.tokenizer.padding_side = "left"
        #: Token ids that end the assistant's turn (after every target).
        self.end_ids = self.tokenizer.encode(END_OF_TURN, add_special_tokens=False)
        self.audio_token_id = self.config.audio_token_id

    @property
    def audio_seconds(self) -> float:
        return float(self.processor.feature_extractor.chunk_length)

    def audio_tokens_of(self, samples: int) -> int:
        # The processor pads every clip to the window and counts its tokens from the real frames:
        # the encoder's stride-2 convolution, then its average pooling by 2.
        fe = self.processor.feature_extractor
        frames = self.whisper_frames(samples, fe.n_samples, fe.hop_length)
        return ((frames - 1) // 2 + 1 - 2) // 2 + 1

    def prompt(self, text: str, with_audio: bool = True) -> str:
        content = ([{"type": "audio", "audio_url": "clip"}] if with_audio else []) + [{"type": "text", "text": text}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                  add_generation_prompt=True, tokenize=False)

    def collate(self, examples: list[Example], *, with_target: bool = False) -> dict[str, torch.Tensor]:
        fe = self.processor.feature_extractor
        window = int(fe.chunk_length * fe.sampling_rate)
        hidden = [self.hide_special(e.text) for e in examples]
        text_only = [e.audio is None for e in examples]
        if all(text_only):  # a prompt without audio: the tokenizer alone
            enc = self.tokenizer([self.prompt(text, with_audio=False) for text, _ in hidden], padding=True,
                                 return_tensors="pt")
        elif any(text_only):
            raise ValueError("a batch mixes examples with and without audio")
        else:
            enc = self.processor(text=[self.prompt(text) for text, _ in hidden],
                                 audio=[e.audio[:window] for e in examples], sampling_rate=fe.sampling_rate,
                                 padding=True, return_tensors="pt")
        # Each unpadded prompt gets its text's plain ids back and the target ids appended, then
        # the rows are left-padded again.
        rows, lab_rows = [], []
        for e, (_, plain), ids, att in zip(examples, hidden, enc["input_ids"], enc["attention_mask"]):
            prompt = self.restore_text(ids[att.bool()].tolist(), plain)
            ids, labels = self.prompt_with_target(e, prompt, with_target)
            rows.append(ids)
            lab_rows.append(labels)
        enc.update(self.left_padded(rows, lab_rows if with_target else None))
        return {k: v.to(self.device) for k, v in enc.items() if k != "num_audio_tokens"}

    #: Run the audio encoder on the real frames only (exact; see `audio_embeddings`).
    trim_audio: bool = True

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        core = self.base_model().model  # Qwen2AudioModel: encoder, projector, decoder
        if not self.trim_audio or batch.get("input_features") is None:
            out = core(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"], input_features=batch.get("input_features"),
                       feature_attention_mask=batch.get("feature_attention_mask"), use_cache=False)
            return out.last_hidden_state
        ids = batch["input_ids"]
        embeds = core.get_input_embeddings()(ids)
        audio = self.audio_embeddings(batch["input_features"], batch["feature_attention_mask"])  # (n_audio_tokens, H)
        slots = (ids == self.base_model().config.audio_token_id)[..., None]
        embeds = embeds.masked_scatter(slots, audio.to(embeds.dtype))
        out = core.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                  position_ids=batch["position_ids"], use_cache=False)
        return out.last_hidden_state

    def audio_embeddings(self, features: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
        """Projected audio tokens of every clip, concatenated: (sum of audio tokens, H).

        Whisper pads every clip to the window (30 s), and the encoder's attention already masks
        the padded frames, so running it on the longest real clip plus the 2 frames its two
        convolutions reach gives the same real positions for less work; the positional
        embedding is sliced to the shorter length. tests/test_backend.py checks it against
        transformers' padded path."""
        from transformers.masking_utils import create_bidirectional_mask

        core = self.base_model().model
        enc = core.audio_tower
        lengths = feature_mask.sum(-1)  # (B,) real mel frames
        conv_len, out_len = enc._get_feat_extract_output_lengths(lengths)
        frames = min(features.shape[-1], int(lengths.max()) + 2)
        frames += frames % 2  # conv2 has stride 2
        x = features[..., :frames].to(enc.conv1.weight.dtype)
        x = torch.nn.functional.gelu(enc.conv1(x))
        x = torch.nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)  # (B, P, D)
        P = x.shape[1]
        x = x + enc.embed_positions.weight[:P]
        x = torch.nn.functional.dropout(x, p=enc.dropout, training=enc.training)
        keep = (torch.arange(P, device=x.device)[None, :] < conv_len[:, None]).long()
        mask = create_bidirectional_mask(config=enc.config, inputs_embeds=x, attention_mask=keep)
        for layer in enc.layers:
            x = layer(x, mask)
        x = enc.avg_pooler(x.permute(0, 2, 1)).permute(0, 2, 1)
        x = core.multi_modal_projector(enc.layer_norm(x))  # (B, P/2, H)
        real = torch.arange(x.shape[1], device=x.device)[None, :] < out_len[:, None]
        return x[real]

    def lora_target_modules(self, audio_tower: bool = False) -> str:
        # Module names: model.language_model.layers.N.{self_attn,mlp}.X and
        # model.audio_tower.layers.N.{self_attn.X, fc1, fc2}; the projector stays frozen.
        lm = r"model\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
        at = r"model\.audio_tower\..*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"
        return rf"^(base_model\.model\.)?({lm}|{at})$" if audio_tower else rf"^(base_model\.model\.)?{lm}$"

    def output_embedding(self) -> torch.nn.Module:
        return self.base_model().lm_head

    def feature_lengths(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        mask = batch.get("feature_attention_mask")  # (B, 3000): every clip padded to the window
        return None if mask is None else mask.sum(-1)

    # --- audio-encoder pretraining (tiny models) --------------------------------------------
    def audio_encoder(self) -> torch.nn.Module:
        return self.base_model().model.audio_tower

    def encoder_inputs(self, clips):
        fe = self.processor.feature_extractor
        return torch.tensor(np.stack([fe(a, sampling_rate=fe.sampling_rate, return_tensors="np")["input_features"][0]
                                      for a in clips]))  # (N, mels, frames)

    def encoder_states(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.audio_encoder()(inputs).last_hidden_state  # (B, F, D), after the average pooling

    @torch.no_grad()
    def generate_ids(self, batch: dict[str, torch.Tensor], *, max_new_tokens: int = 16, do_sample: bool = False,
                     temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1) -> list[list[int]]:
        """New token ids per sequence (B * num_return_sequences, grouped by prompt), cut after
        the first end token, which is kept."""
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "position_ids")}
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                  temperature=temperature if do_sample else None,
                                  top_p=top_p if do_sample else None, top_k=None,
                                  num_return_sequences=num_return_sequences,
                                  pad_token_id=self.tokenizer.pad_token_id,
                                  suppress_tokens=self.unsampled_ids())
        eos = self.base_model().generation_config.eos_token_id
        ends = set(self.end_ids) | set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        seqs = []
        for row in out[:, batch["input_ids"].shape[1]:].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in ends), len(row))
            seqs.append(row[:cut])
        return seqs
