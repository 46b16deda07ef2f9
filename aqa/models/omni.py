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

Batches, positions and generation: aqa/models/chat_backend.py. Both families use multimodal
RoPE (three position axes); for text and audio without image or video, transformers' own
`get_rope_index` gives every token the running count of real tokens on all three axes (audio
tokens advance it by one each, like text), so the 2-D positions `cumsum(attention_mask) - 1`,
which the decoder expands to the three axes, are the model's own. The log-mels of a clip are
its real frames only; a batch right-pads them to its longest clip, with a
`feature_attention_mask` by which the model selects the real frames (it never reads past them).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from aqa.models.base import default_device, default_dtype, device_load_kwargs
from aqa.models.chat_backend import ChatProcessorBackend

log = logging.getLogger(__name__)

#: What a hub download of a whole Qwen-Omni model fetches besides the thinker's shards.
SMALL_FILES = ["*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


# --- loading -------------------------------------------------------------------------------------
def local_folder(path: str, full_model_type: str, *, weights: bool = True) -> Path:
    """A local folder for `path`; a hub id is downloaded without the shards that hold no
    thinker weights (the talker and the vocoder), or with no shard at all (`weights=False`)."""
    p = Path(path)
    if p.is_dir():
        return p
    if p.exists() or path.startswith((".", "/")):
        raise FileNotFoundError(f"{path}: not a model folder")
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.utils import EntryNotFoundError

    if not weights:
        return Path(snapshot_download(path, allow_patterns=SMALL_FILES))
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


def thinker_config(folder: Path, full_model_type: str, trust_remote_code: bool):
    """The thinker's config of a thinker-only or whole-model checkpoint folder."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    return config.thinker_config if config.model_type == full_model_type else config


def load_thinker(thinker_cls, folder: Path, full_model_type: str, dtype: torch.dtype, trust_remote_code: bool,
                 device: torch.device):
    """The thinker of a thinker-only or whole-model checkpoint folder, its weights read
    straight onto `device`: transformers' conversion (the `thinker.` prefix dropped, Qwen3-Omni's
    per-expert tensors stacked) then runs there, so the stacked experts are never a second
    copy of the model in host memory (`base.device_load_kwargs`)."""
    config = thinker_config(folder, full_model_type, trust_remote_code)
    with thinker_view(folder, full_model_type) as view:
        return thinker_cls.from_pretrained(view, config=config, dtype=dtype, attn_implementation="sdpa",
                                           trust_remote_code=trust_remote_code, use_safetensors=True,
                                           **device_load_kwargs(device))


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
class OmniThinkerBackend(ChatProcessorBackend):
    """A Qwen-Omni thinker; a family sets the class names and `full_model_type`, and may
    override `audio_embeddings` and `processor_audio_kwargs`."""

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
                             trust_remote_code, dev)
        return cls.from_parts(model, processor, dev, adapter=adapter, is_trainable=is_trainable)

    @classmethod
    def without_weights(cls, path: str, *, trust_remote_code: bool = False):
        import transformers

        folder = local_folder(path, cls.full_model_type, weights=False)
        processor = load_processor(getattr(transformers, cls.processor_class_name), folder, trust_remote_code)
        return cls(None, processor, torch.device("cpu"),
                   config=thinker_config(folder, cls.full_model_type, trust_remote_code))

    def audio_inputs(self, enc) -> dict[str, torch.Tensor]:
        frames = int(enc["feature_attention_mask"][0].sum())
        return {"input_features": enc["input_features"][0, :, :frames]}  # (n_mels, real frames)

    def merge_audio(self, parts):
        mels = [p["input_features"] for p in parts]
        F = max(m.shape[-1] for m in mels)
        feats = torch.zeros(len(mels), mels[0].shape[0], F, dtype=mels[0].dtype)  # (B, n_mels, F)
        fmask = torch.zeros(len(mels), F, dtype=torch.long)
        for i, m in enumerate(mels):
            feats[i, :, : m.shape[-1]] = m
            fmask[i, : m.shape[-1]] = 1
        return {"input_features": feats, "feature_attention_mask": fmask}

    def audio_embeddings(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(sum of audio tokens, H) encoder outputs of every clip, in batch order."""
        core = self.base_model().model
        return core.get_audio_features(batch["input_features"], batch["feature_attention_mask"],
                                       return_dict=True).last_hidden_state
