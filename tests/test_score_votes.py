"""Predictions over K option orders: averaged probabilities vs majority vote, worked by hand."""

import numpy as np

from aqa.data.records import AQARecord
from aqa.eval.score import combine

REC = AQARecord(id="q", audio="a.wav", question="?", choices=["x", "y", "z"], answer=1, subset="s")


def test_probability_average_and_majority_can_disagree():
    # Per order (already mapped back to the original order): two orders mildly prefer x,
    # one strongly prefers y. Average: x (0.4+0.4+0.05)/3 = 0.283, y (0.35+0.35+0.9)/3 = 0.533.
    per = [np.log([0.4, 0.35, 0.25]), np.log([0.4, 0.35, 0.25]), np.log([0.05, 0.9, 0.05])]
    by_probs = combine(REC, per, "score", vote="probs")
    by_votes = combine(REC, per, "score", vote="majority")
    assert by_probs["pred"] == 1 and by_probs["correct"]
    assert by_probs["probs"] == [round((0.4 + 0.4 + 0.05) / 3, 6), round((0.35 + 0.35 + 0.9) / 3, 6),
                                 round(0.55 / 3, 6)]
    assert np.allclose(np.exp(by_probs["logprobs"]), [0.85 / 3, 1.6 / 3, 0.55 / 3], rtol=1e-12)
    assert by_votes["pred"] == 0 and not by_votes["correct"]
    assert by_probs["shuffle_preds"] == by_votes["shuffle_preds"] == [0, 0, 1]


def test_majority_ties_go_to_the_earliest_order_and_unparsed_never_vote():
    per = [("z", 2), ("y", 1), (None, None)]
    row = combine(REC, per, "generate")
    assert row["pred"] == 2 and row["shuffle_preds"] == [2, 1, None] and row["raws"] == ["z", "y", None]
    assert combine(REC, [(None, None), ("y", 1)], "generate")["pred"] == 1
    assert combine(REC, [(None, None)], "generate")["pred"] is None


def test_log_probabilities_keep_what_rounding_loses():
    """A confident model: the small probabilities round to 0 in `probs`, while `logprobs`
    keeps them at full precision for the ensemble."""
    per = [np.array([-30.0, -1e-12, -25.0])]
    row = combine(REC, per, "score")
    assert row["probs"] == [0.0, 1.0, 0.0]
    assert row["logprobs"] == [-30.0, -1e-12, -25.0]
