"""A record's `rationale` (a reference chain of thought) never reaches a prompt or the default
letter target: an evaluation split's reference reasoning must not leak into what the model
reads or is trained to say. Each place that builds a prompt or a target from a record is run
on the same item with and without a rationale."""

import numpy as np

from aqa.data.sources.interchange import to_interchange
from aqa.data.records import REFERENCE_REASONING, AQARecord
from aqa.eval.score import make_queries
from aqa.models.base import Backend
from aqa.train.data import QAItems
from conftest import write_audio

REASONING = "Reasoning: the dog barks twice, so the answer is C (3)."


def pair(tmp_path) -> tuple[AQARecord, AQARecord]:
    audio = write_audio(tmp_path / "a.wav")
    d = {"id": "q1", "audio": str(audio), "question": "How many barks?", "choices": ["1", "2", "3", "4"],
         "answer": 1, "subset": "tsqa", "split": "dev"}
    plain = AQARecord.from_dict(d)
    # The same item carrying reasoning both ways a file can: as its rationale and in meta.
    reasoned = AQARecord.from_dict({**d, "rationale": REASONING, "meta": {REFERENCE_REASONING: REASONING}})
    for r in (plain, reasoned):
        r.audio_path = audio
    assert reasoned.rationale == REASONING and plain.rationale is None
    return plain, reasoned


def test_training_items_are_the_same_with_and_without_a_rationale(tmp_path):
    plain, reasoned = pair(tmp_path)
    for shuffle in (False, True):
        a = QAItems([plain], seed=3, shuffle=shuffle, window_s=None).get(0, epoch=2)
        b = QAItems([reasoned], seed=3, shuffle=shuffle, window_s=None).get(0, epoch=2)
        assert (b.example.text, b.example.target, b.order) == (a.example.text, a.example.target, a.order)
        assert "barks twice" not in b.example.text and b.example.target == "ABCD"[b.answer]


def test_eval_queries_and_prompt_counts_are_the_same(tmp_path):
    plain, reasoned = pair(tmp_path)
    audio = np.zeros(1600, np.float32)
    qa, qb = make_queries([plain], [audio], 3, 0), make_queries([reasoned], [audio], 3, 0)
    assert [(q.order, q.example.text, q.example.target) for q in qb] == \
        [(q.order, q.example.text, q.example.target) for q in qa]
    assert all("barks twice" not in q.example.text for q in qb)
    assert Backend.record_prompt(reasoned, 1.0, True) == Backend.record_prompt(plain, 1.0, True)


def test_interchange_prompt_is_the_same(tmp_path):
    """The export's user turn never holds the rationale; only the assistant turn may (as a
    think block, tested in test_interchange.py)."""
    plain, reasoned = pair(tmp_path)
    a, b = to_interchange(plain), to_interchange(reasoned)
    assert b["messages"][0] == a["messages"][0] and "barks twice" not in b["messages"][0]["content"]
