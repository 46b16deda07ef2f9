"""`aqa report` end to end on dirs written to disk: table numbers, plots, HTML escaping."""

import json
import re

import pytest

from aqa.cli import main
from aqa.eval.metrics import write_metrics
from aqa.eval.report import build_report, calibration_points

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def pred_rows(spec, probs=True):
    """spec: {subset: (n, n_correct)}; 4 options, answer 0, wrong answers pick option 1."""
    rows = []
    for subset, (n, k) in spec.items():
        for i in range(n):
            pred = 0 if i < k else 1
            p = [0.1, 0.1, 0.1, 0.1]
            p[pred] = 0.7
            rows.append({"id": f"{subset}-{i}", "subset": subset, "question_type": f"{subset}-type",
                         "choices": ["a", "b", "c", "d"], "answer": 0,
                         "probs": p if probs else None, "pred": pred, "correct": pred == 0})
    return rows


def write_eval(d, rows, metrics=True, name=None):
    d.mkdir(parents=True, exist_ok=True)
    (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if metrics:
        write_metrics(d, rows, n_boot=200, extra={"name": name} if name else None)
    return d


@pytest.fixture
def runs(tmp_path):
    a = write_eval(tmp_path / "zs", pred_rows({"bqa": (4, 2), "tsqa": (3, 3)}), name="zero-shot")
    # no metrics.json: the report computes it from the predictions
    b = write_eval(tmp_path / "sft", pred_rows({"bqa": (4, 3), "tsqa": (3, 1), "cqa": (10, 9)}),
                   metrics=False)
    t = tmp_path / "grpo_run"
    t.mkdir()
    (t / "config.yaml").write_text("lr: 5.0e-6\n")
    log = [{"step": s, "epoch": s / 10, "loss": 1.0 / s, "lr": 5e-6, "reward": s / 20} for s in range(1, 21)]
    (t / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log) + '{"step": 21, "lo')
    write_eval(t / "eval" / "dev", pred_rows({"bqa": (4, 4), "cqa": (10, 5)}, probs=False))
    return tmp_path, [a, b, t]


def md_row(md, name):
    """The first row starting with `name` (the accuracy table comes first)."""
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_report_cli_table_and_plots(runs, capsys):
    tmp, dirs = runs
    out = tmp / "report"
    assert main(["report", *map(str, dirs), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    md = (out / "report.md").read_text()

    header = md_row(md, "run")
    assert header == ["run", "bqa", "tsqa", "cqa", "arithmetic mean", "weighted mean"]
    assert md_row(md, "*items*") == ["*items*", "4", "3", "10", "3 subsets", "7–17"]
    zs = md_row(md, "zero-shot")
    assert zs[1:4] == ["50.0", "100.0", "–"]
    assert zs[4].startswith("75.0 [") and zs[5].startswith("71.4 [")  # (0.5+1)/2 and 5/7
    sft = md_row(md, "sft")  # named after its folder; metrics computed by the report
    assert sft[1:4] == ["75.0", "33.3", "90.0"]
    assert sft[4].startswith(f"{100 * (0.75 + 1 / 3 + 0.9) / 3:.1f} [")
    assert sft[5].startswith(f"{100 * 13 / 17:.1f} [")
    dev = md_row(md, "grpo_run/dev")
    assert dev[1:4] == ["100.0", "–", "50.0"] and dev[4].startswith("75.0 [")
    assert md_row(md, "*chance*")[1:4] == ["25.0", "25.0", "25.0"]
    # the means' intervals are there and bracket the estimate
    lo, hi = map(float, re.search(r"\[([\d.]+), ([\d.]+)\]", sft[5]).groups())
    assert lo <= 100 * 13 / 17 <= hi
    assert not (tmp / "sft" / "metrics.json").exists()  # inputs are left untouched

    for name in ("accuracy_per_subset.png", "loss_grpo_run.png", "calibration.png"):
        p = out / name
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name
        assert f"{p}" in printed
        assert f"]({name})" in md
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and 'src="accuracy_per_subset.png"' in html
    assert "<td>71.4 [" in html and "grpo_run/dev" in html
    assert "| grpo_run | 20 |" in md  # training table: last step of the complete lines


def test_names_and_escaping(runs):
    tmp, dirs = runs
    res = build_report(dirs, tmp / "r2", names=["<b>zs</b>", "a|b", "rl & co"])
    assert res["runs"] == ["<b>zs</b>", "a|b", "rl & co/dev"]
    assert res["training_runs"] == ["rl & co"]
    html = (tmp / "r2" / "report.html").read_text()
    assert "<b>zs</b>" not in html and "&lt;b&gt;zs&lt;/b&gt;" in html and "rl &amp; co/dev" in html
    md = (tmp / "r2" / "report.md").read_text()
    assert "| a\\|b | 75.0 |" in md
    assert (tmp / "r2" / "loss_rl_co.png").read_bytes()[:8] == PNG_MAGIC
    assert set(res["files"]) >= {res["markdown"], res["html"], *res["plots"]}


def test_container_dir_and_errors(runs, capsys):
    tmp, dirs = runs
    demo = tmp / "demo"
    write_eval(demo / "eval" / "zero-shot", pred_rows({"bqa": (2, 1)}))
    write_eval(demo / "eval" / "sft", pred_rows({"bqa": (2, 2)}))
    res = build_report([demo], tmp / "r3")
    assert res["runs"] == ["sft", "zero-shot"] and res["training_runs"] == []
    assert main(["report", str(tmp / "nothing"), "-o", str(tmp / "r4")]) == 2
    (tmp / "empty").mkdir()
    assert main(["report", str(tmp / "empty"), "-o", str(tmp / "r4")]) == 2
    assert main(["report", *map(str, dirs), "-o", str(tmp / "r4"), "--names", "one,two"]) == 2
    assert "one name per dir" in capsys.readouterr().err


def test_calibration_points():
    rows = [{"answer": 0, "pred": 0, "probs": [0.95, 0.05]}, {"answer": 1, "pred": 0, "probs": [0.95, 0.05]},
            {"answer": 0, "pred": 1, "probs": [0.35, 0.65]}, {"answer": None, "pred": 0, "probs": [1, 0]},
            {"answer": 0, "pred": None, "probs": [0.5, 0.5]}, {"answer": 0, "pred": 0, "probs": None}]
    c = calibration_points(rows)
    assert c["n"] == 3 and c["count"] == [1, 2]
    assert c["confidence"] == pytest.approx([0.65, 0.95]) and c["accuracy"] == [0.0, 0.5]
    assert c["ece"] == pytest.approx((0.65 + 2 * 0.45) / 3)
    assert calibration_points([{"answer": 0, "pred": 0, "probs": None}]) is None
