"""What the Qwen-Omni thinker backends share (aqa/models/qwen2_5_omni.py, aqa/models/qwen3_omni.py).

A Qwen-Omni checkpoint is a thinker (audio and vision encoders + a decoder that writes text)
and a talker with a vocoder that turn the thinker's output into speech. aqa needs text only,
so it loads the thinker class alone:

- a thinker-only folder (config.json `model_type` ..._thinker, as `aqa model tiny --family`
  writes) loads as it is;
- a whole-model folder or hub id (config.json `model_type` qwen2_5_omni / qwen3_omni_moe, the
  official layout: weights under `thinker.`, `talker.`, `token2wav.` / `code2wav.`) loads
  through the thinker class with the config's `thinker_config`; transformers' own conversion
  for these classes strips the `thinker.` prefix (and, for Qwen3-Omni, stacks the per-expert
  weights). aqa hands transformers a view of the folder whose shard index lists the
  `thinker.` weights only, so shards holding nothing but talker or vocoder weights are never
  opened, and for a hub id never downloaded (only the shards with thinker weights and the
  small config, tokenizer and processor files are fetched).

The processor is the family's real transformers processor class. Its video processor needs
torchvision, which an audio prompt never uses: aqa builds the processor from its tokenizer,
feature extractor, image processor and chat template as saved in the folder, with a bare
`BaseVideoProcessor` in the video slot, so that audio and text work with or without
torchvision (`load_processor`).

Batches: every example is put through the processor alone, then the rows are left-padded
(ids) and right-padded (log-mel frames, which the model selects by `feature_attention_mask`
and never reads past). A row therefore holds exactly what the processor gives that example
alone, whatever else is in the batch; with explicit position ids (see below) batched scoring
equals one-at-a-time scoring.

Positions: both families use multimodal RoPE (three position axes). For text and audio
without image or video, transformers' own `get_rope_index` gives every token the running
count of real tokens on all three axes (audio tokens advance it by one each, like text), so
the backends pass the 2-D positions `cumsum(attention_mask) - 1`, which the decoder expands
to the three axes: the same numbers as the model's own forward, and a left-padded row
computes what it would alone. The tests check both against transformers' own forward.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from aqa.models.base import Backend, Example, attach_adapter, default_device, default_dtype

log = logging.getLogger(__name__)

END_OF_TURN = "<|im_end|>"

#: What a hub download of a whole Qwen-Omni model fetches besides the thinker's shards.
SMALL_FILES = ["*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


# --- loading -------------------------------------------------------------------------------------
def local_folder(path: str, full_model_type: str) -> Path:
    """A local folder for `path`; a hub id is downloaded without the shards that hold no
    thinker weights (the talker and the vocoder)."""
    p = Path(path)
    if p.is_dir():
        return p
    if p.exists() or path.startswith((".", "/")):
        raise FileNotFoundError(f"{path}: not a model folder")
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.utils import EntryNotFoundError

    cfg = json.loads(Path(hf_hub_download(path, "config.json")).read_text())
    patterns = list(SMALL_FILES)
    try:
        index = json.loads(Path(hf_hub_download(path, "model.safetensors.index.json")).read_text())
    except EntryNotFoundError:
        index = None
    if index is None:
        patterns.append("model.safetensors")
    elif cfg.get("model_type") == full_model_type:
        patterns += sorted({f for k, f in index["weight_map"].items() if k.startswith("thinker.")})
    else:
        patterns += sorted(set(index["weight_map"].values()))
    return Path(snapshot_download(path, allow_patterns=patterns))


@contextmanager
def thinker_view(folder: Path, full_model_type: str):
    """`folder` itself, or for a sharded whole-model checkpoint a temporary folder of links
    whose shard index names only the `thinker.` weights (and so only their shards)."""
    cfg = json.loads((folder / "config.json").read_text())
    index_file = folder / "model.safetensors.index.json"
    if cfg.get("model_type") != full_model_type or not index_file.is_file():
        yield folder
        return
    index = json.loads(index_file.read_text())
    weights = {k: f for k, f in index["weight_map"].items() if k.startswith("thinker.")}
    if not weights:
        raise ValueError(f"{index_file}: no thinker.* weights")
    missing = sorted({f for f in weights.values() if not (folder / f).is_file()})
    if missing:
        raise FileNotFoundError(f"{folder}: thinker shards missing: {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="aqa-thinker-") as tmp:
        view = Path(tmp)
        for f in folder.iterdir():
            if f.name != index_file.name and (f.suffix != ".safetensors" or f.name in weights.values()):
                os.symlink(f.resolve(), view / f.name)
        (view / index_file.name).write_text(json.dumps({"metadata": index.get("metadata", {}), "weight_map": weights}))
        yield view


def load_thinker(thinker_cls, folder: Path, full_model_type: str, dtype: torch.dtype, trust_remote_code: bool):
    """The thinker of a thinker-only or whole-model checkpoint folder."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if config.model_type == full_model_type:
        config = config.thinker_config
    with thinker_view(folder, full_model_type) as view:
        return thinker_cls.from_pretrained(view, config=config, dtype=dtype, attn_implementation="sdpa",
                                           trust_remote_code=trust_remote_code, use_safetensors=True)


def processor_class_without_video_check(processor_cls):
    """`processor_cls` with its sub-processor type check relaxed for the video slot only:
    without torchvision transformers cannot name the video-processor base class, so the check
    would refuse any video processor. Every method is the family's own."""
    from transformers.video_processing_utils import BaseVideoProcessor

    def check_argument_for_proper_class(self, name, argument):
        if name == "video_processor" and isinstance(argument, BaseVideoProcessor):
            return type(argument)
        return processor_cls.check_argument_for_proper_class(self, name, argument)

    return type(processor_cls.__name__, (processor_cls,),
                {"check_argument_for_proper_class": check_argument_for_proper_class,
                 "__module__": processor_cls.__module__, "__doc__": processor_cls.__doc__})


def load_processor(processor_cls, folder: Path, trust_remote_code: bool = False):
    """The family's processor from a checkpoint folder: its tokenizer, feature extractor, image
    processor and chat template as saved there, and a bare video processor (never used for
    audio, and the only part that would need torchvision)."""
    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer
    from transformers.video_processing_utils import BaseVideoProcessor

    cls = processor_class_without_video_check(processor_cls)
    processor_dict, extra = cls.get_processor_dict(str(folder), trust_remote_code=trust_remote_code)
    parts = {"tokenizer": AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code),
             "feature_extractor": AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=trust_remote_code),
             "image_processor": AutoImageProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code),
             "video_processor": BaseVideoProcessor()}
    return cls.from_args_and_dict([parts[a] for a in cls.get_attributes()], processor_dict, **extra)


# --- the backend ---------------------------------------------------------------------------------
class OmniThinkerBackend(Backend):
    """Scoring, training and generation on a Qwen-Omni thinker; a family sets the class names
    and `full_model_type`, and may override `audio_embeddings` and `processor_audio_kwargs`."""

    #: transformers class names of the family's thinker and processor.
    thinker_class_name: str = ""
    processor_class_name: str = ""
    #: config.json `model_type` of the whole model (thinker, talker and vocoder).
    full_model_type: str = ""

    @classmethod
    def load(cls, path: str, *, adapter: str | None = None, device: str | None = None,
             dtype: str | torch.dtype | None = None, trust_remote_code: bool = False,
             is_trainable: bool = False):
        import transformers

        dev = default_device(device)
        dt = default_dtype(dev, dtype)
        folder = local_folder(path, cls.full_model_type)
        processor = load_processor(getattr(transformers, cls.processor_class_name), folder, trust_remote_code)
        model = load_thinker(getattr(transformers, cls.thinker_class_name), folder, cls.full_model_type, dt,
                             trust_remote_code)
        model.to(dev)
        if adapter:
            model = attach_adapter(model, adapter, is_trainable=is_trainable)
        model.train(is_trainable)
        return cls(model, processor, dev)

    def __init__(self, model, processor, device):
        super().__init__(model, processor, device)
        self.tokenizer.padding_side = "left"
        #: Token ids that end the assistant's turn (after every target).
        self.end_ids = self.tokenizer.encode(END_OF_TURN, add_special_tokens=False)
        self.audio_token_id = self.base_model().config.audio_token_id

    # --- prompt ------------------------------------------------------------------------------
    def prompt(self, text: str, with_audio: bool = True) -> str:
        """The chat template's rendering of one user turn (the clip, then the question) and
        the assistant's start."""
        content = ([{"type": "audio", "audio": "clip"}] if with_audio else []) + [{"type": "text", "text": text}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                  add_generation_prompt=True, tokenize=False)

    def processor_audio_kwargs(self, clip: np.ndarray) -> dict:
        """Extra feature-extractor arguments for one clip (a family's hook)."""
        return {}

    def encode(self, example: Example) -> tuple[list[int], torch.Tensor | None]:
        """Prompt ids of one example and its (n_mels, frames) log-mels (real frames only), as
        the processor gives them for the example alone."""
        if example.audio is None:
            enc = self.processor(text=[self.prompt(example.text, with_audio=False)], return_tensors="pt")
            return enc["input_ids"][0].tolist(), None
        fe = self.processor.feature_extractor
        clip = np.asarray(example.audio, dtype=np.float32)
        if self.audio_seconds is not None:
            clip = clip[: int(self.audio_seconds * fe.sampling_rate)]
        enc = self.processor(text=[self.prompt(example.text)], audio=[clip], return_tensors="pt",
                             audio_kwargs={"sampling_rate": fe.sampling_rate, **self.processor_audio_kwargs(clip)})
        frames = int(enc["feature_attention_mask"][0].sum())
        return enc["input_ids"][0].tolist(), enc["input_features"][0, :, :frames]

    def collate(self, examples: list[Example], *, with_target: bool = False) -> dict[str, torch.Tensor]:
        text_only = [e.audio is None for e in examples]
        if any(text_only) and not all(text_only):
            raise ValueError("a batch mixes examples with and without audio")
        rows, lab_rows, mels = [], [], []
        for e in examples:
            ids, mel = self.encode(e)
            labels = [-100] * len(ids)
            if with_target:
                # The target is tokenised apart and appended, so the prompt's tokens are exactly
                # those that scoring sees.
                if e.target is None and e.target_ids is None:
                    raise ValueError("with_target=True needs a target on every example")
                t = (list(e.target_ids) if e.target_ids is not None
                     else self.tokenizer.encode(e.target, add_special_tokens=False) + self.end_ids)
                ids, labels = ids + t, labels + t
            rows.append(ids)
            lab_rows.append(labels)
            if mel is not None:
                mels.append(mel)
        T = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        batch = {"input_ids": torch.tensor([[pad] * (T - len(r)) + r for r in rows]),
                 "attention_mask": torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])}
        if with_target:
            batch["labels"] = torch.tensor([[-100] * (T - len(r)) + r for r in lab_rows])
        # The model's own 3-axis positions for audio and text are this count on every axis.
        batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)
        if mels:
            F = max(m.shape[-1] for m in mels)
            feats = torch.zeros(len(mels), mels[0].shape[0], F, dtype=mels[0].dtype)  # (B, n_mels, F)
            fmask = torch.zeros(len(mels), F, dtype=torch.long)
            for i, m in enumerate(mels):
                feats[i, :, : m.shape[-1]] = m
                fmask[i, : m.shape[-1]] = 1
            batch["input_features"], batch["feature_attention_mask"] = feats, fmask
        return {k: v.to(self.device) for k, v in batch.items()}

    # --- forward -----------------------------------------------------------------------------
    def audio_embeddings(self, features: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
        """(sum of audio tokens, H) encoder outputs of every clip, in batch order."""
        core = self.base_model().model
        return core.get_audio_features(features, feature_mask, return_dict=True).last_hidden_state

    def input_embeddings(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T, H) decoder input: token embeddings with the audio encoder's outputs at the
        audio placeholders."""
        core = self.base_model().model
        ids = batch["input_ids"]
        x = core.get_input_embeddings()(ids)
        if batch.get("input_features") is not None:
            audio = self.audio_embeddings(batch["input_features"], batch["feature_attention_mask"])
            slots = (ids == self.audio_token_id)[..., None]
            if int(slots.sum()) != audio.shape[0]:
                raise ValueError(f"{int(slots.sum())} audio placeholders for {audio.shape[0]} audio tokens")
            x = x.masked_scatter(slots, audio.to(x.dtype))
        return x

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        lm = self.base_model().model.language_model
        out = lm(inputs_embeds=self.input_embeddings(batch), attention_mask=batch["attention_mask"],
                 position_ids=batch["position_ids"], use_cache=False)
        return out.last_hidden_state

    def output_embedding(self) -> torch.nn.Module:
        return self.base_model().lm_head

    def spec_augment(self, batch, num_masks, max_width, generator):
        """Masks the log-mels the audio encoder reads (B, n_mels, frames)."""
        return self._mask_features(batch, "input_features", num_masks, max_width, generator)

    def stop_ids(self) -> set[int]:
        eos = getattr(self.base_model().generation_config, "eos_token_id", None)
        return set(self.end_ids) | set(eos if isinstance(eos, list) else [] if eos is None else [eos])

    @torch.no_grad()
    def generate_ids(self, batch: dict[str, torch.Tensor], *, max_new_tokens: int = 16, do_sample: bool = False,
                     temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1) -> list[list[int]]:
        """New token ids per sequence (B * num_return_sequences, grouped by prompt), cut after
        the first end token, which is kept. The decoder runs on the same inputs and positions
        as scoring (so the first token is the scored argmax), then one token at a time on its
        cache, each new token one position after the last."""
        from transformers import DynamicCache
        from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

        core = self.base_model().model
        lm, embed, head = core.language_model, core.get_input_embeddings(), self.output_embedding()
        n = num_return_sequences
        x = self.input_embeddings(batch).repeat_interleave(n, 0)  # (B*n, T, H)
        att = batch["attention_mask"].repeat_interleave(n, 0)
        pos = batch["position_ids"].repeat_interleave(n, 0)
        cache = DynamicCache(config=lm.config)
        warpers = [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)] if do_sample else []
        ends = torch.tensor(sorted(self.stop_ids()), device=x.device)
        pad = self.tokenizer.pad_token_id
        out = torch.empty(x.shape[0], 0, dtype=torch.long, device=x.device)
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(max_new_tokens):
            h = lm(inputs_embeds=x, attention_mask=att, position_ids=pos, cache=cache, use_cache=True)
            logits = head(h.last_hidden_state[:, -1]).float()  # (B*n, V)
            for w in warpers:
                logits = w(out, logits)
            nxt = torch.multinomial(logits.softmax(-1), 1)[:, 0] if do_sample else logits.argmax(-1)
            nxt = nxt.masked_fill(done, pad)
            out = torch.cat([out, nxt[:, None]], 1)
            done |= torch.isin(nxt, ends)
            if bool(done.all()):
                break
            x = embed(nxt[:, None])
            att = torch.cat([att, torch.ones_like(att[:, :1])], 1)
            pos = pos[:, -1:] + 1
        stop = set(ends.tolist())
        seqs = []
        for row in out.tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in stop), len(row))
            seqs.append(row[:cut])
        return seqs
