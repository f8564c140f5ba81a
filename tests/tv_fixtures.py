"""Transport streams made here with ffmpeg, as a head-end sends a channel or a receiver records one off air, for the
multiplex tests (test_mux.py) and the recordings' air start tests (test_air_start.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av

from catalog_fixtures import MUSIC


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def television(path: Path, seconds: float, start: float = 0.0, offset: float = 0.0, audio: Path = MUSIC / "area1-game.opus") -> Path:
    """A channel as a head-end sends it: MPEG-2 video (PID 256) and MP2 audio (PID 257) of `seconds` from `start`
    of `audio`, its timestamps `offset` s on."""
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10", "-ss", str(start), "-i", str(audio), "-t", str(seconds),
           "-map", "0:v", "-map", "1:a", "-c:v", "mpeg2video", "-c:a", "mp2", "-ar", "48000", "-streamid", "0:256", "-streamid", "1:257",
           "-output_ts_offset", str(offset), "-f", "mpegts", str(path))
    return path


def without_audio(transport_stream: Path, start: float, end: float) -> bytes:
    """The transport stream less its audio PID's packets from `start` to `end` s into its audio (a receiver that
    lost the audio PID while the video went on): every TS packet of PID 257 between the audio packets there."""
    with av.open(str(transport_stream)) as container:
        audio = container.streams.audio[0]
        starts = [(float(p.pts * p.time_base), p.pos) for p in container.demux(audio) if p.pts is not None and p.pos is not None]
    first = starts[0][0]
    cut_from, cut_to = (next(pos for time, pos in starts if time - first >= edge) for edge in (start, end))
    data = transport_stream.read_bytes()
    return b"".join(data[at : at + 188] for at in range(0, len(data), 188)
                    if not (cut_from <= at < cut_to and ((data[at + 1] & 0x1F) << 8 | data[at + 2]) == 257))
