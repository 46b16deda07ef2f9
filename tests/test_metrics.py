"""Metrics worked out by hand: accuracies, the two means, bootstrap intervals, shuffle agreement."""

import json

import pytest

from aqa.eval.metrics import (
    compute_metrics, format_summary, load_predictions, order_subsets, write_metrics)


def row(i, subset, pred, answer=0, n_choices=4, qtype="t", **kw):
    return {"id": f"{subset}-{i}", "subset": subset, "question_type": qtype,
            "choices": [str(c) for c in range(n_choices)], "answer": answer, "pred": pred,
            "correct": None if answer is None else pred == answer, "probs": None, **kw}


def rows_2of4_3of3():
    return ([row(i, "bqa", 0 if i < 2 else 1) for i in range(4)]
            + [row(i, "tsqa", 0, n_choices=2) for i in range(3)])


def test_hand_worked_means():
    m = compute_metrics(rows_2of4_3of3(), n_boot=200)
    assert m["subsets"]["bqa"] | {"ci95": None} == {
        "n": 4, "correct": 2, "accuracy": 0.5, "ci95": None, "n_unparsed": 0,
        "n_unlabelled": 0, "chance": 0.25}
    assert m["subsets"]["tsqa"]["accuracy"] == 1.0 and m["subsets"]["tsqa"]["chance"] == 0.5
    assert m["arithmetic_mean"]["value"] == 0.75
    assert m["weighted_mean"]["value"] == round(5 / 7, 6)
    assert m["weighted_mean"]["n"] == 7 and m["arithmetic_mean"]["n_subsets"] == 2
    assert m["arithmetic_mean"]["chance"] == 0.375
    assert m["weighted_mean"]["chance"] == round((4 * 0.25 + 3 * 0.5) / 7, 6)
    assert m["n"] == 7 and m["n_unparsed"] == 0 and m["n_unlabelled"] == 0
    assert "shuffles" not in m


def test_unparsed_counts_wrong_and_unlabelled_excluded():
    rows = rows_2of4_3of3() + [row(9, "bqa", None), row(10, "tsqa", 1, answer=None)]
    m = compute_metrics(rows, n_boot=0)
    assert m["subsets"]["bqa"]["n"] == 5 and m["subsets"]["bqa"]["correct"] == 2
    assert m["subsets"]["bqa"]["n_unparsed"] == 1
    assert m["subsets"]["tsqa"]["n"] == 3 and m["subsets"]["tsqa"]["n_unlabelled"] == 1
    assert m["arithmetic_mean"]["value"] == round((2 / 5 + 1.0) / 2, 6)
    assert m["weighted_mean"]["value"] == round(5 / 8, 6)
    assert (m["n"], m["n_labelled"], m["n_unparsed"], m["n_unlabelled"]) == (9, 8, 1, 1)
    assert m["weighted_mean"]["ci95"] is None  # n_boot=0


def test_correct_field_is_not_trusted_over_pred_and_answer():
    r = row(0, "cqa", 1)
    r["correct"] = True  # a stale flag must not make a wrong answer right
    assert compute_metrics([r], n_boot=0)["weighted_mean"]["value"] == 0.0


def test_subset_with_only_unlabelled_items_has_no_accuracy():
    rows = [row(0, "bqa", 0), row(1, "cqa", 0, answer=None)]
    m = compute_metrics(rows, n_boot=50)
    assert m["subsets"]["cqa"]["accuracy"] is None and m["subsets"]["cqa"]["ci95"] is None
    assert m["arithmetic_mean"]["value"] == 1.0 and m["arithmetic_mean"]["n_subsets"] == 1


def test_question_types():
    rows = [row(0, "tsqa", 0, qtype="count"), row(1, "tsqa", 1, qtype="count"),
            row(2, "cqa", 0, qtype="order")]
    qt = compute_metrics(rows, n_boot=0)["question_types"]
    assert list(qt) == ["count", "order"]
    assert qt["count"]["accuracy"] == 0.5 and qt["order"]["n"] == 1


def test_bootstrap_contains_estimate_is_deterministic_and_narrows():
    small = [row(i, "cqa", i % 2) for i in range(20)] + [row(i, "bqa", 0 if i % 4 else 1) for i in range(12)]
    big = [dict(r, id=f"{r['id']}-{j}") for j in range(50) for r in small]
    a, b = compute_metrics(small, seed=3), compute_metrics(small, seed=3)
    assert a == b
    assert compute_metrics(small, seed=4)["weighted_mean"]["ci95"] != a["weighted_mean"]["ci95"]
    big_m = compute_metrics(big, seed=3)
    for key in ("arithmetic_mean", "weighted_mean"):
        lo, hi = a[key]["ci95"]
        assert lo <= a[key]["value"] <= hi and lo < hi
        blo, bhi = big_m[key]["ci95"]
        assert blo <= big_m[key]["value"] <= bhi
        assert bhi - blo < (hi - lo) / 3  # 50x the items: about 7x narrower
    for s, st in a["subsets"].items():
        assert st["ci95"][0] <= st["accuracy"] <= st["ci95"][1]
    # a pooled 50% accuracy over 40 items: the binomial interval is about +-15 points
    lo, hi = compute_metrics([row(i, "x", i % 2) for i in range(40)])["weighted_mean"]["ci95"]
    assert 0.3 < lo < 0.4 and 0.6 < hi < 0.7


def test_perfect_accuracy_interval_is_a_point():
    m = compute_metrics([row(i, "bqa", 0) for i in range(5)])
    assert m["subsets"]["bqa"]["ci95"] == [1.0, 1.0]


@pytest.mark.parametrize("preds,agreement,all_same", [
    ([0, 0, 1], 2 / 3, 0.0),
    ([2, 2, 2], 1.0, 1.0),
    ([0, 1, 2], 1 / 3, 0.0),
    ([0, None, 0], 2 / 3, 0.0),  # an unparsed order never agrees
    ([None, None, None], 0.0, 0.0),
])
def test_shuffle_agreement_single_item(preds, agreement, all_same):
    sh = compute_metrics([row(0, "cqa", preds[0], shuffle_preds=preds)], n_boot=0)["shuffles"]
    assert sh["k"] == 3 and sh["n"] == 1
    assert sh["agreement"] == round(agreement, 6) and sh["all_same"] == all_same


def test_shuffle_agreement_over_items():
    rows = [row(0, "cqa", 0, shuffle_preds=[0, 0, 1]), row(1, "cqa", 0, shuffle_preds=[0, 0, 0]),
            row(2, "cqa", 1, shuffle_preds=[1, 1, 1]), row(3, "cqa", 0, answer=None, shuffle_preds=[0, 1, 2])]
    sh = compute_metrics(rows, n_boot=0)["shuffles"]
    assert sh["agreement"] == round((2 / 3 + 1 + 1 + 1 / 3) / 4, 6)
    assert sh["all_same"] == 0.5
    assert sh["all_correct"] == round(1 / 3, 6)  # only row 1 right under every order
    # K=1 is not a shuffle evaluation
    assert "shuffles" not in compute_metrics([row(0, "cqa", 0, shuffle_preds=[0])], n_boot=0)


def test_subset_order():
    assert order_subsets(["zeta", "cqa", "temporal", "alpha", "bqa", "mmau-speech", "tsqa", "mmau-sound"]) == [
        "bqa", "tsqa", "cqa", "mmau-sound", "mmau-speech", "temporal", "alpha", "zeta"]
    m = compute_metrics([row(0, "zeta", 0), row(0, "cqa", 0), row(0, "bqa", 0)], n_boot=0)
    assert list(m["subsets"]) == ["bqa", "cqa", "zeta"]


def test_extra_keys_and_clash():
    m = compute_metrics(rows_2of4_3of3(), n_boot=0, extra={"name": "sft"})
    assert m["name"] == "sft"
    with pytest.raises(ValueError, match="weighted_mean"):
        compute_metrics(rows_2of4_3of3(), n_boot=0, extra={"weighted_mean": 1})


def test_load_tolerates_partial_last_line_and_keeps_last_duplicate(tmp_path):
    rows = rows_2of4_3of3()
    redo = dict(rows[2], pred=0)  # a resumed eval wrote bqa-2 again
    text = "".join(json.dumps(r) + "\n" for r in rows + [redo]) + '{"id": "bqa-9", "subs'
    (tmp_path / "predictions.jsonl").write_text(text)
    got = load_predictions(tmp_path)
    assert [r["id"] for r in got] == [r["id"] for r in rows]
    assert got[2]["pred"] == 0
    assert load_predictions(tmp_path / "predictions.jsonl") == got


def test_write_metrics_atomic_json(tmp_path):
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_2of4_3of3()))
    m = write_metrics(tmp_path, n_boot=100, extra={"name": "x"})
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == m and on_disk["arithmetic_mean"]["value"] == 0.75
    # no temporary file left behind by the atomic write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "predictions.jsonl"]


def test_format_summary():
    rows = rows_2of4_3of3() + [row(0, "cqa", None, shuffle_preds=[0, 0, 1])]
    text = format_summary(compute_metrics(rows, n_boot=100))
    lines = text.splitlines()
    assert lines[0].startswith("subset")
    assert any(ln.startswith("bqa") and "50.0" in ln for ln in lines)
    assert any(ln.startswith("arithmetic mean") and "50.0" in ln for ln in lines)  # (0.5+1+0)/3
    assert any(ln.startswith("weighted mean") and "62.5" in ln for ln in lines)
    assert "1 unparsed" in text and "K=3" in text


def test_option_order_robustness_worked_by_hand():
    from aqa.eval.metrics import compute_metrics

    rows = [
        # K=3 orders chose 0, 0, 1; answer 0: 2 of 3 right; pairs (0,0) same, (0,1) x2 differ -> 1/3
        {"id": "a", "subset": "s", "choices": ["x", "y"], "answer": 0, "pred": 0, "shuffle_preds": [0, 0, 1]},
        # all three chose 2, answer 2: right under every order; pair consistency 1
        {"id": "b", "subset": "s", "choices": ["x", "y", "z"], "answer": 2, "pred": 2, "shuffle_preds": [2, 2, 2]},
        # 0, 1, 2; answer 1: 1 of 3 right; no pair agrees
        {"id": "c", "subset": "s", "choices": ["x", "y", "z"], "answer": 1, "pred": 1, "shuffle_preds": [0, 1, 2]},
    ]
    sh = compute_metrics(rows, n_boot=0)["shuffles"]
    assert sh["mean_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 3) / 3, abs=1e-6)
    assert sh["all_correct"] == pytest.approx(1 / 3, abs=1e-6)
    assert sh["pair_consistency"] == pytest.approx((1 / 3 + 1 + 0) / 3, abs=1e-6)
