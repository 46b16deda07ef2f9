"""The benchmark script still runs (on a tiny model; its numbers are not checked)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_speed_bench_runs_and_appends_a_table(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "speed.py"), "--shapes", "tiny", "--repeats", "1",
                        "--clip-seconds", "2", "--batch", "2", "--new-tokens", "2", "--results", str(results)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    text = results.read_text()
    for row in ("LoRA SFT step", "scoring eval", "generate eval", "GRPO step, G=6"):
        assert row in text
    assert "scoring paths agree to" in text and "Command:" in text


def test_kimi_audio_bench_runs_and_checks_batched_against_single(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "kimi_audio.py"), "--shapes", "tiny", "--repeats", "1",
                        "--clip-seconds", "2", "--batch", "2", "--new-tokens", "2", "--results", str(results)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    text = results.read_text()
    for row in ("GLM-4-Voice tokens", "Whisper features", "one prompt at a time", "aqa batched", "greedy generation"):
        assert row in text
    assert "answer logits agree to" in text
