"""`aqa eval --suite`: one model on several benchmarks, each into OUT/eval/NAME, and the report's
table of them side by side with their mean."""

import json
import shutil

import pytest

from aqa.cli import main


@pytest.fixture
def suite(synth_data, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(synth_data / "wav", d / "wav")
    rows = (synth_data / "dev.jsonl").read_text().splitlines()
    (d / "a.jsonl").write_text("".join(r + "\n" for r in rows[:4]))
    (d / "b.jsonl").write_text("".join(r + "\n" for r in rows[4:7]))
    f = tmp_path / "suite.yaml"
    f.write_text(f"benchmarks:\n  - name: bench-a\n    data: {d / 'a.jsonl'}\n  - name: bench-b\n    data: {d / 'b.jsonl'}\n")
    return f


def test_a_suite_evaluates_each_benchmark_and_the_report_shows_them_side_by_side(tiny_model, suite, tmp_path):
    out = tmp_path / "run"
    assert main(["eval", "--suite", str(suite), "--model", str(tiny_model), "-o", str(out), "--batch-size", "4"]) == 0
    assert json.loads((out / "suite.json").read_text())["benchmarks"] == ["bench-a", "bench-b"]
    acc = {}
    for name, n in (("bench-a", 4), ("bench-b", 3)):
        m = json.loads((out / "eval" / name / "metrics.json").read_text())
        assert m["n"] == n and m["name"] == name
        acc[name] = m["weighted_mean"]["value"]
    assert main(["report", str(out), "-o", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Benchmarks (%)" in md
    section = md.split("## Benchmarks (%)")[1]
    row = next(x for x in section.splitlines() if x.startswith("| run |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1].startswith(f"{100 * acc['bench-a']:.1f}") and cells[2].startswith(f"{100 * acc['bench-b']:.1f}")
    assert cells[3] == f"{100 * (acc['bench-a'] + acc['bench-b']) / 2:.1f}"


def test_a_suite_with_a_missing_file_or_both_inputs_is_one_line(tiny_model, suite, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(suite.read_text().replace("b.jsonl", "nope.jsonl"))
    assert main(["eval", "--suite", str(bad), "--model", str(tiny_model), "-o", str(tmp_path / "x")]) == 2
    assert "benchmark 'bench-b': no such data file" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["eval", "--suite", str(suite), "--data", str(suite), "--model", str(tiny_model), "-o",
                 str(tmp_path / "y")]) == 2
    assert "--data FILE or --suite FILE" in capsys.readouterr().err
    # The shipped suite parses; it names files a user converts first.
    assert main(["eval", "--suite", "configs/suites/papers-2026.yaml", "--model", str(tiny_model), "-o",
                 str(tmp_path / "z")]) == 2
    assert "benchmark 'mmau-test-mini': no such data file data/mmau_test_mini.jsonl" in capsys.readouterr().err
