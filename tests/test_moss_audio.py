"""MOSS-Audio's native backend on its tiny random model in the official layout: what every family
must do (tests/test_families.py's checks: scoring equal to the model's full forward, batched equal
to one at a time, LoRA round trips, SFT loss falls, a GRPO step in both rollout modes, generation,
the commands through the CLI) and what is its own (time markers, the prompt layout, DeepStack,
Thinking). Equality with upstream's own code: tools/check_moss_equivalence.py, docs/moss_audio.md."""

import json
import shutil

import numpy as np
import pytest
import torch

from aqa.models.base import Example
from aqa.models.moss_audio import MossAudioBackend, audio_token_count, time_marker_layout
from aqa.models.registry import load_backend
from aqa.prompts import question_text
from conftest import assert_adapter_round_trips, noise, overfit_sft_run

pytestmark = pytest.mark.usefixtures("one_thread")

SECONDS = (0.5, 3.0, 0.83, 4.1)
N_OPTIONS = [2, 3, 2, 3]


def examples(seconds=SECONDS, target="B"):
    return [Example(noise(s, k), question_text("Which sound?" + " really" * k, ["beep", "hum", "hiss"][: 2 + k % 2]),
                    target) for k, s in enumerate(seconds)]


@pytest.fixture(scope="module")
def folder(tiny_family):
    return tiny_family("moss-audio")


@pytest.fixture(scope="module")
def b(folder):
    return load_backend(str(folder), device="cpu")


def own(b, batch, **kw):
    """The model's whole forward on a batch (its own positions: no padding in these calls)."""
    return b.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   input_features=batch.get("input_features"), feature_lengths=batch.get("feature_lengths"),
                   audio_token_id=b.audio_token_id, **kw)


def test_the_folder_is_the_official_layout(folder, b):
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "generation_config.json", "vocab.json",
            "merges.txt", "tokenizer_config.json"} <= names and "tokenizer.json" not in names
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    for k in ("audio_encoder.conv1.weight", "audio_encoder.stem_proj.weight", "audio_encoder.layers.0.self_attn.q_proj.bias",
              "audio_adapter.gate_proj.weight", "deepstack_audio_merger_list.0.down_proj.weight",
              "language_model.layers.0.self_attn.q_norm.weight", "language_model.norm.weight", "lm_head.weight"):
        assert k in keys, k
    assert "audio_encoder.layers.0.self_attn.k_proj.bias" not in keys  # Whisper's key projection has none
    assert type(b).__name__ == "MossAudioBackend" and b.time_markers  # upstream's inference default
    # The tokenizer's digits are the ids upstream's time markers write (Qwen's 15-24).
    assert b.processor.digit_ids == list(range(15, 25))
    pc = json.loads((folder / "processor_config.json").read_text())
    assert b.tokenizer.convert_tokens_to_ids("<|vision_pad|>") == pc["audio_token_id"] == b.audio_token_id
    assert pc["audio_start_id"] >= len(b.tokenizer)  # not in the tokenizer, as in the release


def test_time_markers_follow_upstreams_layout():
    a, digit = -1, list(range(100, 110))
    # 2 s of audio is 25 tokens: the marker "2" after them, then the rest; none before 2 s.
    assert time_marker_layout(24, digit, a) == [a] * 24
    assert time_marker_layout(25, digit, a) == [a] * 25 + [102]
    got = time_marker_layout(160, digit, a)  # 12.8 s: markers 2, 4, ..., 12
    assert got.count(a) == 160 and len(got) == 160 + 4 + 2 * 2  # 2 4 6 8 one digit, 10 12 two
    assert got[25 * 5 + 4:25 * 5 + 6] == [101, 100] and got[-12:] == [101, 102] + [a] * 10
    assert audio_token_count(330) == 42 and audio_token_count(8) == 1 and audio_token_count(9) == 2


@pytest.mark.parametrize("markers", [True, False])
def test_prompt_is_upstreams_default_prompt_and_counts_match(b, markers):
    b.time_markers = markers
    try:
        e = Example(noise(4.1), "Which sound? A. beep B. hum", None)
        ids = b.collate([e])["input_ids"][0].tolist()
        n = audio_token_count(len(e.audio) // 160)
        start, end = b.processor.audio_start_id, b.processor.audio_end_id
        inner = ids[ids.index(start) + 1:ids.index(end)]
        assert inner.count(b.audio_token_id) == n and len(inner) == n + (2 if markers else 0)  # "2", "4"
        text = b.tokenizer.decode([t for t in ids if t not in (start, end, b.audio_token_id)])
        digits = "24" if markers else ""
        assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + digits
                        + "\nWhich sound? A. beep B. hum<|im_end|>\n<|im_start|>assistant\n")
        assert b.prompt_tokens(e.text, 4.1, "B") == len(ids) + 2  # the letter and <|im_end|>
        assert b.prompt_tokens(e.text, None) == len(b.collate([Example(None, e.text)])["input_ids"][0])
    finally:
        b.time_markers = True


def test_question_with_special_token_strings_is_plain_text(b):
    text = "Is <|im_end|> or <|vision_pad|> heard? A. yes B. no"
    ids = b.collate([Example(noise(1.0), text)])["input_ids"][0].tolist()
    assert ids.count(b.tokenizer.convert_tokens_to_ids("<|im_end|>")) == 2  # system's and user's turns only
    assert ids.count(b.audio_token_id) == audio_token_count(100)


@torch.no_grad()
def test_option_logits_and_target_logprobs_equal_the_models_own_forward(b):
    ids = b.letter_token_ids(3)
    for e, n in zip(examples(), N_OPTIONS):
        row = b.collate([e], with_target=True)
        out = own(b, row, labels=row["labels"])
        logp, mask = b.target_logprobs(row)
        assert int(mask.sum()) == len(b.end_ids) + 1
        assert torch.allclose(-(logp.sum() / mask.sum()), out.loss, atol=1e-5)
        prompt = b.collate([e])
        logits = own(b, prompt).logits[0, -1, ids[:n]]
        assert torch.allclose(b.option_logits(prompt, [n])[0], logits, atol=1e-5)


@torch.no_grad()
def test_batched_scoring_equals_one_at_a_time_and_padding_never_leaks(b):
    ex = examples()
    batch = b.collate(ex)
    batched = b.option_logits(batch, N_OPTIONS)
    for i, (e, n) in enumerate(zip(ex, N_OPTIONS)):
        assert torch.allclose(batched[i, :n], b.option_logits(b.collate([e]), [n])[0], atol=1e-5)
        assert torch.isinf(batched[i, n:]).all()
    # Whatever fills a row's padded frames (SpecAugment's bands reach them), its audio tokens are
    # those it gets alone: the encoder zeroes the padding before every convolution.
    feats = batch["input_features"].clone()
    for i, n in enumerate(batch["feature_lengths"].tolist()):
        feats[i, :, n:] = 100.0
    lm = b.base_model()
    together, deep = lm.audio_features(feats, batch["feature_lengths"])
    alone = [lm.audio_features(c["input_features"], c["feature_lengths"]) for c in (b.collate([e]) for e in ex)]
    assert torch.allclose(together, torch.cat([a for a, _ in alone]), atol=1e-6)
    for k, d in enumerate(deep):
        assert torch.allclose(d, torch.cat([a[1][k] for a in alone]), atol=1e-6)


@torch.no_grad()
def test_deepstack_features_reach_the_first_decoder_layers(b):
    batch = b.collate(examples()[:1])
    base = b.option_logits(batch, [2])
    mergers = b.base_model().deepstack_audio_merger_list
    assert len(mergers) == len(b.config.deepstack_layers) >= 1
    saved = mergers[0].down_proj.weight.clone()
    try:
        mergers[0].down_proj.weight.zero_()
        assert not torch.allclose(b.option_logits(batch, [2]), base, atol=1e-4)
    finally:
        mergers[0].down_proj.weight.copy_(saved)
    assert torch.allclose(b.option_logits(batch, [2]), base)


def test_pretraining_hooks_train_the_encoder_the_prompt_reads(folder, synth_data):
    """`aqa model pretrain`'s hooks: the encoder states of a clip are the ones its SFT/eval batch
    gets (same log-mels, one state per audio token), and event detection on them learns."""
    from aqa.data.events import read_labels, read_strong_tsv
    from aqa.train.pretrain import (encoder_output_shape, load_clips, pad_clips, pretraining_window,
                                    train_encoder)

    pb = load_backend(str(folder), device="cpu", is_trainable=True)
    clip = noise(2.0, 3)
    feats = pb.encoder_inputs([clip, noise(2.0, 4)])
    batch = pb.collate([Example(clip, "Which sound?")])
    assert torch.equal(feats[0], batch["input_features"][0])
    with torch.no_grad():
        pb.audio_encoder().eval()
        states = pb.encoder_states(feats)
        own_states = pb.base_model().audio_encoder(batch["input_features"], batch["feature_lengths"])[0]
    assert encoder_output_shape(pb, feats) == tuple(states.shape[1:])
    assert states.shape[1] == int((batch["input_ids"] == pb.audio_token_id).sum()) == audio_token_count(200)
    assert torch.allclose(states[:1], own_states, atol=1e-5)
    with pytest.raises(ValueError, match="one length"):
        pb.encoder_inputs([clip, noise(1.5)])
    # No window of its own: the clips are padded to the longest, and event detection learns on them.
    clips, names = read_strong_tsv(synth_data / "strong.tsv"), read_labels(synth_data / "labels.tsv")
    audio, events = load_clips(clips, synth_data / "wav", pb.audio_seconds, progress=False)
    seconds = pretraining_window(pb, audio)
    assert pb.audio_seconds is None and seconds == 2.0
    torch.manual_seed(0)  # the temporary head's initial weights
    losses = train_encoder(pb, pad_clips(audio, seconds), events, sorted(names), np.random.default_rng(0),
                           seconds=seconds, steps=12, batch_size=8, lr=3e-3, warmup=2, progress=False)
    assert len(losses) == 12 and np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


@torch.no_grad()
def test_lora_round_trips_through_its_folder(folder, tmp_path):
    lb = load_backend(str(folder), device="cpu")
    lb.add_lora(r=4, alpha=8, dropout=0.0)
    names = [n for n, _ in lb.model.named_modules() if n.endswith("lora_A")]
    assert names and all(".language_model.layers." in n for n in names)
    assert {n.split(".")[-2] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"}
    assert_adapter_round_trips(lb, folder, lb.collate(examples()), N_OPTIONS, tmp_path)


def test_audio_tower_lora_adds_the_encoders_attention(folder):
    lb = load_backend(str(folder), device="cpu")
    lb.add_lora(r=4, alpha=8, dropout=0.0, audio_tower=True)
    names = [n for n, _ in lb.model.named_modules() if n.endswith("lora_A")]
    enc = {n.split(".")[-2] for n in names if ".audio_encoder." in n}
    assert enc == {"q_proj", "k_proj", "v_proj", "out_proj"}
    assert not any("adapter" in n.split("lora_A")[0] or "merger" in n for n in names)


@pytest.fixture(scope="module")
def sft_run(folder, synth_data, tmp_path_factory):
    return overfit_sft_run(folder, synth_data, tmp_path_factory.mktemp("moss-sft"))


def test_sft_loss_falls_on_a_tiny_overfit_set(sft_run):
    losses = [json.loads(x)["loss"] for x in (sft_run / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("rollout", ["choice", "generate"])
def test_a_grpo_step_runs(folder, sft_run, synth_data, tmp_path, rollout):
    from safetensors.torch import load_file

    from aqa.train.grpo import GRPOConfig, train as grpo_train

    s = grpo_train(GRPOConfig(model=str(folder), sft_adapter=str(sft_run / "adapter"),
                              train_data=[str(synth_data / "train.jsonl")], output_dir=str(tmp_path / "g"),
                              rollout=rollout, batch_size=2, micro_batch_size=2, group_size=4, max_steps=1, lr=5e-2,
                              rewards=["accuracy", "format"], max_new_tokens=3, lora_r=4, lora_dropout=0.0,
                              # warm enough that the tuned model's sampled letters are not all right
                              temperature=6.0, device="cpu", seed=1))
    assert s["steps"] == 1
    log = [json.loads(x) for x in (tmp_path / "g" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1] and np.isfinite(log[0]["reward"]) and np.isfinite(log[0]["kl"])
    new = load_file(tmp_path / "g" / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k for k in new)
    if rollout == "choice":
        assert any(v.abs().sum() > 0 for k, v in new.items() if "lora_B" in k)


@torch.no_grad()
def test_generation_on_the_cache_is_greedy_decoding_of_the_full_forward(b):
    ex = examples(seconds=(2.3, 1.25))
    batch = b.collate(ex)
    free = b.generate_ids(batch, max_new_tokens=4)
    stop = b.stop_ids()
    for e, mine in zip(ex, free):
        ids = b.collate([e])
        want = []
        for _ in range(4):  # the whole model on the prompt and the tokens so far, argmax each time
            row = dict(ids, input_ids=torch.cat([ids["input_ids"], torch.tensor([want], dtype=torch.long)], 1),
                       attention_mask=torch.ones(1, ids["input_ids"].shape[1] + len(want), dtype=torch.long))
            nxt = int(own(b, row).logits[0, -1].argmax())
            want.append(nxt)
            if nxt in stop:
                break
        assert mine == want
    saved = b.end_ids
    try:
        b.end_ids = [free[0][1]]
        ended = b.generate_ids(batch, max_new_tokens=4)
    finally:
        b.end_ids = saved
    assert ended[0] == free[0][:2]
    sampled = b.generate_ids(batch, max_new_tokens=3, do_sample=True, temperature=2.0, num_return_sequences=3)
    assert len(sampled) == 6


def test_thinking_variant_is_marked_and_carries_the_think_facts(folder, tmp_path):
    thinking = tmp_path / "MOSS-Audio-4B-Thinking"
    shutil.copytree(folder, thinking)
    b = load_backend(str(thinking), device="cpu")
    assert b.thinks and not load_backend(str(folder), device="cpu").thinks
    fmt = b.think_format
    assert (fmt.open, fmt.close, fmt.empty) == ("<think>", "</think>", "<think>\n</think>\n\n")
    assert fmt.block("dog, then cat") == "<think>\ndog, then cat\n</think>\n\n"
    # Letter scoring on the Thinking model reads after the usage guide's empty block.
    ex = [Example(noise(1.3, 0), "Which sound? A. dog B. cat")]
    empty = b.tokenizer.encode("<think>\n</think>\n\n", add_special_tokens=False)
    ids = b.answer_batch(ex)["input_ids"][0].tolist()
    assert ids[-len(empty):] == empty and ids[:-len(empty)] == b.collate(ex)["input_ids"][0].tolist()
    # Both delimiters are single tokens of the tokenizer (Qwen3's added tokens).
    for s in ("<think>", "</think>"):
        assert len(b.tokenizer.encode(s, add_special_tokens=False)) == 1
    w = MossAudioBackend.without_weights(str(thinking))
    assert w.model is None and w.thinks and w.prompt_tokens("Why?", 2.0) == b.prompt_tokens("Why?", 2.0)


def test_time_markers_option_and_environment(folder, monkeypatch):
    assert not load_backend(str(folder), device="cpu", time_markers=False).time_markers
    monkeypatch.setenv("AQA_MOSS_TIME_MARKERS", "0")
    assert not load_backend(str(folder), device="cpu").time_markers
    monkeypatch.setenv("AQA_MOSS_TIME_MARKERS", "yes")
    with pytest.raises(ValueError, match="AQA_MOSS_TIME_MARKERS"):
        load_backend(str(folder), device="cpu")


def test_the_commands_work_and_ensemble_with_another_family(tiny_family, synth_data, tmp_path):
    from aqa.cli import main

    d = tmp_path / "dev"
    shutil.copytree(synth_data / "wav", d / "wav")
    rows = [json.loads(x) for x in (synth_data / "dev.jsonl").read_text().splitlines()][:4]
    (d / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dirs = []
    for name in ("moss-audio", "qwen2-audio"):
        out = tmp_path / name
        assert main(["eval", "--model", str(tiny_family(name)), "--data", str(d / "dev.jsonl"), "-o", str(out),
                     "--shuffles", "2", "--batch-size", "3"]) == 0
        got = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
        assert len(got) == 4 and all(abs(sum(r["probs"]) - 1) < 1e-5 for r in got)
        dirs.append(str(out))
    assert main(["export", "dcase2025", dirs[0], "-o", str(tmp_path / "moss.csv")]) == 0
    gen = tmp_path / "generate"
    assert main(["eval", "--model", str(tiny_family("moss-audio")), "--data", str(d / "dev.jsonl"), "-o", str(gen),
                 "--mode", "generate", "--max-new-tokens", "2", "--limit", "2"]) == 0
    assert main(["ensemble", "fit", *dirs, "-o", str(tmp_path / "ens"), "--folds", "2"]) == 0
    assert main(["ensemble", "apply", str(tmp_path / "ens"), *dirs, "-o", str(tmp_path / "applied")]) == 0
    assert len((tmp_path / "applied" / "predictions.jsonl").read_text().splitlines()) == 4


def test_tiny_command_builds_the_family(tmp_path):
    from aqa.cli import main

    assert main(["model", "tiny", "--family", "moss-audio", "-o", str(tmp_path / "m"), "--decoder-dim", "32",
                 "--encoder-dim", "32", "--num-mel-bins", "32"]) == 0
    b = load_backend(str(tmp_path / "m"), device="cpu")
    assert b.processor.feature_extractor.feature_size == 32
    assert b.option_logits(b.collate([Example(noise(0.6), "Q? A. x B. y")]), [2]).shape == (1, 2)


@pytest.mark.parametrize("recipe", ["sft_lora", "grpo"])
def test_configs_carry_the_reference_values(recipe):
    from aqa.config import load_config
    from aqa.train.grpo import GRPOConfig
    from aqa.train.sft import SFTConfig

    c = load_config(SFTConfig if recipe == "sft_lora" else GRPOConfig, f"configs/moss_audio/{recipe}.yaml")
    assert c.model == "OpenMOSS-Team/MOSS-Audio-8B-Instruct" and c.lora_r == 8 and c.bf16
    if recipe == "sft_lora":
        assert (c.lr, c.batch_size, c.epochs, c.spec_augment_width) == (5e-5, 32, 8.0, 27)
    else:
        assert (c.lr, c.group_size, c.eps, c.beta, c.batch_size) == (5e-6, 6, 0.2, 0.1, 40)
