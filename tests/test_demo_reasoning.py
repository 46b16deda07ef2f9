"""`aqa demo reasoning=true` at toy sizes: the exact rationales, the reasoning stages' files,
and the finished share and mean length of reasonings in metrics.json and the report."""

import dataclasses
import json
from pathlib import Path

from aqa.cli import main
from aqa.data.events import Event
from aqa.demo import DemoConfig, fixed_order_questions, half_seconds, run_demo
from aqa.eval.metrics import compute_metrics

# A hand-worked clip: beep at 0.4 s and again at 3.0 s, knocking at 1.76 s, a bell that starts
# 0.1 s after the beep (too close for a "first sound" question), and a second, touching piece
# of the knock, which a listener hears as one.
NAMES = {"/b": "beep", "/k": "knocking", "/l": "bell"}
CLIP = [Event("/b", 0.4, 0.8), Event("/l", 0.5, 0.7), Event("/k", 1.76, 2.0), Event("/k", 2.0, 2.3),
        Event("/b", 3.0, 3.2)]
HEARD = "beep at 0.5 s, twice; then bell at 0.5 s, once; then knocking at 2.0 s, once."


def test_rationales_say_what_is_heard_when_then_the_conclusion(tmp_path):
    recs = fixed_order_questions(["clip_7"], {"clip_7": CLIP}, NAMES, tmp_path, "train", seed=1, rationales=True)
    by_type = {r.question_type: r for r in recs}
    assert set(by_type) == {"counting", "frequency"}  # beep and bell start 0.1 s apart: no "first sound"
    assert by_type["counting"].rationale == HEARD + " So 3 different sounds are heard."
    asked = by_type["frequency"].question.split("the ")[1].split(" sound")[0]
    times = {"beep": "twice", "bell": "once", "knocking": "once"}[asked]
    assert by_type["frequency"].rationale == f"{HEARD} So the {asked} occurs {times}."
    assert by_type["frequency"].choices[by_type["frequency"].answer] == times
    one = fixed_order_questions(["clip_8"], {"clip_8": [Event("/k", 1.24, 1.5)]}, NAMES, tmp_path, "train", seed=1,
                                rationales=True)
    assert [r.rationale for r in one] == ["knocking at 1.0 s, once. So 1 sound is heard.",
                                          "knocking at 1.0 s, once. So knocking is heard first.",
                                          "knocking at 1.0 s, once. So the knocking occurs once."]
    # Without rationales the records are the default demo's, field for field.
    plain = fixed_order_questions(["clip_7"], {"clip_7": CLIP}, NAMES, tmp_path, "train", seed=1)
    assert [r.rationale for r in plain] == [None, None]
    assert [r.to_dict() for r in plain] == [{k: v for k, v in r.to_dict().items() if k != "rationale"} for r in recs]
    assert [half_seconds(t) for t in (0.24, 0.25, 1.74, 1.75, 2.0)] == [0.0, 0.5, 1.5, 2.0, 2.0]


def test_metrics_count_finished_reasonings_and_their_words():
    rows = [{"id": "a", "choices": ["x", "y"], "answer": 0, "pred": 0, "reasoning": "beep at 0.5 s, once. So x.",
             "unfinished": False},
            {"id": "b", "choices": ["x", "y"], "answer": 0, "pred": None, "reasoning": "beep at", "unfinished": True},
            {"id": "c", "choices": ["x", "y"], "answer": 1, "pred": 1, "reasoning": "So y.", "unfinished": False},
            {"id": "d", "choices": ["x", "y"], "answer": 1, "pred": 1, "reasoning": None, "unfinished": False}]
    m = compute_metrics(rows, n_boot=0)
    assert m["reasoning"] == {"n": 4, "n_finished": 2, "finished": 0.5, "mean_words": 4.5}  # (7 + 2) / 2
    assert "reasoning" not in compute_metrics([{k: v for k, v in r.items() if k not in ("reasoning", "unfinished")}
                                               for r in rows], n_boot=0)


TOY = DemoConfig(clips=24, clip_seconds=2, dev_fraction=0.25, encoder_dim=32, encoder_layers=1, decoder_dim=32,
                 decoder_layers=1, num_mel_bins=32, encoder_steps=2, pretrain_steps=2, sft_steps=2, sft_batch=4,
                 grpo_steps=0, eval_batch=8, lora_r=2, second_lora_r=0, reasoning=True, reasoning_sft_steps=2,
                 reasoning_tokens=6, reasoning_grpo_steps=1, reasoning_grpo_batch=2, reasoning_grpo_group=2)


def test_reasoning_path_writes_its_stages_and_reports_them(tmp_path, capsys):
    out = tmp_path / "demo"
    s = run_demo(out, TOY, progress=False)
    for stage in ("reasoning data", "reasoning SFT", "reasoning GRPO"):
        assert stage in s["stages"]
    train = [json.loads(x) for x in (out / "data" / "train-reasoning.jsonl").read_text().splitlines()]
    assert train and all(r["rationale"].count(". So ") == 1 for r in train)
    # The default stages' training file has none: their letter targets are the default demo's.
    assert all("rationale" not in json.loads(x) for x in (out / "data" / "train.jsonl").read_text().splitlines())
    assert (out / "runs" / "sft-reasoning" / "adapter" / "aqa_reasoning.json").is_file()
    for name, mode in (("sft-reasoning", "generate"), ("sft-reasoning-rts", "reason-then-score"),
                       ("grpo-reasoning", "generate")):
        m = json.loads((out / "eval" / name / "metrics.json").read_text())
        assert m["mode"] == mode and m["reasons"] and m["max_new_tokens"] == TOY.reasoning_tokens
        assert set(m["reasoning"]) == {"n", "n_finished", "finished", "mean_words"} and m["reasoning"]["n"] == m["n"]
        assert s["reasoning"][name] == m["reasoning"]
    done = [json.loads(x) for x in (out / "runs" / "grpo-reasoning" / "completions.jsonl").read_text().splitlines()]
    assert done and all(set(r["rewards"]) == {"accuracy", "format"} for r in done)
    cfg = (out / "runs" / "grpo-reasoning" / "config.yaml").read_text()
    assert "advantage: gdpo" in cfg and "rollout: generate" in cfg
    md = (out / "report" / "report.md").read_text()
    table = md.split("## Reasoning")[1].split("\n## ")[0]
    for shown in ("sft reasoning, generated answers", "sft reasoning, letters scored after it",
                  "grpo reasoning, generated answers"):
        assert f"| {shown} |" in table
    assert "finished (%)" in table and "mean words" in table
    # Resumed: every stage is found done; the terminal gets each reasoning row's two numbers.
    assert run_demo(out, TOY, progress=False)["stages"] == {}
    capsys.readouterr()
    assert main(["demo", "-o", str(out), *(f"{k}={v}" for k, v in dataclasses.asdict(TOY).items())]) == 0
    printed = capsys.readouterr().out
    for name, r in s["reasoning"].items():
        assert f"{name}: {100 * r['finished']:.1f}% of the reasonings finished" in printed


def test_the_default_demo_config_keeps_the_reasoning_path_off():
    from aqa.config import load_config
    from aqa.demo import DEFAULT_CONFIG

    assert load_config(DemoConfig, Path(DEFAULT_CONFIG)).reasoning is False
