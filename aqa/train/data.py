"""Training items and the input pipeline: records turned into model `Example`s, with the
options shuffled every time an item is sampled, gathered into micro-batches and collated,
in DataLoader workers or in the training process.

Every random choice is derived from (seed, epoch, item index) or (seed, step, micro-batch),
not from a global RNG, so that a resumed run sees exactly the items, orders and masks it
would have seen without the interruption, with any number of workers and processes."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from aqa.data.audio import AudioError, load_audio
from aqa.data.augment import shuffle_options
from aqa.data.records import AQARecord
from aqa.models.base import Example, with_prefix
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


def micro_seed(seed: int, step: int, micro: int) -> int:
    """A 31-bit seed for micro-batch `micro` of a step, counted over all processes
    (`StepPlan.global_micro`): SpecAugment masks and rollouts, whichever process draws them."""
    # hash of ints is not salted: stable across runs. The last field (once the rank, 0 on one
    # process) stays, so single-process runs draw what they always drew.
    return hash((seed, step, micro, 0)) & 0x7FFFFFFF


@functools.lru_cache(maxsize=2)  # one epoch at a time, and the next one at its border
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of item indices for one epoch (the same on every process)."""
    order = np.random.default_rng([seed, epoch, 2**31 - 1]).permutation(n)
    order.flags.writeable = False  # shared by the cache
    return order


@dataclass(frozen=True)
class StepPlan:
    """Which items each micro-batch of each process takes: the same on every process, in every
    worker. A step takes `per_step` items of the epoch's permutation; its `accum` x `world`
    micro-batches of `micro` items each go round the processes (micro-batch k of process r
    is the step's micro-batch k x world + r)."""

    n_items: int
    seed: int
    per_step: int  # items per optimizer step, all processes together
    steps_per_epoch: int
    accum: int  # micro-batches per step on each process
    world: int  # processes
    micro: int  # items per micro-batch

    def step_order(self, step: int) -> tuple[int, np.ndarray]:
        """(epoch, item indices of this optimizer step)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        return epoch, epoch_order(self.n_items, self.seed, epoch)[pos * self.per_step:(pos + 1) * self.per_step]

    def global_micro(self, k: int, rank: int) -> int:
        """The step's micro-batch that is micro-batch `k` of process `rank`."""
        return k * self.world + rank

    def micro_indices(self, step: int, k: int, rank: int) -> tuple[int, list[int]]:
        """(epoch, item indices of micro-batch `k` of process `rank` at `step`)."""
        epoch, order = self.step_order(step)
        lo = self.global_micro(k, rank) * self.micro
        return epoch, [int(i) for i in order[lo:lo + self.micro]]


class QAItems:
    """Indexable training items; bad audio is reported once and the item skipped (None)."""

    def __init__(self, records: list[AQARecord], *, seed: int, shuffle: bool, window_s: float | None,
                 reasoning: bool = False):
        labelled = [r for r in records if r.answer is not None]
        if len(labelled) < len(records):
            log.warning("%d unlabelled record(s) left out of training", len(records) - len(labelled))
        self.records = labelled
        self.seed, self.shuffle, self.window_s = seed, shuffle, window_s
        #: Answers start with the record's rationale in a think block (empty without one).
        self.reasoning = reasoning
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
        ex = Example(audio.samples, question_text(r.question, choices), target_text(answer),
                     rationale=(getattr(r, "rationale", None) or "") if self.reasoning else None)
        return Item(ex, r, list(order), answer)

    def sample(self, index: int, epoch: int) -> Item:
        """The item at `index`, or the next one with decodable audio: a bad clip is replaced,
        not dropped, so every process keeps its batch size."""
        for j in range(len(self.records)):
            it = self.get((index + j) % len(self.records), epoch)
            if it is not None:
                return it
        raise RuntimeError("no training item has decodable audio")


@dataclass
class MicroBatch:
    """One micro-batch of one process: its place in the run, its items and their batch."""

    step: int
    k: int  # micro-batch of this process within the step
    seed: int  # micro_seed of the step's micro-batch: SpecAugment masks, rollouts
    epoch: int
    items: list[Item]
    batch: Any  # the collated batch; a host batch for `Backend.to_device` when `on_host`
    on_host: bool
    bad: dict[str, str] = field(default_factory=dict)  # clips found bad while sampling these items

    def pin_memory(self) -> MicroBatch:
        """Called by the DataLoader's pinning thread: page-locked tensors copy to the GPU
        without blocking the training process."""
        if isinstance(self.batch, dict):
            self.batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in self.batch.items()}
        return self


class MicroBatches(torch.utils.data.Dataset):
    """The micro-batches of one process from step `start` to `steps`, in loop order: index j is
    micro-batch j % accum of step start + j // accum. A map-style dataset, so DataLoader
    workers can each prepare any of them; nothing in it depends on which process builds it.

    With workers, examples are collated by the backend's `host_collate` (no model, CPU) and
    finished by `to_device` in the training process; without, by `collate` itself, as a
    training loop without a DataLoader would."""

    def __init__(self, plan: StepPlan, items: QAItems, *, rank: int, start: int, steps: int, backend,
                 with_target: bool, workers: int, answer_position: bool = False):
        self.plan, self.items, self.rank, self.start, self.steps = plan, items, rank, start, steps
        self.with_target = with_target
        self.on_host = workers > 0
        self.collate = backend.host_collate() if self.on_host else backend.collate
        #: Prompts to where the letter goes (`Backend.answer_batch`): these ids after each prompt
        #: (the empty think block of a thinking checkpoint), None: the prompts as they are.
        self.prefix = backend.answer_prefix_ids() if answer_position and not with_target else None

    def __len__(self) -> int:
        return (self.steps - self.start) * self.plan.accum

    def __getitem__(self, j: int) -> MicroBatch:
        step, k = divmod(j, self.plan.accum)
        step += self.start
        epoch, indices = self.plan.micro_indices(step, k, self.rank)
        known = set(self.items.bad)
        items = [self.items.sample(i, epoch) for i in indices]
        if self.prefix:
            batch = self.collate(with_prefix([it.example for it in items], [self.prefix] * len(items)),
                                 with_target=True)
            if isinstance(batch, dict):
                batch.pop("labels", None)
        else:
            batch = self.collate([it.example for it in items], with_target=self.with_target)
        seed = micro_seed(self.plan.seed, step, self.plan.global_micro(k, self.rank))
        return MicroBatch(step, k, seed, epoch, items, batch, self.on_host,
                          {key: why for key, why in self.items.bad.items() if key not in known})


def _as_is(x):
    """The DataLoader's collate_fn: a MicroBatch is collated already (module level: workers
    started by spawn or forkserver pickle it)."""
    return x


def micro_batch_loader(dataset: MicroBatches, *, num_workers: int, prefetch: int, pin_memory: bool):
    """A DataLoader over `dataset` in order; `num_workers` processes each prepare `prefetch`
    micro-batches ahead."""
    from torch.utils.data import DataLoader

    # Its own generator: a DataLoader draws its workers' base seed from the global torch RNG
    # otherwise, and that RNG also draws LoRA dropout, so results would change with the loader.
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_as_is,
                      pin_memory=pin_memory, prefetch_factor=prefetch if num_workers else None,
                      generator=torch.Generator().manual_seed(0))
