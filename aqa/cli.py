"""The `aqa` command. Each feature module registers its own subcommand through
`register(subparsers)` and keeps heavy imports (torch, transformers) inside the function it
runs, so `aqa data ...` starts fast."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

#: Modules that add a subcommand under `aqa data`.
DATA_COMMANDS = (
    "aqa.data.dcase2025",
    "aqa.data.mmau",
    "aqa.data.audioset_strong",
    "aqa.data.synth",
    "aqa.data.check",
    "aqa.data.interchange",
    "aqa.eval.filter",
    "aqa.data.dcase2026",
)
#: Modules that add a subcommand under `aqa model`.
MODEL_COMMANDS = (
    "aqa.models.tiny",
    "aqa.models.tiny_kimi_audio",
    "aqa.train.pretrain",
)
#: Modules that add a top-level subcommand.
TOP_COMMANDS = (
    "aqa.train.sft",
    "aqa.train.grpo",
    "aqa.eval.run",
    "aqa.eval.report",
    "aqa.ensemble",
    "aqa.export",
    "aqa.demo",
)


def _register_all(modules, subparsers) -> None:
    # A command module that fails to import is a bug to see at once, never a command that
    # silently goes missing from --help.
    for name in modules:
        importlib.import_module(name).register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aqa", description="Adapt audio-language models to multiple-choice audio question answering: "
                                "data, LoRA SFT, GRPO, evaluation, ensembles, reports.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="convert, synthesise, check and export AQA data")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    _register_all(DATA_COMMANDS, data_sub)
    model = sub.add_parser("model", help="build tiny models offline, pretrain them")
    _register_all(MODEL_COMMANDS, model.add_subparsers(dest="model_command", required=True))
    _register_all(TOP_COMMANDS, sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # peft asks transformers for a deprecated property at every adapter load: noise for users.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
