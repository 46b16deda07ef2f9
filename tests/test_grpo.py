"""GRPO end to end on the tiny model: reward rises, only the new adapter moves, exact resume,
both rollout modes."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from aqa.train.grpo import GRPOConfig, train as grpo_train


@pytest.fixture(scope="module")
def always_same(tiny_model, sft_adapter, synth_data, tmp_path_factory):
    """Questions whose answer always sits at the position the SFT model likes least, shown
    unshuffled: a policy earns reward by learning to name that position, which a few steps of
    GRPO must find."""
    from aqa.models.registry import load_backend
    
    rows = [json.loads(x) for x in (synth_data / "train.jsonl").read_text().splitlines()]
    rows = [r for r in rows if len(r["choices"]) == 4]
    b = load_backend(str(tiny_model), adapter=str(sft_adapter))
    with torch.no_grad():
        probs = torch.softmax(b.option_logits(b.collate([example(r, synth_data) for r in rows[:8]]), [4] * 8), -1)
    target = int(probs.mean(0).argmin())
    for r in rows:
        c = r["choices"]
        c.insert(target, c.pop(r["answer"]))
        r["answer"] = target
    d = tmp_path_factory.mktemp("same")
    shutil.copytree(synth_data / "wav", d / "wav")  # a link out of the folder would be refused
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "train.jsonl"


def example(row, root):
    from aqa.data.audio import load_audio
    from aqa.models.base import Example
    from aqa.prompts import question_text

    return Example(load_audio(root / row["audio"]).samples, question_text(row["question"], row["choices"]))


def cfg(tiny_model, sft_adapter, data, out, **kw):
    base = dict(model=str(tiny_model), sft_adapter=str(sft_adapter), train_data=[str(data)], output_dir=str(out),
                batch_size=8, micro_batch_size=4, max_steps=3, lr=1e-3, device="cpu", seed=2, lora_r=4)
    base.update(kw)
    return GRPOConfig(**base)


def log(run):
    return [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]


def test_choice_rollouts_raise_the_reward(tiny_model, sft_adapter, always_same, tmp_path):
    run = tmp_path / "g"
    grpo_train(cfg(tiny_model, sft_adapter, always_same, run, max_steps=12, lr=2e-2, shuffle_options=False,
                   beta=0.0, batch_size=8, micro_batch_size=8))
    rows = log(run)
    first, last = sum(r["reward"] for r in rows[:3]) / 3, sum(r["reward"] for r in rows[-3:]) / 3
    assert last > first + 0.3, (first, last)
    assert {"reward", "accuracy", "kl", "clip_fraction", "entropy"} <= rows[0].keys()


def test_only_the_new_adapter_moves_and_reference_is_sft(tiny_model, sft_adapter, synth_data, tmp_path):
    from peft import PeftModel
    from transformers import Qwen2AudioForConditionalGeneration

    run = tmp_path / "g"
    grpo_train(cfg(tiny_model, sft_adapter, synth_data / "train.jsonl", run, lr=5e-2))
    new = load_file(run / "adapter" / "adapter_model.safetensors")
    assert all("lora_" in k for k in new) and any(v.abs().sum() > 0 for k, v in new.items() if "lora_B" in k)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    sft = PeftModel.from_pretrained(Qwen2AudioForConditionalGeneration.from_pretrained(tiny_model), sft_adapter)
    merged = PeftModel.from_pretrained(Qwen2AudioForConditionalGeneration.from_pretrained(tiny_model),
                                       sft_adapter).merge_and_unload()
    policy = PeftModel.from_pretrained(merged, run / "adapter")
    with torch.no_grad():
        ref = sft(input_ids=ids).logits
        with policy.disable_adapter():
            assert torch.allclose(policy(input_ids=ids).logits, ref, atol=1e-5)
        assert not torch.allclose(policy(input_ids=ids).logits, ref, atol=1e-5)
    assert load_file(sft_adapter / "adapter_model.safetensors").keys() == new.keys()
    # The saved adapter names the SFT adapter under it, so loading it alone gives the policy.
    from aqa.models.registry import load_backend

    b = load_backend(str(tiny_model), adapter=str(run / "adapter"))
    with torch.no_grad():
        assert torch.allclose(b.model(input_ids=ids).logits, policy(input_ids=ids).logits, atol=1e-5)


@pytest.mark.parametrize("rollout", ["choice", "generate"])
def test_resume_is_exact(tiny_model, sft_adapter, synth_data, tmp_path, rollout):
    kw = dict(rollout=rollout, max_new_tokens=3, max_steps=4, ppo_epochs=2 if rollout == "generate" else 1)
    grpo_train(cfg(tiny_model, sft_adapter, synth_data / "train.jsonl", tmp_path / "full", **kw))
    s = grpo_train(cfg(tiny_model, sft_adapter, synth_data / "train.jsonl", tmp_path / "part", stop_after=2, **kw))
    assert s["stopped_early"]
    grpo_train(cfg(tiny_model, sft_adapter, synth_data / "train.jsonl", tmp_path / "part", **kw))
    a = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "part" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["reward"] for r in log(tmp_path / "full")] == [r["reward"] for r in log(tmp_path / "part")]


def test_choice_distribution_is_the_models_own_over_the_letters(tiny_model, synth_data):
    """choice rollouts sample from the next-token distribution at the answer position,
    renormalised over the option letters: the same numbers transformers' full logits give."""
    from aqa.models.base import BackendModule
    from aqa.models.registry import load_backend
    from aqa.train.rollouts import choice_logprobs

    b = load_backend(str(tiny_model))
    rows = [json.loads(x) for x in (synth_data / "train.jsonl").read_text().splitlines()][:3]
    batch = b.collate([example(r, synth_data) for r in rows])
    n = [len(r["choices"]) for r in rows]
    samples = torch.zeros(3, 2, dtype=torch.long)
    with torch.no_grad():
        logp, _ = choice_logprobs(BackendModule(b), batch, n, samples, temperature=1.0)
        full = b.model(**batch).logits[:, -1]  # (B, V)
    for i, k in enumerate(n):
        letters = full[i, b.letter_token_ids(k)]
        assert torch.allclose(logp.reshape(3, 2)[i, 0], torch.log_softmax(letters, -1)[0], atol=1e-5)


@pytest.mark.parametrize("kind", ["choice", "generate"])
def test_both_rollout_modes_give_the_same_typed_value(tiny_model, synth_data, kind):
    """Rollouts of either mode carry the shapes the loss needs: (Q, G) rewards, (N,)
    advantages and completions, (N, L) reference log-probs; the reward is what the
    evaluation's parser makes of each completion."""
    from aqa.models.base import BackendModule
    from aqa.models.registry import load_backend
    from aqa.prompts import parse_answer
    from aqa.train.data import QAItems
    from aqa.data.records import load_records
    from aqa.train.rollouts import Rollouts, policy_logprobs, rollout_choice, rollout_generate

    b = load_backend(str(tiny_model))
    b.add_lora(r=4, alpha=8, dropout=0.0)
    module = BackendModule(b)
    items = QAItems(load_records(synth_data / "train.jsonl"), seed=0, shuffle=True, window_s=b.audio_seconds)
    micro = [items.sample(i, 0) for i in range(3)]
    Q, G = len(micro), 4
    kw = dict(group_size=G, temperature=1.0, rewards=["accuracy", "format"], seed=5)
    r = (rollout_choice(module, b, b.without_adapter, micro, **kw) if kind == "choice"
         else rollout_generate(module, b, b.without_adapter, micro, max_new_tokens=2, **kw))
    assert isinstance(r, Rollouts) and r.kind == kind
    assert r.rewards.shape == (Q, G) and r.advantages.shape == (Q * G,) and len(r.completions) == Q * G
    assert r.ref_logp.shape[0] == Q * G and r.old_logp is None
    if kind == "choice":
        assert r.samples.shape == (Q, G) and r.ref_logp.shape == (Q * G, 1)
    for i, text in enumerate(r.completions):
        it = micro[i // G]
        shown = [it.record.choices[o] for o in it.order]
        assert r.reward_parts["accuracy"][i] == float(parse_answer(text, shown) == it.answer)
    assert r.rewards.reshape(-1).tolist() == [a + f for a, f in zip(r.reward_parts["accuracy"],
                                                                      r.reward_parts["format"])]
    logp, mask, ent = policy_logprobs(module, r, 1.0)
    # The new adapter starts at B = 0: the policy is still the reference.
    assert torch.allclose(logp * mask, r.ref_logp * mask, atol=1e-6)


def test_policy_sft_trains_the_sft_adapter_on_with_the_sft_model_as_reference(tiny_model, sft_adapter, synth_data,
                                                                              tmp_path):
    """policy=sft: no new adapter; the SFT adapter's own weights move; the reference is the SFT
    model, so the first step's KL is zero; the saved SFT adapter is untouched; resume is exact."""
    before = load_file(sft_adapter / "adapter_model.safetensors")
    kw = dict(policy="sft", lr=5e-2, max_steps=3)
    grpo_train(cfg(tiny_model, sft_adapter, synth_data / "train.jsonl", tmp_path / "full", **kw))
    after = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    assert after.keys() == before.keys()
    assert any(not torch.equal(after[k], before[k]) for k in after)
    assert all(torch.equal(v, load_file(sft_adapter / "adapter_model.safetensors")[k]) for k, v in before.items())
    rows = log(tmp_path / "full")
    assert rows[0]["kl"] < 1e-7 and rows[-1]["kl"] > rows[0]["kl"]
    grpo_train(cfg(tiny_model, sft_adapter, synth_data / "train.jsonl", tmp_path / "part", stop_after=1, **kw))
    grpo_train(cfg(tiny_model, sft_adapter, synth_data / "train.jsonl", tmp_path / "part", **kw))
    resumed = load_file(tmp_path / "part" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(after[k], resumed[k]) for k in after)
    with pytest.raises(ValueError, match="policy"):
        GRPOConfig(policy="fresh")


@pytest.mark.parametrize("family", ["qwen2-audio", "qwen3-omni"])
def test_policy_sft_reference_weights_are_read_once_and_swapped_in(family, tiny_model, sft_adapter, tiny_family,
                                                                   synth_data, tmp_path):
    """policy=sft's reference: the SFT adapter's saved weights, read once; each pass swaps them
    in and back. The folder can be gone after setup and the reference still equals a freshly
    loaded SFT model, on the same held tensors every pass; afterwards the policy has its own
    parameters back (the same objects and storage, the trained values). Qwen3-Omni's expert and
    router LoRA (peft target_parameters) swaps with the rest."""
    from aqa.models.base import BackendModule, Example
    from aqa.models.registry import load_backend

    if family == "qwen2-audio":
        model, saved = tiny_model, sft_adapter
    else:  # an SFT adapter of its own: LoRA with B moved off zero, saved as training saves it
        model, saved = tiny_family("qwen3-omni"), tmp_path / "q3-sft"
        b = load_backend(str(model), device="cpu")
        b.add_lora(r=4, alpha=8, dropout=0.0)
        with torch.no_grad():
            for n, p in b.model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.3, generator=torch.Generator().manual_seed(4))
        b.model.save_pretrained(saved)
    folder = tmp_path / "adapter"
    shutil.copytree(saved, folder)

    rows = [json.loads(x) for x in (synth_data / "train.jsonl").read_text().splitlines()][:3]
    n = [len(r["choices"]) for r in rows]

    def scores(backend):
        ex = [example(r, synth_data) for r in rows]
        m = BackendModule(backend)
        return (m(backend.collate(ex), "option_logits", n_options=n),
                m(backend.collate([Example(e.audio, e.text, "B") for e in ex], with_target=True))[0])

    policy = load_backend(str(model), device="cpu", adapter=str(folder), is_trainable=True)
    policy.model.eval()  # dropout aside: the comparison is of weights
    params = {k: p for k, p in policy.model.named_parameters() if p.requires_grad}
    assert any(".mlp.experts." in k for k in params) == (family == "qwen3-omni")
    with torch.no_grad():  # as if GRPO had moved the adapter
        for k, p in params.items():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(k))) * 0.2)
    trained = {k: (p.data_ptr(), p.detach().clone()) for k, p in params.items()}

    weights = policy.adapter_weights_from(folder)
    assert len(weights) == len(params)
    shutil.rmtree(folder)  # nothing reads it after setup
    with torch.no_grad():
        own = scores(policy)
        sft = scores(load_backend(str(model), device="cpu", adapter=str(saved)))
        held = []
        for _ in range(2):
            with weights.swapped_in():
                got = scores(policy)
                held.append([p.data_ptr() for p in params.values()])
            assert all(torch.equal(a, b) for a, b in zip(got, sft))
            assert all(torch.equal(a, b) for a, b in zip(scores(policy), own))
            for k, p in params.items():
                assert policy.model.get_parameter(k) is p and p.data_ptr() == trained[k][0], k
                assert torch.equal(p, trained[k][1]), k
    assert held[0] == held[1] and not set(held[0]) & {ptr for ptr, _ in trained.values()}
    assert not any(torch.equal(a, b) for a, b in zip(own, sft))  # the two differ, so the test can tell
    with pytest.raises(RuntimeError, match="without gradients"):
        with weights.swapped_in():
            pass
    with torch.no_grad(), weights.swapped_in(), pytest.raises(RuntimeError, match="already active"):
        with weights.swapped_in():
            pass
    assert all(torch.equal(p, trained[k][1]) for k, p in params.items())


def test_weighted_rewards_gdpo_and_dapo_log_every_completion_and_resume(tiny_model, sft_adapter, synth_data,
                                                                          tmp_path):
    """Generate rollouts with two weighted rewards, GDPO advantages and DAPO's token loss:
    completions.jsonl holds every sampled answer of every step once (also across a resume),
    each with its rewards, their weighted total and an advantage normalised over its step."""
    kw = dict(rollout="generate", rewards=["accuracy", "format", "overlong"], reward_weights=[1.0, 0.5, 1.0],
              advantage="gdpo", loss_type="dapo", group_size=3, max_new_tokens=6, overlong_buffer=0.5,
              temperature=2.0, max_steps=2, batch_size=4, micro_batch_size=2)
    grpo_train(cfg(tiny_model, sft_adapter, synth_data / "train.jsonl", tmp_path / "full", **kw))
    rows = [json.loads(x) for x in (tmp_path / "full" / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] * 12 + [2] * 12  # 4 questions x 3 answers a step
    assert all(0 <= s["accuracy"] <= 1 for s in log(tmp_path / "full"))  # a policy answering directly: its greedy letter
    for r in rows:
        w = r["rewards"]
        assert r["reward"] == pytest.approx(w["accuracy"] + 0.5 * w["format"] + w["overlong"])
        assert 1 <= r["length"] <= 6 and w["overlong"] == (0 if r["length"] <= 3 else (3 - r["length"]) / 3)
    for step in (1, 2):
        adv = torch.tensor([r["advantage"] for r in rows if r["step"] == step])
        assert abs(adv.mean()) < 1e-5 and abs(adv.std() - 1) < 1e-4  # normalised over the step
    grpo_train(cfg(tiny_model, sft_adapter, synth_data / "train.jsonl", tmp_path / "part", stop_after=1, **kw))
    grpo_train(cfg(tiny_model, sft_adapter, synth_data / "train.jsonl", tmp_path / "part", **kw))
    again = [json.loads(x) for x in (tmp_path / "part" / "completions.jsonl").read_text().splitlines()]
    assert again == rows  # the resumed run's lines once each, as the uninterrupted run wrote them
    from aqa.eval.report import build_report

    md = build_report([tmp_path / "full"], tmp_path / "report")["markdown"].read_text()
    assert "## GRPO completions (samples)" in md and rows[0]["id"] in md and "overlong" in md
    for bad, match in [(dict(reward_weights=[1.0]), "one weight per reward"), (dict(advantage="sum"), "advantage"),
                       (dict(loss_type="bnpo"), "loss_type")]:
        with pytest.raises(ValueError, match=match):
            GRPOConfig(**{**kw, **bad})


@pytest.mark.parametrize("policy", ["new", "sft"])
def test_sft_adapter_may_name_the_sft_run_folder(tiny_model, sft_adapter, synth_data, tmp_path, policy):
    """sft_adapter=RUN (the SFT run's folder, not RUN/adapter) is that run's adapter: merged under
    the new one, whose aqa_merge_first.json names it, or trained on with its saved weights as the
    reference (the first step's KL is zero)."""
    run = tmp_path / "g"
    grpo_train(cfg(tiny_model, sft_adapter.parent, synth_data / "train.jsonl", run, policy=policy, max_steps=1))
    if policy == "new":
        stack = json.loads((run / "adapter" / "aqa_merge_first.json").read_text())
        assert stack == {"merge_first": [str(sft_adapter.resolve())]}
    else:
        assert log(run)[0]["kl"] < 1e-7


def test_a_missing_sft_adapter_is_one_line_before_the_run_folder_is_made(tiny_model, synth_data, tmp_path):
    from aqa.io import UserError

    with pytest.raises(UserError, match=r"^/\S+/runs/sft: no such adapter folder"):
        grpo_train(cfg(tiny_model, tmp_path / "runs" / "sft", synth_data / "train.jsonl", tmp_path / "g"))
    assert not (tmp_path / "g").exists()
