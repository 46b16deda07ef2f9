"""The `aqa` command. Each feature module registers its own subcommand through
`register(subparsers)` and keeps heavy imports (torch, transformers) inside the function it
runs, so `aqa data ...` starts fast."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path

#: Modules that add a subcommand under `aqa data`.
DATA_COMMANDS = (
    "aqa.data.sources.dcase2025",
    "aqa.data.sources.mmau",
    "aqa.data.sources.audioset_strong",
    "aqa.data.synth",
    "aqa.data.check",
    "aqa.data.sources.interchange",
    "aqa.eval.filter",
    "aqa.data.sources.dcase2026",
    "aqa.data.sources.mmar",
    "aqa.data.sources.mmau_pro",
    "aqa.data.sources.airbench",
    "aqa.data.sources.sakura",
)
#: Modules that add a subcommand under `aqa model`.
MODEL_COMMANDS = (
    "aqa.models.tiny",
    "aqa.models.tiny.kimi_audio",
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
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (by default: one line naming the file and the problem)")
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="convert, synthesise, check and export AQA data")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    _register_all(DATA_COMMANDS, data_sub)
    data_sub.choices["check"].set_defaults(load_model=_model_without_weights)
    model = sub.add_parser("model", help="build tiny models offline, pretrain them")
    _register_all(MODEL_COMMANDS, model.add_subparsers(dest="model_command", required=True))
    _register_all(TOP_COMMANDS, sub)
    return parser


def _model_without_weights(path: str):
    """`aqa data check --model`: the model's limits from its config and processor."""
    from aqa.models.registry import load_without_weights

    return load_without_weights(path)


#: Exit code of an input the user can fix (a missing or malformed file, a bad key).
EXIT_USER = 2
#: Exit code of a failure of the machine (a full disk, an I/O error).
EXIT_FAILURE = 1
#: OSErrors that mean a path the user gave is wrong, not that the machine failed.
_USER_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _os_message(e: OSError) -> str:
    problem = e.strerror or str(e)
    return f"{e.filename}: {problem}" if e.filename is not None else problem


def _named_folders(args: argparse.Namespace) -> list[Path]:
    """The existing folders a command was given: its arguments, `key=value` overrides and the
    values of the YAML config it names (a recipe's model and adapters live there)."""
    values: list = []
    for v in vars(args).values():
        values.extend(v if isinstance(v, list) else [v])
    config = getattr(args, "config", None)
    if isinstance(config, str) and Path(config).is_file():
        try:
            import yaml

            loaded = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
            values.extend(loaded.values() if isinstance(loaded, dict) else [])
        except Exception:  # a broken config is reported by its own error, not here
            pass
    values += [v.split("=", 1)[1] for v in values if isinstance(v, str) and "=" in v]
    return [Path(v) for v in dict.fromkeys(v for v in values if isinstance(v, (str, Path)) and v)
            if Path(v).is_dir()]


def _damaged_file(args: argparse.Namespace, suffix: str) -> tuple[Path, str] | None:
    """The first `suffix` file (.safetensors, .json) in the folders the command was given that
    does not open, and why: safetensors' and json's errors name no file."""
    for folder in _named_folders(args):
        for f in sorted(folder.glob(f"*{suffix}")):
            try:
                if suffix == ".json":
                    json.loads(f.read_text(encoding="utf-8"))
                else:
                    from safetensors import safe_open

                    with safe_open(str(f), framework="numpy"):
                        pass
            except Exception as e:  # whatever the library raises, it is this file that is bad
                return f, str(e)
    return None


def classify_error(e: BaseException, args: argparse.Namespace) -> tuple[int, str] | None:
    """(exit code, one-line message) for an error the user can act on, None for a bug (whose
    traceback must be seen). Input errors exit 2, failures of the machine exit 1."""
    from aqa.config import ConfigError
    from aqa.io import UserError

    if isinstance(e, (UserError, ConfigError)):
        return EXIT_USER, str(e)
    if isinstance(e, _USER_OS_ERRORS):
        return EXIT_USER, _os_message(e)
    if isinstance(e, OSError):
        return EXIT_FAILURE, _os_message(e)
    # safetensors_rust.SafetensorError (not importable by a stable name) and a JSONDecodeError
    # of a model's or adapter's config name no file: find the damaged one among the folders given.
    suffix = {"SafetensorError": ".safetensors", "JSONDecodeError": ".json"}.get(type(e).__name__)
    damaged = _damaged_file(args, suffix) if suffix else None
    if damaged is not None:
        f, why = damaged
        what = "weights file" if suffix == ".safetensors" else "JSON file"
        return EXIT_USER, f"{f}: corrupted or truncated {what} ({why})"
    return None


def run_parsed(args: argparse.Namespace) -> int:
    """Run a parsed command: its exit code, or the code and one line on stderr for an expected
    error (`classify_error`); `--debug` lets every error through with its traceback."""
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_went_away()
    except Exception as e:
        known = None if getattr(args, "debug", False) else classify_error(e, args)
        if known is None:
            raise
        code, message = known
        print(f"aqa: error: {' '.join(message.split())}", file=sys.stderr)
        _flush_stdout()
        return code
    _flush_stdout()
    return int(rc or 0)


def _flush_stdout() -> None:
    """Flush here, where a closed pipe can be caught, not at the interpreter's exit; the
    command's own exit code stands, since it ran to its end."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _reader_went_away()


def _reader_went_away() -> int:
    """What `aqa ... | head -1` gets once head has read its line: no error, as with any command
    whose reader stops listening (Python's docs, "Note on SIGPIPE"), and exit 0 where the command
    was stopped by it. Standard output is pointed at /dev/null, so that the interpreter's last
    flush of what is left finds nothing to fail on."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0


def expand_config_flags(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """For a command that takes its flags from a file (`aqa eval --config FILE`): FILE's flags
    put right after the command's name, so that flags on the command line, which come later,
    override them."""
    from aqa.config import flags_from_yaml

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    at = next((i for i, a in enumerate(argv) if a in sub.choices), None)
    if at is None:
        return argv
    cmd = sub.choices[argv[at]]
    if not cmd.get_default("config_flags"):
        return argv
    rest = argv[at + 1:]
    for i, a in enumerate(rest):
        path = rest[i + 1] if a == "--config" and i + 1 < len(rest) else a[9:] if a.startswith("--config=") else None
        if path is not None:
            rest = rest[:i] + rest[i + (1 if a.startswith("--config=") else 2):]
            flags = flags_from_yaml(path, cmd._option_string_actions, f"aqa {argv[at]}")
            return argv[:at + 1] + flags + rest
    return argv


def main(argv: list[str] | None = None) -> int:
    # peft asks transformers for a deprecated property at every adapter load: noise for users.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # DeepSpeed's import prints this to stdout on every machine without a GPU, through a logger it
    # makes by this name (a filter set on the logger first stays on it).
    logging.getLogger("DeepSpeed").addFilter(lambda r: not r.getMessage().startswith("Setting accelerator to CPU"))
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = expand_config_flags(parser, argv)
    except Exception as e:
        from aqa.config import ConfigError

        if not isinstance(e, (ConfigError, OSError)) or "--debug" in argv:
            raise
        print(f"aqa: error: {_os_message(e) if isinstance(e, OSError) else e}", file=sys.stderr)
        return EXIT_USER
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    return run_parsed(args)


if __name__ == "__main__":
    sys.exit(main())
