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


# --------------------------------------------------------------------------- issue 21, item 5
# What downloaders deliver and libsndfile does not read, written here by FFmpeg itself (PyAV).

def encode_with_ffmpeg(path, x: np.ndarray, sr: int, container: str, codec: str, **options) -> "Path":
    """`x` ((N,) or (N, channels) float32) encoded by FFmpeg's `codec` in `container`, to `path`."""
    import av

    planes = np.ascontiguousarray((x[:, None] if x.ndim == 1 else x).T, dtype=np.float32)
    with av.open(str(path), "w", format=container, options=options) as c:
        stream = c.add_stream(codec, rate=sr, layout="mono" if len(planes) == 1 else "stereo")
        if len(planes[0]):
            frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout=stream.layout.name)
            frame.sample_rate = sr
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    return path


def stereo_tone(seconds, sr, amp=0.3):
    x = (amp * np.sin(2 * np.pi * 440.0 * np.arange(int(seconds * sr)) / sr)).astype(np.float32)
    return np.stack([x, x], axis=1)


@pytest.mark.parametrize("name, container, codec, fmt", [
    ("clip.m4a", "mp4", "aac", "AAC"),  # AudioSet from YouTube, as downloaders save it
    ("clip.aac", "adts", "aac", "AAC"),
    ("clip.webm", "webm", "libopus", "OPUS"),
])
def test_downloaded_formats_decode_to_16k_mono_like_the_others(tmp_path, name, container, codec, fmt):
    from aqa.data.audio import header_duration

    sr = 48000 if codec == "libopus" else 44100
    path = encode_with_ffmpeg(tmp_path / name, stereo_tone(2.0, sr), sr, container, codec)
    a = load_audio(path)
    assert a.format == fmt and a.orig_sr == sr and a.channels == 2
    assert a.sr == TARGET_SR and a.samples.ndim == 1 and a.samples.dtype == np.float32
    assert a.duration == pytest.approx(2.0, abs=0.06)  # the encoder's priming samples at most
    spec = np.abs(np.fft.rfft(a.samples))
    assert np.argmax(spec) * TARGET_SR / len(a.samples) == pytest.approx(440.0, abs=2.0)
    assert float(np.abs(a.samples).max()) == pytest.approx(0.3, abs=0.03)  # mixed down as a mean, not a sum
    if container != "adts":  # ADTS states no length
        assert header_duration(path) == pytest.approx(2.0, abs=0.06)
    assert load_audio(path, max_seconds=1.0).too_long


def test_a_cut_or_damaged_m4a_is_a_clear_skip(tmp_path):
    # FFmpeg's MP4 muxer writes the index (moov) last: a file cut short has none.
    whole = encode_with_ffmpeg(tmp_path / "whole.m4a", stereo_tone(2.0, 44100), 44100, "mp4", "aac").read_bytes()
    (cut := tmp_path / "cut.m4a").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(AudioError) as ei:
        load_audio(cut)
    assert (ei.value.kind, ei.value.problem) == (
        "not-audio", "MP4/M4A file that FFmpeg cannot read (Invalid data found when processing input): damaged or "
                     "cut short")
    # A downloader's "faststart" file puts the index first: the cut shows as audio missing.
    fast = encode_with_ffmpeg(tmp_path / "fast.m4a", stereo_tone(2.0, 44100), 44100, "mp4", "aac",
                              movflags="faststart").read_bytes()
    (cut_fast := tmp_path / "cut_fast.m4a").write_bytes(fast[:len(fast) // 2])
    with pytest.raises(AudioError) as ei:
        load_audio(cut_fast)
    assert ei.value.kind == "truncated" and ei.value.problem.startswith(
        "truncated: MP4/M4A header declares 2.02 s, only 0.9")
    (junk := tmp_path / "junk.m4a").write_bytes(whole[:32] + b"\x00" * 2000)
    with pytest.raises(AudioError, match="junk.m4a: MP4/M4A file that FFmpeg cannot read"):
        load_audio(junk)
    # The checks every file gets.
    silent = encode_with_ffmpeg(tmp_path / "silent.m4a", np.zeros(44100, np.float32), 44100, "mp4", "aac")
    with pytest.raises(AudioError) as ei:
        load_audio(silent)
    assert ei.value.kind == "silent"


def test_text_is_still_not_audio_whatever_its_first_bytes(tmp_path):
    """Only the containers named by their first bytes go to FFmpeg, whose demuxer is forced:
    text, even a playlist FFmpeg would follow, is not audio."""
    (m3u := tmp_path / "list.m4a").write_text(f"#EXTM3U\n#EXTINF:1,\nfile://{tmp_path / 'whole.wav'}\n")
    with pytest.raises(AudioError) as ei:
        load_audio(m3u)
    assert ei.value.kind == "not-audio" and ei.value.problem.startswith("not a decodable audio file (")


def test_audioset_audio_is_found_as_downloaders_name_it(tmp_path):
    from aqa.data.events import find_audio

    encode_with_ffmpeg(tmp_path / "Y0abc_30000.m4a", stereo_tone(1.0, 44100), 44100, "mp4", "aac")
    assert find_audio(tmp_path, "Y0abc_30000") == tmp_path / "Y0abc_30000.m4a"


def test_an_m4a_clip_is_evaluated_and_checked_not_skipped(tiny_model, tmp_path):
    import json

    from aqa.cli import main

    encode_with_ffmpeg(tmp_path / "clip.m4a", stereo_tone(1.5, 44100), 44100, "mp4", "aac")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "r1", "audio": "clip.m4a", "question": "Q?", "choices": ["x", "y"],
                                "answer": 0, "subset": "s", "split": "dev"}) + "\n")
    assert main(["data", "check", str(data)]) == 0
    assert main(["eval", "--model", str(tiny_model), "--data", str(data), "-o", str(tmp_path / "ev"),
                 "--device", "cpu"]) == 0
    assert not (tmp_path / "ev" / "skipped.jsonl").is_file() or not (tmp_path / "ev" / "skipped.jsonl").read_text()
    assert [json.loads(x)["id"] for x in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()] == ["r1"]
