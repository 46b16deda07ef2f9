"""What all six families must do, on their tiny random models with the real classes:
run in bf16 as DeepSpeed runs them (the whole module cast to bf16, autocast off) and agree with
float32; compute letter logits and target log-probs in float32 from the bf16 hidden states; and
fill SpecAugment's masks with the mean of each row's real log-mel frames, never the padding's."""

import json
import math
import shutil

import pytest
import torch

from aqa.models.base import Example
from aqa.models.registry import load_backend
from aqa.prompts import question_text
from conftest import noise

pytestmark = pytest.mark.usefixtures("one_thread")

SIX = ["qwen2-audio", "kimi-audio", "qwen2.5-omni", "qwen3-omni", "audio-flamingo3", "voxtral", "moss-audio"]
# 0.5 s: shorter than any window; 3.0 s: past the tiny Qwen2-Audio's 2 s window, two windows of
# the tiny Audio Flamingo 3 and Voxtral.
SECONDS = (0.5, 3.0, 1.7)

#: What bf16 may change, measured on these models (2026-12-05, worst of the six): option
#: log-probs 0.017 apart, SFT loss 0.1% apart, gradient direction cosine > 0.999.
LOGP_ATOL, LOSS_RTOL, GRAD_COSINE = 0.05, 0.01, 0.99


def examples(seconds=SECONDS):
    return [Example(noise(s, k), question_text("Which sound?" + " really" * k, ["beep", "hum", "hiss"]), "B")
            for k, s in enumerate(seconds)]


@pytest.fixture(scope="module", params=SIX)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def folder(family, tiny_family):
    return tiny_family(family)


def tuned(folder, dtype):
    """The tiny model with a LoRA adapter whose update is not zero, then cast whole to `dtype`,
    adapter included: what DeepSpeed's bf16 engine does to the module it is given."""
    b = load_backend(str(folder), device="cpu", dtype="fp32")
    b.add_lora(r=4, alpha=8, dropout=0.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in b.model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.1, generator=g)
    b.model.to(dtype)
    return b


def sft_step(b):
    """(loss, flat LoRA gradient, option log-probs, greedy ids) of one SFT forward and backward
    (with SpecAugment), then letter scoring and a short generation."""
    batch = b.spec_augment(b.collate(examples(), with_target=True), 2, 8, torch.Generator().manual_seed(0))
    logp, mask = b.target_logprobs(batch)
    loss = -(logp.sum() / mask.sum())
    loss.backward()
    grad = torch.cat([p.grad.float().flatten() for n, p in b.model.named_parameters() if p.grad is not None])
    with torch.no_grad():
        prompts = b.collate(examples())
        scores = b.option_logits(prompts, [3] * len(SECONDS)).log_softmax(-1)
        ids = b.generate_ids(prompts, max_new_tokens=3)
    return loss.item(), grad, scores, ids


def test_bf16_trains_scores_and_generates_as_float32_does(folder):
    loss32, grad32, scores32, _ = sft_step(tuned(folder, torch.float32))
    b = tuned(folder, torch.bfloat16)
    loss16, grad16, scores16, ids = sft_step(b)
    assert math.isfinite(loss16) and abs(loss16 - loss32) <= LOSS_RTOL * loss32
    assert grad16.numel() == grad32.numel() and torch.isfinite(grad16).all()
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > GRAD_COSINE
    assert scores16.dtype == torch.float32
    assert (scores16 - scores32).abs().max() <= LOGP_ATOL, (scores16, scores32)
    vocab = b.output_embedding().weight.shape[0]
    stop = set(b.end_ids)
    assert len(ids) == len(SECONDS) and all(
        0 < len(s) <= 3 and all(0 <= t < vocab for t in s) and (len(s) == 3 or s[-1] in stop) for s in ids)


def test_bf16_eval_command_runs(folder, family, synth_data, tmp_path):
    """`aqa eval --dtype bf16 --device cpu`: the model loaded in bf16 (Audio Flamingo 3 failed
    here on its float32 log-mels)."""
    from aqa.cli import main

    shutil.copytree(synth_data / "wav", tmp_path / "wav")
    rows = (synth_data / "dev.jsonl").read_text().splitlines()[:2]
    (tmp_path / "dev.jsonl").write_text("".join(r + "\n" for r in rows))
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(folder), "--data", str(tmp_path / "dev.jsonl"), "-o", str(out),
                 "--dtype", "bf16", "--device", "cpu"]) == 0
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 2 and all(abs(sum(p["probs"]) - 1) < 1e-5 for p in preds)


@torch.no_grad()
def test_letter_and_target_logprobs_are_float32_products_of_the_bf16_hidden_states(folder):
    b = tuned(folder, torch.bfloat16)
    b.model.eval()
    head = b.output_embedding()
    w = head.weight.double()
    prompts = b.collate(examples())
    h = b.hidden_states(prompts)[:, -1]  # (B, H) bf16
    assert h.dtype == torch.bfloat16
    ids = b.letter_token_ids(3)
    exact = h.double() @ w[ids].T  # (B, 3)
    ours = b.option_logits(prompts, [3] * len(SECONDS))
    assert torch.allclose(ours.double(), exact, rtol=1e-6, atol=1e-6)
    # The test can tell: a bf16 product is rounded well past float32 rounding.
    assert (((h @ head.weight[ids].T).double()) - exact).abs().max() > 1e-4

    batch = b.collate(examples(), with_target=True)
    logp, mask = b.target_logprobs(batch)
    hs = b.hidden_states(batch)
    labels = batch["labels"]
    for i in range(labels.shape[0]):
        pos = (labels[i, 1:] != -100).nonzero()[:, 0]  # the states that predict the target tokens
        ref = torch.log_softmax(hs[i, pos].double() @ w.T, -1).gather(-1, labels[i, pos + 1][:, None])[:, 0]
        got = logp[i][mask[i]]
        assert torch.allclose(got.double(), ref, rtol=1e-6, atol=1e-5)


@torch.no_grad()
def test_options_a_hundredth_apart_are_not_tied(folder):
    """At a real letter logit of 20 a bf16 product rounds in steps of 0.125: B 0.01 above A
    would tie with it and argmax would take A."""
    b = tuned(folder, torch.bfloat16)
    b.model.eval()
    base = b.base_model()
    # A head of its own, so that changing two letters' rows cannot change the prompt's embeddings
    # (some tiny models tie the head to the input embedding).
    old = base.lm_head
    base.lm_head = torch.nn.Linear(old.in_features, old.out_features, bias=False, dtype=torch.bfloat16)
    base.lm_head.weight.copy_(old.weight)
    prompts = b.collate(examples()[:1])
    h = b.hidden_states(prompts)[0, -1].float()  # (H,)
    j, k = h.abs().topk(2).indices.tolist()
    a_id, b_id = b.letter_token_ids(2)
    w = base.lm_head.weight
    w[a_id] = 0
    w[b_id] = 0
    w[b_id, j] = 0.01 / h[j]  # B = A + h[j] * w[b, j], about 0.01
    for c in torch.arange(20, 21, 0.01):  # logit A about 20, where B rounds to the same bf16 number
        w[a_id, k] = w[b_id, k] = c / h[k]
        if (h.bfloat16() @ w[[a_id, b_id]].T).unique().numel() == 1:  # tied in a bf16 product
            break
    else:
        pytest.fail("no logit near 20 where A and B round to one bf16 number")
    gap = float(h[j] * w[b_id, j].float())
    assert abs(gap - 0.01) < 1e-4
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            got = b.option_logits(prompts, [2])[0]
        assert got.dtype == torch.float32 and int(got.argmax()) == 1
        assert abs(float(got[1] - got[0]) - gap) < 1e-5


def real_frames(family, b, seconds):
    """Each `input_features` row's real log-mel frames (100 a second), worked out from the clip
    lengths and the family's layout: one row per clip, or one per window or segment."""
    fe = b.processor.feature_extractor

    def frames(n):
        return -(-n // 160)

    rows = []
    for s in seconds:
        n = int(16000 * s)
        if family == "qwen2-audio":  # one 30 s window (2 s in the tiny model), the clip cut to it
            rows.append(frames(min(n, fe.chunk_length * 16000)))
        elif family in ("qwen2.5-omni", "qwen3-omni"):  # the clip's own frames, right-padded in the batch
            rows.append(frames(n))
        elif family == "moss-audio":  # the clip's own frames (its STFT's last frame dropped), right-padded
            rows.append(n // 160)
        elif family == "kimi-audio":  # 30 s segments; 8 frames per 1,280-sample speech token
            rows += [8 * -(-min(480000, n - lo) // 1280) for lo in range(0, n, 480000)]
        else:  # Audio Flamingo 3, Voxtral: whole windows, each padded
            window = int((fe.chunk_length if family == "audio-flamingo3" else b.window_seconds) * 16000)
            rows += [frames(min(window, n - lo)) for lo in range(0, n, window)]
    return rows


def test_spec_augment_fill_is_the_mean_of_each_rows_real_frames(folder, family):
    b = load_backend(str(folder), device="cpu")
    batch = b.collate(examples())
    x = batch["input_features"]
    lengths = real_frames(family, b, SECONDS)
    assert b.feature_lengths(batch).tolist() == lengths
    out = b.spec_augment(dict(batch), 3, 8, torch.Generator().manual_seed(1))["input_features"]
    padded = 0
    for i, n in enumerate(lengths):
        moved = (out[i] != x[i]).any(-1)  # (n_mels,) the masked bands
        want = x[i][:, :n].mean()
        assert moved.any() and torch.allclose(out[i][moved], want, atol=1e-5)
        padded += n < x.shape[-1] and not torch.isclose(x[i].mean(), want, atol=1e-3)
    assert padded  # some row holds padding whose mean differs: the old fill would have been wrong


@torch.no_grad()
def test_generation_never_writes_the_audio_placeholder(folder, family):
    """A completion is fed back as a target (GRPO): an audio slot in it would have no audio.
    The placeholder is made the model's favourite token, and generation still never writes it."""
    b = load_backend(str(folder), device="cpu", dtype="fp32")  # its own copy: the head is changed below
    if family == "kimi-audio":  # its clips ride a stream of their own: no text token stands for one
        assert b.unsampled_ids() == []
        return
    audio, = b.unsampled_ids()
    batch = b.collate(examples())
    h = b.hidden_states(batch)[:, -1]
    b.output_embedding().weight[audio] = 1000 * (h / h.norm(dim=-1, keepdim=True)).sum(0)
    assert (b.output_embedding()(b.hidden_states(batch)[:, -1]).argmax(-1) == audio).all()
    ids = b.generate_ids(batch, max_new_tokens=3, do_sample=True, num_return_sequences=2)
    assert len(ids) == 6 and not any(audio in s for s in ids)

