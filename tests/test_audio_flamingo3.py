"""The Audio Flamingo 3 backend on a tiny random model with the real classes: prompt layout,
30 s-style windows and the prompt's limit, scoring against transformers' own forward,
batching, LoRA, SFT, GRPO and generation."""

import json
import shutil

import numpy as np
import pytest
import torch

from aqa.models.base import Example
from aqa.models.registry import load_backend
from aqa.prompts import question_text


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine the
    threads' spin-waits made these tests several times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_af3(tmp_path_factory, synth_data):
    from aqa.models.tiny_audio_flamingo3 import TinyAudioFlamingo3Spec, build_tiny_audio_flamingo3
    from aqa.models.tiny_builder import corpus_from_records

    spec = TinyAudioFlamingo3Spec(audio_seconds=2, max_windows=3, num_mel_bins=32, encoder_dim=32, decoder_dim=32,
                                  vocab_size=400)
    return build_tiny_audio_flamingo3(tmp_path_factory.mktemp("af3") / "model", spec,
                                      corpus_from_records(synth_data / "qa.jsonl"))


@pytest.fixture(scope="module")
def b(tiny_af3):
    return load_backend(str(tiny_af3), device="cpu")


def noise(seconds, seed=0):
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


SECONDS = (0.5, 3.0, 1.3)
N_OPTIONS = [2, 3, 2]


def examples(target="B"):
    return [Example(noise(s, k), question_text("Which sound?" + " really" * k, ["beep", "hum", "hiss"][: 2 + k % 2]),
                    target) for k, s in enumerate(SECONDS)]


def test_prompt_is_the_chat_template_with_25_audio_tokens_a_second(b):
    tok = b.tokenizer
    q = "Which sound? A. dog B. cat"
    batch = b.collate([Example(noise(1.0), q, "B")], with_target=True)
    want = tok.encode("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                      + "<sound>" * 25 + f"\n{q}<|im_end|>\n<|im_start|>assistant\nB<|im_end|>", add_special_tokens=False)
    assert batch["input_ids"][0].tolist() == want
    assert batch["labels"][0, -2:].tolist() == want[-2:] and int((batch["labels"] != -100).sum()) == 2


def test_clips_are_cut_into_windows_up_to_the_processors_limit(b):
    assert b.audio_seconds == 6.0  # 3 windows of 2 s (20 windows of 30 s in AF3)
    batch = b.collate([Example(noise(4.5), "What?"), Example(noise(7.0, 1), "And?")])
    # 4.5 s: windows of 2, 2 and 0.5 s; 7 s: cut to 3 whole windows. Each window padded whole.
    assert batch["input_features"].shape == (6, 32, 200)
    assert batch["input_features_mask"].sum(1).tolist() == [200, 200, 50, 200, 200, 200]
    assert (batch["input_ids"] == b.audio_token_id).sum(1).tolist() == [112, 150]


@torch.no_grad()
def test_option_logits_and_target_logprobs_equal_transformers_own_forward_on_each_example(b):
    ids = b.letter_token_ids(3)
    for e, n in zip(examples(), N_OPTIONS):
        row = b.collate([e], with_target=True)
        own = b.model(**{k: v for k, v in row.items() if k != "position_ids"})
        logp, mask = b.target_logprobs(row)
        assert torch.allclose(-(logp.sum() / mask.sum()), own.loss, atol=1e-5)
        prompt = b.collate([e])
        own = b.model(**{k: v for k, v in prompt.items() if k != "position_ids"}).logits[0, -1, ids[:n]]
        assert torch.allclose(b.option_logits(prompt, [n])[0], own, atol=1e-5)


@torch.no_grad()
def test_batched_scoring_equals_one_at_a_time(b):
    ex = examples()
    batch = b.collate(ex)
    batched = b.option_logits(batch, N_OPTIONS)
    for i, (e, n) in enumerate(zip(ex, N_OPTIONS)):
        assert torch.allclose(batched[i, :n], b.option_logits(b.collate([e]), [n])[0], atol=1e-5)


@torch.no_grad()
def test_lora_targets_the_decoder_and_round_trips(tiny_af3, tmp_path):
    lb = load_backend(str(tiny_af3), device="cpu")
    lb.add_lora(r=4, alpha=8, dropout=0.0)
    names = [n for n, _ in lb.model.named_modules() if n.endswith("lora_A")]
    assert len(names) == 2 * 7 and all(".language_model.layers." in n for n in names)
    for n, p in lb.model.named_parameters():
        if "lora_B" in n:
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    lb.model.save_pretrained(tmp_path / "adapter")
    batch = lb.collate(examples())
    tuned = lb.option_logits(batch, N_OPTIONS)
    with lb.model.disable_adapter():
        assert not torch.allclose(lb.option_logits(batch, N_OPTIONS), tuned, atol=1e-3)
    back = load_backend(str(tiny_af3), device="cpu", adapter=str(tmp_path / "adapter"))
    assert torch.allclose(back.option_logits(batch, N_OPTIONS), tuned, atol=1e-5)


@pytest.fixture(scope="module")
def sft_run(tiny_af3, synth_data, tmp_path_factory):
    from aqa.train.sft import SFTConfig, train

    out = tmp_path_factory.mktemp("af3sft")
    rows = [json.loads(x) for x in (synth_data / "train.jsonl").read_text().splitlines()][:4]
    d = out / "data"
    shutil.copytree(synth_data / "wav", d / "wav")
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train(SFTConfig(model=str(tiny_af3), train_data=[str(d / "train.jsonl")], output_dir=str(out / "run"),
                    batch_size=4, micro_batch_size=4, max_steps=6, lr=2e-2, lora_r=4, lora_dropout=0.0,
                    shuffle_options=False, spec_augment_masks=0, device="cpu"))
    return out / "run"


def test_sft_loss_falls_on_a_tiny_overfit_set(sft_run):
    losses = [json.loads(x)["loss"] for x in (sft_run / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("rollout", ["choice", "generate"])
def test_a_grpo_step_runs(tiny_af3, sft_run, synth_data, tmp_path, rollout):
    from safetensors.torch import load_file

    from aqa.train.grpo import GRPOConfig, train as grpo_train

    s = grpo_train(GRPOConfig(model=str(tiny_af3), sft_adapter=str(sft_run / "adapter"),
                              train_data=[str(synth_data / "train.jsonl")], output_dir=str(tmp_path / "g"),
                              rollout=rollout, batch_size=2, micro_batch_size=2, group_size=4, max_steps=1, lr=5e-2,
                              rewards=["accuracy", "format"], max_new_tokens=3, lora_r=4, device="cpu", seed=1))
    assert s["steps"] == 1
    log = [json.loads(x) for x in (tmp_path / "g" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1] and np.isfinite(log[0]["reward"]) and np.isfinite(log[0]["kl"])
    new = load_file(tmp_path / "g" / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k for k in new)
    if rollout == "choice":  # sampled letters of unequal reward: the new adapter moved
        assert any(v.abs().sum() > 0 for k, v in new.items() if "lora_B" in k)


@torch.no_grad()
def test_generation_is_the_models_own_and_ends_at_the_end_token(b):
    batch = b.collate(examples())
    free = b.generate_ids(batch, max_new_tokens=4)
    # transformers' own generate takes the left padding into its positions from the mask.
    own = b.model.generate(**{k: v for k, v in batch.items() if k != "position_ids"}, max_new_tokens=4,
                           do_sample=False, pad_token_id=b.tokenizer.pad_token_id)[:, batch["input_ids"].shape[1]:]
    stop = b.stop_ids()
    for mine, theirs in zip(free, own.tolist()):
        cut = next((i + 1 for i, t in enumerate(theirs) if t in stop), len(theirs))
        assert mine == theirs[:cut]
    saved = b.end_ids
    try:
        b.end_ids = [free[0][1]]
        ended = b.generate_ids(batch, max_new_tokens=4)
    finally:
        b.end_ids = saved
    for row, full in zip(ended, free):
        cut = next((i + 1 for i, t in enumerate(full) if t in stop | {free[0][1]}), len(full))
        assert row == full[:cut]
    assert ended[0] == free[0][:2]


def test_cli_builds_the_family_with_sizes(tmp_path):
    from aqa.cli import main

    out = tmp_path / "m"
    assert main(["model", "tiny", "--family", "audio-flamingo3", "-o", str(out), "--audio-seconds", "3",
                 "--max-windows", "2", "--decoder-layers", "1", "--decoder-dim", "32", "--encoder-dim", "32",
                 "--num-mel-bins", "16", "--vocab-size", "300"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "audioflamingo3" and cfg["audio_config"]["max_source_positions"] == 150
    assert load_backend(str(out), device="cpu").audio_seconds == 6.0
