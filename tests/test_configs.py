"""Every recipe config shipped under configs/ launches on 1, 2, 4 and 8 processes, and on the
process count of every accelerate config shipped under configs/accelerate/, with the reference
report's global batch (section 3.1: 32 items per SFT step, 40 questions per GRPO step), and
what `make_accelerator` writes into DeepSpeed's config passes DeepSpeed's own batch check.

The configs are found by globbing, so a new family's folder is checked without editing this
file; a config file whose name names no known recipe fails rather than being skipped."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from aqa.config import load_config
from aqa.train.grpo import GRPOConfig
from aqa.train.recipe import deepspeed_batch
from aqa.train.sft import SFTConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
#: Recipe by the first word of the file name (sft_lora.yaml -> sft): its config class and the
#: report's global batch.
RECIPES = {"sft": (SFTConfig, 32), "grpo": (GRPOConfig, 40)}
#: Family-folder files that are no recipe config: `aqa eval` flags.
NOT_RECIPES = {"eval.yaml"}
#: Folders of configs/ that hold no family's recipes: launchers, `aqa eval --suite` files.
NOT_FAMILIES = {"accelerate", "suites"}
ACCELERATE = sorted((CONFIGS / "accelerate").glob("*.yaml"))
RECIPE_CONFIGS = sorted(p for p in CONFIGS.glob("*/*.yaml") if p.parent.name not in NOT_FAMILIES
                        and p.name not in NOT_RECIPES)
PROCESSES = sorted({1, 2, 4, 8} | {load_config_from_file(str(p)).num_processes for p in ACCELERATE})


def name(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def test_the_glob_finds_the_shipped_configs():
    assert ACCELERATE and 8 in PROCESSES
    families = {p.parent.name for p in RECIPE_CONFIGS}
    assert {"qwen2_audio", "kimi_audio"} <= families
    for family in families:
        assert {p.name for p in RECIPE_CONFIGS if p.parent.name == family} >= {"sft_lora.yaml", "grpo.yaml"}, family


@pytest.mark.parametrize("path", RECIPE_CONFIGS, ids=name)
def test_every_recipe_config_divides_on_every_process_count(path):
    recipe = path.stem.split("_")[0]
    assert recipe in RECIPES, f"{name(path)}: no recipe named {recipe!r}; add it to RECIPES or NOT_RECIPES"
    cls, global_batch = RECIPES[recipe]
    cfg = load_config(cls, path)
    assert cfg.batch_size == global_batch, f"{name(path)}: the reference report's step is {global_batch}"
    for n in PROCESSES:
        try:
            accum = cfg.accumulation(n)
        except ValueError as e:
            pytest.fail(f"{name(path)} on {n} process(es): {e}")
        assert cfg.batch_size == cfg.micro_batch_size * accum * n
        # DeepSpeed refuses a config unless train_batch_size == train_micro_batch_size_per_gpu x
        # gradient_accumulation_steps x world_size, each > 0 (DeepSpeedConfig._batch_assertion in
        # deepspeed/runtime/config.py, microsoft/DeepSpeed; world_size counts the data-parallel
        # processes, all of them under ZeRO-2). DeepSpeed is an extra, not installed for the tests.
        ds = deepspeed_batch(cfg, n)
        micro, steps, total = (ds[k] for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                                                "train_batch_size"))
        assert min(micro, steps, total) > 0 and total == micro * steps * n, (name(path), n, ds)
        assert (micro, steps, total) == (cfg.micro_batch_size, accum, global_batch)
