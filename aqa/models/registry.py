"""Which backend serves a checkpoint: the `model_type` in its config.json names the family,
and BACKENDS maps it to the class. A new family is one module under aqa/models/ and one
entry here; nothing outside aqa/models/ learns its name."""

from __future__ import annotations

import importlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from aqa.io import UserError

log = logging.getLogger(__name__)

#: config.json `model_type` -> "module:Class" of its backend (imported only when used).
BACKENDS = {
    "qwen2_audio": "aqa.models.qwen2_audio:Qwen2AudioBackend",
    "moonshot_kimia": "aqa.models.kimi_audio:KimiAudioBackend",  # the official Kimi-Audio config
    "kimi_audio": "aqa.models.kimi_audio:KimiAudioBackend",
    # Qwen-Omni: the whole model (thinker, talker, vocoder) or a thinker alone; aqa loads the thinker.
    "qwen2_5_omni": "aqa.models.qwen2_5_omni:Qwen25OmniBackend",
    "qwen2_5_omni_thinker": "aqa.models.qwen2_5_omni:Qwen25OmniBackend",
    "qwen3_omni_moe": "aqa.models.qwen3_omni:Qwen3OmniBackend",  # Qwen3-Omni-30B-A3B Instruct and Thinking
    "qwen3_omni_moe_thinker": "aqa.models.qwen3_omni:Qwen3OmniBackend",
    "audioflamingo3": "aqa.models.audio_flamingo3:AudioFlamingo3Backend",
    "voxtral": "aqa.models.voxtral:VoxtralBackend",  # Voxtral Mini (needs mistral-common: aqa[voxtral])
    "moss_audio": "aqa.models.moss_audio:MossAudioBackend",  # MOSS-Audio 4B/8B Instruct and Thinking
}


#: What the Hugging Face Hub accepts as a repository id: "name" or "owner/name" of letters,
#: digits, "-", "_" and "." (huggingface_hub's validate_repo_id; 96 characters at most).
_HUB_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")


def _looks_like_hub_id(path: str) -> bool:
    return (bool(_HUB_ID.match(path)) and len(path) <= 96 and ".." not in path and "--" not in path
            and not path.startswith((".", "-")) and not path.endswith((".", "-")))


def model_family(path: str) -> str:
    """The `model_type` of a local folder or hub id. A folder that does not exist is a
    FileNotFoundError saying so, never a hub error about how ids are spelled."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file() and not Path(path).exists():
        if not _looks_like_hub_id(path):
            raise FileNotFoundError(f"{path}: no such model folder (and not a Hugging Face id, "
                                    f"which is 'name' or 'owner/name')")
        # A hub id: its config.json names the family without running any of its code.
        from huggingface_hub import hf_hub_download

        try:
            cfg = Path(hf_hub_download(path, "config.json"))
        except Exception as e:  # offline, unknown repository, gated: one message for all
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FileNotFoundError(f"{path}: no such model folder, and as a Hugging Face id its "
                                    f"config.json could not be fetched ({first})") from e
    if not cfg.is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected a model folder or a Hugging Face id)")
    try:
        return json.loads(cfg.read_text())["model_type"]
    except (ValueError, KeyError) as e:
        raise UserError(f"{cfg}: cannot read model_type ({e})") from None


#: The file that makes a folder a peft adapter.
ADAPTER_CONFIG = "adapter_config.json"


def find_adapter(path: str) -> str:
    """The peft adapter folder that `path` names: the folder itself, or, for a training run's
    folder, RUN/adapter (said in a log line). A folder that does not exist or holds no adapter
    is a UserError naming it, before any weights are read; a name that is no path is taken as a
    Hugging Face id when its adapter_config.json can be fetched."""
    p = Path(path)
    if (p / ADAPTER_CONFIG).is_file():
        return path
    if (p / "adapter" / ADAPTER_CONFIG).is_file():
        found = str(p / "adapter")
        log.info("%s is a training run's folder: using its adapter, %s", path, found)
        return found
    if p.is_file():
        if p.name == ADAPTER_CONFIG or (p.parent / ADAPTER_CONFIG).is_file():
            log.info("%s is a file of an adapter: using its folder, %s", path, p.parent)
            return str(p.parent)
        raise UserError(f"{path}: a file, not a peft adapter folder (one holding {ADAPTER_CONFIG})")
    if p.is_dir():
        if (p / "checkpoints").is_dir() or (p / "config.yaml").is_file():
            raise UserError(f"{path}: a training run's folder without its final adapter (adapter/{ADAPTER_CONFIG} "
                            f"is written when the run finishes; rerun the same command to resume it)")
        raise UserError(f"{path}: not a peft adapter folder (no {ADAPTER_CONFIG}, and no adapter/ in it)")
    if not _looks_like_hub_id(path):
        raise UserError(f"{path}: no such adapter folder (and not a Hugging Face id, which is 'name' or "
                        f"'owner/name')")
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(path, ADAPTER_CONFIG)
    except Exception as e:  # offline, unknown repository, gated: one message for all
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: no such adapter folder, and as a Hugging Face id its {ADAPTER_CONFIG} could "
                        f"not be fetched ({first})") from e
    return path


def backend_class(family: str):
    """The Backend subclass serving `family` (a config.json model_type)."""
    if family not in BACKENDS:
        raise ValueError(f"model type {family!r} has no aqa backend (supported: {', '.join(BACKENDS)})")
    module, name = BACKENDS[family].split(":")
    return getattr(importlib.import_module(module), name)


def load_backend(path: str, *, allow_pickle: bool = False, **kw: Any):
    """Load the backend for the model family that `path`'s config names. Local weights (the
    model's, an adapter's and those it stands on) must be safetensors unless `allow_pickle`."""
    from aqa.models.base import adapter_stack, require_safetensors

    family = model_family(path)
    require_safetensors(path, allow_pickle=allow_pickle)
    if kw.get("adapter"):
        kw["adapter"] = find_adapter(kw["adapter"])
        for folder in [*adapter_stack(kw["adapter"]), kw["adapter"]]:
            require_safetensors(folder, allow_pickle=allow_pickle)
    try:
        cls = backend_class(family)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    return cls.load(path, **kw)


def load_without_weights(path: str, *, trust_remote_code: bool = False):
    """The backend of `path`'s family with its processor and config and no model
    (`Backend.without_weights`): what one prompt can take, known without reading the weights."""
    family = model_family(path)
    try:
        cls = backend_class(family)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    return cls.without_weights(path, trust_remote_code=trust_remote_code)
