"""tools/check_kimi_equivalence.py and tools/kimi_reference_runner.py without upstream's code:
the comparison fails on one changed value of any measure, the arguments are checked, and the
runner's stand-in for flash-attn is exact attention."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def load(name):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


check = load("check_kimi_equivalence")
runner = load("kimi_reference_runner")


def result(seed=0):
    """One side's measures for a 12-position prompt with 4 speech tokens and 5 generated tokens."""
    rng = np.random.default_rng(seed)
    cont = np.zeros(12, dtype=bool)
    cont[5:9] = True
    audio = np.arange(100, 112)
    return dict(question_ids=np.array([7, 8, 9]), audio_input_ids=audio, text_input_ids=np.arange(200, 212),
                is_continuous_mask=cont, glm_tokens=audio[cont] - 100, generated=np.array([3, 1, 4, 1, 5]),
                whisper_feature=rng.standard_normal((4, 16)).astype(np.float32),
                text_logits=rng.standard_normal((12, 30)).astype(np.float32))


def test_identical_results_are_equivalent():
    row = check.compare(result(), result())
    assert row["failures"] == [] and row["argmax_agree"] == 1.0 and row["generated_first_difference"] is None
    assert check.verdict([row])


@pytest.mark.parametrize("key, change, failure", [
    ("whisper_feature", lambda x: x.__setitem__((2, 3), x[2, 3] + 1e-3), "whisper_feature"),
    ("text_logits", lambda x: x.__setitem__((11, 0), x[11, 0] - 2e-4), "text_logits"),
    ("text_logits", lambda x: x.__setitem__((0, 0), np.nan), "text_logits"),
    ("generated", lambda x: x.__setitem__(3, 9), "generated"),
    ("glm_tokens", lambda x: x.__setitem__(0, 63), "glm_tokens"),
    ("question_ids", lambda x: x.__setitem__(1, 10), "question_ids"),
    ("is_continuous_mask", lambda x: x.__setitem__(4, True), "is_continuous_mask"),
])
def test_one_changed_value_is_different(key, change, failure):
    mine = result()
    change(mine[key])
    row = check.compare(mine, result())
    assert row["failures"] == [failure]
    assert not check.verdict([check.compare(result(), result()), row])
    if key == "generated":
        assert row["generated_first_difference"] == 3


def test_shape_and_length_differences_fail():
    mine = result()
    mine["generated"] = mine["generated"][:4]  # stopped one token early
    mine["whisper_feature"] = mine["whisper_feature"][:3]
    row = check.compare(mine, result())
    assert set(row["failures"]) == {"generated", "whisper_feature"}
    assert row["generated_first_difference"] == 4 and row["whisper_feature_max_abs_diff"] == float("inf")
    assert not check.verdict([])


def test_tolerances_are_the_thresholds():
    mine = result()
    mine["text_logits"] = mine["text_logits"] + 5e-5
    assert check.compare(mine, result())["failures"] == []
    assert check.compare(mine, result(), {"text_logits": 1e-5})["failures"] == ["text_logits"]


def test_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        check.parse_args(["--ref-python", "py", "--upstream", str(tmp_path), "-o", str(tmp_path / "o")])
    assert f"{tmp_path / 'Kimi-Audio'}: not a folder" in capsys.readouterr().err
    for name in ("Kimi-Audio", "GLM-4-Voice", "Kimi-Audio-7B-Instruct"):
        (tmp_path / name).mkdir()
    with pytest.raises(SystemExit):
        check.parse_args(["--ref-python", "py", "--upstream", str(tmp_path), "-o", "o", "--max-new-tokens", "0"])
    args = check.parse_args(["--ref-python", "py", "--upstream", str(tmp_path), "-o", "o", "--logits-tol", "1e-5"])
    assert args.max_new_tokens == 8 and args.logits_tol == 1e-5 and args.feature_tol == check.TOLERANCES["whisper_feature"]
    r = runner.parse_args(["--kimi-audio", "k", "--tokenizer-code", "t", "--ckpt", "c", "--cases", "x.json",
                           "--out-dir", "o"])
    assert r.glm_4_voice is None and r.lm_code is None
    with pytest.raises(SystemExit):
        runner.parse_args(["--kimi-audio", "k", "--ckpt", "c", "--cases", "x.json", "--out-dir", "o"])


@pytest.mark.parametrize("tq, tk, heads, kv_heads, causal", [(7, 7, 4, 4, False), (7, 7, 4, 2, True),
                                                            (1, 9, 4, 2, True), (3, 9, 2, 1, True)])
def test_reference_attention_is_exact_attention(tq, tk, heads, kv_heads, causal):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, tq, heads, 8, generator=g)
    k, v = (torch.randn(2, tk, kv_heads, 8, generator=g) for _ in range(2))
    out = runner.flash_attn_func(q, k, v, 0.0, softmax_scale=None, causal=causal)
    kk, vv = (x.repeat_interleave(heads // kv_heads, 2) for x in (k, v))
    # flash-attn's causal mask for tq < tk is aligned to the bottom right: the last query sees every key
    mask = torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq) if causal else None
    want = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2),
                                                            attn_mask=mask).transpose(1, 2)
    assert out.shape == q.shape and out.is_contiguous()
    torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-5)


def test_reference_runner_reads_16_khz_only(tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "a.wav", np.zeros((800, 2), dtype=np.float32), 8000)
    with pytest.raises(ValueError, match=r"a\.wav: 8000 Hz; the reference runner reads 16000 Hz"):
        runner._librosa_load(tmp_path / "a.wav", sr=16000)
    sf.write(tmp_path / "b.wav", np.full((1600, 2), 0.5, dtype=np.float32), 16000)
    audio, rate = runner._librosa_load(tmp_path / "b.wav", sr=16000)
    assert rate == 16000 and audio.shape == (1600,) and np.allclose(audio, 0.5)  # stereo averaged, as librosa does


def test_clips_seeds_and_question_are_options(tmp_path):
    wav = tmp_path / "a.wav"
    import soundfile as sf

    sf.write(wav, np.zeros(1600, np.float32), 16000)
    for name in ("Kimi-Audio", "GLM-4-Voice", "Kimi-Audio-7B-Instruct"):
        (tmp_path / name).mkdir()
    common = ["--ref-python", "py", "--upstream", str(tmp_path), "-o", "o"]
    args = check.parse_args(common)
    assert args.seconds == [12.0, 35.0] and args.seeds == [0, 1] and args.question == check.QUESTION
    args = check.parse_args([*common, "--seconds", "3", "4", "5", "--seeds", "7", "8", "9", "--question", "Why?",
                             "--clip", str(wav)])
    assert args.seconds == [3.0, 4.0, 5.0] and args.seeds == [7, 8, 9] and args.question == "Why?"
    assert args.clip == [wav]
    with pytest.raises(SystemExit):
        check.parse_args([*common, "--seconds", "3", "4", "--seeds", "1"])
    with pytest.raises(SystemExit):
        check.parse_args([*common, "--clip", str(tmp_path / "missing.wav")])
