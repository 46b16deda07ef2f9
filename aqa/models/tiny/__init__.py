"""Tiny random-weight checkpoints of every family, built offline with the real transformers
classes and processors and saved in each family's official layout, so that every test and the
demo run the real loading code on CPU: one module per family (`qwen2_audio`, `kimi_audio`,
`omni` for the two Qwen-Omni thinkers, `audio_flamingo3`, `voxtral`, `moss_audio`) over the shared
pieces in `builder` (sizes, a trained byte-level BPE, the `aqa model` command). Here: the
families by their `aqa model tiny --family` name, and that command."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

#: `aqa model tiny --family NAME`: each family's builder and spec class ("module:name").
FAMILIES = {
    "qwen2-audio": ("aqa.models.tiny.qwen2_audio:build_tiny", "aqa.models.tiny.qwen2_audio:TinySpec"),
    "qwen2.5-omni": ("aqa.models.tiny.omni:build_tiny_qwen2_5_omni", "aqa.models.tiny.omni:TinyQwen25OmniSpec"),
    "qwen3-omni": ("aqa.models.tiny.omni:build_tiny_qwen3_omni", "aqa.models.tiny.omni:TinyQwen3OmniSpec"),
    "qwen3-omni-thinking": ("aqa.models.tiny.omni:build_tiny_qwen3_omni_thinking",
                            "aqa.models.tiny.omni:TinyQwen3OmniSpec"),
    "audio-flamingo3": ("aqa.models.tiny.audio_flamingo3:build_tiny_audio_flamingo3",
                        "aqa.models.tiny.audio_flamingo3:TinyAudioFlamingo3Spec"),
    "voxtral": ("aqa.models.tiny.voxtral:build_tiny_voxtral", "aqa.models.tiny.voxtral:TinyVoxtralSpec"),
    "moss-audio": ("aqa.models.tiny.moss_audio:build_tiny_moss_audio",
                   "aqa.models.tiny.moss_audio:TinyMossAudioSpec"),
}


def _resolve(ref: str):
    import importlib

    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def build_tiny_family(family: str, out_dir: str | Path, corpus: list[str] | None = None, **sizes) -> Path:
    """Build a tiny model of `family` (a FAMILIES key); `sizes` are spec fields, and a size
    this family's spec lacks is ignored (one set of sizes serves every family)."""
    if family not in FAMILIES:
        raise ValueError(f"no tiny builder for family {family!r} (have: {', '.join(FAMILIES)})")
    build, spec_cls = (_resolve(r) for r in FAMILIES[family])
    fields = asdict(spec_cls())
    return build(out_dir, spec_cls(**{k: v for k, v in sizes.items() if k in fields}), corpus)


def register(msub: argparse._SubParsersAction) -> None:
    """`aqa model tiny [--family NAME]` (Qwen2-Audio unless told otherwise)."""
    from aqa.models.tiny.builder import add_builder_command, corpus_from_records
    from aqa.models.tiny.qwen2_audio import TinySpec, build_tiny

    add_builder_command(msub, "tiny", "build a random-weight audio-language model and processor offline "
                        "(Qwen2-Audio unless --family)", TinySpec, build_tiny,
                        "config.json, model.safetensors, processor and tokenizer files")
    t = msub.choices["tiny"]
    t.add_argument("--family", choices=list(FAMILIES), default="qwen2-audio", help="model family to build")
    # One option per size field of any family; a field several families have means one thing
    # and has one default, so the command line reads the same for all of them.
    defaults = asdict(TinySpec())
    for family, (_, spec_ref) in FAMILIES.items():
        for f, default in asdict(_resolve(spec_ref)()).items():
            if f in defaults:
                if defaults[f] != default:
                    raise AssertionError(f"tiny {family}: {f} defaults to {default}, another family to {defaults[f]}")
                continue
            defaults[f] = default
            t.add_argument(f"--{f.replace('_', '-')}", type=type(default), default=default, help=f"({family})")

    def run(args) -> int:
        build, spec_cls = (_resolve(r) for r in FAMILIES[args.family])
        fields = asdict(spec_cls())
        stray = [f for f, d in defaults.items() if f not in fields and getattr(args, f) != d]
        if stray:
            t.error(f"--family {args.family} has no {', '.join('--' + f.replace('_', '-') for f in stray)}")
        spec = spec_cls(**{f: getattr(args, f) for f in fields})
        corpus = [line for c in args.corpus for line in corpus_from_records(c)]
        out = build(args.output, spec, corpus)
        print(f"wrote {out}/ (config.json, model.safetensors, processor and tokenizer files)")
        return 0

    t.set_defaults(func=run)
