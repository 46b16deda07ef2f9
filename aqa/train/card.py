"""The model card (README.md) of a saved adapter, in the Hugging Face format: YAML front matter
(base_model, library_name: peft, tags, datasets), then the run's config, its last train_log
row and, when `card_eval` names an eval folder, that folder's metrics.json.

What stays out: the card is built from config.yaml, train_log.jsonl and metrics.json, none of
which holds a secret (trackers read their keys from the environment), and the home folder is
written `~`, so that a card published with its adapter does not tell whose machine made it.
Paths outside the home folder are kept: they say which data the run read."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

TAGS = ["aqa", "lora", "audio-question-answering"]


def base_model_name(model: str) -> str:
    """The Hub id `model` is, or stands for: a Hub cache snapshot's id, else a local folder's
    name (its full path would name the machine)."""
    m = re.search(r"models--([^/]+)--([^/]+)/snapshots/", model.replace("\\", "/"))
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    return Path(model).name if Path(model).exists() else model


def without_home(text: str) -> str:
    home = str(Path.home())
    return text.replace(home + "/", "~/") if len(home) > 1 else text


def last_row(log_file: Path) -> dict:
    rows = [line for line in log_file.read_text().splitlines() if line.strip()] if log_file.is_file() else []
    return json.loads(rows[-1]) if rows else {}


def _table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join("" if v is None else str(v) for v in r) + " |" for r in rows)]


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def eval_section(eval_dir: Path) -> list[str]:
    m = json.loads((eval_dir / "metrics.json").read_text())
    rows = [[name, s.get("n"), _pct(s.get("accuracy")), " - ".join(_pct(c) for c in s.get("ci95") or [])]
            for name, s in m.get("subsets", {}).items()]
    a, w = m.get("arithmetic_mean", {}), m.get("weighted_mean", {})
    rows.append(["arithmetic mean", a.get("n_subsets"), _pct(a.get("value")),
                 " - ".join(_pct(c) for c in a.get("ci95") or [])])
    rows.append(["weighted mean", w.get("n"), _pct(w.get("value")), " - ".join(_pct(c) for c in w.get("ci95") or [])])
    return [f"## Evaluation: `{eval_dir.name}`", "",
            f"From `{without_home(str(eval_dir))}/metrics.json` (accuracy in %, 95% bootstrap interval).", "",
            *_table(["subset", "n", "accuracy", "95% CI"], rows), ""]


def model_card(*, recipe: str, model: str, train_data: list[str], config_yaml: str, log_file: Path,
               merged: list[str] = (), eval_dir: str = "") -> str:
    """The README.md text of an adapter trained by `recipe` (sft, grpo) on `model`."""
    from importlib.metadata import PackageNotFoundError, version

    base = base_model_name(model)
    meta = {"base_model": base, "library_name": "peft", "tags": [*TAGS[:2], recipe, *TAGS[2:]],
            "datasets": [Path(p).name for p in train_data]}
    row = last_row(log_file)
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
             f"# LoRA {recipe.upper()} adapter of {base}", "",
             f"Trained with aqa (`aqa {recipe}`) for multiple-choice audio question answering. Load it with "
             f"`aqa eval --adapter FOLDER`, or with peft's `PeftModel.from_pretrained` on {base}."]
    if merged:
        lines += ["", "Trained on top of these adapters, merged into the base weights first, in order "
                      "(aqa_merge_first.json): " + ", ".join(f"`{without_home(m)}`" for m in merged) + "."]
    lines += ["", "## Training config", "", "The run's config.yaml:", "", "```yaml",
              without_home(config_yaml).rstrip(), "```", ""]
    if row:
        lines += [f"## Final training metrics (step {row.get('step')})", "", "The last row of train_log.jsonl:", "",
                  *_table(["metric", "value"], [[k, v] for k, v in row.items() if k != "step"]), ""]
    if eval_dir:
        lines += eval_section(Path(eval_dir))
    versions = []
    for pkg in ("aqa", "peft", "transformers", "torch"):
        try:
            versions.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            continue
    lines += ["## Framework versions", "", ", ".join(versions), ""]
    return "\n".join(lines)
