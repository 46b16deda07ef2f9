"""Training-time augmentation: option shuffling and SpecAugment frequency masking.

Option shuffling. Each time an item is sampled its options are permuted, so the model
cannot learn a letter prior (real sets are far from uniform in the answer's letter).
`perm` maps a new position to the original index: ``new_choices[i] == choices[perm[i]]``.
Scores computed on the shuffled order are mapped back with :func:`unshuffle_probs`, so
predictions are always stored in the record's original order.

Frequency masking. Park et al. 2019, "SpecAugment: A Simple Data Augmentation Method for
Automatic Speech Recognition" (Interspeech), section 2: a mask covers the mel channels
``[f0, f0 + f)`` with ``f ~ U{0, ..., F-1}`` and ``f0 ~ U{0, ..., n_mels - f - 1}``; the
policy applies ``num_masks`` such masks, independently per utterance. The paper sets the
masked values to zero on features normalised to zero mean, i.e. to the mean. Whisper's
log-mels (Qwen2-Audio's and Kimi-Audio's encoders) are scaled to about [-1, 1.5] but not
centred, so zero would be an arbitrary loudness; here the masked bands take the example's
mean over all its bands and its real frames (computed before masking; the padding up to the
window is left out), which is the paper's choice carried over to uncentred features. Pass ``value=0.0`` for literal zeros. Only the
frequency axis is masked: the time axis is left alone (the method masks frequency only).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")


# --------------------------------------------------------------------------- options

def _permutation(n: int, rng: Any) -> list[int]:
    if isinstance(rng, random.Random):
        perm = list(range(n))
        rng.shuffle(perm)
        return perm
    if isinstance(rng, np.random.Generator):
        return [int(i) for i in rng.permutation(n)]
    if isinstance(rng, torch.Generator):
        return torch.randperm(n, generator=rng, device=rng.device).tolist()
    raise TypeError(f"rng must be random.Random, numpy.random.Generator or torch.Generator, got {type(rng).__name__}")


def shuffle_options(choices: Sequence[T], answer: int | None,
                    rng: random.Random | np.random.Generator | torch.Generator,
                    ) -> tuple[list[T], int | None, list[int]]:
    """Permute the options uniformly at random. Returns (new_choices, new_answer, perm) with
    ``new_choices[i] == choices[perm[i]]`` and ``new_choices[new_answer] == choices[answer]``;
    an unlabelled item (answer None) stays None."""
    n = len(choices)
    if answer is not None and not 0 <= answer < n:
        raise ValueError(f"answer {answer} out of range for {n} options")
    perm = _permutation(n, rng)
    new_choices = [choices[p] for p in perm]
    new_answer = perm.index(answer) if answer is not None else None
    return new_choices, new_answer, perm


def original_index(new_index: int | None, perm: Sequence[int]) -> int | None:
    """The original option index of a position in the shuffled order (e.g. a prediction)."""
    return None if new_index is None else int(perm[new_index])


def unshuffle_probs(probs, perm: Sequence[int]):
    """Per-option scores in the shuffled order -> the original order, along the last axis:
    ``out[..., perm[i]] = probs[..., i]``. Accepts a list, a numpy array or a torch tensor and
    returns the same kind."""
    n = len(perm)
    if sorted(perm) != list(range(n)):
        raise ValueError(f"not a permutation of 0..{n - 1}: {list(perm)}")
    if isinstance(probs, torch.Tensor):
        if probs.shape[-1] != n:
            raise ValueError(f"last axis has {probs.shape[-1]} options, perm has {n}")
        inverse = torch.empty(n, dtype=torch.long)
        inverse[torch.as_tensor(list(perm), dtype=torch.long)] = torch.arange(n)
        return probs.index_select(-1, inverse.to(probs.device))
    if isinstance(probs, np.ndarray):
        if probs.shape[-1] != n:
            raise ValueError(f"last axis has {probs.shape[-1]} options, perm has {n}")
        out = np.empty_like(probs)
        out[..., list(perm)] = probs
        return out
    probs = list(probs)
    if len(probs) != n:
        raise ValueError(f"{len(probs)} scores, perm has {n}")
    out_list: list = [None] * n
    for i, p in enumerate(perm):
        out_list[p] = probs[i]
    return out_list


# --------------------------------------------------------------------------- SpecAugment

def freq_mask(features: torch.Tensor, num_masks: int, max_width: int,
              generator: torch.Generator | None = None, *, value: float | None = None,
              lengths: torch.Tensor | None = None) -> torch.Tensor:
    """SpecAugment frequency masking of log-mel features shaped (B, n_mels, T) or
    (n_mels, T). Each example gets `num_masks` masks of width ``f ~ U{0..max_width-1}``
    (capped by n_mels) starting at ``f0 ~ U{0..n_mels-f-1}``; masked bands are set to the
    example's mean (`value=None`) or to `value`. `lengths` (B,) gives each example's real
    frames: the mean is taken over those only, since Whisper pads a short clip to its window
    with the silence floor, which would pull the fill towards silence. Returns a new tensor;
    the input is not modified. Deterministic given `generator` (the global RNG when None)."""
    if features.dim() not in (2, 3):
        raise ValueError(f"features must be (n_mels, T) or (B, n_mels, T), got shape {tuple(features.shape)}")
    if num_masks < 0 or max_width < 0:
        raise ValueError("num_masks and max_width must be >= 0")
    batched = features.dim() == 3
    x = features if batched else features.unsqueeze(0)
    b, n_mels, _ = x.shape
    width_cap = min(max_width, n_mels)
    if num_masks == 0 or width_cap <= 1 or b == 0:  # widths are drawn below max_width: nothing to mask
        return features.clone()

    # Draw on the generator's device (CPU unless given otherwise), in float64 so that
    # floor(u * k) stays below k; then move the small index tensors to the features.
    dev = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand((2, b, num_masks), generator=generator, device=dev, dtype=torch.float64)
    width = (u[0] * width_cap).floor().long().clamp_(max=width_cap - 1)
    start = (u[1] * (n_mels - width)).floor().long()
    start = torch.minimum(start, n_mels - width - 1).clamp_(min=0)
    width, start = width.to(x.device), start.to(x.device)

    bands = torch.arange(n_mels, device=x.device).view(1, 1, n_mels)
    hit = (bands >= start.unsqueeze(-1)) & (bands < (start + width).unsqueeze(-1))  # (B, masks, n_mels)
    rows = hit.any(dim=1)  # (B, n_mels)
    if value is None and lengths is not None:
        T = x.shape[-1]
        n = torch.as_tensor(lengths, device=x.device).reshape(b).clamp(1, T)
        real = (torch.arange(T, device=x.device)[None, :] < n[:, None]).float()  # (B, T)
        fill = ((x.float() * real[:, None, :]).sum(dim=(1, 2)) / (n * n_mels)).to(x.dtype).view(b, 1, 1)
    elif value is None:
        fill = x.float().mean(dim=(1, 2)).to(x.dtype).view(b, 1, 1)
    else:
        fill = torch.full((b, 1, 1), float(value), dtype=x.dtype, device=x.device)
    out = torch.where(rows.unsqueeze(-1), fill, x)
    return out if batched else out.squeeze(0)


__all__ = ["shuffle_options", "original_index", "unshuffle_probs", "freq_mask"]
