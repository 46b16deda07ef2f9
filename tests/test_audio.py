import numpy as np
import pytest

from aqa.data.audio import TARGET_SR, AudioError, file_hash, load_audio


@pytest.mark.parametrize("key,fmt", [("wav", "WAV"), ("flac", "FLAC"), ("ogg", "OGG"), ("mp3", "MP3"),
                                     ("mp3_as_wav", "MP3")])
def test_decodes_by_content_to_16k_mono(audio_zoo, key, fmt):
    a = load_audio(audio_zoo[key])
    assert a.format == fmt
    assert a.sr == TARGET_SR and a.samples.ndim == 1 and a.samples.dtype == np.float32
    assert a.duration == pytest.approx(1.0, abs=0.06)
    assert len(a.samples) == pytest.approx(TARGET_SR, rel=0.06)


def test_resample_keeps_the_tone(audio_zoo):
    a = load_audio(audio_zoo["stereo48k"])
    assert a.orig_sr == 48000 and a.channels == 2 and a.duration == pytest.approx(2.0)
    spec = np.abs(np.fft.rfft(a.samples))
    peak_hz = np.argmax(spec) * TARGET_SR / len(a.samples)
    assert peak_hz == pytest.approx(440.0, abs=2.0)  # a real resampler keeps the pitch


def test_long_clip_flagged_truncated_or_kept(audio_zoo):
    t = load_audio(audio_zoo["long"], long_policy="truncate")
    assert t.too_long and t.duration == pytest.approx(31.0)
    assert len(t.samples) == 30 * TARGET_SR
    c = load_audio(audio_zoo["long"], long_policy="keep")
    segs = c.segments(30.0)
    assert [len(s) for s in segs] == [30 * TARGET_SR, 1 * TARGET_SR]
    assert not load_audio(audio_zoo["wav"]).too_long
    with pytest.raises(ValueError, match="long_policy"):
        load_audio(audio_zoo["long"], long_policy="chunk")


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "not-audio", "silent", "nan"])
def test_bad_files_raise_a_named_error(audio_zoo, kind):
    path = audio_zoo[f"bad_{kind}"]
    with pytest.raises(AudioError) as ei:
        load_audio(path)
    assert ei.value.kind == kind
    assert str(path) in str(ei.value)


def test_hash_is_of_content(audio_zoo, tmp_path):
    a = load_audio(audio_zoo["mp3"])
    b = load_audio(audio_zoo["mp3_as_wav"])
    assert a.sha256 == b.sha256 == file_hash(audio_zoo["mp3"])
    assert load_audio(audio_zoo["wav"]).sha256 != a.sha256
