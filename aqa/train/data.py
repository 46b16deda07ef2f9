"""Training items: records turned into model `Example`s, with the options shuffled every
time an item is sampled. Every random choice is derived from (seed, epoch, item index), not
from a global RNG, so that a resumed run sees exactly the items and orders it would have
seen without the interruption, on any number of processes."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from aqa.data.audio import AudioError, load_audio
from aqa.data.augment import shuffle_options
from aqa.data.records import AQARecord
from aqa.models.base import Example
from aqa.prompts import question_text, target_text

log = logging.getLogger(__name__)


@dataclass
class Item:
    """One sampled training item: the example, its record and the option order shown."""

    example: Example
    record: AQARecord
    order: list[int]  # order[k] = original index of the option shown at position k
    answer: int  # index of the answer in the shown order


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def micro_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """A 31-bit seed for one micro-batch of one process (SpecAugment masks, rollouts)."""
    return hash((seed, step, micro, rank)) & 0x7FFFFFFF  # hash of ints is not salted: stable across runs


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of item indices for one epoch (the same on every process)."""
    return np.random.default_rng([seed, epoch, 2**31 - 1]).permutation(n)


class QAItems:
    """Indexable training items; bad audio is reported once and the item skipped (None)."""

    def __init__(self, records: list[AQARecord], *, seed: int, shuffle: bool, window_s: float | None):
        labelled = [r for r in records if r.answer is not None]
        if len(labelled) < len(records):
            log.warning("%d unlabelled record(s) left out of training", len(records) - len(labelled))
        self.records = labelled
        self.seed, self.shuffle, self.window_s = seed, shuffle, window_s
        self.bad: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.records)

    def get(self, index: int, epoch: int) -> Item | None:
        r = self.records[index]
        key = str(r.audio_path or r.audio)
        if key in self.bad:
            return None
        try:
            audio = load_audio(r.audio_path or r.audio, max_seconds=self.window_s, long_policy="truncate")
        except AudioError as e:
            self.bad[key] = str(e)
            log.warning("skipping item %s: %s", r.id, e)
            return None
        if self.shuffle:
            choices, answer, order = shuffle_options(r.choices, r.answer, item_rng(self.seed, epoch, index))
        else:
            choices, answer, order = list(r.choices), r.answer, list(range(len(r.choices)))
        ex = Example(audio.samples, question_text(r.question, choices), target_text(answer))
        return Item(ex, r, list(order), answer)

    def sample(self, index: int, epoch: int) -> Item:
        """The item at `index`, or the next one with decodable audio: a bad clip is replaced,
        not dropped, so every process keeps its batch size."""
        for j in range(len(self.records)):
            it = self.get((index + j) % len(self.records), epoch)
            if it is not None:
                return it
        raise RuntimeError("no training item has decodable audio")
