"""The learned logit ensemble (reference report, section 3.1): each model's option logits are
divided by its own learnable temperature and turned into probabilities by a softmax; the
models' probabilities are mixed with learnable weights (a softmax over free parameters, so
they stay positive and sum to one); the mixture is fitted by cross-entropy against the
answers with Adam, 500 steps by default.

Inputs are eval dirs (`predictions.jsonl` with per-option log-probabilities at full precision,
`logprobs`, in each record's original order; the rounded `probs` of older eval dirs serve
otherwise). A model's log-probabilities serve as its logits: softmax(log p / T) is the
same as temperature-scaling the logits the probabilities came from. Items are aligned by id
and by option text, so models that saw the options in different orders, or whose records
list them differently, are matched option by option; items whose option texts differ
between models are left out and counted, and so are items a model skipped (its
skipped.jsonl). Folders that hold different items otherwise (another data file, `--limit`, an
eval not finished) are refused, naming the ids that differ.

Honest numbers: the accuracy reported for the fitting set is cross-fitted. The items are cut
into k folds (by a hash of the id, so the assignment does not depend on file order), each
fold is scored with parameters fitted on the other folds, and the table says so. The
parameters in params.json are fitted on all items, for `aqa ensemble apply` on another split.

Launch:
    aqa ensemble fit runs/eval/qwen-sft runs/eval/kimi-sft -o runs/eval/ensemble
    aqa ensemble apply runs/eval/ensemble runs/eval-test/qwen-sft runs/eval-test/kimi-sft -o runs/eval-test/ensemble
"""

from __future__ import annotations

import argparse
import logging
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aqa.io import UserError, write_json, write_jsonl

log = logging.getLogger(__name__)

EPS = 1e-12


@dataclass
class Aligned:
    """Items common to every model, options in one order (the first model's)."""

    ids: list[str]
    rows: list[dict]  # the first model's rows: subset, question type, choices, answer
    logp: torch.Tensor  # (M, N, K) log-probabilities, -inf past an item's options
    n_options: torch.Tensor  # (N,)
    answers: torch.Tensor  # (N,) option index, -1 where unlabelled
    left_out: dict[str, int]


#: How many ids an error names.
SHOWN_IDS = 3


def _skipped_ids(pred_dir: str | Path) -> set:
    """The ids an eval folder's skipped.jsonl names (audio it could not decode, a prompt too long
    for its model): items that model left out, not items it was never given."""
    from aqa.io import iter_jsonl

    f = Path(pred_dir) / "skipped.jsonl"
    if not f.is_file():
        return set()
    return {obj.get("id") for _, obj in iter_jsonl(f, skip_bad=True) if isinstance(obj, dict)}


def _same_items(pred_dirs: list[str | Path], answered: list[set], skipped: list[set]) -> None:
    """Refuse eval folders made on different items (another data file, --limit, an eval that has
    not finished): the ensemble would be fitted and scored on their overlap only, and its table
    would not compare with the folders' own numbers. An item a model skipped is no such difference."""
    seen = [a | s for a, s in zip(answered, skipped)]
    every = set().union(*seen)
    short = [(d, every - s) for d, s in zip(pred_dirs, seen) if every - s]
    if not short:
        return
    d, lacking = short[0]
    first = sorted(lacking, key=str)[:SHOWN_IDS]
    counts = ", ".join(f"{o}: {len(s)}" for o, s in zip(pred_dirs, seen))
    raise UserError(f"the eval folders hold different items ({counts}); {d} lacks {len(lacking)} the others "
                    f"hold: {', '.join(map(str, first))}{', ...' if len(lacking) > len(first) else ''}. Ensemble "
                    f"evaluations of the same data file (an unfinished eval resumes when rerun)")


def align(pred_dirs: list[str | Path]) -> Aligned:
    from aqa.eval.metrics import load_predictions

    per_model, answered, skipped = [], [], []
    for d in pred_dirs:
        rows = load_predictions(d)
        if not rows:
            raise UserError(f"{d}: no predictions yet (an eval that answered nothing)")
        missing = sum(r.get("probs") is None for r in rows)
        if missing == len(rows):
            raise UserError(f"{d}: no per-option probabilities (evaluate with --mode score)")
        per_model.append({r["id"]: r for r in rows if r.get("probs") is not None})
        answered.append({r["id"] for r in rows})
        skipped.append(_skipped_ids(d) - answered[-1])
    _same_items(pred_dirs, answered, skipped)
    common = [i for i in per_model[0] if all(i in m for m in per_model[1:])]
    left = Counter()
    outside = set().union(*answered, *skipped) - set(common)
    left["skipped by a model"] = len(outside & set().union(*skipped))
    left["no option probabilities"] = len(outside - set().union(*skipped))
    ids, rows, logps, ns, answers = [], [], [], [], []
    for i in common:
        ref = per_model[0][i]
        choices = ref["choices"]
        per = []
        for m in per_model:
            r = m[i]
            pos = {c: k for k, c in enumerate(r["choices"])}
            if sorted(pos) != sorted(choices) or len(pos) != len(r["choices"]):
                per = None
                break
            # Full-precision log-probabilities where the eval wrote them; older eval dirs have
            # only the rounded probabilities.
            lp = (np.asarray(r["logprobs"], dtype=np.float64) if r.get("logprobs") is not None
                  else np.log(np.clip(np.asarray(r["probs"], dtype=np.float64), EPS, 1.0)))
            per.append(lp[[pos[c] for c in choices]])
        if per is None:
            left["option texts differ"] += 1
            continue
        ids.append(i)
        rows.append(ref)
        logps.append(per)
        ns.append(len(choices))
        answers.append(-1 if ref.get("answer") is None else int(ref["answer"]))
    if not ids:
        raise UserError(f"{', '.join(map(str, pred_dirs))}: no item has the same options in every folder "
                        f"({', '.join(f'{k}: {v}' for k, v in left.items() if v)})")
    K = max(ns)
    t = torch.full((len(pred_dirs), len(ids), K), float("-inf"), dtype=torch.float64)
    for j, per in enumerate(logps):
        for m, lp in enumerate(per):
            t[m, j, :len(lp)] = torch.from_numpy(lp)
    return Aligned(ids, rows, t, torch.tensor(ns), torch.tensor(answers), {k: v for k, v in left.items() if v})


def mixture(logp: torch.Tensor, log_t: torch.Tensor, w_raw: torch.Tensor) -> torch.Tensor:
    """(M, N, K) log-probs -> (N, K) mixed probabilities."""
    real = torch.isfinite(logp)  # options past an item's count are -inf
    # -inf / T would give NaN gradients for T even where masked: divide finite values only.
    scaled = torch.where(real, torch.where(real, logp, 0.0) / torch.exp(log_t)[:, None, None], float("-inf"))
    p = torch.softmax(scaled, -1)
    w = torch.softmax(w_raw, 0)
    return (w[:, None, None] * p).sum(0)


def fit(logp: torch.Tensor, answers: torch.Tensor, steps: int = 500, lr: float = 0.05) -> dict:
    """Temperatures and weights minimising the cross-entropy of the mixture."""
    keep = answers >= 0
    logp, answers = logp[:, keep], answers[keep]
    M = logp.size(0)
    log_t = torch.zeros(M, dtype=torch.float64, requires_grad=True)
    w_raw = torch.zeros(M, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([log_t, w_raw], lr=lr)
    for _ in range(steps):
        p = mixture(logp, log_t, w_raw)
        loss = -torch.log(p.gather(1, answers[:, None]).clamp_min(EPS)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"temperatures": torch.exp(log_t).tolist(), "weights": torch.softmax(w_raw, 0).tolist(),
            "loss": loss.item()}


def apply_params(logp: torch.Tensor, params: dict) -> torch.Tensor:
    log_t = torch.log(torch.tensor(params["temperatures"], dtype=torch.float64))
    w_raw = torch.log(torch.tensor(params["weights"], dtype=torch.float64).clamp_min(EPS))
    return mixture(logp, log_t, w_raw)


def folds_of(ids: list[str], k: int) -> np.ndarray:
    """Fold of each item, from a hash of its id."""
    return np.array([zlib.crc32(i.encode()) % k for i in ids])


def cross_fit(a: Aligned, k: int = 5, steps: int = 500, lr: float = 0.05) -> tuple[torch.Tensor, list[dict]]:
    """(N, K) probabilities, each fold's from parameters fitted on the other folds."""
    folds = folds_of(a.ids, k)
    out = torch.zeros(a.logp.shape[1:], dtype=torch.float64)
    fitted = []
    for f in range(k):
        test = torch.from_numpy(folds == f)
        if not test.any():
            continue
        train = ~test
        params = fit(a.logp[:, train], a.answers[train], steps, lr)
        out[test] = apply_params(a.logp[:, test], params)
        fitted.append({"fold": f, "n_fit": int(train.sum()), "n_scored": int(test.sum()), **params})
    return out, fitted


def rows_from_probs(a: Aligned, probs: torch.Tensor) -> list[dict]:
    out = []
    for j, r in enumerate(a.rows):
        n = int(a.n_options[j])
        p = probs[j, :n]
        pred = int(torch.argmax(p))
        ans = None if int(a.answers[j]) < 0 else int(a.answers[j])
        out.append({"id": r["id"], "subset": r.get("subset"), "question_type": r.get("question_type", ""),
                    "choices": r["choices"], "answer": ans, "probs": [round(float(x), 6) for x in p],
                    "logprobs": [float(x) for x in torch.log(p.clamp_min(EPS))],
                    "pred": pred, "correct": None if ans is None else pred == ans})
    return out


def baselines(a: Aligned, names: list[str]) -> dict[str, torch.Tensor]:
    """Each single model, the plain average of probabilities, and majority vote."""
    p = torch.softmax(a.logp, -1)  # (M, N, K)
    out = {n: p[m] for m, n in enumerate(names)}
    out["average of probabilities"] = p.mean(0)
    votes = torch.zeros_like(p[0])
    picks = p.argmax(-1)  # (M, N)
    for m in range(p.size(0)):
        votes.scatter_add_(1, picks[m][:, None], torch.ones_like(picks[m][:, None], dtype=votes.dtype))
    # Ties go to the option with the higher average probability.
    out["majority vote"] = votes + 1e-6 * p.mean(0)
    return out


def run_fit(pred_dirs: list[str], out_dir: str | Path, *, folds: int = 5, steps: int = 500, lr: float = 0.05,
            names: list[str] | None = None, n_boot: int = 1000) -> dict:
    from aqa.eval.metrics import write_metrics
    from aqa.io import safe_name

    out = Path(out_dir)
    names = names or [Path(d).name for d in pred_dirs]
    if folds < 2:
        raise UserError(f"--folds {folds}: cross-fitting needs at least 2 folds")
    a = align(pred_dirs)
    labelled_ids = [i for i, y in zip(a.ids, a.answers.tolist()) if y >= 0]
    named = ", ".join(map(str, pred_dirs))
    if len(labelled_ids) < folds:
        what = f"{len(a.ids)} item(s) in common, {len(labelled_ids)} of them labelled"
        raise UserError(f"{named}: {what}, fewer than the {folds} folds of cross-fitting; "
                        + (f"pass --folds {len(labelled_ids)} or ensemble more items" if len(labelled_ids) >= 2 else
                           "the ensemble is fitted against the answers: fit it on a labelled split, and "
                           "`aqa ensemble apply` it to this one"))
    if len(set(folds_of(labelled_ids, folds))) < 2:
        # Each fold is scored by parameters fitted on the others, which would hold no answer.
        raise UserError(f"{named}: the {len(labelled_ids)} labelled item(s) all fall in one of the {folds} folds "
                        f"(a fold goes by a hash of the id); ensemble more items")
    cf_probs, fold_params = cross_fit(a, folds, steps, lr)
    params = fit(a.logp, a.answers, steps, lr)
    write_json(out / "params.json", {**params, "models": [str(Path(d).resolve()) for d in pred_dirs],
                                     "names": names, "steps": steps, "lr": lr, "folds": fold_params})
    rows = rows_from_probs(a, cf_probs)
    write_jsonl(out / "predictions.jsonl", rows)
    metrics = write_metrics(out, rows, n_boot=n_boot, extra={
        "name": "ensemble (cross-fitted)", "fit": f"cross-fitted, {folds} folds: each item scored by parameters "
                                                    f"fitted on the other folds", "left_out": a.left_out})
    table = {f"ensemble, cross-fitted ({folds} folds)": metrics}
    for n, p in baselines(a, names).items():
        # Each baseline as an eval dir of its own, so that `aqa report` can show it beside the ensemble.
        b_dir = out / "baselines" / safe_name(n)
        b_rows = rows_from_probs(a, p)
        write_jsonl(b_dir / "predictions.jsonl", b_rows)
        table[n] = write_metrics(b_dir, b_rows, n_boot=n_boot, extra={"name": n})
    comparison = {n: {"weighted_mean": m["weighted_mean"]["value"], "arithmetic_mean": m["arithmetic_mean"]["value"],
                      "subsets": {s: v["accuracy"] for s, v in m["subsets"].items()}} for n, m in table.items()}
    write_json(out / "comparison.json", comparison)
    return {"params": params, "comparison": comparison, "n": len(a.ids), "left_out": a.left_out}


def run_apply(params_dir: str | Path, pred_dirs: list[str], out_dir: str | Path, n_boot: int = 1000) -> dict:
    import json

    from aqa.eval.metrics import write_metrics

    params = json.loads((Path(params_dir) / "params.json").read_text())
    if len(params["weights"]) != len(pred_dirs):
        raise UserError(f"{params_dir}: fitted for {len(params['weights'])} models, given {len(pred_dirs)}")
    a = align(pred_dirs)
    rows = rows_from_probs(a, apply_params(a.logp, params))
    out = Path(out_dir)
    write_jsonl(out / "predictions.jsonl", rows)
    return write_metrics(out, rows, n_boot=n_boot, extra={"name": "ensemble", "fit": f"parameters from {params_dir}",
                                                          "left_out": a.left_out})


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ensemble", help="learned logit ensemble of several models' predictions")
    esub = p.add_subparsers(dest="ensemble_command", required=True)
    f = esub.add_parser("fit", help="fit temperatures and weights; report cross-fitted accuracy",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("pred_dirs", nargs="+", help="eval dirs of the models (score mode)")
    f.add_argument("-o", "--output", required=True)
    f.add_argument("--folds", type=int, default=5)
    f.add_argument("--steps", type=int, default=500)
    f.add_argument("--lr", type=float, default=0.05)
    f.add_argument("--names", help="comma-separated model names for the table")
    f.set_defaults(func=_run_fit)
    a = esub.add_parser("apply", help="apply fitted parameters to predictions on another split")
    a.add_argument("params_dir", help="the folder `aqa ensemble fit` wrote")
    a.add_argument("pred_dirs", nargs="+")
    a.add_argument("-o", "--output", required=True)
    a.set_defaults(func=_run_apply)


def _run_fit(args) -> int:
    if len(args.pred_dirs) < 2:
        raise UserError(f"{args.pred_dirs[0]}: an ensemble needs at least two eval folders")
    s = run_fit(args.pred_dirs, args.output, folds=args.folds, steps=args.steps, lr=args.lr,
                names=args.names.split(",") if args.names else None)
    width = max(len(n) for n in s["comparison"])
    print(f"{'':{width}}  weighted  arithmetic  ({s['n']} items; left out: {s['left_out'] or 'none'})")
    for n, m in s["comparison"].items():
        print(f"{n:{width}}  {100 * m['weighted_mean']:8.1f}  {100 * m['arithmetic_mean']:10.1f}")
    print(f"temperatures {['%.3f' % t for t in s['params']['temperatures']]}, "
          f"weights {['%.3f' % w for w in s['params']['weights']]}")
    print(f"wrote {args.output}/ (params.json, predictions.jsonl, metrics.json, comparison.json, baselines/)")
    return 0


def _run_apply(args) -> int:
    run_apply(args.params_dir, args.pred_dirs, args.output)
    print(f"wrote {args.output}/ (predictions.jsonl, metrics.json)")
    return 0
