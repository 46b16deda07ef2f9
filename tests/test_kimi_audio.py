"""The native Kimi-Audio backend on a tiny random checkpoint in the official layout: loading,
the two-stream prompt, the audio path (GLM-4-Voice tokens + Whisper features), long clips,
generation, LoRA, and the recipes (eval, SFT, GRPO, ensemble) through the same CLI."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from aqa.cli import main
from aqa.models.base import Example
from aqa.models.registry import load_backend


@pytest.fixture(scope="session")
def tiny_kimi(tiny_family):
    return tiny_family("kimi-audio")


@pytest.fixture(scope="module")
def kimi(tiny_kimi):
    return load_backend(str(tiny_kimi), device="cpu")


def noise(seconds, seed=0, scale=0.1):
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * scale).astype(np.float32)


def tiktoken_encode(ranks: dict[bytes, int], piece: bytes) -> list[int]:
    """tiktoken's BPE on one pre-token: merge the adjacent pair of lowest rank until none is left."""
    parts = [bytes([b]) for b in piece]
    while True:
        pairs = [(ranks.get(parts[i] + parts[i + 1], math.inf), i) for i in range(len(parts) - 1)]
        if not pairs or min(pairs)[0] == math.inf:
            return [ranks[p] for p in parts]
        _, i = min(pairs)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


def test_text_tokenizer_is_tiktoken_bpe_with_kimi_special_ids(kimi, tiny_kimi):
    import regex

    from aqa.models.kimi_audio import SPLIT_PATTERN, read_tiktoken, special_token_names

    ranks = read_tiktoken(tiny_kimi / "tiktoken.model")
    tok = kimi.tokenizer
    text = "Which sound is heard first?\nA. dog barking  B. 12 beeps, don't C. 鸟"
    ref = [i for piece in regex.findall(SPLIT_PATTERN, text) for i in tiktoken_encode(ranks, piece.encode())]
    assert tok.encode(text, add_special_tokens=False) == ref
    # Special tokens follow the base vocabulary in tokenization_kimia.py's order (pad last).
    names = special_token_names()
    assert len(names) == 421 and names[18] == "<|im_media_begin|>" and names[23] == "<|im_kimia_text_blank|>"
    assert [tok.convert_tokens_to_ids(n) for n in names] == list(range(len(ranks), len(ranks) + 421))
    assert tok.pad_token_id == len(ranks) + 420
    cfg = json.loads((tiny_kimi / "config.json").read_text())
    assert tok.convert_tokens_to_ids("<|im_media_end|>") == cfg["kimia_media_end"]
    # A special token's text in a question stays text, as with tiktoken's disallowed_special=().
    assert all(i < len(ranks) for i in tok.encode("<|im_media_begin|>", add_special_tokens=False))


def test_prompt_streams_follow_the_upstream_layout(kimi):
    ids = kimi.tokenizer.convert_tokens_to_ids
    off = kimi.processor.token_offset
    b = ids("<|im_kimia_text_blank|>")
    audio, text, cont = kimi.streams([7, 8], [0, 5, 3])
    assert audio == [ids("<|im_kimia_user_msg_start|>"), b, b, ids("<|im_media_begin|>"), off, off + 5, off + 3,
                     ids("<|im_media_end|>"), ids("<|im_kimia_speech_ct_id|>"), ids("<|im_msg_end|>"),
                     ids("<|im_kimia_assistant_msg_start|>")]
    assert text == [b, 7, 8] + [b] * 8
    assert cont == [False] * 4 + [True] * 3 + [False] * 4
    audio, text, cont = kimi.streams([7], None)  # no audio: the question alone
    assert audio == [ids("<|im_kimia_user_msg_start|>"), b, ids("<|im_msg_end|>"), ids("<|im_kimia_assistant_msg_start|>")]
    assert text == [b, 7, b, b] and not any(cont)


def test_speech_tokens_are_12_5_hz_causal_and_segmented(kimi):
    p = kimi.processor
    a = noise(8)
    toks = p.speech_tokenizer.tokenize(a, p.tokenizer_features)
    assert len(toks) == 100 and all(0 <= t < p.speech_tokenizer.config.quantize_vocab_size for t in toks)
    assert len(set(toks)) > 1
    # Causal convolutions and a block-causal mask: appending (quiet) audio leaves earlier tokens alone.
    longer = p.speech_tokenizer.tokenize(np.concatenate([a, np.zeros(16000 * 4, np.float32)]), p.tokenizer_features)
    assert len(longer) == 150 and longer[:100] == toks
    # 35 s: two 30 s segments, ceil(35 * 12.5) tokens; the first segment's are those of its first 30 s.
    long = noise(35, seed=1)
    t35 = p.speech_tokenizer.tokenize(long, p.tokenizer_features)
    assert len(t35) == 438
    assert t35[:375] == p.speech_tokenizer.tokenize(long[:16000 * 30], p.tokenizer_features)


def test_long_clip_has_no_30_second_limit(kimi):
    assert kimi.audio_seconds is None
    batch = kimi.collate([Example(noise(35), "What is heard?"), Example(noise(3, seed=2), "And here?")])
    assert batch["input_features"].shape == (3, 128, 3000)  # 2 + 1 segments of 30 s
    assert batch["segment_tokens"].tolist() == [375, 63, 38]
    assert batch["continuous"].sum(1).tolist() == [438, 38]
    assert kimi.whisper_features(batch["input_features"], batch["segment_tokens"]).shape == (476, 4 * 32)


def test_logits_equal_a_plain_qwen2_on_the_fused_embeddings(kimi, tiny_kimi):
    """Loading and the audio fusion, checked against transformers' own Qwen2ForCausalLM and
    WhisperModel reading the same files: input = (E[audio] + adaptor(whisper)) * sqrt(2) at
    the audio positions, E[audio] elsewhere, plus E[text]."""
    from safetensors.torch import load_file
    from transformers import Qwen2Config, Qwen2ForCausalLM, WhisperModel

    cfg = json.loads((tiny_kimi / "config.json").read_text())
    qcfg = Qwen2Config(**{k: v for k, v in cfg.items() if k != "model_type"})
    ref = Qwen2ForCausalLM(qcfg).eval()
    sd = load_file(tiny_kimi / "model.safetensors")
    ref.load_state_dict({k: v for k, v in sd.items() if k in ref.state_dict()}, strict=True)
    enc = WhisperModel.from_pretrained(tiny_kimi / "whisper-large-v3").encoder.eval()

    ex = [Example(noise(4), "What is heard? A. dog B. cat"), Example(noise(2, seed=3), "Which? A. x B. y C. z")]
    batch = kimi.collate(ex)
    with torch.no_grad():
        got = kimi.output_embedding()(kimi.hidden_states(batch))
        for i in range(2):  # each row alone, unpadded, by hand
            row = kimi.collate([ex[i]])
            h = enc(row["input_features"]).last_hidden_state[0, :4 * int(row["segment_tokens"][0])]
            w = h.reshape(-1, 4 * h.shape[-1])
            w = torch.nn.functional.linear(w, sd["model.vq_adaptor.layers.0.weight"], sd["model.vq_adaptor.layers.0.bias"])
            w = torch.nn.functional.linear(torch.nn.functional.silu(w), sd["model.vq_adaptor.layers.3.weight"],
                                           sd["model.vq_adaptor.layers.3.bias"])
            w = torch.nn.functional.layer_norm(w, w.shape[-1:], sd["model.vq_adaptor.layers.4.weight"],
                                               sd["model.vq_adaptor.layers.4.bias"], eps=cfg["rms_norm_eps"])
            E = sd["model.embed_tokens.weight"]
            x = E[row["audio_ids"][0]]
            c = row["continuous"][0]
            x[c] = (x[c] + w) * math.sqrt(2)
            x = x + E[row["text_ids"][0]]
            want = ref(inputs_embeds=x[None]).logits[0]
            n = want.shape[0]
            torch.testing.assert_close(got[i, -n:], want, atol=1e-4, rtol=1e-4)


def test_greedy_generation_feeds_blanks_to_the_audio_stream(kimi):
    """Cached generation equals re-running the whole sequence with the answer so far in the
    text stream and blanks in the audio stream."""
    ex = [Example(noise(2), "What is heard? A. dog B. cat")]
    got = kimi.generate_ids(kimi.collate(ex), max_new_tokens=4)[0]
    so_far = []
    for _ in range(len(got)):
        batch = kimi.collate([Example(ex[0].audio, ex[0].text, target_ids=so_far + [0])], with_target=True)
        with torch.no_grad():
            logits = kimi.output_embedding()(kimi.hidden_states(batch)[0, -2])
        so_far.append(int(logits.argmax()))
    assert got == so_far
    assert kimi.collate([Example(ex[0].audio, ex[0].text, target_ids=[5, 6])], with_target=True)["audio_ids"][0, -2:].tolist() \
        == [kimi.blank] * 2


def test_a_generated_token_0_feeds_the_blank_alone_as_upstream(tiny_kimi):
    """Upstream's LM skips the text embedding when the text ids sum to 0, so after generating
    token 0 its next step's input is the blank audio token's embedding alone."""
    b = load_backend(str(tiny_kimi), device="cpu")
    lm = b.base_model()
    with torch.no_grad():
        b.output_embedding().weight.zero_()  # all logits tie: greedy picks token 0
    steps = []
    hook = lm.model.register_forward_pre_hook(lambda m, a, kw: steps.append(kw["inputs_embeds"].clone()),
                                                 with_kwargs=True)
    try:
        got = b.generate_ids(b.collate([Example(noise(1), "What? A. dog B. cat")]), max_new_tokens=3)[0]
    finally:
        hook.remove()
    assert got == [0, 0, 0]
    with torch.no_grad():
        blank = lm.model.embed_tokens(torch.tensor([[b.blank]]))
    assert len(steps) == 3 and torch.equal(steps[1], blank) and torch.equal(steps[2], blank)


def test_lora_reaches_the_language_model_and_optionally_the_speech_encoder(tiny_kimi):
    b = load_backend(str(tiny_kimi), device="cpu")
    b.add_lora(r=4, alpha=8, dropout=0.0, audio_tower=False)
    names = [n for n, _ in b.model.named_modules() if n.endswith("lora_A")]
    layers = json.loads((tiny_kimi / "config.json").read_text())["num_hidden_layers"]
    assert len(names) == 7 * layers and all(".model.layers." in n for n in names)
    b = load_backend(str(tiny_kimi), device="cpu")
    b.add_lora(r=4, alpha=8, dropout=0.0, audio_tower=True)
    names = [n for n, _ in b.model.named_modules() if n.endswith("lora_A")]
    assert sum("speech_encoder.layers." in n for n in names) == 6 * 2
    assert not any("vq_adaptor" in n or "lm_head" in n for n in names)


def test_speech_tokenizer_from_the_environment(tiny_kimi, tmp_path, monkeypatch):
    ckpt = tmp_path / "k"
    shutil.copytree(tiny_kimi, ckpt)
    shutil.move(ckpt / "glm-4-voice-tokenizer", tmp_path / "glm")
    monkeypatch.setenv("AQA_SPEECH_TOKENIZER", str(tmp_path / "glm"))
    b = load_backend(str(ckpt), device="cpu")
    assert len(b.processor.speech_tokenizer.tokenize(noise(1), b.processor.tokenizer_features)) == 13
    monkeypatch.setenv("AQA_SPEECH_TOKENIZER", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_backend(str(ckpt), device="cpu")


def test_missing_parts_are_named(tiny_kimi, tmp_path):
    broken = tmp_path / "k"
    shutil.copytree(tiny_kimi, broken)
    shutil.rmtree(broken / "whisper-large-v3")
    with pytest.raises(OSError, match="whisper-large-v3"):
        load_backend(str(broken), device="cpu")
    shutil.copytree(tiny_kimi / "whisper-large-v3", broken / "whisper-large-v3")
    tc = json.loads((broken / "tokenizer_config.json").read_text())
    blank = next(i for i, t in tc["added_tokens_decoder"].items() if t["content"] == "<|im_kimia_text_blank|>")
    tc["added_tokens_decoder"][str(int(blank) + 1)] = tc["added_tokens_decoder"].pop(blank)
    (broken / "tokenizer_config.json").write_text(json.dumps(tc))
    with pytest.raises(ValueError, match="tokenizer_config.json.*im_kimia_text_blank"):
        load_backend(str(broken), device="cpu")
    (broken / "tiktoken.model").write_text("not base64 at all\n")
    with pytest.raises(ValueError, match="tiktoken.model:1"):
        load_backend(str(broken), device="cpu")


def test_recipes_run_unchanged_on_kimi_audio(tiny_kimi, synth_data, tmp_path):
    """eval (score and generate), LoRA SFT, GRPO and the ensemble through the CLI."""
    m, train, dev = str(tiny_kimi), str(synth_data / "train.jsonl"), str(synth_data / "dev.jsonl")
    common = ["model=" + m, f"train_data=[{train}]", "bf16=false", "device=cpu"]
    assert main(["sft", "configs/kimi_audio/sft_lora.yaml", *common, f"output_dir={tmp_path / 'sft'}", "batch_size=2",
                 "micro_batch_size=2", "max_steps=2", "lr=1e-2", "spec_augment_masks=1"]) == 0
    cfg = json.loads((tmp_path / "sft" / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 16
    assert main(["grpo", "configs/kimi_audio/grpo.yaml", *common, f"output_dir={tmp_path / 'grpo'}",
                 f"sft_adapter={tmp_path / 'sft' / 'adapter'}", "batch_size=2", "micro_batch_size=2", "group_size=2",
                 "max_steps=1", "rollout=generate", "max_new_tokens=3"]) == 0
    for name, extra in [("base", []), ("sft", ["--adapter", str(tmp_path / "sft" / "adapter")]),
                        ("grpo", ["--adapter", str(tmp_path / "grpo" / "adapter")])]:
        assert main(["eval", "--model", m, "--data", dev, "-o", str(tmp_path / name), "--limit", "6", "--device",
                     "cpu", *extra]) == 0
    probs = {n: [r["probs"] for r in map(json.loads, (tmp_path / n / "predictions.jsonl").read_text().splitlines())]
             for n in ("base", "sft")}
    assert len(probs["base"]) == 6 and probs["base"] != probs["sft"]  # the adapter is applied
    assert main(["eval", "--model", m, "--data", dev, "-o", str(tmp_path / "gen"), "--limit", "2", "--mode",
                 "generate", "--max-new-tokens", "3", "--device", "cpu"]) == 0
    assert main(["ensemble", "fit", str(tmp_path / "base"), str(tmp_path / "sft"), str(tmp_path / "grpo"),
                 "-o", str(tmp_path / "ens"), "--folds", "2", "--steps", "20"]) == 0
    assert (tmp_path / "ens" / "params.json").is_file()


def test_official_7b_weight_names_and_shapes_load():
    """At Kimi-Audio-7B-Instruct's config (values from its config.json), the model's tensors
    plus the skipped audio-generation branch are exactly the official shards' weight names."""
    import re

    from aqa.models.kimi_audio import KimiAudioConfig, KimiAudioForCausalLM

    official = dict(architectures=["MoonshotKimiaForCausalLM"], hidden_size=3584, intermediate_size=18944,
                    num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                    max_position_embeddings=8192, kimia_mimo_layers=6, kimia_mimo_transformer_from_layer_index=21,
                    kimia_audio_output_vocab=16896, kimia_text_output_vocab=152064, kimia_token_offset=152064,
                    vocab_size=168448, kimia_mimo_audiodelaytokens=6, kimia_adaptor_input_dim=5120,
                    rms_norm_eps=1e-6, use_whisper_feature=True, torch_dtype="bfloat16")
    cfg = KimiAudioConfig(**official)
    with torch.device("meta"):
        model = KimiAudioForCausalLM(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    per_layer = [f"self_attn.{p}_proj.{w}" for p in "qkv" for w in ("weight", "bias")] + [
        "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
        "input_layernorm.weight", "post_attention_layernorm.weight"]
    names = ({f"model.layers.{i}.{p}" for i in range(28) for p in per_layer}
             | {f"model.mimo_layers.{i}.{p}" for i in range(6) for p in per_layer}
             | {f"model.vq_adaptor.layers.{i}.{w}" for i in (0, 3, 4) for w in ("weight", "bias")}
             | {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "mimo_output.weight",
                "model.mimo_norm.weight"})
    assert len(names) == 419
    ignore = KimiAudioForCausalLM._keys_to_ignore_on_load_unexpected
    skipped = {n for n in names if any(re.search(p, n) for p in ignore)}
    assert any(re.search(p, "model.layers.3.self_attn.rotary_emb.inv_freq") for p in ignore)
    assert set(shapes) == names - skipped and len(skipped) == 6 * 12 + 2
    assert shapes["model.embed_tokens.weight"] == (168448, 3584) and shapes["lm_head.weight"] == (168448, 3584)
    assert shapes["model.vq_adaptor.layers.0.weight"] == (3584, 5120)
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (512, 3584)  # 4 key/value heads of 128
    assert cfg.rope_parameters["rope_theta"] == 10000.0  # upstream's config class default


def test_pretraining_a_kimi_folder_is_refused_by_name(tiny_kimi, synth_data, capsys):
    from aqa.cli import main
    from aqa.train.pretrain import pretrain

    with pytest.raises(ValueError, match="moonshot_kimia"):
        pretrain(tiny_kimi, synth_data / "strong.tsv", synth_data / "labels.tsv", synth_data / "wav",
                 synth_data / "never")
    capsys.readouterr()
    assert main(["model", "pretrain", str(tiny_kimi), "--strong", str(synth_data / "strong.tsv"), "--labels",
                 str(synth_data / "labels.tsv"), "--audio-root", str(synth_data / "wav"), "-o",
                 str(synth_data / "never")]) == 2
    err = capsys.readouterr().err
    assert "cannot train this model (the moonshot_kimia backend has no audio-encoder pretraining hooks)" in err
    assert "Traceback" not in err


def test_spec_augment_masks_the_whisper_features_not_the_speech_tokens(kimi):
    ex = [Example((np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32), "q")]
    batch = kimi.collate(ex)
    before = {k: v.clone() for k, v in batch.items()}
    out = kimi.spec_augment(dict(batch), 2, 20, torch.Generator().manual_seed(0))
    assert not torch.equal(out["input_features"], before["input_features"])
    assert torch.equal(out["audio_ids"], before["audio_ids"])  # GLM-4-Voice tokens of the clean clip


def test_decode_drops_audio_tokens(kimi):
    off = kimi.processor.token_offset
    text_ids = kimi.tokenizer.encode("B", add_special_tokens=False)
    assert kimi.decode([text_ids + [off + 3] + kimi.end_ids]) == ["B"]


def test_special_token_ids_are_upstreams_published_values():
    """Kimi-Audio-7B-Instruct's ids (151,643 base tokens), written here as upstream publishes
    them, not derived from aqa's own table."""
    from aqa.models.kimi_audio import special_token_names

    ids = {name: 151643 + i for i, name in enumerate(special_token_names())}
    assert ids["<|im_msg_end|>"] == 151645
    assert (ids["<|im_media_begin|>"], ids["<|im_media_end|>"]) == (151661, 151663)
    assert (ids["<|im_kimia_text_blank|>"], ids["<|im_kimia_text_eos|>"]) == (151666, 151667)
    assert (ids["<|im_kimia_user_msg_start|>"], ids["<|im_kimia_assistant_msg_start|>"]) == (151670, 151671)
    assert (ids["<|im_kimia_speech_ct_id|>"], ids["<|im_kimia_speech_ctd_id|>"]) == (151675, 151676)


def test_mel_bins_that_disagree_with_the_encoder_are_refused(tiny_kimi, tmp_path):
    from transformers import WhisperFeatureExtractor

    broken = tmp_path / "k"
    shutil.copytree(tiny_kimi, broken)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(broken / "whisper-large-v3")
    with pytest.raises(ValueError, match="whisper-large-v3/preprocessor_config.json.*80 mel bins.*128"):
        load_backend(str(broken), device="cpu")


def test_generation_passes_the_cache_under_the_decoders_own_name():
    import inspect

    from transformers.models.qwen2.modeling_qwen2 import Qwen2Model

    from aqa.models.kimi_audio import cache_keyword

    assert cache_keyword() in inspect.signature(Qwen2Model.forward).parameters


def test_speech_tokenizer_mask_and_convolutions_follow_upstream():
    """Non-causal without a block size: every real frame sees every real frame; with a block,
    block-causal; upstream's config default is symmetric convolutions."""
    from transformers import WhisperConfig

    from aqa.models.whisper_vq import WhisperVQTokenizer

    cfg = WhisperConfig(d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32, num_mel_bins=8)
    for k, v in dict(quantize_position=2, pooling_kernel_size=None, pooling_position=1, quantize_vocab_size=8,
                     quantize_causal_block_size=None).items():
        setattr(cfg, k, v)
    vq = WhisperVQTokenizer(cfg)
    assert vq.causal_conv is False
    keep = torch.tensor([[1, 1, 1, 0]])
    seen = vq._mask(keep, None, False, torch.float32)[0, 0] == 0  # (T, T) which frames each frame sees
    assert seen[0, :3].all() and not seen[0, 3]
    block = vq._mask(torch.ones(1, 4), 2, False, torch.float32)[0, 0] == 0
    assert block[0, 1] and not block[0, 2] and block[3, 0]
    causal = vq._mask(torch.ones(1, 4), None, True, torch.float32)[0, 0] == 0
    assert causal[3, 0] and not causal[0, 1]


def test_speech_tokenizer_config_without_upstreams_defaulted_keys_loads_as_upstream_reads_it(tmp_path):
    """A config.json that leaves out keys upstream's WhisperVQConfig defaults (the block size, the
    pooling and causality fields) means those defaults: it loads (it raised AttributeError) and
    tokenizes exactly as the same weights with the defaults written out."""
    import json

    from safetensors.torch import save_file
    from transformers import WhisperConfig

    from aqa.models.whisper_vq import VQ_DEFAULTS, WhisperVQTokenizer

    base = dict(d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32, num_mel_bins=8,
                max_source_positions=64, quantize_vocab_size=8, quantize_position=2)
    explicit = WhisperConfig(**{**VQ_DEFAULTS, **base})
    explicit._attn_implementation = "sdpa"
    torch.manual_seed(0)
    vq = WhisperVQTokenizer(explicit).eval()
    save_file({k: v.contiguous() for k, v in vq.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(base))
    loaded = WhisperVQTokenizer.from_folder(tmp_path)
    assert loaded.config.quantize_causal_block_size is None and loaded.config.pooling_type == "max"
    assert loaded.pooling is None and loaded.causal_conv is False
    x, keep = torch.randn(2, 8, 40), torch.ones(2, 40)
    assert torch.equal(loaded(x, keep), vq(x, keep))
    # A config object without the keys at all (not through from_folder) reads the same defaults.
    bare = WhisperConfig(**base)
    bare._attn_implementation = "sdpa"
    for k in ("quantize_causal_block_size", "pooling_kernel_size", "pooling_type", "pooling_position"):
        assert not hasattr(bare, k)
    again = WhisperVQTokenizer(bare)
    again.load_state_dict(vq.state_dict())
    assert torch.equal(again.eval()(x, keep), vq(x, keep))
