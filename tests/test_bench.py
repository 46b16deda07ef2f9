"""The benchmark script still runs (on a tiny model; its numbers are not checked)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, rows, check", [
    ("speed.py", ["LoRA SFT step", "scoring eval", "generate eval", "GRPO step, G=6"], "scoring paths agree to"),
    ("kimi_audio.py", ["GLM-4-Voice tokens", "Whisper features", "one prompt at a time", "aqa batched",
                       "greedy generation"], "answer logits agree to"),
])
def test_bench_runs_and_appends_a_table(tmp_path, script, rows, check):
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--shapes", "tiny", "--repeats", "1",
                        "--clip-seconds", "2", "--batch", "2", "--new-tokens", "2", "--results", str(results)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    text = results.read_text()
    for row in rows:
        assert row in text
    assert check in text and "Command:" in text
