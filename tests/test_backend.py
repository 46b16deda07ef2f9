"""The Qwen2-Audio backend against transformers' own forward: same numbers, fewer logits."""

import numpy as np
import pytest
import torch

from aqa.models.base import Example, load_backend
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
def test_greedy_generation_starts_with_the_scored_argmax(backend):
    ex = examples()
    batch = backend.collate(ex)
    h = backend.hidden_states(batch)[:, -1]
    first = backend.output_embedding()(h).argmax(-1)
    out = backend.model.generate(**{k: v for k, v in batch.items() if k != "position_ids"}, max_new_tokens=1,
                                 do_sample=False, pad_token_id=backend.tokenizer.pad_token_id)
    assert out[:, -1].tolist() == first.tolist()
