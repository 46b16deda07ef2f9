"""The Qwen3-Omni (30B-A3B) thinker backend on its tiny random mixture-of-experts thinker with the
real classes: prompt layout, batching through the audio encoder's padding, the whole-model
checkpoint layout, LoRA on attention, experts and router, the configs' dropout, gradient
checkpointing, the tiny builder's command line. What every family does (scoring against
transformers' own forward, batching, LoRA round trip, SFT, GRPO, generation, the configs'
reference values, the commands) is tested in tests/test_families.py."""

import json
import re
import shutil

import pytest
import torch

from aqa.models.base import Example
from aqa.models.registry import load_backend
from aqa.prompts import question_text
from conftest import noise

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_q3(tiny_family):
    return tiny_family("qwen3-omni")


@pytest.fixture(scope="module")
def b(tiny_q3):
    return load_backend(str(tiny_q3), device="cpu")


# 0.5 s and 0.83 s: shorter than one encoder chunk, frame counts not multiples of 8.
SECONDS = (0.5, 2.3, 0.83, 1.25)
N_OPTIONS = [2, 3, 2, 3]


def examples(target="B"):
    return [Example(noise(s, k), question_text("Which sound?" + " really" * k, ["beep", "hum", "hiss"][: 2 + k % 2]),
                    target) for k, s in enumerate(SECONDS)]


def test_prompt_is_the_familys_chat_template_with_13_audio_tokens_a_second(b):
    tok = b.tokenizer
    q = "Which sound? A. dog B. cat"
    # 1.5 s: one 100-frame chunk (13 tokens) and a 50-frame tail (50 -> 25 -> 13 -> 7).
    batch = b.collate([Example(noise(1.5), q, "A")], with_target=True)
    want = tok.encode("<|im_start|>user\n<|audio_start|>" + "<|audio_pad|>" * 20
                      + f"<|audio_end|>{q}<|im_end|>\n<|im_start|>assistant\nA<|im_end|>", add_special_tokens=False)
    assert batch["input_ids"][0].tolist() == want
    assert batch["labels"][0, -2:].tolist() == want[-2:] and int((batch["labels"] != -100).sum()) == 2
    assert b.tokens_per_second == 13
    # No processor window: the limit is the decoder's context less the prompt's reserve.
    assert b.audio_seconds == pytest.approx((4096 - 1024) / 13)
    assert int((b.collate([Example(noise(31.0), q)])["input_ids"] == b.audio_token_id).sum()) == 31 * 13


@pytest.fixture(scope="module")
def loud(tiny_q3):
    """The tiny thinker with its audio convolutions scaled up: at random-init scale the
    padding's effect on a short clip's last audio token is below any tolerance."""
    lb = load_backend(str(tiny_q3), device="cpu")
    at = lb.base_model().model.audio_tower
    with torch.no_grad():
        for c in (at.conv2d1, at.conv2d2, at.conv2d3):
            c.weight.mul_(20)
            c.bias.normal_(0, 1, generator=torch.Generator().manual_seed(0))
    return lb


@torch.no_grad()
def test_batched_scoring_equals_one_at_a_time(loud):
    ex = examples()
    batch = loud.collate(ex)
    batched = loud.option_logits(batch, N_OPTIONS)
    for i, (e, n) in enumerate(zip(ex, N_OPTIONS)):
        assert torch.allclose(batched[i, :n], loud.option_logits(loud.collate([e]), [n])[0], atol=1e-5)
    # What the grouping avoids: encoding the whole batch at once pads the short clips' only
    # chunk to the longest chunk, which moves their last audio token.
    core = loud.base_model().model
    grouped = loud.audio_embeddings(batch)
    at_once = core.get_audio_features(batch["input_features"], batch["feature_attention_mask"]).last_hidden_state
    assert (grouped[6] - at_once[6]).abs().max() > 1e-3  # the 0.5 s clip's 7th and last token
    # and so does transformers' own batched processor + forward, for the clips under a second.
    enc = loud.processor(text=[loud.prompt(e.text) for e in ex], audio=[e.audio for e in ex], return_tensors="pt",
                         padding=True)
    own = loud.model(**enc).logits[:, -1, loud.letter_token_ids(3)]
    assert (own[0, :2] - batched[0, :2]).abs().max() > 1e-3


def whole_model_folder(thinker, out):
    """The official whole-model layout around a thinker: config.json of model_type
    qwen3_omni_moe, weights under thinker.* (legacy names, one tensor per expert) in one shard
    and talker.* / code2wav.* in another, which is left out: loading must not need it."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, Qwen3OmniMoeConfig

    out.mkdir()
    for f in thinker.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, out / f.name)
    Qwen3OmniMoeConfig(thinker_config=AutoConfig.from_pretrained(thinker).to_dict()).save_pretrained(out)
    state = {f"thinker.{k}": v for k, v in load_file(thinker / "model.safetensors").items()}
    save_file(state, str(out / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    weight_map = {k: "model-00001-of-00002.safetensors" for k in state}
    weight_map.update({"talker.model.codec_embedding.weight": "model-00002-of-00002.safetensors",
                       "code2wav.pre_transformer.norm.weight": "model-00002-of-00002.safetensors"})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


@torch.no_grad()
def test_thinker_loads_from_the_whole_model_layout_without_the_talker(b, tiny_q3, tmp_path):
    from safetensors import safe_open

    with safe_open(str(tiny_q3 / "model.safetensors"), "pt") as f:
        assert "model.layers.0.mlp.experts.3.gate_proj.weight" in f.keys()  # per-expert, as released
    whole = load_backend(str(whole_model_folder(tiny_q3, tmp_path / "full")), device="cpu")
    assert type(whole) is type(b) and whole.base_model().config.model_type == "qwen3_omni_moe_thinker"
    batch = b.collate(examples())
    assert torch.allclose(whole.option_logits(batch, N_OPTIONS), b.option_logits(batch, N_OPTIONS))


@torch.no_grad()
def test_lora_on_attention_experts_and_router_round_trips(tiny_q3, tmp_path):
    lb = load_backend(str(tiny_q3), device="cpu")
    with pytest.raises(ValueError, match="lora_dropout"):
        lb.add_lora(r=4, alpha=8, dropout=0.05)
    lb.add_lora(r=4, alpha=8, dropout=0.0)
    names = [n for n, _ in lb.model.named_modules() if n.endswith("lora_A")]
    assert all(".language_model.layers." in n for n in names)
    for layer in (0, 1):
        at = f"base_model.model.model.language_model.layers.{layer}."
        assert {at + f"self_attn.{p}_proj.lora_A" for p in "qkvo"} <= set(names)
        assert {at + "mlp.experts.lora_A", at + "mlp.experts.base_layer.lora_A", at + "mlp.gate.lora_A"} <= set(names)
    batch = lb.collate(examples())
    base = lb.option_logits(batch, N_OPTIONS)
    # The experts' adapters alone change the answer distribution.
    for n, p in lb.model.named_parameters():
        if "lora_B" in n and ".mlp.experts." in n:
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    experts_only = lb.option_logits(batch, N_OPTIONS)
    assert not torch.allclose(experts_only, base, atol=1e-3)
    for n, p in lb.model.named_parameters():
        if "lora_B" in n:
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    tuned = lb.option_logits(batch, N_OPTIONS)
    lb.model.save_pretrained(tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert set(cfg["target_parameters"]) == {"mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp.gate.weight"}
    back = load_backend(str(tiny_q3), device="cpu", adapter=str(tmp_path / "adapter"))
    assert torch.allclose(back.option_logits(batch, N_OPTIONS), tuned, atol=1e-5)
    merged = load_backend(str(tiny_q3), device="cpu")
    merged.merge_adapters(tmp_path / "adapter")
    assert torch.allclose(merged.option_logits(batch, N_OPTIONS), tuned, atol=1e-4)
    with_audio = lb.lora_target_modules(audio_tower=True)
    assert "model.audio_tower.layers.1.fc2" in with_audio and not any(re.search(r"visual|mlp", n) for n in with_audio)


def test_cli_builds_the_family_with_sizes(tmp_path):
    from aqa.cli import main

    out = tmp_path / "m"
    assert main(["model", "tiny", "--family", "qwen3-omni", "-o", str(out), "--decoder-layers", "1",
                 "--decoder-dim", "32", "--encoder-dim", "32", "--num-mel-bins", "16", "--num-experts", "3",
                 "--experts-per-token", "1", "--vocab-size", "300"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_omni_moe_thinker"
    assert (cfg["text_config"]["num_experts"], cfg["text_config"]["num_experts_per_tok"]) == (3, 1)
    assert load_backend(str(out), device="cpu").tokens_per_second == 13
    with pytest.raises(SystemExit):  # Qwen3-Omni's processor has no window to set
        main(["model", "tiny", "--family", "qwen3-omni", "-o", str(tmp_path / "x"), "--audio-seconds", "2"])


@pytest.mark.parametrize("recipe", ["sft_lora", "grpo"])
def test_configs_set_a_dropout_this_lora_takes(tiny_q3, recipe):
    from aqa.config import load_config
    from aqa.train.grpo import GRPOConfig
    from aqa.train.sft import SFTConfig

    c = load_config(SFTConfig if recipe == "sft_lora" else GRPOConfig, f"configs/qwen3_omni/{recipe}.yaml")
    load_backend(str(tiny_q3), device="cpu").add_lora(r=c.lora_r, alpha=c.lora_alpha, dropout=c.lora_dropout)


def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients(tiny_q3):
    """configs/qwen3_omni train with gradient checkpointing: the expert and router adapters
    (peft parametrizations) must get the same gradients when their layer is recomputed."""
    grads, calls = {}, {}
    for gc in (False, True):
        torch.manual_seed(0)
        lb = load_backend(str(tiny_q3), device="cpu")
        lb.add_lora(r=4, alpha=8, dropout=0.0)
        if gc:
            lb.enable_gradient_checkpointing()
        lb.model.train()
        for n, p in lb.model.named_parameters():
            if "lora_B" in n:
                p.data.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
        layer = lb.base_model().model.language_model.layers[0].self_attn
        seen = []
        hook = layer.register_forward_hook(lambda *a: seen.append(1))
        logp, mask = lb.target_logprobs(lb.collate(examples(), with_target=True))
        (-(logp.sum() / mask.sum())).backward()
        hook.remove()
        calls[gc] = len(seen)
        grads[gc] = {n: p.grad.clone() for n, p in lb.model.named_parameters() if p.requires_grad}
    assert calls == {False: 1, True: 2}
    assert grads[False].keys() == grads[True].keys() and any(".mlp.gate." in n for n in grads[True])
    for n in grads[False]:
        assert torch.allclose(grads[False][n], grads[True][n], atol=1e-6), n
