"""Loading safetensors weights into modules built without transformers' `from_pretrained`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch


def load_module_weights(factory: Callable[[], torch.nn.Module], folder: str | Path,
                        rename: Callable[[str], str] = lambda k: k,
                        dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> torch.nn.Module:
    """Build `factory()` without allocating random weights, then fill every parameter and
    buffer from the folder's `*.safetensors` (checkpoint names mapped through `rename`;
    names the module does not have are ignored) on `device`. A missing weight is an error
    that names the folder.

    As transformers' `from_pretrained` with a device map does: each tensor is a view of the
    memory-mapped file until `.to(device, dtype)`, so the host never holds more than the
    tensor being moved (in the file's dtype on the CPU, the weights stay views of the file,
    which processes share); reading all of them to the CPU first and moving the module after
    would hold the whole module in every process's host memory."""
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
                    state[name] = fh.get_tensor(key).to(device=device, dtype=dtype)
    missing = sorted(wanted - set(state))
    if missing:
        raise ValueError(f"{folder}: {len(missing)} weights missing, e.g. {missing[:3]}")
    module.load_state_dict(state, assign=True, strict=True)
    # Tensors outside the state dict (non-persistent buffers) were never read: still meta.
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta and n not in state]
    if left:
        raise ValueError(f"{folder}: tensors not in the checkpoint: {left[:3]}")
    return module.eval()
