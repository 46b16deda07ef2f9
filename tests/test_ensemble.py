"""The learned logit ensemble: recovers known temperatures and weights, never scores an item
with parameters fitted on it, aligns items across option orders."""

import json

import numpy as np
import pytest
import torch

import aqa.ensemble as ens
from aqa.cli import main
from aqa.io import write_jsonl


def write_dir(d, ids, choices, probs, answers, subset="s"):
    rows = [{"id": i, "subset": subset, "question_type": "", "choices": c, "answer": a, "probs": list(map(float, p)),
             "pred": int(np.argmax(p)), "correct": int(np.argmax(p)) == a} for i, c, p, a in zip(ids, choices, probs, answers)]
    write_jsonl(d / "predictions.jsonl", rows)
    return d


def softmax(z, t=1.0):
    e = np.exp((z - z.max(-1, keepdims=True)) / t)
    return e / e.sum(-1, keepdims=True)


def test_recovers_known_temperatures_and_weights():
    rng = np.random.default_rng(0)
    N, K = 4000, 4
    za, zb = rng.normal(0, 2.0, (N, K)), rng.normal(0, 2.0, (N, K))
    true_t, true_w = [0.5, 2.0], [0.7, 0.3]
    p = true_w[0] * softmax(za, true_t[0]) + true_w[1] * softmax(zb, true_t[1])
    y = np.array([rng.choice(K, p=row) for row in p])
    # The models report their raw softmax; the ensemble must find the temperatures.
    logp = torch.tensor(np.log(np.stack([softmax(za), softmax(zb)])))
    fitted = ens.fit(logp, torch.tensor(y), steps=800, lr=0.05)
    assert fitted["temperatures"] == pytest.approx(true_t, rel=0.15)
    assert fitted["weights"] == pytest.approx(true_w, abs=0.08)


def test_cross_fitting_never_scores_an_item_with_its_own_fit(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    n = 50
    ids = [f"q{i}" for i in range(n)]
    ch = [["a", "b", "c"]] * n
    ans = [int(x) for x in rng.integers(0, 3, n)]
    d1 = write_dir(tmp_path / "m1", ids, ch, softmax(rng.normal(size=(n, 3))), ans)
    d2 = write_dir(tmp_path / "m2", ids, ch, softmax(rng.normal(size=(n, 3))), ans)
    a = ens.align([d1, d2])
    fingerprint = {tuple(np.round(a.logp[0, j, :3].numpy(), 9)): a.ids[j] for j in range(n)}
    fitted_on = []
    real_fit = ens.fit

    def spy(logp, answers, *args):
        fitted_on.append({fingerprint[tuple(np.round(logp[0, j, :3].numpy(), 9))] for j in range(logp.shape[1])})
        return real_fit(logp, answers, *args)

    scored_by = []
    real_apply = ens.apply_params

    def spy_apply(logp, params):
        scored_by.append({fingerprint[tuple(np.round(logp[0, j, :3].numpy(), 9))] for j in range(logp.shape[1])})
        return real_apply(logp, params)

    monkeypatch.setattr(ens, "fit", spy)
    monkeypatch.setattr(ens, "apply_params", spy_apply)
    ens.cross_fit(a, k=5, steps=5)
    assert len(fitted_on) == len(scored_by) == 5
    for fit_ids, scored in zip(fitted_on, scored_by):
        assert not fit_ids & scored and fit_ids | scored == set(ids)
    assert set().union(*scored_by) == set(ids)


def test_alignment_across_option_orders_and_mismatches(tmp_path):
    ids = ["x", "y", "z"]
    ch1 = [["dog", "cat", "cow"], ["one", "two"], ["p", "q", "r", "s"]]
    p1 = [[0.7, 0.2, 0.1], [0.4, 0.6], [0.1, 0.2, 0.3, 0.4]]
    # Model 2 saw the options in another order (same texts), and one item's options differ.
    ch2 = [["cow", "dog", "cat"], ["two", "one"], ["p", "q", "r", "t"]]
    p2 = [[0.1, 0.7, 0.2], [0.6, 0.4], [0.25, 0.25, 0.25, 0.25]]
    d1 = write_dir(tmp_path / "a", ids, ch1, p1, [0, 1, 3])
    d2 = write_dir(tmp_path / "b", ids, ch2, p2, [1, 0, 3])
    a = ens.align([d1, d2])
    assert a.ids == ["x", "y"] and a.left_out == {"option texts differ": 1}
    assert torch.allclose(a.logp[0, :, :3], a.logp[1, :, :3])  # the same model, options re-ordered
    assert torch.isinf(a.logp[0, 1, 2]) and a.n_options.tolist() == [3, 2]


def test_items_with_different_option_counts(tmp_path):
    rng = np.random.default_rng(3)
    n = 60
    ids = [f"q{i}" for i in range(n)]
    ks = [3 if i % 2 else 5 for i in range(n)]
    ch = [[f"o{j}" for j in range(k)] for k in ks]
    ans = [int(rng.integers(k)) for k in ks]
    good = [softmax(np.eye(k)[a] * 2 + rng.normal(0, 1, k)) for k, a in zip(ks, ans)]
    other = [softmax(np.eye(k)[a] * 1 + rng.normal(0, 1, k)) for k, a in zip(ks, ans)]
    d1, d2 = write_dir(tmp_path / "a", ids, ch, good, ans), write_dir(tmp_path / "b", ids, ch, other, ans)
    s = ens.run_fit([str(d1), str(d2)], tmp_path / "e", n_boot=0)
    assert all(np.isfinite(s["params"]["temperatures"])) and all(np.isfinite(s["params"]["weights"]))
    comp = s["comparison"]
    cross = comp["ensemble, cross-fitted (5 folds)"]["weighted_mean"]
    assert cross >= min(comp["a"]["weighted_mean"], comp["b"]["weighted_mean"])
    rows = [json.loads(x) for x in (tmp_path / "e" / "predictions.jsonl").read_text().splitlines()]
    assert [len(r["probs"]) for r in rows] == ks and all(abs(sum(r["probs"]) - 1) < 1e-5 for r in rows)


def test_fit_cli_writes_params_and_honest_metrics(tmp_path):
    rng = np.random.default_rng(2)
    n = 80
    ids = [f"q{i}" for i in range(n)]
    ans = [int(x) for x in rng.integers(0, 4, n)]
    good = softmax(np.eye(4)[ans] * 3 + rng.normal(0, 1, (n, 4)))
    noise = softmax(rng.normal(0, 1, (n, 4)))
    ch = [["a", "b", "c", "d"]] * n
    d1, d2 = write_dir(tmp_path / "good", ids, ch, good, ans), write_dir(tmp_path / "noise", ids, ch, noise, ans)
    out = tmp_path / "ens"
    assert main(["ensemble", "fit", str(d1), str(d2), "-o", str(out)]) == 0
    params = json.loads((out / "params.json").read_text())
    assert params["weights"][0] > params["weights"][1] and abs(sum(params["weights"]) - 1) < 1e-9
    metrics = json.loads((out / "metrics.json").read_text())
    assert "cross-fitted" in metrics["fit"] and metrics["n"] == n
    comp = json.loads((out / "comparison.json").read_text())
    assert {"good", "noise", "average of probabilities", "majority vote"} <= set(comp)
    assert main(["ensemble", "apply", str(out), str(d1), str(d2), "-o", str(tmp_path / "applied")]) == 0
    applied = json.loads((tmp_path / "applied" / "metrics.json").read_text())
    assert applied["weighted_mean"]["value"] >= comp["noise"]["weighted_mean"]


def test_full_precision_log_probabilities_are_the_ensembles_input(tmp_path):
    """Rounded probabilities flatten a confident model (1e-9 and 1e-15 both round to 0); the
    ensemble reads `logprobs` where an eval wrote them, and the rounded probs otherwise."""
    a = write_dir(tmp_path / "a", ["q1"], [["x", "y", "z"]], [[0.0, 1.0, 0.0]], [1])
    rows = [json.loads(x) for x in (a / "predictions.jsonl").read_text().splitlines()]
    rows[0]["logprobs"] = [-20.7, -1e-9, -34.5]
    write_jsonl(a / "predictions.jsonl", rows)
    b = write_dir(tmp_path / "b", ["q1"], [["z", "x", "y"]], [[0.2, 0.3, 0.5]], [2])
    al = ens.align([a, b])
    assert torch.allclose(al.logp[0, 0], torch.tensor([-20.7, -1e-9, -34.5], dtype=torch.float64))
    assert torch.allclose(al.logp[1, 0], torch.log(torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64)))


# --------------------------------------------------------------------------- issue 21, item 5

def two_models(tmp_path, ids_a, ids_b, answers=None):
    rng = np.random.default_rng(4)
    dirs = []
    for name, ids in (("a", ids_a), ("b", ids_b)):
        ans = answers if answers is not None else [int(x) for x in rng.integers(0, 3, len(ids))]
        dirs.append(write_dir(tmp_path / name, ids, [["x", "y", "z"]] * len(ids),
                              softmax(rng.normal(size=(len(ids), 3))), ans[:len(ids)]))
    return dirs


def test_fewer_labelled_items_than_folds_is_one_line_naming_the_folders(tmp_path, capsys):
    a, b = two_models(tmp_path, ["q1", "q2", "q3"], ["q1", "q2", "q3"])
    assert main(["ensemble", "fit", str(a), str(b), "-o", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"aqa: error: {a}, {b}: 3 item(s) in common, 3 of them labelled, fewer than the 5 folds of cross-fitting; "
        f"pass --folds 3 or ensemble more items")
    a, b = two_models(tmp_path, ["q1"], ["q1"], answers=[None])
    assert main(["ensemble", "fit", str(a), str(b), "-o", str(tmp_path / "e")]) == 2
    assert "0 of them labelled" in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_labelled_items_all_in_one_fold_are_refused(tmp_path, capsys):
    ids = [i for i in (f"q{n}" for n in range(200)) if ens.folds_of([i], 5)[0] == 0][:6]
    a, b = two_models(tmp_path, ids, ids)
    assert main(["ensemble", "fit", str(a), str(b), "-o", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"aqa: error: {a}, {b}: the 6 labelled item(s) all fall in one of the 5 folds (a fold goes by a hash of the "
        f"id); ensemble more items")


def test_folders_with_different_items_are_refused_naming_the_ids(tmp_path, capsys):
    ids = [f"q{n:02d}" for n in range(20)]
    a, b = two_models(tmp_path, ids, ids[:15])  # b: evaluated with --limit 15, or not finished
    assert main(["ensemble", "fit", str(a), str(b), "-o", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"aqa: error: the eval folders hold different items ({a}: 20, {b}: 15); {b} lacks 5 the others hold: "
        f"q15, q16, q17, .... Ensemble evaluations of the same data file (an unfinished eval resumes when rerun)")
    fitted = tmp_path / "fitted"  # parameters from folders that agree, applied to these two
    ens.run_fit([str(a), str(a)], fitted, n_boot=0, steps=5)
    assert main(["ensemble", "apply", str(fitted), str(a), str(b), "-o", str(tmp_path / "ap")]) == 2
    assert capsys.readouterr().err.startswith("aqa: error: the eval folders hold different items")


def test_an_item_a_model_skipped_is_left_out_and_counted(tmp_path):
    ids = [f"q{n:02d}" for n in range(20)]
    a, b = two_models(tmp_path, ids, ids[:19])
    write_jsonl(b / "skipped.jsonl", [{"id": "q19", "subset": "s", "problem": "prompt of 9000 tokens is longer "
                                       "than the 4096 the model takes", "kind": "prompt_too_long"}])
    s = ens.run_fit([str(a), str(b)], tmp_path / "e", n_boot=0, steps=5)
    assert s["n"] == 19 and s["left_out"] == {"skipped by a model": 1}
