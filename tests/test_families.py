"""What every chat-processor family must do, on its tiny random model with the real classes
(Qwen2.5-Omni and Qwen3-Omni thinkers, Audio Flamingo 3, Voxtral): scoring equal to the family's
own full forward, batched equal to one at a time, LoRA round trips, SFT loss falls, a GRPO step
in both rollout modes, generation equal to transformers' own, the reference report's numbers in
the configs, and the commands (eval, ensemble across families, report, export) through the CLI.
What only one family has stays in its own file (tests/test_<family>.py)."""

import json
import shutil

import numpy as np
import pytest
import torch

from aqa.models.base import Example
from aqa.models.registry import load_backend
from aqa.prompts import question_text
from conftest import assert_adapter_round_trips, noise, overfit_sft_run

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ["qwen2.5-omni", "qwen3-omni", "audio-flamingo3", "voxtral"]
#: Config folder, model id and what the recipes need besides the shared settings.
CONFIGS = {
    "qwen2.5-omni": ("qwen2_5_omni", "Qwen/Qwen2.5-Omni-7B"),
    "qwen3-omni": ("qwen3_omni", "Qwen/Qwen3-Omni-30B-A3B-Instruct"),
    "audio-flamingo3": ("audio_flamingo3", "nvidia/audio-flamingo-3-hf"),
    "voxtral": ("voxtral", "mistralai/Voxtral-Mini-3B-2507"),
}
#: A name every trained adapter must hold (Qwen3-Omni: the experts' LoRA, not only attention's).
ADAPTER_KEY = {"qwen3-omni": "experts"}

# 0.5 s and 0.83 s: shorter than Qwen3-Omni's encoder chunk, frame counts not multiples of 8;
# 3.0 s: more than one window of the tiny Audio Flamingo 3 and Voxtral.
SECONDS = (0.5, 3.0, 0.83, 1.3)
N_OPTIONS = [2, 3, 2, 3]


def examples(seconds=SECONDS, target="B"):
    return [Example(noise(s, k), question_text("Which sound?" + " really" * k, ["beep", "hum", "hiss"][: 2 + k % 2]),
                    target) for k, s in enumerate(seconds)]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def folder(family, tiny_family):
    return tiny_family(family)


@pytest.fixture(scope="module")
def b(folder):
    return load_backend(str(folder), device="cpu")


def own(batch):
    """The batch as transformers' own forward takes it (it numbers positions itself; Voxtral's
    `feature_lengths` is aqa's own, for SpecAugment)."""
    return {k: v for k, v in batch.items() if k not in ("position_ids", "labels", "feature_lengths")}


@torch.no_grad()
def test_option_logits_and_target_logprobs_equal_the_familys_own_forward(b):
    ids = b.letter_token_ids(3)
    for e, n in zip(examples(), N_OPTIONS):
        row = b.collate([e], with_target=True)
        out = b.model(**own(row), labels=row["labels"])
        logp, mask = b.target_logprobs(row)
        assert int(mask.sum()) == len(b.end_ids) + 1  # the letter and the end of the turn
        assert torch.allclose(-(logp.sum() / mask.sum()), out.loss, atol=1e-5)
        prompt = b.collate([e])
        logits = b.model(**own(prompt)).logits[0, -1, ids[:n]]
        assert torch.allclose(b.option_logits(prompt, [n])[0], logits, atol=1e-5)


@torch.no_grad()
def test_batched_scoring_equals_one_at_a_time(b):
    ex = examples()
    batched = b.option_logits(b.collate(ex), N_OPTIONS)
    for i, (e, n) in enumerate(zip(ex, N_OPTIONS)):
        assert torch.allclose(batched[i, :n], b.option_logits(b.collate([e]), [n])[0], atol=1e-5)
        assert torch.isinf(batched[i, n:]).all()  # options the item does not have


@torch.no_grad()
def test_lora_round_trips_through_its_folder(folder, tmp_path):
    lb = load_backend(str(folder), device="cpu")
    lb.add_lora(r=4, alpha=8, dropout=0.0)
    names = [n for n, _ in lb.model.named_modules() if n.endswith("lora_A")]
    assert names and all(".language_model.layers." in n for n in names)  # the decoder only, unless asked
    assert_adapter_round_trips(lb, folder, lb.collate(examples()), N_OPTIONS, tmp_path)


@pytest.fixture(scope="module")
def sft_run(folder, family, synth_data, tmp_path_factory):
    return overfit_sft_run(folder, synth_data, tmp_path_factory.mktemp(f"{family}-sft"))


def test_sft_loss_falls_on_a_tiny_overfit_set(sft_run):
    losses = [json.loads(x)["loss"] for x in (sft_run / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("rollout", ["choice", "generate"])
def test_a_grpo_step_runs(folder, family, sft_run, synth_data, tmp_path, rollout):
    from safetensors.torch import load_file

    from aqa.train.grpo import GRPOConfig, train as grpo_train

    s = grpo_train(GRPOConfig(model=str(folder), sft_adapter=str(sft_run / "adapter"),
                              train_data=[str(synth_data / "train.jsonl")], output_dir=str(tmp_path / "g"),
                              rollout=rollout, batch_size=2, micro_batch_size=2, group_size=4, max_steps=1, lr=5e-2,
                              rewards=["accuracy", "format"], max_new_tokens=3, lora_r=4, lora_dropout=0.0,
                              # warm enough that the tuned model's sampled letters are not all right
                              temperature=2.0, device="cpu", seed=1))
    assert s["steps"] == 1
    log = [json.loads(x) for x in (tmp_path / "g" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1] and np.isfinite(log[0]["reward"]) and np.isfinite(log[0]["kl"])
    new = load_file(tmp_path / "g" / "adapter" / "adapter_model.safetensors")
    key = ADAPTER_KEY.get(family, "")
    assert any("lora_B" in k and key in k for k in new)
    if rollout == "choice":  # sampled letters of unequal reward: the new adapter moved
        assert any(v.abs().sum() > 0 for k, v in new.items() if "lora_B" in k and key in k)


@torch.no_grad()
def test_generation_is_the_models_own_and_ends_at_the_end_token(b):
    # Clips over a second: Qwen3-Omni's own batched forward is exact there (see its backend).
    batch = b.collate(examples(seconds=(2.3, 1.25)))
    free = b.generate_ids(batch, max_new_tokens=4)
    theirs = b.model.generate(**own(batch), max_new_tokens=4, do_sample=False,
                              pad_token_id=b.tokenizer.pad_token_id)[:, batch["input_ids"].shape[1]:]
    stop = b.stop_ids()
    for mine, row in zip(free, theirs.tolist()):
        cut = next((i + 1 for i, t in enumerate(row) if t in stop), len(row))
        assert mine == row[:cut]
    assert free[0][0] == int(b.output_embedding()(b.hidden_states(batch)[0, -1]).argmax())
    # Pretend the first row's second token ends the turn: generation stops there, keeps it, and
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


@pytest.mark.parametrize("recipe", ["sft_lora", "grpo"])
def test_configs_carry_the_reference_values(family, recipe):
    """The reference report's Qwen2-Audio values (section 3.1), carried over as starting points."""
    from aqa.config import load_config
    from aqa.train.grpo import GRPOConfig
    from aqa.train.sft import SFTConfig

    folder, model = CONFIGS[family]
    c = load_config(SFTConfig if recipe == "sft_lora" else GRPOConfig, f"configs/{folder}/{recipe}.yaml")
    assert c.model == model and c.lora_r == 8 and c.bf16
    if recipe == "sft_lora":
        assert (c.lr, c.batch_size, c.epochs, c.spec_augment_width) == (5e-5, 32, 8.0, 27)
    else:
        assert (c.lr, c.group_size, c.eps, c.beta, c.batch_size) == (5e-6, 6, 0.2, 0.1, 40)


@pytest.fixture(scope="module")
def dev_data(synth_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("dev")
    shutil.copytree(synth_data / "wav", d / "wav")
    rows = [json.loads(x) for x in (synth_data / "dev.jsonl").read_text().splitlines()][:4]
    (d / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "dev.jsonl"


def test_the_commands_work_for_every_family_and_ensemble_across_them(tiny_family, dev_data, tmp_path):
    """`aqa eval` (scores under two option orders, generation, silent audio) and `aqa export`
    on each family, then `aqa ensemble fit/apply` over all of them and `aqa report` of the lot."""
    from aqa.cli import main

    dirs = []
    for name in FAMILIES:
        out = tmp_path / name
        assert main(["eval", "--model", str(tiny_family(name)), "--data", str(dev_data), "-o", str(out),
                     "--shuffles", "2", "--batch-size", "3"]) == 0
        rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
        assert len(rows) == 4 and all(abs(sum(r["probs"]) - 1) < 1e-5 and len(r["shuffle_preds"]) == 2 for r in rows)
        dirs.append(str(out))
        assert main(["export", "dcase2025", str(out), "-o", str(tmp_path / f"{name}.csv")]) == 0
        assert len((tmp_path / f"{name}.csv").read_text().splitlines()) == 1 + 4
        gen = tmp_path / f"{name}-generate"
        assert main(["eval", "--model", str(tiny_family(name)), "--data", str(dev_data), "-o", str(gen),
                     "--mode", "generate", "--max-new-tokens", "2", "--limit", "2"]) == 0
        assert all("raw" in json.loads(x) for x in (gen / "predictions.jsonl").read_text().splitlines())
        silent = tmp_path / f"{name}-silence"
        assert main(["eval", "--model", str(tiny_family(name)), "--data", str(dev_data), "-o", str(silent),
                     "--audio", "silence", "--reference", str(out), "--limit", "2"]) == 0
    assert main(["ensemble", "fit", *dirs, "-o", str(tmp_path / "ens"), "--folds", "2"]) == 0
    assert main(["ensemble", "apply", str(tmp_path / "ens"), *dirs, "-o", str(tmp_path / "applied")]) == 0
    applied = [json.loads(x) for x in (tmp_path / "applied" / "predictions.jsonl").read_text().splitlines()]
    assert len(applied) == 4
    assert main(["report", *dirs, str(tmp_path / "applied"), "-o", str(tmp_path / "report")]) == 0
