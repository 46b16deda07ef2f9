"""Files aqa writes get the mode an ordinary write gets under the umask (0644 under 022), not
the private 0600 that safetensors' and transformers' temporary files leave (issue 16, item 11)."""

import os
import stat

import pytest

from aqa.io import ordinary_modes


def expected_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def private(folder):
    return sorted(str(f.relative_to(folder)) for f in folder.rglob("*")
                  if f.is_file() and stat.S_IMODE(f.stat().st_mode) != expected_mode())


def test_synthetic_wavs_and_data_files(synth_data):
    assert private(synth_data) == []


def test_tiny_qwen2_audio_folder(tiny_model):
    assert (tiny_model / "model.safetensors").is_file()
    assert private(tiny_model) == []


def test_tiny_kimi_audio_folder(tmp_path):
    from aqa.models.tiny.kimi_audio import build_tiny_kimi

    out = build_tiny_kimi(tmp_path / "kimi")
    assert (out / "model.safetensors").is_file() and (out / "glm-4-voice-tokenizer" / "model.safetensors").is_file()
    assert private(out) == []


def test_ordinary_modes_leaves_other_modes_alone(tmp_path):
    (tmp_path / "sub").mkdir()
    a, b, c = tmp_path / "sub" / "a.safetensors", tmp_path / "b.sh", tmp_path / "c"
    for f, mode in ((a, 0o600), (b, 0o755), (c, 0o640)):
        f.write_bytes(b"x")
        f.chmod(mode)
    ordinary_modes(tmp_path)
    assert [stat.S_IMODE(f.stat().st_mode) for f in (a, b, c)] == [expected_mode(), 0o755, 0o640]


@pytest.mark.parametrize("family", ["qwen2.5-omni", "audio-flamingo3", "voxtral"])
def test_tiny_chat_family_folders(tiny_family, family):
    out = tiny_family(family)
    assert any(out.glob("*.safetensors")) and private(out) == []
