"""The Qwen2-Audio backend against transformers' own forward: same numbers, fewer logits."""

import numpy as np
import pytest
import torch

from aqa.models.base import Example
from aqa.models.registry import load_backend
from aqa.prompts import question_text


@pytest.fixture(scope="module")
def backend(tiny_model):
    return load_backend(str(tiny_model))


def examples(n=3, target="B"):
    rng = np.random.default_rng(0)
    return [Example((rng.standard_normal(int(16000 * s)) * 0.1).astype(np.float32),
                    question_text("Which sound?" + " really" * k, ["beep", "hum", "hiss"][: 2 + k % 2]), target)
            for s, k in zip([0.5, 2.0, 1.3, 1.0][:n], range(n))]


@torch.no_grad()
def test_batched_equals_single_despite_padding(backend):
    ex = examples()
    n = [2 + k % 2 for k in range(3)]
    batched = backend.option_logits(backend.collate(ex), n)
    single = torch.cat([torch.nn.functional.pad(backend.option_logits(backend.collate([e]), [k]), (0, 3 - k),
                                                value=float("-inf")) for e, k in zip(ex, n)])
    assert torch.allclose(batched, single, atol=1e-5)
    assert torch.isinf(batched[0, 2]) and not torch.isinf(batched[1, 2])


@torch.no_grad()
def test_option_logits_match_full_lm_head(backend):
    ex = examples()
    batch = backend.collate(ex)
    full = backend.model(**batch).logits[:, -1]  # (B, V) from transformers' forward
    ids = backend.letter_token_ids(3)
    ours = backend.option_logits(batch, [3, 3, 3])
    assert torch.allclose(full[:, ids], ours, atol=1e-5)


@torch.no_grad()
def test_target_logprobs_match_transformers_loss(backend):
    batch = backend.collate(examples(), with_target=True)
    logp, mask = backend.target_logprobs(batch)
    assert mask.sum(1).tolist() == [2, 2, 2]  # the letter and <|im_end|>
    hf = backend.model(**batch).loss
    assert torch.allclose(-(logp.sum() / mask.sum()), hf, atol=1e-5)
    # Only target tokens carry labels.
    n_lab = (batch["labels"] != -100).sum(1)
    assert n_lab.tolist() == [2, 2, 2]


@torch.no_grad()
def test_target_logprobs_at_a_sampling_temperature(backend):
    """GRPO scores sampled completions under the distribution they were sampled from: the
    logits divided by the temperature, as TRL does."""
    batch = backend.collate(examples(), with_target=True)
    logp, mask = backend.target_logprobs(batch, temperature=2.0)
    logits = backend.model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1] / 2.0  # (B, T-1, V)
    labels = batch["labels"][:, 1:]
    want = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp_min(0)[..., None])[..., 0]
    want = torch.stack([row[lab != -100] for row, lab in zip(want, labels)])  # (B, 2): the targets, in order
    assert torch.allclose(logp[mask.bool()].reshape(3, 2), want, atol=1e-5)
    assert not torch.allclose(logp, backend.target_logprobs(batch)[0], atol=1e-3)


@torch.no_grad()
def test_greedy_generation_starts_with_the_scored_argmax(backend):
    ex = examples()
    batch = backend.collate(ex)
    h = backend.hidden_states(batch)[:, -1]
    first = backend.output_embedding()(h).argmax(-1)
    out = backend.model.generate(**{k: v for k, v in batch.items() if k != "position_ids"}, max_new_tokens=1,
                                 do_sample=False, pad_token_id=backend.tokenizer.pad_token_id)
    assert out[:, -1].tolist() == first.tolist()


@torch.no_grad()
def test_encoder_on_real_frames_matches_the_padded_path(backend):
    """The exact speed-up: the encoder sees the longest real clip (+2 frames), not the window."""
    ex = examples()  # 0.5 s, 2.0 s (the whole window) and 1.3 s clips
    short = [ex[0], ex[2]]  # no clip fills the window: the trim is real
    for batch_ex in (ex, short):
        batch = backend.collate(batch_ex, with_target=True)
        backend.trim_audio = False
        try:
            full_h = backend.hidden_states(batch)
            full_lp, _ = backend.target_logprobs(batch)
        finally:
            backend.trim_audio = True
        trim_h = backend.hidden_states(batch)
        trim_lp, _ = backend.target_logprobs(batch)
        real = batch["attention_mask"].bool()
        assert torch.allclose(full_h[real], trim_h[real], atol=1e-4)
        assert torch.allclose(full_lp, trim_lp, atol=1e-5)
    # The trimmed encoder really ran on fewer frames than the window: the longest real clip + 2.
    seen = []
    conv1 = backend.base_model().model.audio_tower.conv1
    hook = conv1.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[-1]))
    try:
        batch = backend.collate(short)
        backend.hidden_states(batch)
    finally:
        hook.remove()
    longest = int(batch["feature_attention_mask"].sum(-1).max())
    assert seen == [longest + 2 + (longest % 2)] and seen[0] < batch["input_features"].shape[-1]


def test_spec_augment_masks_the_familys_log_mels_only(backend):
    """The SpecAugment hook masks whole mel bands of the encoder's input, deterministically."""
    batch = backend.collate(examples(2))
    before = batch["input_features"].clone()
    ids = batch["input_ids"].clone()
    out = backend.spec_augment(dict(batch), 2, 8, torch.Generator().manual_seed(0))
    again = backend.spec_augment(dict(batch), 2, 8, torch.Generator().manual_seed(0))
    changed = (out["input_features"] != before).any(-1)  # (B, n_mels): bands that moved
    assert changed.any() and torch.equal(out["input_features"], again["input_features"])
    assert torch.equal(out["input_ids"], ids)
    text_only = backend.collate([Example(None, "q")])
    assert backend.spec_augment(text_only, 2, 8, torch.Generator().manual_seed(0)) is text_only


def test_decode_is_what_generate_returns(backend):
    batch = backend.collate(examples(2))
    ids = backend.generate_ids(batch, max_new_tokens=3)
    assert backend.generate(batch, max_new_tokens=3) == backend.decode(ids)
    assert all(s[-1] in backend.end_ids or len(s) == 3 for s in ids)


def test_spec_augment_fill_comes_from_the_clips_own_frames(backend):
    batch = backend.collate(examples(2))  # 0.5 s and 2 s clips in a 2 s window
    real = batch["feature_attention_mask"].sum(-1)
    out = backend.spec_augment(dict(batch), 3, 8, torch.Generator().manual_seed(1))
    for i in range(2):
        moved = (out["input_features"][i] != batch["input_features"][i]).any(-1)
        want = batch["input_features"][i][:, :real[i]].mean()
        assert moved.any() and torch.allclose(out["input_features"][i][moved], want, atol=1e-6)
