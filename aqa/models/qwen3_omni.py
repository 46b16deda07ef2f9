"""Qwen3-Omni-30B-A3B backend (Instruct and Thinking checkpoints): the thinker
(`Qwen3OmniMoeThinkerForConditionalGeneration`, a mixture-of-experts decoder: 48 layers of 128
experts, 8 active per token) and the real `Qwen3OmniMoeProcessor`, no remote code; bf16 on GPUs,
the tiny random thinker of `aqa model tiny --family qwen3-omni` on CPU.

Loading (aqa/models/omni.py): the talker and code2wav are never loaded. A whole-model
checkpoint (config.json `model_type` qwen3_omni_moe, weights under `thinker.`, `talker.`,
`code2wav.`) is read through the thinker class with `config.thinker_config`; transformers'
conversion for this class strips `thinker.`, renames the legacy names and stacks the
per-expert weights (`mlp.experts.E.{gate,up,down}_proj.weight`) into `mlp.experts.gate_up_proj`
(E, 2I, H) and `mlp.experts.down_proj` (E, H, I). Only the shards holding `thinker.` weights are
opened (or downloaded).

Prompt (the checkpoint's chat template, one user turn, audio then question):

    <|im_start|>user\\n<|audio_start|><|audio_pad|> x N<|audio_end|>{question}<|im_end|>\\n<|im_start|>assistant\\n

with N = 13 audio tokens per second (each 100-frame chunk goes through three stride-2
convolutions: 100 -> 50 -> 25 -> 13), as the processor counts them. The answer is the option
letter then `<|im_end|>`. The Thinking checkpoint is served with its own chat template as it
is; that template mentions `<think>`, so the backend takes it for a model that reasons first
(`Backend.thinks`, docs/models.md "Reasoning models"): its generation prompt leaves the
assistant turn open for the model's `<think>`, letters are scored after an empty think block
(`<think>\n\n</think>\n\n`, thinking switched off as in Qwen3's template), SFT targets start
with a think block, and generation reads the answer after `</think>`. Tested on the tiny
`qwen3-omni-thinking`, whose template is written in that layout (aqa/models/tiny/omni.py
`_thinking_template` says what of the real one is known). Left padding, explicit positions
(aqa/models/omni.py).

Audio limit: the processor pads a batch to its longest clip and never truncates, so the bound
is the decoder's context: `audio_seconds` is (max_position_embeddings - 1024) / 13, keeping
1024 positions for the question and the answer (about 83 minutes at the 65,536 positions of
the 30B-A3B config, if that is what the checkpoint's config.json says).

Encoder on the real frames: the model already takes only the frames under
`feature_attention_mask`, in 1 s chunks, attending within windows of `n_window_infer` frames.
One thing makes transformers' own batched forward depend on the batch: the chunks are padded
to the batch's longest chunk, and the convolutions (not masked between layers, unlike
Qwen2.5-Omni's) let that padding reach the last audio token of a clip shorter than one chunk
(1 s) whose frame count is not a multiple of 8. The backend encodes clips in groups of equal
min(frames, chunk), so every clip's chunks are padded exactly as they are when it is alone; the
processor is also run per example (its padding to the batch's longest clip changes the last
log-mel frames of the shorter ones). Tests: batched equals one at a time (with the encoder's
convolutions scaled up so that the effect is visible), and option logits equal transformers' own
forward on each example.

LoRA: the decoder's attention projections (q/k/v/o_proj of every layer, linear layers) through
peft's `target_modules`, given as a list of names (see `lora_target_modules`); the experts'
stacked weights (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`: a rank-r update per expert)
and the router (`mlp.gate.weight`, not an nn.Linear) through peft's `target_parameters`
(peft 0.21 `lora.ParamWrapper`), which allows no LoRA dropout: `add_lora` refuses dropout > 0
for this family (configs/qwen3_omni set 0). With r = 8 on the real model that is about 6.4 M
adapter weights per layer for the experts (each of the 128 experts gets its own rank-8 pair),
about 300 M in all. The recipes add no router load-balancing loss.
"""

from __future__ import annotations

import re

import torch

from aqa.models.omni import OmniThinkerBackend

#: Positions of the decoder's context kept for the question and the answer.
PROMPT_RESERVE = 1024


class Qwen3OmniBackend(OmniThinkerBackend):
    family = "qwen3_omni_moe"
    thinker_class_name = "Qwen3OmniMoeThinkerForConditionalGeneration"
    processor_class_name = "Qwen3OmniMoeProcessor"
    full_model_type = "qwen3_omni_moe"

    def __init__(self, model, processor, device, config=None):
        super().__init__(model, processor, device, config)
        # Read once and kept beside the model: DataLoader workers collate with a copy of the
        # backend that holds no model.
        cfg = self.config
        self.audio_config = cfg.audio_config
        self.context = cfg.text_config.max_position_embeddings

    @property
    def tokens_per_second(self) -> int:
        return int(self.audio_tokens(torch.tensor([2 * self.audio_config.n_window]))[0])

    @property
    def audio_seconds(self) -> float:
        return (self.context - PROMPT_RESERVE) / self.tokens_per_second

    def audio_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

        return _get_feat_extract_output_lengths(frames, self.audio_config.n_window)

    def audio_tokens_of(self, samples: int) -> int:
        # The processor pads a clip alone to its own length, so its real frames are its whole hops.
        fe = self.processor.feature_extractor
        return int(self.audio_tokens(torch.tensor([self.whisper_frames(samples, samples, fe.hop_length)]))[0])

    def audio_embeddings(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(sum of audio tokens, H) encoder outputs in batch order, each clip encoded with the
        clips whose chunks are padded as its own are when it is alone (same min(frames, chunk))."""
        core = self.base_model().model
        features, feature_mask = batch["input_features"], batch["feature_attention_mask"]
        frames = feature_mask.sum(-1)  # (B,)
        key = frames.clamp(max=2 * self.audio_config.n_window)
        n_tokens = self.audio_tokens(frames).tolist()
        parts: list[torch.Tensor | None] = [None] * len(n_tokens)
        for k in key.unique().tolist():
            rows = (key == k).nonzero()[:, 0].tolist()
            F = int(frames[rows].max())
            out = core.get_audio_features(features[rows, :, :F], feature_mask[rows, :F],
                                          return_dict=True).last_hidden_state
            for r, x in zip(rows, out.split([n_tokens[r] for r in rows])):
                parts[r] = x
        return torch.cat(parts)

    def lora_target_modules(self, audio_tower: bool = False) -> list[str]:
        """The names of the decoder's attention projections (and the audio encoder's linear
        layers when asked), listed: peft 0.21 rewrites the target regex of a transformers-v5 MoE
        model into bare leaf names (its v4-to-v5 conversion), which would also catch the audio
        encoder's q/k/v_proj; exact names are kept as they are."""
        # Module names: model.language_model.layers.N.self_attn.{q,k,v,o}_proj and
        # model.audio_tower.layers.N.{self_attn.X, fc1, fc2}. A dense layer's mlp.{gate,up,down}_proj
        # (mlp_only_layers; none in 30B-A3B) is left out: that conversion would take those names
        # for the experts'.
        lm = r"model\.language_model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj"
        at = r"model\.audio_tower\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|fc1|fc2)"
        rx = re.compile(rf"{lm}|{at}" if audio_tower else lm)
        return [n for n, _ in self.base_model().named_modules() if rx.fullmatch(n)]

    def lora_target_parameters(self, audio_tower: bool = False) -> list[str]:
        # Suffixes peft matches against "<module>.<parameter>"; only the decoder's MoE blocks have them.
        return ["mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp.gate.weight"]
