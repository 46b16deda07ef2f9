"""Loading safetensors weights into modules built without transformers' `from_pretrained`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch


def load_module_weights(factory: Callable[[], torch.nn.Module], folder: str | Path,
                        rename: Callable[[str], str] = lambda k: k,
                        dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Build `factory()` without allocating random weights, then fill every parameter and
    buffer from the folder's `*.safetensors` (checkpoint names mapped through `rename`;
    names the module does not have are ignored). A missing weight is an error that names
    the folder."""
    from safetensors import safe_open

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights")
    with torch.device("meta"):
        module = factory()
    wanted = set(module.state_dict())
    state = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():
                name = rename(key)
                if name in wanted:
                    state[name] = fh.get_tensor(key).to(dtype)
    missing = sorted(wanted - set(state))
    if missing:
        raise ValueError(f"{folder}: {len(missing)} weights missing, e.g. {missing[:3]}")
    module.load_state_dict(state, assign=True, strict=True)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{folder}: tensors not in the checkpoint: {left[:3]}")
    return module.eval()
