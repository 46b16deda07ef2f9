import random
from collections import Counter

import numpy as np
import pytest
import torch

from aqa.data.augment import freq_mask, original_index, shuffle_options, unshuffle_probs


@pytest.mark.parametrize("rng_factory", [lambda s: random.Random(s), lambda s: np.random.default_rng(s),
                                         lambda s: torch.Generator().manual_seed(s)])
def test_answer_follows_its_option(rng_factory):
    rng = rng_factory(0)
    for n in range(2, 9):
        choices = [f"opt{i}" for i in range(n)]
        for answer in range(n):
            for _ in range(20):
                new, new_answer, perm = shuffle_options(choices, answer, rng)
                assert sorted(perm) == list(range(n))
                assert new == [choices[p] for p in perm]
                assert new[new_answer] == choices[answer]
                assert original_index(new_answer, perm) == answer
    assert shuffle_options(["a", "b"], None, rng)[1] is None
    with pytest.raises(ValueError):
        shuffle_options(["a", "b"], 2, rng)


def test_shuffle_is_uniform_enough():
    rng = random.Random(1234)
    n, draws = 4, 8000
    where = Counter(shuffle_options(list("abcd"), 0, rng)[1] for _ in range(draws))
    assert set(where) == set(range(n))
    for pos in range(n):  # expected 2000 each; sd about 39, so 200 is > 5 sd
        assert abs(where[pos] - draws / n) < 200
    perms = Counter(tuple(shuffle_options(list("abc"), 0, rng)[2]) for _ in range(6000))
    assert len(perms) == 6 and all(abs(c - 1000) < 150 for c in perms.values())


def test_shuffle_is_reproducible():
    a = [shuffle_options(list("abcde"), 2, random.Random(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]


def test_probs_mapped_back_to_original_order():
    choices, answer = ["w", "x", "y", "z"], 2
    true_probs = {"w": 0.1, "x": 0.2, "y": 0.6, "z": 0.1}
    rng = random.Random(3)
    for _ in range(50):
        new, new_answer, perm = shuffle_options(choices, answer, rng)
        shuffled = [true_probs[c] for c in new]  # what a model scoring the shuffled prompt gives
        assert unshuffle_probs(shuffled, perm) == [true_probs[c] for c in choices]
        arr = np.array([shuffled, shuffled])
        np.testing.assert_allclose(unshuffle_probs(arr, perm), [[true_probs[c] for c in choices]] * 2)
        t = torch.tensor(shuffled)
        back = unshuffle_probs(t, perm)
        assert torch.allclose(back, torch.tensor([true_probs[c] for c in choices]))
        assert int(back.argmax()) == answer and original_index(int(t.argmax()), perm) == answer
    with pytest.raises(ValueError):
        unshuffle_probs([0.5, 0.5], [0, 0])


def feats(b=4, n_mels=80, t=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((b, n_mels, t), generator=g) * 2 - 1


def masked_rows(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(B, n_mels) bool: which frequency rows changed."""
    return (before != after).any(dim=-1)


def test_freq_mask_changes_whole_rows_only():
    x = feats()
    keep = x.clone()
    for seed in range(30):
        y = freq_mask(x, num_masks=2, max_width=10, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(x, keep)  # not in place
        assert y.shape == x.shape and y.dtype == x.dtype
        changed = (x != y)
        rows = masked_rows(x, y)
        # A changed row is changed in every frame and holds one value: the example's mean.
        assert torch.equal(changed.any(-1), changed.all(-1))
        for b in range(x.shape[0]):
            if rows[b].any():
                assert torch.allclose(y[b][rows[b]], x[b].mean().expand_as(y[b][rows[b]]))
        assert int(rows.sum(-1).max()) <= 2 * (10 - 1)  # widths are drawn from [0, F)
        # Time axis untouched: every frame sees the same set of masked rows.
        assert torch.equal(changed.all(dim=-1), changed.any(dim=-1))


def test_freq_mask_masks_something_and_differs_per_example():
    x = feats(b=8)
    y = freq_mask(x, 2, 20, torch.Generator().manual_seed(0))
    rows = masked_rows(x, y)
    assert rows.any()
    assert len({tuple(r.tolist()) for r in rows}) > 1  # masks are drawn per example


def test_freq_mask_deterministic_and_2d_and_zero_value():
    x = feats()
    a = freq_mask(x, 3, 15, torch.Generator().manual_seed(42))
    b = freq_mask(x, 3, 15, torch.Generator().manual_seed(42))
    c = freq_mask(x, 3, 15, torch.Generator().manual_seed(43))
    assert torch.equal(a, b) and not torch.equal(a, c)
    single = freq_mask(x[0], 3, 15, torch.Generator().manual_seed(5))
    assert single.shape == x[0].shape
    z = freq_mask(x, 3, 15, torch.Generator().manual_seed(42), value=0.0)
    assert torch.equal(masked_rows(x, z), masked_rows(x, a)) and (z[masked_rows(x, z)] == 0).all()


def test_freq_mask_edge_cases():
    x = feats(b=2, n_mels=8)
    assert torch.equal(freq_mask(x, 0, 5), x) and freq_mask(x, 0, 5) is not x
    assert torch.equal(freq_mask(x, 3, 1), x)  # width drawn from [0, 1): always 0
    for seed in range(20):  # width capped below n_mels: one mask never covers every band
        y = freq_mask(x, 1, 100, torch.Generator().manual_seed(seed))
        assert masked_rows(x, y).sum(-1).max() <= 7
    bf = freq_mask(x.to(torch.bfloat16), 2, 4, torch.Generator().manual_seed(2))
    assert bf.dtype == torch.bfloat16
    with pytest.raises(ValueError):
        freq_mask(torch.zeros(3), 1, 2)


def test_freq_mask_fill_is_the_mean_of_the_real_frames():
    """A short clip padded to the window with the silence floor: the fill is the mean of the
    clip's own frames, not pulled towards the padding."""
    x = torch.full((2, 16, 100), -1.0)  # the padding's silence floor
    x[0, :, :30] = 0.5  # 30 real frames
    x[1, :, :80] = 0.25
    y = freq_mask(x, 2, 8, torch.Generator().manual_seed(0), lengths=torch.tensor([30, 80]))
    moved = (y != x).any(-1)  # (B, n_mels)
    assert moved[0].any() and moved[1].any()
    assert torch.allclose(y[0][moved[0]], torch.tensor(0.5)) and torch.allclose(y[1][moved[1]], torch.tensor(0.25))
    whole = freq_mask(x, 2, 8, torch.Generator().manual_seed(0))  # without lengths: over the window
    assert torch.allclose(whole[0][moved[0]], x[0].mean())
    same = freq_mask(x, 2, 8, torch.Generator().manual_seed(0), lengths=torch.tensor([100, 100]))
    assert torch.equal(same, whole)  # full-length clips: the old fill
