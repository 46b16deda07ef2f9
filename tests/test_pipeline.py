"""The training input pipeline: one meaning of batch size, micro-batches prepared by DataLoader
workers exactly as the training process would prepare them, bad clips replaced in a worker,
and Kimi-Audio's speech tokens computed once per clip."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from aqa.data.records import load_records
from aqa.models.registry import load_backend
from aqa.train.data import MicroBatches, QAItems, StepPlan, micro_batch_loader
from aqa.train.grpo import GRPOConfig, train as grpo_train
from aqa.train.sft import SFTConfig, train as sft_train


def adapter(run):
    return load_file(os.path.join(run, "adapter", "adapter_model.safetensors"))


def same_adapters(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_batch_size_means_items_per_step_on_all_processes_in_every_recipe():
    g = GRPOConfig()
    # The reference report's GRPO step: 8 questions per micro-batch x 5 accumulated.
    assert (g.batch_size, g.micro_batch_size, g.accumulation(1)) == (40, 8, 5)
    assert GRPOConfig(batch_size=40, micro_batch_size=5).accumulation(8) == 1
    for cfg in (g, SFTConfig(batch_size=40, micro_batch_size=8)):
        with pytest.raises(ValueError, match=r"batch_size 40 is not a multiple of micro_batch_size 8 x 8 "):
            cfg.accumulation(8)
    assert SFTConfig(batch_size=32, micro_batch_size=4).accumulation(2) == 4
    with pytest.raises(ValueError, match="micro_batch_size 8 and batch_size 4"):
        GRPOConfig(batch_size=4, micro_batch_size=8)
    for path in ("configs/qwen2_audio/grpo.yaml", "configs/kimi_audio/grpo.yaml"):
        from aqa.config import load_config

        c = load_config(GRPOConfig, path)
        # The shipped configs split the same 40 so that it divides on 8 processes too.
        assert (c.batch_size, c.micro_batch_size, c.accumulation(1), c.accumulation(8)) == (40, 5, 8, 1)


@pytest.fixture(scope="module")
def data_with_a_bad_clip(synth_data, tmp_path_factory):
    rows = [json.loads(x) for x in (synth_data / "train.jsonl").read_text().splitlines()]
    d = tmp_path_factory.mktemp("bad")
    shutil.copytree(synth_data / "wav", d / "wav")
    (d / "wav" / "broken.wav").write_bytes(b"RIFF....not audio")
    rows[3]["audio"] = "wav/broken.wav"
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "train.jsonl"


def prepared(backend, items, plan, *, rank, steps, workers, with_target):
    """Every micro-batch of one process as the training loop receives it."""
    ds = MicroBatches(plan, items, rank=rank, start=0, steps=steps, backend=backend, with_target=with_target,
                      workers=workers)
    out = []
    for mb in micro_batch_loader(ds, num_workers=workers, prefetch=2, pin_memory=False):
        batch = backend.to_device(mb.batch) if mb.on_host else mb.batch
        out.append(dict(where=(mb.step, mb.k, mb.epoch, mb.seed), batch=batch, bad=mb.bad,
                        items=[(it.record.id, it.order, it.answer) for it in mb.items]))
    return out


@pytest.mark.parametrize("with_target", [True, False])
def test_workers_prepare_exactly_the_batches_of_the_training_process(tiny_model, data_with_a_bad_clip, with_target):
    backend = load_backend(str(tiny_model), device="cpu")
    records = load_records(data_with_a_bad_clip)

    def run(workers):  # both processes' micro-batches, from items that know no bad clip yet
        items = QAItems(records, seed=4, shuffle=True, window_s=backend.audio_seconds)
        return [mb for rank in (0, 1) for mb in prepared(backend, items, plan, rank=rank, steps=steps,
                                                         workers=workers, with_target=with_target)]

    plan = StepPlan(n_items=len(records), seed=4, per_step=8, steps_per_epoch=len(records) // 8, accum=2, world=2,
                    micro=2)
    steps = plan.steps_per_epoch + 2  # into the second epoch: new orders, new option shuffles
    here, there = run(0), run(2)
    assert len(here) == len(there) == 2 * steps * 2
    for a, b in zip(here, there):
        assert a["where"] == b["where"] and a["items"] == b["items"]
        assert a["batch"].keys() == b["batch"].keys()
        for k in a["batch"]:
            assert torch.equal(a["batch"][k], b["batch"][k]), (a["where"], k)
    # The bad clip is reported from the worker that met it and replaced, never fatal.
    bad = {k for mb in there for k in mb["bad"]}
    assert bad == {k for mb in here for k in mb["bad"]} and len(bad) == 1 and "broken.wav" in bad.pop()
    assert all(len(mb["items"]) == 2 for mb in there)
    # The two processes' micro-batches of a step are the step's items, as one process takes them.
    one = StepPlan(**{**plan.__dict__, "world": 1, "accum": 4})
    for step in range(steps):
        ranks = [[plan.micro_indices(step, k, r)[1] for k in range(2)] for r in range(2)]
        mine = [ranks[g % 2][g // 2] for g in range(4)]
        assert mine == [one.micro_indices(step, g, 0)[1] for g in range(4)]
        assert [plan.global_micro(k, r) for r in range(2) for k in range(2)] == [0, 2, 1, 3]


def test_workers_end_with_the_same_adapters(tiny_model, synth_data, tmp_path):
    """SFT (SpecAugment and LoRA dropout on) and GRPO (choice rollouts) with the micro-batches
    prepared in the training process or in 2 workers: bit-identical adapters and losses."""
    common = dict(model=str(tiny_model), train_data=[str(synth_data / "train.jsonl")], device="cpu", lora_r=4,
                  lora_alpha=8, lr=1e-3, seed=1)
    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"sft{workers}"
        sft_train(SFTConfig(output_dir=str(out), batch_size=4, micro_batch_size=2, max_steps=2,
                            num_workers=workers, **common))
        g = tmp_path / f"grpo{workers}"
        grpo_train(GRPOConfig(output_dir=str(g), sft_adapter=str(tmp_path / "sft0" / "adapter"), batch_size=4,
                              micro_batch_size=2, max_steps=2, group_size=2, num_workers=workers, **common))
        runs[workers] = (out, g)
    for a, b in zip(runs[0], runs[2]):
        assert same_adapters(adapter(a), adapter(b)), a.name
        loss = lambda r: [json.loads(x)["loss"] for x in (r / "train_log.jsonl").read_text().splitlines()]
        assert loss(a) == loss(b)


# --- Kimi-Audio: frozen speech tokens computed once ----------------------------------------------
@pytest.fixture(scope="module")
def tiny_kimi(tmp_path_factory, synth_data):
    from aqa.models.tiny.builder import corpus_from_records
    from aqa.models.tiny.kimi_audio import build_tiny_kimi

    return build_tiny_kimi(tmp_path_factory.mktemp("kimi") / "model",
                           corpus=corpus_from_records(synth_data / "qa.jsonl"))


@pytest.fixture
def tokenizer_calls(monkeypatch):
    """Every clip the GLM-4-Voice tokenizer runs on, in any backend of this process."""
    from aqa.models.whisper_vq import WhisperVQTokenizer

    calls = []
    forward = WhisperVQTokenizer.forward

    def counted(self, features, frame_mask):
        calls.append(features.shape[0])
        return forward(self, features, frame_mask)

    monkeypatch.setattr(WhisperVQTokenizer, "forward", counted)
    return calls


def test_speech_tokens_are_cached_by_clip_and_tokenizer(tiny_kimi, synth_data, tmp_path, tokenizer_calls):
    from aqa.data.audio import load_audio
    from aqa.models.base import Example

    b = load_backend(str(tiny_kimi), device="cpu")
    p = b.processor
    clip = load_audio(synth_data / "wav" / sorted(os.listdir(synth_data / "wav"))[0]).samples
    direct = p.speech_tokenizer.tokenize(clip, p.tokenizer_features)
    tokenizer_calls.clear()
    b.set_cache_dir(tmp_path / "cache")
    ex = [Example(clip, "Which sound? A. x B. y", "A")]
    first = b.collate(ex, with_target=True)
    assert len(tokenizer_calls) == 1
    again = b.collate(ex, with_target=True)
    fresh = load_backend(str(tiny_kimi), device="cpu")  # an empty memory: the tokens come from disk
    fresh.set_cache_dir(tmp_path / "cache")
    from_disk = fresh.collate(ex, with_target=True)
    assert len(tokenizer_calls) == 1
    for batch in (again, from_disk):
        assert all(torch.equal(first[k], batch[k]) for k in first)
    # A DataLoader worker's collate (no tokenizer) finds them on disk too.
    host = fresh.host_collate()(ex, with_target=True)
    assert host["speech"][0][1] == direct and host["speech"][0][2] is None
    offset = p.token_offset
    assert [t - offset for t in first["audio_ids"][0].tolist() if t >= offset] == direct
    # Another tokenizer (other weights) never reads these tokens.
    with torch.no_grad():
        fresh.processor.speech_tokenizer.codebook.weight.mul_(-1)
    fresh.speech_cache = type(fresh.speech_cache)(fresh._speech_tokenizer_identity, tmp_path / "cache")
    fresh.collate(ex)
    assert len(tokenizer_calls) == 2


def test_second_epoch_does_not_run_the_speech_tokenizer(tiny_kimi, synth_data, tmp_path, tokenizer_calls):
    """Kimi-Audio SFT, 2 epochs over 12 items (every item in every epoch) with 2 DataLoader
    workers: each clip is tokenized once in all, so the second epoch reads them back."""
    rows = [json.loads(x) for x in (synth_data / "train.jsonl").read_text().splitlines()][:12]
    clips = {r["audio"] for r in rows}
    d = tmp_path / "ds"
    shutil.copytree(synth_data / "wav", d / "wav")
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = dict(model=str(tiny_kimi), train_data=[str(d / "train.jsonl")], device="cpu", lora_r=4, lora_alpha=8,
                  batch_size=6, micro_batch_size=3, lr=1e-3, bf16=False, num_workers=2, max_steps=0)
    s = sft_train(SFTConfig(output_dir=str(tmp_path / "two"), epochs=2.0, **common))
    assert s["steps"] == 4 and len(tokenizer_calls) == len(clips) < len(rows)
    assert len(list((tmp_path / "two" / "cache").rglob("*.npy"))) == len(clips)
