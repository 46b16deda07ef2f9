"""Audio decoding for every command: by content (libsndfile sniffs the header, so MP3 bytes
in a file named `.wav` decode as MP3), mixed down to mono, resampled to 16 kHz with soxr.
What libsndfile does not read and downloaders deliver (AAC in MP4/M4A, as YouTube's audio
for AudioSet comes; ADTS AAC; Opus or Vorbis in WebM/Matroska) is decoded by FFmpeg through
PyAV, the container named by its first bytes.

Every problem a real dataset has (missing, empty, truncated, not audio, silent, NaN) raises
`AudioError`, which names the file and the problem; callers report it and skip the item.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

#: The models' sampling rate (Whisper features).
TARGET_SR = 16000
#: Qwen2-Audio listens to at most 30 s (Whisper's window).
MODEL_WINDOW_S = 30.0
#: Peak amplitude under which a clip counts as silent (about -120 dBFS).
SILENCE_PEAK = 1e-6
LONG_POLICIES = ("truncate", "keep")


class AudioError(Exception):
    """A file that cannot be used as audio. `kind` is one of: missing, empty, not-audio,
    truncated, silent, nan, bad-rate."""

    def __init__(self, path: str | os.PathLike, kind: str, problem: str):
        self.path, self.kind, self.problem = str(path), kind, problem
        super().__init__(f"{path}: {problem}")

    def to_dict(self) -> dict:
        return {"file": self.path, "kind": self.kind, "problem": self.problem}


@dataclass
class Audio:
    samples: np.ndarray  # (N,) float32 mono at `sr`; truncated to the window when policy is truncate
    sr: int
    duration: float  # seconds of the file as decoded, before any truncation
    orig_sr: int
    channels: int
    format: str  # what the content is (libsndfile's name), not what the extension says
    sha256: str  # of the file's bytes
    too_long: bool  # longer than the window it was loaded for

    def segments(self, seconds: float = MODEL_WINDOW_S) -> list[np.ndarray]:
        """The samples cut into consecutive pieces of at most `seconds`."""
        n = max(1, int(round(seconds * self.sr)))
        return [self.samples[i:i + n] for i in range(0, max(len(self.samples), 1), n)]


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_hash(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def header_duration(path: str | os.PathLike) -> float:
    """Seconds of audio as the file's header states them, without decoding; 0 when the header
    cannot be read (decoding the file then reports why)."""
    try:
        info = sf.info(str(path))
        return info.frames / info.samplerate
    except Exception:  # noqa: BLE001 - any unreadable header
        pass
    try:
        with open(path, "rb") as fh:
            container = ffmpeg_container(fh.read(16))
        if container is None:
            return 0.0
        import av

        with av.open(str(path), format=container[0]) as c:
            return _declared_seconds(c, c.streams.audio[0]) or 0.0
    except Exception:  # noqa: BLE001 - any unreadable header, or no PyAV
        return 0.0


#: Containers decoded by FFmpeg when libsndfile cannot read them: the FFmpeg demuxer forced
#: for each, and the name a message gives it.
FFMPEG_CONTAINERS = {"mp4": ("mp4", "MP4/M4A"), "aac": ("aac", "ADTS AAC"), "matroska": ("matroska", "WebM/Matroska")}


def ffmpeg_container(head: bytes) -> tuple[str, str] | None:
    """(FFmpeg demuxer, name) of the container a file's first bytes announce, among those
    FFmpeg decodes for aqa; None for any other. The demuxer is forced, never probed: a probed
    text file can be a playlist that makes FFmpeg open other files."""
    if head[4:8] == b"ftyp":
        return FFMPEG_CONTAINERS["mp4"]
    if head[:4] == b"\x1aE\xdf\xa3":  # EBML
        return FFMPEG_CONTAINERS["matroska"]
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:  # ADTS sync, layer 00
        return FFMPEG_CONTAINERS["aac"]
    return None


def _declared_seconds(container, stream) -> float | None:
    """The length a container states for `stream` (None: states none)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / 1e6 if container.duration else None


def _decode_with_ffmpeg(data: bytes, path, container: tuple[str, str], why_not: str) -> tuple[np.ndarray, int, str]:
    """decode_bytes for a container libsndfile cannot read (`why_not`): the first audio stream
    as (frames, channels) float32 at its own rate, and its codec's name."""
    demuxer, name = container
    try:
        import av
    except ImportError:
        raise AudioError(path, "not-audio", f"{name} audio, which libsndfile cannot read ({why_not}); install PyAV "
                                            f"(pip install av), or convert it: ffmpeg -i {path} -ac 1 -ar 16000 "
                                            f"{Path(str(path)).stem}.wav") from None
    chunks, stopped = [], None
    try:
        with av.open(io.BytesIO(data), format=demuxer) as c:
            if not c.streams.audio:
                raise AudioError(path, "not-audio", f"{name} file without an audio stream")
            stream = c.streams.audio[0]
            sr, codec = stream.codec_context.sample_rate, stream.codec_context.name
            declared = _declared_seconds(c, stream) if demuxer != "aac" else None  # ADTS states no length
            # Sample format only: mixing down and resampling are load_audio's, as for every file.
            to_float = av.AudioResampler(format="fltp")
            try:
                for frame in c.decode(stream):
                    chunks += [f.to_ndarray() for f in to_float.resample(frame)]
                chunks += [f.to_ndarray() for f in to_float.resample(None)]
            except av.FFmpegError as e:
                stopped = e
    except av.FFmpegError as e:
        raise AudioError(path, "not-audio", f"{name} file that FFmpeg cannot read ({e.strerror or e}): "
                                            f"damaged or cut short") from None
    x = np.ascontiguousarray(np.concatenate(chunks, axis=1).T, dtype=np.float32) if chunks else np.zeros((0, 1),
                                                                                                         np.float32)
    fmt = codec.upper()
    if stopped is not None and not len(x):
        raise AudioError(path, "not-audio", f"{name} file whose {fmt} stream FFmpeg cannot decode "
                                            f"({stopped.strerror or stopped})")
    if not len(x):
        raise AudioError(path, "empty", f"{fmt} stream holds no audio frames")
    if sr <= 0:
        raise AudioError(path, "bad-rate", f"invalid sample rate {sr}")
    heard = len(x) / sr
    # As for libsndfile's formats: a stream that stops well short of its stated length was cut
    # off (5% leaves room for encoder padding); so was one whose decoding failed part-way.
    if declared and heard < 0.95 * declared:
        raise AudioError(path, "truncated", f"truncated: {name} header declares {declared:.2f} s, only "
                                            f"{heard:.2f} s decode")
    if stopped is not None:
        raise AudioError(path, "truncated", f"truncated: {fmt} decoding stops after {heard:.2f} s "
                                            f"({stopped.strerror or stopped})")
    return x, sr, fmt


def _wav_truncation(data: bytes) -> str | None:
    """For RIFF/WAVE bytes: a description of the shortfall when the data chunk's declared size
    runs past the end of the file, else None. libsndfile silently shortens such files."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if cid == b"data":
            have = len(data) - pos - 8
            if size not in (0, 0xFFFFFFFF) and have < size:
                return f"truncated: data chunk declares {size} bytes, the file holds {have}"
            return None
        pos += 8 + size + (size & 1)
    return None


def decode_bytes(data: bytes, path: str | os.PathLike = "<bytes>") -> tuple[np.ndarray, int, str]:
    """Decode audio bytes by content. Returns (frames, channels) float32 array, rate, format."""
    if not data:
        raise AudioError(path, "empty", "empty file (0 bytes)")
    trunc = _wav_truncation(data)
    if trunc:
        raise AudioError(path, "truncated", trunc)
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            declared, fmt, sr = f.frames, f.format, f.samplerate
            x = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
        why = e.error_string if isinstance(e, sf.LibsndfileError) else str(e)
        container = ffmpeg_container(data[:16])
        if container is not None:
            return _decode_with_ffmpeg(data, path, container, why)
        raise AudioError(path, "not-audio", f"not a decodable audio file ({why})") from None
    if len(x) == 0:
        raise AudioError(path, "empty", f"{fmt} stream holds no audio frames")
    # Compressed streams (MP3's Xing header, FLAC's STREAMINFO) declare their length; a file
    # that stops well short of it was cut off. 5% leaves room for encoder padding.
    if declared > 0 and len(x) < 0.95 * declared:
        raise AudioError(path, "truncated",
                         f"truncated: {fmt} header declares {declared} frames, only {len(x)} decode")
    if sr <= 0:
        raise AudioError(path, "bad-rate", f"invalid sample rate {sr}")
    return x, sr, fmt


def load_audio(path: str | os.PathLike, sr: int = TARGET_SR, *, max_seconds: float | None = MODEL_WINDOW_S,
               long_policy: str = "truncate", allow_silent: bool = False) -> Audio:
    """Load one file as mono float32 at `sr`. Clips longer than `max_seconds` are flagged
    (`too_long`) and, with long_policy 'truncate', cut to the window; 'keep' keeps every
    sample (use `Audio.segments` to cut windows)."""
    if long_policy not in LONG_POLICIES:
        raise ValueError(f"long_policy must be one of {LONG_POLICIES}, got {long_policy!r}")
    p = Path(path)
    if not p.is_file():
        raise AudioError(path, "missing", "file not found" if not p.exists() else "not a regular file")
    data = p.read_bytes()
    x, orig_sr, fmt = decode_bytes(data, path)
    if not np.isfinite(x).all():
        raise AudioError(path, "nan", "contains NaN or infinite samples")
    channels = x.shape[1]
    mono = x.mean(axis=1, dtype=np.float32)
    duration = len(mono) / orig_sr
    if not allow_silent and float(np.abs(mono).max()) < SILENCE_PEAK:
        raise AudioError(path, "silent", f"silent: every sample is below {SILENCE_PEAK:g} in amplitude")
    if orig_sr != sr:
        mono = soxr.resample(mono, orig_sr, sr, quality="HQ").astype(np.float32, copy=False)
    too_long = max_seconds is not None and duration > max_seconds + 1e-6
    if too_long and long_policy == "truncate":
        mono = mono[: int(round(max_seconds * sr))]
    return Audio(samples=np.ascontiguousarray(mono), sr=sr, duration=duration, orig_sr=orig_sr,
                 channels=channels, format=fmt, sha256=content_hash(data), too_long=too_long)


def write_wav(path: str | os.PathLike, samples: np.ndarray, sr: int = TARGET_SR) -> Path:
    """Write 16-bit PCM WAV atomically (used by the synthesiser and the tests)."""
    from aqa.io import atomic_write_bytes

    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1.0, 1.0), sr, format="WAV", subtype="PCM_16")
    return atomic_write_bytes(path, buf.getvalue())
