"""The Qwen2.5-Omni thinker backend on a tiny random thinker with the real classes: prompt
layout, scoring against transformers' own forward, batching, the whole-model checkpoint
layout, LoRA, SFT, GRPO and generation."""

import json
import shutil
from pathlib import Path

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
def tiny_q25(tmp_path_factory, synth_data):
    from aqa.models.tiny_builder import corpus_from_records
    from aqa.models.tiny_omni import TinyQwen25OmniSpec, build_tiny_qwen2_5_omni

    spec = TinyQwen25OmniSpec(audio_seconds=3, num_mel_bins=32, encoder_dim=32, decoder_dim=32, vocab_size=400)
    return build_tiny_qwen2_5_omni(tmp_path_factory.mktemp("q25") / "model", spec,
                                   corpus_from_records(synth_data / "qa.jsonl"))


@pytest.fixture(scope="module")
def b(tiny_q25):
    return load_backend(str(tiny_q25), device="cpu")


def noise(seconds, seed=0):
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def examples(seconds=(0.5, 2.0, 1.3), target="B"):
    return [Example(noise(s, k), question_text("Which sound?" + " really" * k, ["beep", "hum", "hiss"][: 2 + k % 2]),
                    target) for k, s in enumerate(seconds)]


N_OPTIONS = [2, 3, 2]


def test_prompt_is_the_familys_chat_template_with_one_audio_token_per_40_ms(b):
    tok = b.tokenizer
    q = "Which sound? A. dog B. cat"
    batch = b.collate([Example(noise(1.0), q, "B")], with_target=True)
    ids = batch["input_ids"][0].tolist()
    system = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
              "auditory and visual inputs, as well as generating text and speech.")
    # 1 s: 100 mel frames, 50 after the stride-2 convolution, 25 after the pooling.
    want = tok.encode(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<|audio_bos|>"
                      + "<|AUDIO|>" * 25 + f"<|audio_eos|>{q}<|im_end|>\n<|im_start|>assistant\nB<|im_end|>",
                      add_special_tokens=False)
    assert ids == want
    assert (batch["labels"][0] != -100).sum() == 2 and batch["labels"][0, -2:].tolist() == want[-2:]
    assert b.end_ids == [tok.convert_tokens_to_ids("<|im_end|>")]
    text_only = b.collate([Example(None, q)])["input_ids"][0].tolist()
    assert tok.decode(text_only) == f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n" \
                                    "<|im_start|>assistant\n"


def test_clips_are_cut_at_the_processors_window(b):
    assert b.audio_seconds == 3.0  # n_samples of the feature extractor (300 s in Qwen2.5-Omni-7B)
    batch = b.collate([Example(noise(4.5), "What?")])
    assert int((batch["input_ids"] == b.audio_token_id).sum()) == 75
    assert batch["input_features"].shape[-1] == 300


@torch.no_grad()
def test_option_logits_and_target_logprobs_equal_transformers_own_forward(b):
    """The model's own forward builds its multimodal RoPE positions itself; ours are explicit."""
    batch = b.collate(examples(), with_target=True)
    own = b.model(**{k: v for k, v in batch.items() if k not in ("position_ids", "labels")})
    logp, mask = b.target_logprobs(batch)
    lp_own = torch.log_softmax(own.logits[:, :-1].float(), -1).gather(-1, batch["labels"][:, 1:].clamp_min(0)[..., None])
    lp_own = lp_own[..., 0][batch["labels"][:, 1:] != -100].reshape(3, 2)
    assert torch.allclose(logp[mask.bool()].reshape(3, 2), lp_own, atol=1e-5)
    prompts = b.collate(examples())
    own = b.model(**{k: v for k, v in prompts.items() if k != "position_ids"}).logits[:, -1]
    ours = b.option_logits(prompts, N_OPTIONS)
    ids = b.letter_token_ids(3)
    for i, n in enumerate(N_OPTIONS):
        assert torch.allclose(ours[i, :n], own[i, ids[:n]], atol=1e-5)
        assert torch.isinf(ours[i, n:]).all()


@torch.no_grad()
def test_batched_scoring_equals_one_at_a_time(b):
    ex = examples()
    batched = b.option_logits(b.collate(ex), N_OPTIONS)
    for i, (e, n) in enumerate(zip(ex, N_OPTIONS)):
        alone = b.option_logits(b.collate([e]), [n])
        assert torch.allclose(batched[i, :n], alone[0], atol=1e-5)


@torch.no_grad()
def test_one_second_of_padding_gives_the_windows_log_mels(b):
    """The processor's own padding to the whole window and the backend's short padding give
    the same real frames, hence the same scores."""
    e = examples()[2]
    fe = b.processor.feature_extractor
    whole = b.processor(text=[b.prompt(e.text)], audio=[e.audio], return_tensors="pt")
    assert whole["input_features"].shape[-1] == 300
    ours = b.collate([e])
    frames = int(whole["feature_attention_mask"].sum())
    assert ours["input_features"].shape[-1] == frames == 130
    assert torch.allclose(ours["input_features"][0], whole["input_features"][0, :, :frames], atol=1e-6)
    assert torch.equal(ours["input_ids"], whole["input_ids"])
    own = b.model(**whole).logits[0, -1, b.letter_token_ids(2)]
    assert torch.allclose(b.option_logits(ours, [2])[0], own, atol=1e-5)
    assert fe.n_samples == 48000


def whole_model_folder(thinker: Path, out: Path) -> Path:
    """The official whole-model layout around a thinker: config.json of model_type
    qwen2_5_omni, weights under thinker.* (legacy names) in one shard and talker.* /
    token2wav.* in another, which is left out: loading must not need it."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, Qwen2_5OmniConfig

    out.mkdir()
    for f in thinker.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, out / f.name)
    Qwen2_5OmniConfig(thinker_config=AutoConfig.from_pretrained(thinker).to_dict()).save_pretrained(out)
    state = {f"thinker.{k}": v for k, v in load_file(thinker / "model.safetensors").items()}
    save_file(state, str(out / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    weight_map = {k: "model-00001-of-00002.safetensors" for k in state}
    weight_map.update({"talker.model.embed_tokens.weight": "model-00002-of-00002.safetensors",
                       "token2wav.code2wav_bigvgan_model.conv_pre.weight": "model-00002-of-00002.safetensors"})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


@torch.no_grad()
def test_thinker_loads_from_the_whole_model_layout_without_the_talker(b, tiny_q25, tmp_path):
    from safetensors import safe_open

    with safe_open(str(tiny_q25 / "model.safetensors"), "pt") as f:
        assert any(k.startswith("model.layers.") for k in f.keys())  # the legacy names are what is saved
    full = whole_model_folder(tiny_q25, tmp_path / "full")
    whole = load_backend(str(full), device="cpu")
    assert type(whole) is type(b) and whole.base_model().config.model_type == "qwen2_5_omni_thinker"
    batch = b.collate(examples())
    assert torch.allclose(whole.option_logits(batch, N_OPTIONS), b.option_logits(batch, N_OPTIONS))


@torch.no_grad()
def test_lora_targets_the_decoder_and_round_trips(tiny_q25, tmp_path):
    lb = load_backend(str(tiny_q25), device="cpu")
    lb.add_lora(r=4, alpha=8, dropout=0.0)
    names = [n for n, _ in lb.model.named_modules() if n.endswith("lora_A")]
    assert len(names) == 2 * 7 and all(".language_model.layers." in n for n in names)
    for n, p in lb.model.named_parameters():
        if "lora_B" in n:
            p.normal_(0, 0.5)
    lb.model.save_pretrained(tmp_path / "adapter")
    batch = lb.collate(examples())
    tuned = lb.option_logits(batch, N_OPTIONS)
    with lb.model.disable_adapter():
        assert not torch.allclose(lb.option_logits(batch, N_OPTIONS), tuned, atol=1e-3)
    back = load_backend(str(tiny_q25), device="cpu", adapter=str(tmp_path / "adapter"))
    assert torch.allclose(back.option_logits(batch, N_OPTIONS), tuned, atol=1e-5)
    audio = lb.lora_target_modules(audio_tower=True)
    import re
    assert re.match(audio, "model.audio_tower.layers.1.fc2") and not re.match(audio, "model.visual.blocks.0.mlp.up_proj")


@pytest.fixture(scope="module")
def sft_run(tiny_q25, synth_data, tmp_path_factory):
    from aqa.train.sft import SFTConfig, train

    out = tmp_path_factory.mktemp("q25sft")
    rows = [json.loads(x) for x in (synth_data / "train.jsonl").read_text().splitlines()][:4]
    d = out / "data"
    shutil.copytree(synth_data / "wav", d / "wav")
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train(SFTConfig(model=str(tiny_q25), train_data=[str(d / "train.jsonl")], output_dir=str(out / "run"),
                    batch_size=4, micro_batch_size=4, max_steps=6, lr=2e-2, lora_r=4, lora_dropout=0.0,
                    shuffle_options=False, spec_augment_masks=0, device="cpu"))
    return out / "run"


def test_sft_loss_falls_on_a_tiny_overfit_set(sft_run):
    losses = [json.loads(x)["loss"] for x in (sft_run / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("rollout", ["choice", "generate"])
def test_a_grpo_step_runs(tiny_q25, sft_run, synth_data, tmp_path, rollout):
    from safetensors.torch import load_file

    from aqa.train.grpo import GRPOConfig, train as grpo_train

    s = grpo_train(GRPOConfig(model=str(tiny_q25), sft_adapter=str(sft_run / "adapter"),
                              train_data=[str(synth_data / "train.jsonl")], output_dir=str(tmp_path / "g"),
                              rollout=rollout, batch_size=2, micro_batch_size=2, group_size=4, max_steps=1, lr=5e-2,
                              rewards=["accuracy", "format"],
                              max_new_tokens=3, lora_r=4, device="cpu", seed=1))
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
    # transformers' own generate (its own positions and cache) gives the same greedy tokens.
    own = b.model.generate(**{k: v for k, v in batch.items() if k != "position_ids"}, max_new_tokens=4,
                           do_sample=False, pad_token_id=b.tokenizer.pad_token_id)[:, batch["input_ids"].shape[1]:]
    stop = b.stop_ids()
    for mine, theirs in zip(free, own.tolist()):
        cut = next((i + 1 for i, t in enumerate(theirs) if t in stop), len(theirs))
        assert mine == theirs[:cut]
    assert free[0][0] == int(b.output_embedding()(b.hidden_states(batch)[0, -1]).argmax())
    # Pretend each row's second token is the end of turn: generation stops there, keeps it, and
    # a row that ended stays ended while the others go on.
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
    assert b.decode(ended) == b.tokenizer.batch_decode(ended, skip_special_tokens=True)


def test_cli_builds_the_family_with_sizes(tmp_path):
    from aqa.cli import main

    out = tmp_path / "m"
    assert main(["model", "tiny", "--family", "qwen2.5-omni", "-o", str(out), "--audio-seconds", "2",
                 "--decoder-layers", "1", "--decoder-dim", "32", "--encoder-dim", "32", "--num-mel-bins", "16",
                 "--encoder-window", "100", "--vocab-size", "300"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "qwen2_5_omni_thinker" and cfg["text_config"]["num_hidden_layers"] == 1
    assert (cfg["audio_config"]["num_mel_bins"], cfg["audio_config"]["n_window"]) == (16, 50)
    lb = load_backend(str(out), device="cpu")
    assert lb.audio_seconds == 2.0 and lb.letter_token_ids(8) == sorted(set(lb.letter_token_ids(8)))
    # A size another family has is refused rather than ignored.
    with pytest.raises(SystemExit):
        main(["model", "tiny", "--family", "qwen2.5-omni", "-o", str(tmp_path / "x"), "--num-experts", "8"])
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("recipe", ["sft_lora", "grpo"])
def test_configs_carry_the_reference_values(recipe):
    from aqa.config import load_config
    from aqa.train.grpo import GRPOConfig
    from aqa.train.sft import SFTConfig

    c = load_config(SFTConfig if recipe == "sft_lora" else GRPOConfig, f"configs/qwen2_5_omni/{recipe}.yaml")
    assert c.model == "Qwen/Qwen2.5-Omni-7B" and c.lora_r == 8
    if recipe == "sft_lora":
        assert (c.lr, c.batch_size, c.epochs, c.spec_augment_width) == (5e-5, 32, 8.0, 27)
    else:
        assert (c.lr, c.group_size, c.eps, c.beta, c.batch_size) == (5e-6, 6, 0.2, 0.1, 40)
