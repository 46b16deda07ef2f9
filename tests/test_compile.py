"""The decoder through torch.compile: the same answer logits as eager, in evaluation and in a
training run. Inductor compiles for about a minute per shape on 2 CPU cores, so the fast check
traces with dynamo and runs the captured graph eagerly (aot_eager); the full compile is slow."""

import json
import os

import pytest
from safetensors.torch import load_file

from aqa.cli import main
from aqa.data.audio import load_audio
from aqa.data.records import load_records
from aqa.models.base import Example
from aqa.models.registry import load_backend
from aqa.prompts import question_text


def batches(backend, synth_data):
    recs = load_records(synth_data / "dev.jsonl")[:5]
    ex = [Example(load_audio(r.audio_path).samples, question_text(r.question, r.choices)) for r in recs]
    n = [len(r.choices) for r in recs]
    # Two shapes: the second call must not reuse a graph specialised to the first.
    return [(backend.collate(ex[:4]), n[:4]), (backend.collate(ex[2:]), n[2:])]


@pytest.mark.parametrize("family", ["qwen2_audio", pytest.param("kimi_audio", marks=pytest.mark.slow)])
def test_traced_decoder_gives_the_eager_answer_logits(family, tiny_model, synth_data, tmp_path):
    import torch._dynamo

    if family == "kimi_audio":
        from aqa.models.tiny.builder import corpus_from_records
        from aqa.models.tiny.kimi_audio import build_tiny_kimi

        path = build_tiny_kimi(tmp_path / "kimi", corpus=corpus_from_records(synth_data / "qa.jsonl"))
    else:
        path = tiny_model
    b = load_backend(str(path), device="cpu")
    b.model.eval()
    work = batches(b, synth_data)
    with torch.no_grad():
        eager = [b.option_logits(batch, n) for batch, n in work]
    torch._dynamo.reset()
    counts = torch._dynamo.utils.counters
    counts.clear()
    b.compile_decoder(backend="aot_eager")
    with torch.no_grad():
        traced = [b.option_logits(batch, n) for batch, n in work]
    assert counts["stats"]["unique_graphs"] >= 1  # dynamo did capture the decoder
    for e, t in zip(eager, traced):
        assert torch.allclose(e, t, atol=1e-5), (e - t).abs().max()
    # In place: the module tree and its weights' names are the eager model's.
    assert not any("_orig_mod" in k for k in b.model.state_dict())
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_eval_and_training_match_eager(tiny_model, synth_data, tmp_path):
    """`aqa eval --compile` and `compile=true` SFT (inductor) against eager."""
    import torch._dynamo

    dev = str(synth_data / "dev.jsonl")
    for name, extra in [("eager", []), ("compiled", ["--compile"])]:
        assert main(["eval", "--model", str(tiny_model), "--data", dev, "-o", str(tmp_path / name), "--limit", "8",
                     "--device", "cpu", "--batch-size", "4", *extra]) == 0
    rows = {n: [json.loads(x) for x in (tmp_path / n / "predictions.jsonl").read_text().splitlines()]
            for n in ("eager", "compiled")}
    for a, b in zip(rows["eager"], rows["compiled"]):
        assert a["id"] == b["id"] and a["pred"] == b["pred"]
        assert max(abs(x - y) for x, y in zip(a["probs"], b["probs"])) < 1e-5
    torch._dynamo.reset()
    common = [f"model={tiny_model}", f"train_data=[{synth_data / 'train.jsonl'}]", "batch_size=4",
              "micro_batch_size=4", "max_steps=2", "lr=1e-3", "lora_dropout=0", "device=cpu", "lora_r=4"]
    for name in ("eager", "compiled"):
        assert main(["sft", *common, f"output_dir={tmp_path / ('sft-' + name)}",
                     f"compile={'true' if name == 'compiled' else 'false'}"]) == 0
    loss = {n: [json.loads(x)["loss"] for x in (tmp_path / f"sft-{n}" / "train_log.jsonl").read_text().splitlines()]
            for n in ("eager", "compiled")}
    assert loss["compiled"] == pytest.approx(loss["eager"], rel=1e-5)
    a, b = (load_file(os.path.join(tmp_path, f"sft-{n}", "adapter", "adapter_model.safetensors"))
            for n in ("eager", "compiled"))
    # Inductor fuses and orders the float sums its own way: measured 2e-6 apart after 2 Adam
    # steps of lr 1e-3 (weights up to 0.18); a wrong graph would be lr-sized apart.
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=2e-5) for k in a)
    torch._dynamo.reset()
