"""The recipe skeleton: common config fields declared once, recipe defaults that keep their
help, and a command line that fails loudly on a broken command module."""

import dataclasses

import pytest

from aqa.config import recipe_config, recipe_default
from aqa.train.grpo import GRPOConfig
from aqa.train.recipe import TrainConfig, lr_lambda
from aqa.train.sft import SFTConfig


def helps(cls):
    return {f.name: f.metadata.get("help") for f in dataclasses.fields(cls)}


def test_recipes_share_the_common_fields_and_their_help():
    common = helps(TrainConfig)
    for cls in (SFTConfig, GRPOConfig):
        mine = helps(cls)
        assert {k: mine[k] for k in common} == common
        assert all(mine.values()), [k for k, v in mine.items() if not v]


def test_recipe_defaults_differ_where_the_report_says():
    assert (SFTConfig().lr, GRPOConfig().lr) == (5e-5, 5e-6)
    assert (SFTConfig().epochs, GRPOConfig().epochs) == (8.0, 3.0)
    assert GRPOConfig().lora_dropout == 0.0 and GRPOConfig().schedule == "constant"
    assert TrainConfig().lr == 5e-5  # the base is untouched


def test_recipe_default_needs_a_base_field():
    with pytest.raises(TypeError, match="names no field"):
        @recipe_config
        class Bad(TrainConfig):
            no_such_key: int = recipe_default(3)


def test_a_recipe_config_checks_the_common_rules_too():
    with pytest.raises(ValueError, match="schedule"):
        GRPOConfig(schedule="exponential")
    with pytest.raises(ValueError, match="micro_batch_size"):
        SFTConfig(batch_size=2, micro_batch_size=4)


def test_sft_accumulation_splits_the_global_batch():
    cfg = SFTConfig(batch_size=32, micro_batch_size=4)
    assert cfg.accumulation(1) == 8 and cfg.accumulation(2) == 4
    with pytest.raises(ValueError, match="not a multiple"):
        cfg.accumulation(3)


def test_lr_schedule_warms_up_then_decays():
    f = lr_lambda(2, 10, "cosine")
    assert [f(0), f(1)] == [0.5, 1.0] and f(2) == 1.0 and f(10) == pytest.approx(0.0)
    assert lr_lambda(0, 10, "linear")(5) == 0.5 and lr_lambda(0, 10, "constant")(9) == 1.0


def test_a_command_module_that_does_not_import_fails_loudly(monkeypatch):
    from aqa import cli

    monkeypatch.setattr(cli, "DATA_COMMANDS", cli.DATA_COMMANDS + ("aqa.data.no_such_command",))
    with pytest.raises(ModuleNotFoundError, match="no_such_command"):
        cli.build_parser()


def test_every_command_registers():
    from aqa.cli import build_parser

    text = build_parser().format_help()
    for name in ("data", "model", "sft", "grpo", "eval", "report", "ensemble", "export", "demo"):
        assert name in text


@pytest.mark.parametrize("override", ["max_steps=-3", "epochs=0", "lora_r=0", "lr=-1", "batch_size=0"])
def test_out_of_range_settings_are_config_errors(override):
    from aqa.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="out of range: " + override.split("=")[0]):
        load_config(SFTConfig, None, [override, "model=m", "train_data=[x.jsonl]"])
    assert load_config(SFTConfig, None, ["epochs=0", "max_steps=5"]).max_steps == 5  # steps given: epochs unused


def test_a_range_error_blames_where_its_key_came_from(tmp_path):
    from aqa.config import ConfigError, load_config

    yml = tmp_path / "sft.yaml"
    yml.write_text("model: m\ntrain_data: [x.jsonl]\nlr: -1\n")
    with pytest.raises(ConfigError, match=r"sft.yaml: out of range: lr=-1"):
        load_config(SFTConfig, yml)
    yml.write_text("model: m\ntrain_data: [x.jsonl]\n")
    with pytest.raises(ConfigError, match=r"^command-line override: out of range: lr=-1"):
        load_config(SFTConfig, yml, ["lr=-1"])


def test_resume_with_changed_settings_is_refused(tiny_model, synth_data, tmp_path):
    """A finished (or interrupted) run resumes only with the settings it started with; how it
    runs (stop_after, device, workers) may change."""
    from aqa.io import UserError
    from aqa.train.sft import train

    kw = dict(model=str(tiny_model), train_data=[str(synth_data / "train.jsonl")], output_dir=str(tmp_path / "r"),
              batch_size=4, micro_batch_size=4, max_steps=2, lr=1e-3, lora_r=2, device="cpu", num_workers=0)
    train(SFTConfig(**kw, stop_after=1))
    with pytest.raises(UserError, match=r"config.yaml: this run was started with other settings \(lr: 0.001 -> 0.01"):
        train(SFTConfig(**{**kw, "lr": 1e-2}))
    assert train(SFTConfig(**kw))["steps"] == 2  # same settings: resumes
    assert "lr: 0.001" in (tmp_path / "r" / "config.yaml").read_text()
    train(SFTConfig(**{**kw, "lr": 1e-2, "resume": "never", "output_dir": str(tmp_path / "r")}))  # asked: start over
    # The adapter and checkpoint files keep ordinary modes (save_pretrained and save_file write 0600).
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    run = tmp_path / "r"
    for f in [run / "adapter" / "adapter_model.safetensors", *run.glob("checkpoints/*/adapter.safetensors")]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f
