"""Reasoning models (issue 22): a tiny Qwen3-Omni-Thinking thinker whose chat template has the
Thinking checkpoint's layout (aqa/models/tiny/omni.py `_thinking_template`), with the real
classes: letter scoring after an empty think block, SFT targets with a rationale, a reasoning
adapter that `aqa eval` generates from and reads after its think block (unfinished when the
budget cuts it), reason-then-score, GRPO's rewards on reasoning completions; and the LoRA scale
at inference (`--adapter-scale`) on the tiny Qwen2-Audio."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aqa.eval.run import EvalSettings, evaluate
from aqa.eval.score import Query, score_queries
from aqa.io import UserError
from aqa.models.base import REASONING_FILE, Example
from aqa.models.registry import load_backend
from aqa.prompts import parse_answer, question_text
from conftest import noise

pytestmark = pytest.mark.usefixtures("one_thread")

RATIONALE = "Option A is not it"  # names a letter: a letter inside the reasoning never counts


@pytest.fixture(scope="module")
def thinker(tiny_family):
    return tiny_family("qwen3-omni-thinking")


@pytest.fixture(scope="module")
def tb(thinker):
    return load_backend(str(thinker), device="cpu")


def conversation(q, answer=None, reasoning=None):
    conv = [{"role": "user", "content": [{"type": "audio", "audio": "clip"}, {"type": "text", "text": q}]}]
    if answer is not None:
        conv.append({"role": "assistant", "content": answer, "reasoning_content": reasoning})
    return conv


def test_the_thinking_template_is_detected_and_renders_like_qwen3(tb, tiny_family):
    assert tb.thinks and tb.think_format.open == "<think>" and tb.think_format.start == ""
    tok = tb.tokenizer
    assert [tok.convert_tokens_to_ids(t) for t in ("<think>", "</think>")] == tok.encode("<think></think>")
    p = tb.processor
    # The generation prompt leaves the assistant turn open; enable_thinking=False closes an empty block.
    assert p.apply_chat_template(conversation("Q?"), add_generation_prompt=True, tokenize=False).endswith(
        "<|im_start|>assistant\n")
    assert p.apply_chat_template(conversation("Q?"), add_generation_prompt=True, tokenize=False,
                                 enable_thinking=False).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert p.apply_chat_template(conversation("Q?", "B", "It meows."), tokenize=False).endswith(
        "<|im_start|>assistant\n<think>\nIt meows.\n</think>\n\nB<|im_end|>\n")
    # The Instruct tiny model and Qwen2-Audio do not think.
    assert not load_backend(str(tiny_family("qwen3-omni")), device="cpu").thinks
    assert not load_backend(str(tiny_family("qwen2-audio")), device="cpu").thinks


@torch.no_grad()
def test_letter_scoring_reads_the_letter_after_an_empty_think_block(tb):
    q = question_text("Which sound?", ["beep", "hum", "hiss"])
    clip = noise(1.5, 3)
    (ours,) = score_queries(tb, [Query(0, [0, 1, 2], ["beep", "hum", "hiss"], Example(clip, q))])
    # transformers' own forward on the template's rendering with thinking switched off.
    text = tb.processor.apply_chat_template(conversation(q), add_generation_prompt=True, tokenize=False,
                                            enable_thinking=False)
    enc = tb.processor(text=[text], audio=[clip], return_tensors="pt")
    own = torch.log_softmax(tb.model(**enc).logits[0, -1, tb.letter_token_ids(3)].double(), -1).numpy()
    assert np.allclose(ours, own, atol=1e-4)
    # The first assistant position (where the model expects <think>) scores otherwise.
    tb.set_thinking(False)
    try:
        (first,) = score_queries(tb, [Query(0, [0, 1, 2], ["beep", "hum", "hiss"], Example(clip, q))])
    finally:
        tb.set_thinking(None)
    assert not np.allclose(first, ours, atol=1e-3)


def test_sft_targets_are_the_whole_assistant_turn_as_the_template_renders_it(tb):
    q, clip = "Which sound? A. dog B. cat", noise(1.0)
    for reasoning in (None, "It meows."):
        example = Example(clip, q, "B", rationale=reasoning)
        batch = tb.collate([example], with_target=True)
        rendered = tb.processor.apply_chat_template(conversation(q, "B", reasoning), tokenize=False)
        want = tb.processor(text=[rendered], audio=[clip], return_tensors="pt")["input_ids"][0].tolist()
        assert want[-1] == tb.tokenizer.encode("\n")[0]
        assert batch["input_ids"][0].tolist() == want[:-1]  # the template's turn, less its closing newline
        prompt = tb.processor(text=[tb.prompt(q)], audio=[clip], return_tensors="pt")["input_ids"].shape[1]
        labels = batch["labels"][0]
        assert (labels[:prompt] == -100).all() and labels[prompt:].tolist() == want[prompt:-1]  # loss: the whole turn
    # A rationale holding a special-token string is plain text inside the block.
    ids = tb.target_ids(Example(None, "", "B", rationale="a <|im_end|> b"))
    assert ids.count(tb.tokenizer.convert_tokens_to_ids("<|im_end|>")) == 1 and ids[-1] == tb.end_ids[0]


def _with_rationales(synth_data, tmp_path, rationale=RATIONALE, every=1):
    rows = []
    for i, line in enumerate((synth_data / "train.jsonl").read_text().splitlines()):
        r = json.loads(line)
        r["audio"] = str((synth_data / r["audio"]).resolve())
        if i % every == 0:
            r["rationale"] = rationale
        rows.append(r)
    path = tmp_path / "train_rationale.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def reasoner(thinker, synth_data, tmp_path_factory, one_thread):
    """An adapter of the thinker trained with target=reasoning until it writes the rationale's
    block, then a letter (80 steps: the tiny model learns the layout, not the answers)."""
    from aqa.train.sft import SFTConfig, train

    tmp = tmp_path_factory.mktemp("reasoner")
    data = _with_rationales(synth_data, tmp)
    summary = train(SFTConfig(model=str(thinker), train_data=[str(data)], output_dir=str(tmp / "run"), batch_size=4,
                              micro_batch_size=4, max_steps=80, lr=1e-2, lora_r=8, lora_dropout=0, device="cpu",
                              target="reasoning", allow_outside_root=True, num_workers=0, warmup_ratio=0,
                              schedule="constant"))
    return {"adapter": summary["adapter"], "data": data, "summary": summary}


def test_generate_reads_the_answer_after_the_reasoning_and_counts_cut_ones_apart(thinker, reasoner, tmp_path):
    assert (reasoner["summary"]["no_rationale"], reasoner["summary"]["items"]) == (0, 78)
    marker = json.loads((Path(reasoner["adapter"]) / REASONING_FILE).read_text())
    assert marker == {"open": "<think>", "close": "</think>"}
    s = EvalSettings(str(thinker), reasoner["adapter"], str(reasoner["data"]), mode="generate", limit=8,
                     allow_outside_root=True, progress=False, max_new_tokens=24)
    m = evaluate(s, tmp_path / "gen")
    rows = [json.loads(x) for x in (tmp_path / "gen" / "predictions.jsonl").read_text().splitlines()]
    closed = [r for r in rows if r["raw"].startswith(f"<think>\n{RATIONALE}\n</think>\n\n")]
    assert len(closed) >= 4 and m["reasons"]
    for r in closed:
        after = r["raw"].split("</think>")[-1]
        assert r["reasoning"] == RATIONALE and not r["unfinished"]
        assert r["pred"] == parse_answer(after, r["choices"]) is not None
        # Read whole, the text names A (inside the reasoning) and the answer's letter: no answer.
        assert parse_answer(r["raw"], r["choices"]) is None
    # A budget that cuts the reasoning: unfinished, no answer, counted apart from the unparsed.
    m = evaluate(EvalSettings(str(thinker), reasoner["adapter"], str(reasoner["data"]), mode="generate", limit=8,
                              allow_outside_root=True, progress=False, max_new_tokens=3), tmp_path / "cut")
    rows = [json.loads(x) for x in (tmp_path / "cut" / "predictions.jsonl").read_text().splitlines()]
    cut = [r for r in rows if r["raw"].startswith("<think>") and "</think>" not in r["raw"]]
    assert len(cut) >= 4 and all(r["unfinished"] and r["pred"] is None for r in cut)
    assert m["n_unfinished"] == len(cut) and m["n_unparsed"] == sum(r["pred"] is None for r in rows) - len(cut)
    assert json.loads((tmp_path / "cut" / "eval_config.json").read_text())["max_new_tokens"] == 3
    # Without a budget, a model that reasons gets 1024 tokens (written as the resume key).
    m = evaluate(EvalSettings(str(thinker), reasoner["adapter"], str(reasoner["data"]), mode="generate", limit=1,
                              allow_outside_root=True, progress=False), tmp_path / "budget")
    assert m["max_new_tokens"] == 1024


@torch.no_grad()
def test_reason_then_score_reads_the_letters_after_the_closed_reasoning(thinker, reasoner, tmp_path):
    s = EvalSettings(str(thinker), reasoner["adapter"], str(reasoner["data"]), mode="reason-then-score", limit=6,
                     allow_outside_root=True, progress=False, max_new_tokens=24)
    evaluate(s, tmp_path / "rts")
    rows = [json.loads(x) for x in (tmp_path / "rts" / "predictions.jsonl").read_text().splitlines()]
    assert all(r["probs"] is not None and r["pred"] == int(np.argmax(r["logprobs"])) for r in rows)
    b = load_backend(str(thinker), adapter=reasoner["adapter"], device="cpu")
    b.set_thinking(True)
    records = {json.loads(x)["id"]: json.loads(x) for x in reasoner["data"].read_text().splitlines()}
    checked = 0
    for r in rows:
        if r["reasoning"] != RATIONALE or r["unfinished"]:
            continue
        # transformers' own forward (with the adapter) on the prompt and the closed reasoning, as text.
        from aqa.data.audio import load_audio

        clip = load_audio(records[r["id"]]["audio"]).samples
        question = question_text(records[r["id"]]["question"], r["choices"])
        text = b.prompt(question) + f"<think>\n{RATIONALE}\n</think>\n\n"
        enc = b.processor(text=[text], audio=[clip], return_tensors="pt")
        own = torch.softmax(b.model(**enc).logits[0, -1, b.letter_token_ids(len(r["choices"]))].double(), -1)
        assert np.allclose(r["probs"], own.numpy(), atol=1e-4)
        checked += 1
    assert checked >= 3
    # A budget that cuts the reasoning still gives probabilities: the block is closed where it was cut.
    evaluate(EvalSettings(str(thinker), reasoner["adapter"], str(reasoner["data"]), mode="reason-then-score", limit=4,
                          allow_outside_root=True, progress=False, max_new_tokens=3), tmp_path / "rts-cut")
    rows = [json.loads(x) for x in (tmp_path / "rts-cut" / "predictions.jsonl").read_text().splitlines()]
    assert any(r["unfinished"] for r in rows) and all(r["pred"] is not None for r in rows)


class MergedBlankLine:
    """The pieces of a backend that `close_reasoning` uses, over a tokenizer whose '>\n\n' is one
    token, as a BPE trained on think blocks learns it (the demo's tiny one does)."""

    vocab = ["<think>", "\n", "x", "</think", ">\n\n", ">\n", ">", "A", "<end>"]

    @property
    def think_format(self):
        from aqa.prompts import ThinkFormat

        return ThinkFormat()

    def stop_ids(self):
        return {self.vocab.index("<end>")}

    def decode(self, seqs):
        return ["".join(self.vocab[i] for i in s) for s in seqs]

    def template_ids(self, text):  # longest match first
        out = []
        while text:
            piece = max((v for v in self.vocab if text.startswith(v)), key=len)
            out.append(self.vocab.index(piece))
            text = text[len(piece):]
        return out


@pytest.mark.parametrize("generated", [["</think", ">\n\n", "A", "<end>"], ["</think", ">\n", "\n", "A"],
                                       ["</think", ">\n", "A"], ["</think", ">", "A", "<end>"]])
def test_a_closed_reasoning_ends_with_one_blank_line_however_the_tokens_split_it(generated):
    from aqa.models.base import Backend

    b = MergedBlankLine()
    ids = b.template_ids("<think>\nx\n") + [b.vocab.index(t) for t in generated]
    prefix, r = Backend.close_reasoning(b, ids)
    assert b.decode([prefix])[0] == "<think>\nx\n</think>\n\n" and r.reasoning == "x" and not r.unfinished


def test_grpo_rewards_reasoning_completions_after_their_think_block(thinker, reasoner, tmp_path):
    from aqa.train.grpo import GRPOConfig, train

    summary = train(GRPOConfig(model=str(thinker), sft_adapter=reasoner["adapter"],
                               train_data=[str(reasoner["data"])], output_dir=str(tmp_path / "grpo"), batch_size=4,
                               micro_batch_size=4, max_steps=1, rollout="generate", group_size=2, max_new_tokens=24,
                               temperature=0.1,
                               rewards=["accuracy", "format"], device="cpu", num_workers=0,
                               allow_outside_root=True))
    rows = [json.loads(x) for x in (tmp_path / "grpo" / "completions.jsonl").read_text().splitlines()]
    good = [r for r in rows if r["completion"].startswith(f"<think>\n{RATIONALE}\n</think>\n\n")
            and parse_answer(r["completion"].split("</think>")[-1], ["x", "y", "z"]) is not None]
    assert good and all(r["rewards"]["format"] == 1.0 for r in good)  # read whole, "Option A ... B" names two
    assert all(r["rewards"]["format"] == 0.0 == r["rewards"]["accuracy"]
               for r in rows if "</think>" not in r["completion"])
    # A policy that reasons has no greedy letter to log (its answer comes after its reasoning).
    logged = [json.loads(x) for x in (tmp_path / "grpo" / "train_log.jsonl").read_text().splitlines()]
    assert logged and all("accuracy" not in s and "reward_accuracy" in s for s in logged)
    # The GRPO adapter stands on the reasoning SFT adapter: it reasons too.
    assert (tmp_path / "grpo" / "adapter" / REASONING_FILE).is_file() and summary["steps"] == 1


def test_no_rationale_skips_or_answers_after_an_empty_block(tiny_model, synth_data, tmp_path):
    from aqa.train.sft import SFTConfig, train

    data = _with_rationales(synth_data, tmp_path, every=2)  # 39 of 78 have one
    common = dict(model=str(tiny_model), train_data=[str(data)], batch_size=4, micro_batch_size=4, max_steps=1,
                  lora_r=4, device="cpu", target="reasoning", allow_outside_root=True, num_workers=0)
    skip = train(SFTConfig(output_dir=str(tmp_path / "skip"), **common))
    empty = train(SFTConfig(output_dir=str(tmp_path / "empty"), no_rationale="empty", **common))
    assert (skip["items"], skip["no_rationale"]) == (39, 39) and (empty["items"], empty["no_rationale"]) == (78, 39)
    assert (tmp_path / "skip" / "adapter" / REASONING_FILE).is_file()
    b = load_backend(str(tiny_model), device="cpu")
    # Qwen2-Audio has no think tokens: the delimiters are text; without a rationale, the empty block.
    empty_block = b.tokenizer.decode(b.target_ids(Example(None, "", "B", rationale="")))
    assert empty_block == "<think>\n\n</think>\n\nB<|im_end|>"
    assert b.target_ids(Example(None, "", "B")) == b.tokenizer.encode("B") + b.end_ids  # letter targets as before
    with pytest.raises(ValueError, match="no_rationale"):
        SFTConfig(no_rationale="drop")
    with pytest.raises(ValueError, match="target must be letter or reasoning"):
        SFTConfig(target="cot")
    with pytest.raises(ValueError, match="thinking must be auto, on or off"):
        SFTConfig(thinking="yes")
    from aqa.data.records import NoRecords

    blank = _with_rationales(synth_data, tmp_path, rationale="  ")
    with pytest.raises(NoRecords, match="no record has a rationale"):
        train(SFTConfig(output_dir=str(tmp_path / "none"), **{**common, "train_data": [str(blank)]}))


def _probs(folder):
    return np.array([json.loads(x)["probs"] for x in (folder / "predictions.jsonl").read_text().splitlines()])


def test_adapter_scale_goes_from_the_base_model_to_the_adapter(tiny_model, sft_adapter, synth_data, tmp_path):
    def run(name, adapter=None, scale=1.0):
        evaluate(EvalSettings(str(tiny_model), adapter, str(synth_data / "dev.jsonl"), adapter_scale=scale,
                              progress=False, n_boot=0), tmp_path / name)
        return _probs(tmp_path / name)

    base, full = run("base"), run("full", str(sft_adapter))
    zero, half, one = (run(f"s{s}", str(sft_adapter), s) for s in (0.0, 0.5, 1.0))
    assert not np.allclose(base, full, atol=1e-5)  # the adapter changes the predictions
    assert np.allclose(zero, base, atol=1e-6) and np.array_equal(one, full)
    d = lambda a, b: np.abs(a - b).sum()  # noqa: E731
    assert 0 < d(half, base) < d(full, base) and 0 < d(half, full) < d(full, base)
    # At a LoRA layer the update is exactly halfway.
    b = load_backend(str(tiny_model), adapter=str(sft_adapter), device="cpu")
    layer = next(m for n, m in b.model.named_modules() if n.endswith("q_proj") and hasattr(m, "lora_A"))
    x = torch.randn(2, layer.in_features)
    outs = {}
    for s in (0.0, 0.5, 1.0):
        b.scale_adapter(s)
        outs[s] = layer(x)
    assert torch.allclose(outs[0.5] - outs[0.0], (outs[1.0] - outs[0.0]) / 2, atol=1e-6)
    assert not torch.allclose(outs[1.0], outs[0.0])
    # The scale is a resume key: the folder made at 0.5 refuses 1.0.
    assert json.loads((tmp_path / "s0.5" / "eval_config.json").read_text())["adapter_scale"] == 0.5
    with pytest.raises(UserError, match="other settings"):
        evaluate(EvalSettings(str(tiny_model), str(sft_adapter), str(synth_data / "dev.jsonl"), progress=False),
                 tmp_path / "s0.5")


def test_refusals(tiny_model, synth_data, tmp_path):
    from aqa.cli import main
    from aqa.data.records import AQARecord, RecordError

    with pytest.raises(RecordError, match="rationale"):
        AQARecord.from_dict({"id": "a", "audio": "a.wav", "question": "q", "choices": ["x", "y"], "answer": 0,
                             "subset": "s", "rationale": 3})
    with pytest.raises(UserError, match="thinking must be"):
        EvalSettings(str(tiny_model), None, str(synth_data / "dev.jsonl"), thinking="maybe")

    with pytest.raises(UserError, match="needs a model that reasons"):
        evaluate(EvalSettings(str(tiny_model), None, str(synth_data / "dev.jsonl"), mode="reason-then-score",
                              progress=False), tmp_path / "rts")
    assert not (tmp_path / "rts").exists()
    with pytest.raises(UserError, match="name the adapter"):
        EvalSettings(str(tiny_model), None, str(synth_data / "dev.jsonl"), adapter_scale=0.5)
    with pytest.raises(UserError, match="finite number"):
        EvalSettings(str(tiny_model), "x", str(synth_data / "dev.jsonl"), adapter_scale=float("nan"))
    assert main(["eval", "--model", str(tiny_model), "--data", str(synth_data / "dev.jsonl"), "-o",
                 str(tmp_path / "cli"), "--adapter-scale", "0.5"]) == 2


def test_unfinished_reasonings_are_counted_apart_in_metrics_and_the_report(tmp_path):
    from aqa.eval.metrics import compute_metrics, format_summary
    from aqa.eval.report.data import EvalRun
    from aqa.eval.report.tables import details_table

    def row(i, pred, unfinished):
        return {"id": str(i), "subset": "bqa", "choices": ["a", "b"], "answer": 0, "pred": pred,
                "reasoning": "r", "unfinished": unfinished}

    # 4 labelled: right, wrong, no answer named, cut by the budget.
    m = compute_metrics([row(0, 0, False), row(1, 1, False), row(2, None, False), row(3, None, True)], n_boot=0)
    assert (m["n_unparsed"], m["n_unfinished"], m["subsets"]["bqa"]["n_unfinished"]) == (1, 1, 1)
    assert m["weighted_mean"]["value"] == 0.25  # the cut one has no answer: wrong
    assert "1 with the reasoning cut by the token budget" in format_summary(m)
    table = details_table([EvalRun("think", tmp_path, {**m, "mode": "generate"})], {})
    assert table.rows[0][3] == "1 (+1 unfinished)"
    # An evaluation that does not reason keeps its metrics as they were: no unfinished key.
    plain = compute_metrics([{k: v for k, v in row(0, 0, False).items() if k not in ("reasoning", "unfinished")}])
    assert "n_unfinished" not in plain and "n_unfinished" not in plain["subsets"]["bqa"]
