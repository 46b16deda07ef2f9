"""Answering multiple-choice items with a backend: option probabilities from one forward pass
(`score`), greedy decoding parsed by the shared answer parser (`generate`), or a generated
reasoning closed and then scored (`reason-then-score`), each under K orders of the options.
Pure computation; files are written by `aqa.eval.run`.

On a thinking checkpoint (`Backend.thinks`) scoring reads the letter after an empty think
block (thinking switched off), generation reads the answer only after the closing delimiter
(a letter inside the reasoning never counts; a reasoning the budget cut is `unfinished`), and
`reason-then-score` reads the letters' probabilities after the model's own closed reasoning."""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from aqa.data.augment import shuffle_options, unshuffle_probs
from aqa.data.records import AQARecord
from aqa.models.base import Backend, Example
from aqa.prompts import Reasoned, parse_answer, question_text, split_reasoning


def option_orders(record: AQARecord, k: int, seed: int) -> list[list[int]]:
    """K orders of an item's options: the record's own first, then seeded permutations
    (order[i] = original index shown at position i). Seeded by the item's id, so an order
    does not depend on which other items share the run."""
    n = len(record.choices)
    orders = [list(range(n))]
    rng = np.random.default_rng([seed, zlib.crc32(record.id.encode())])
    for _ in range(k - 1):
        orders.append(shuffle_options(record.choices, None, rng)[2])
    return orders


@dataclass
class Query:
    """One (item, order) pair to put to the model."""

    item: int
    order: list[int]  # order[i] = original index of the option shown at position i
    shown: list[str]
    example: Example


def make_queries(records: list[AQARecord], audios: list[np.ndarray], k: int, seed: int) -> list[Query]:
    out = []
    for i, (r, a) in enumerate(zip(records, audios)):
        for order in option_orders(r, k, seed):
            shown = [r.choices[j] for j in order]
            out.append(Query(i, order, shown, Example(a, question_text(r.question, shown))))
    return out


@torch.no_grad()
def score_queries(backend: Backend, queries: list[Query], prefixes: list[list[int]] | None = None) -> list[np.ndarray]:
    """Per query, the option log-probabilities (log-softmax over the letters, float64) in the
    ORIGINAL order, read at the answer position (`Backend.answer_batch`: after an empty think
    block on a thinking checkpoint, after `prefixes` when given). Log-probabilities, not
    probabilities: a confident model's small probabilities underflow or round to zero, and the
    ensemble needs them."""
    batch = backend.answer_batch([q.example for q in queries], prefixes)
    n = [len(q.order) for q in queries]
    logp = torch.log_softmax(backend.option_logits(batch, n), -1).double().cpu().numpy()
    return [unshuffle_probs(logp[i, :n[i]], q.order) for i, q in enumerate(queries)]


@torch.no_grad()
def generate_queries(backend: Backend, queries: list[Query], max_new_tokens: int,
                     reasoning: bool = False) -> list[tuple]:
    """Per query, (raw text, chosen option index in the ORIGINAL order or None); with
    `reasoning` (a thinking model), also the `Reasoned` split of the text: the answer is read
    only after its think block."""
    batch = backend.collate([q.example for q in queries])
    texts = backend.generate(batch, max_new_tokens=max_new_tokens)
    out = []
    for q, t in zip(queries, texts):
        r = split_reasoning(t, backend.think_format) if reasoning else Reasoned(None, t)
        idx = parse_answer(r.answer, q.shown)
        pick = None if idx is None else q.order[idx]
        out.append((t, pick, r) if reasoning else (t, pick))
    return out


@torch.no_grad()
def reason_then_score_queries(backend: Backend, queries: list[Query],
                              max_new_tokens: int) -> list[tuple[np.ndarray, Reasoned]]:
    """Per query, (option log-probabilities in the ORIGINAL order, the reasoning): the model
    reasons (greedy, up to `max_new_tokens`), its think block is closed where it ends (or where
    the budget cut it), and the letters are scored at the answer position after it."""
    batch = backend.collate([q.example for q in queries])
    closed = [backend.close_reasoning(ids) for ids in backend.generate_ids(batch, max_new_tokens=max_new_tokens)]
    logp = score_queries(backend, queries, [prefix for prefix, _ in closed])
    return [(lp, r) for lp, (_, r) in zip(logp, closed)]


def combine(record: AQARecord, per_order: list, mode: str, vote: str = "probs") -> dict:
    """One predictions.jsonl row (its fields: docs/ARCHITECTURE.md) from an item's K answers:
    per order, option log-probabilities in the record's order (score), (log-probabilities,
    `Reasoned`) (reason-then-score), or (raw text, option or None[, `Reasoned`]) (generate)."""
    row = {"id": record.id, "subset": record.subset, "question_type": record.question_type,
           "choices": record.choices, "answer": record.answer}
    reasoned = None
    if mode == "reason-then-score":
        reasoned = [r for _, r in per_order]
        per_order = [lp for lp, _ in per_order]
    if mode in ("score", "reason-then-score"):
        # The mean probability over the K orders, kept as its log at full precision.
        logp = np.logaddexp.reduce(np.stack(per_order), axis=0) - np.log(len(per_order))
        probs = np.exp(logp)
        picks = [int(np.argmax(p)) for p in per_order]
        pred = int(np.argmax(logp)) if vote == "probs" else _majority(picks)
        row["probs"] = [round(float(p), 6) for p in probs]  # for people
        row["logprobs"] = [float(x) for x in logp]  # for the ensemble
    else:
        picks = [a[1] for a in per_order]
        pred = _majority(picks)
        row["probs"] = None
        row["raw"] = per_order[0][0]
        if len(per_order) > 1:
            row["raws"] = [a[0] for a in per_order]
        if len(per_order[0]) > 2:
            reasoned = [a[2] for a in per_order]
    if reasoned is not None:
        # The reasoning text of each order (the first's alone under one order), and whether a
        # reasoning was cut by the token budget (`unfinished`: counted apart in metrics.json).
        row["reasoning"] = reasoned[0].reasoning
        if len(reasoned) > 1:
            row["reasonings"] = [r.reasoning for r in reasoned]
        row["unfinished"] = any(r.unfinished for r in reasoned)
    row["pred"] = pred
    row["correct"] = None if record.answer is None else pred == record.answer
    if len(per_order) > 1:
        row["shuffle_preds"] = picks
    return row


def _majority(picks: list[int | None]) -> int | None:
    """The most chosen option; ties go to the earliest order's choice among the tied."""
    counts = Counter(p for p in picks if p is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(p for p in picks if p is not None and counts[p] == top)
