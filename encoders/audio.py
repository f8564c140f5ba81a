"""Decode any audio FFmpeg reads into mono float32 at a chosen sample rate, with PyAV."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import soundfile


# What a folder scan takes for audio (FFmpeg reads more; these are the suffixes music libraries use).
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".wma", ".aiff", ".aif", ".mka", ".webm"})


class AudioError(ValueError):
    """Audio that cannot be opened or decoded; the message names the source and a fix."""


def decode_chunks(
    source: str | Path | BinaryIO,
    sample_rate: int,
    options: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Iterator[np.ndarray]:
    """Yield mono float32 chunks at `sample_rate` as FFmpeg decodes `source` (a file or URL).

    Streams are read chunk by chunk, so this serves both whole files and endless broadcasts.
    """
    try:
        container = av.open(
            str(source) if isinstance(source, Path) else source,
            options=options or {},
            timeout=timeout,
            metadata_errors="replace",  # tags in legacy encodings must not make audio unreadable
        )
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise AudioError(f"cannot open {source}: {exc}; check the path or URL and that FFmpeg can read it") from exc
    with container:
        if not container.streams.audio:
            raise AudioError(f"{source} has no audio stream; give a file or URL that carries audio")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    yield out.to_ndarray().reshape(-1)
            for out in resampler.resample(None):
                yield out.to_ndarray().reshape(-1)
        except av.FFmpegError as exc:
            raise AudioError(f"cannot decode {source}: {exc}; the file may be corrupt or truncated") from exc


def load_audio(source: str | Path | BinaryIO, sample_rate: int) -> np.ndarray:
    """Decode a whole file to one mono float32 array at `sample_rate`.

    A local file FFmpeg refuses is tried once more with libsndfile, which reads some Ogg Vorbis
    headers that FFmpeg rejects.
    """
    try:
        chunks = list(decode_chunks(source, sample_rate))
    except AudioError:
        if not isinstance(source, (str, Path)) or not Path(source).is_file():
            raise
        chunks = [_load_with_libsndfile(Path(source), sample_rate)]
    if not chunks or not sum(map(len, chunks)):
        raise AudioError(f"{source} decoded to no samples; it is empty or not audio")
    return np.concatenate(chunks).astype(np.float32, copy=False)


def _load_with_libsndfile(path: Path, sample_rate: int) -> np.ndarray:
    """Decode with libsndfile, then downmix and resample with FFmpeg's resampler as decode_chunks does."""
    try:
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"cannot decode {path}: neither FFmpeg nor libsndfile reads it ({exc}); convert it to WAV or FLAC") from exc
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio.mean(axis=1))[None], format="flt", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    out = [f.to_ndarray().reshape(-1) for f in [*resampler.resample(frame), *resampler.resample(None)]]
    return np.concatenate(out) if out else np.zeros(0, np.float32)
