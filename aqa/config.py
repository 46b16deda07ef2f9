"""Typed configs: dataclasses loaded from YAML, then `key=value` overrides from the command
line. A key that the dataclass lacks is an error naming the key, never silently ignored.
Each field carries its one-line doc in `metadata["help"]` (see `doc`)."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def doc(default: Any = dataclasses.MISSING, help: str = "") -> Any:
    """A dataclass field with its one-line documentation."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


_INHERIT = "(the base config's help)"


def recipe_default(default: Any) -> Any:
    """Redeclare a base config's field only to change its default (see `recipe_config`)."""
    return doc(default, help=_INHERIT)


def recipe_config(cls: type[T]) -> type[T]:
    """`@dataclass` for a config that subclasses another: fields redeclared with
    `recipe_default` keep the base field's help text, so each help is written once."""
    cls = dataclasses.dataclass(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("help") != _INHERIT:
            continue
        base = next((b.__dataclass_fields__[f.name] for b in cls.__mro__[1:]
                     if f.name in getattr(b, "__dataclass_fields__", {})), None)
        if base is None:
            raise TypeError(f"{cls.__name__}.{f.name}: recipe_default names no field of a base config")
        f.metadata = types.MappingProxyType({**f.metadata, "help": base.metadata.get("help", "")})
    return cls


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}': {value!r} fits none of {tp}")
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(v, inner, key) for v in value]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        try:
            if isinstance(value, bool):
                raise ValueError
            f = float(value)
            if f != int(f):
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}") from None
        return int(f)
    if tp is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return "" if value is None else str(value)
    return value


#: How an error names a value given as `key=value` on the command line rather than in a file.
OVERRIDE = "command-line override"


def from_dict(cls: type[T], data: dict[str, Any], *, source: str = "config",
              sources: dict[str, str] | None = None) -> T:
    """Build `cls` from a mapping, coercing each value to its field's type. An error names
    where the key came from: `sources[key]` when given, else `source`."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    where = sources or {}
    unknown = sorted(set(data) - set(names))
    if unknown:
        # Grouped by origin, so a key mistyped on the command line does not blame the YAML file.
        by_origin: dict[str, list[str]] = {}
        for k in unknown:
            by_origin.setdefault(where.get(k, source), []).append(repr(k))
        origin, keys = next(iter(by_origin.items()))
        raise ConfigError(f"{origin}: unknown config key(s) {', '.join(keys)} "
                          f"for {cls.__name__}; known keys: {', '.join(names)}")
    kwargs = {}
    for k, v in data.items():
        try:
            kwargs[k] = _coerce(v, hints[k], k)
        except ConfigError as e:
            raise ConfigError(f"{where.get(k, source)}: {e}") from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        # A range check names its keys ("lr=-1"): blame where those keys came from.
        named = {where.get(k, source) for k in data if re.search(rf"\b{re.escape(k)}=", str(e))}
        raise ConfigError(f"{named.pop() if len(named) == 1 else source}: {e}") from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings; values are read as YAML (`lr=1e-4`, `train_data=[a.jsonl,b.jsonl]`)."""
    out = {}
    for it in items:
        if "=" not in it:
            raise ConfigError(f"{OVERRIDE} {it!r} is not key=value")
        k, v = it.split("=", 1)
        out[k.strip()] = yaml.safe_load(v) if v.strip() else ""
    return out


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A config file's keys and values; a ConfigError naming the file when it is not YAML or
    not a mapping."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a valid YAML file ({' '.join(str(e).split())})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys to values")
    return loaded


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    data: dict[str, Any] = {}
    if path is not None:
        data.update(read_yaml_mapping(path))
    cli = parse_overrides(overrides or [])
    data.update(cli)
    return from_dict(cls, data, source=str(path) if path else OVERRIDE,
                     sources={k: OVERRIDE for k in cli})


def dump_yaml(cfg: Any) -> str:
    """The resolved config as YAML, each key preceded by its documentation."""
    lines = []
    for f in dataclasses.fields(cfg):
        if f.metadata.get("help"):
            lines.append(f"# {f.metadata['help']}")
        lines.append(yaml.safe_dump({f.name: getattr(cfg, f.name)}, sort_keys=False).rstrip())
    return "\n".join(lines) + "\n"


def describe(cls: type) -> str:
    """One entry per key: name, default, documentation (for `--help-config`)."""
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        rows.append(f"  {f.name} = {default!r}\n      {f.metadata.get('help', '')}")
    return "\n".join(rows)


def flags_from_yaml(path: str | Path, options: dict[str, Any], command: str) -> list[str]:
    """The command-line flags a YAML file of `key: value` pairs stands for (`aqa eval --config`):
    `batch_size: 16` is `--batch-size 16`, `compile: true` is `--compile` (false: nothing).
    `options` maps a command's option strings to their argparse actions; a key that is not one
    of them is an error naming the file."""
    loaded = read_yaml_mapping(path)
    options = {o: a for o, a in options.items() if o.startswith("--") and o not in ("--config", "--help")}
    known = sorted({o[2:].replace("-", "_") for o in options})
    flags: list[str] = []
    for key, value in loaded.items():
        flag = f"--{str(key).replace('_', '-')}"
        if flag not in options:
            raise ConfigError(f"{path}: unknown key {key!r} for {command}; known keys: {', '.join(known)}")
        if options[flag].nargs == 0:  # a switch
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: {key} is a switch: true or false, got {value!r}")
            flags += [flag] if value else []
        elif value is not None:
            flags += [flag, str(value)]
    return flags
