"""Ingest of a live HLS stream, with real parts: FFmpeg encodes a music file in real time (`-re`) to a sliding-window
playlist of 2 s MPEG-TS segments (the last 5 listed, older ones deleted), which a local HTTP server serves; faults
are made at the server (down, a segment gone) and at the encoder (a restart). Each window's audio is found in the
music file, so that where the monitor put it (its offset, its air time) can be compared with where it was."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from air_fixtures import check_continuous, position, read_until, runs
from encoders import load_audio
from monitor import metrics as metrics_module
from monitor.bench.servers import FileServer
from monitor.options import IngestOptions
from monitor.records import AudioWindow
from monitor.stages.ingest import read_windows
from monitor.stages.mux import AudioSelection, MuxSource, read_mux
from monitor.stages.sources import StreamSource, hls_target_duration
from monitor.stages.windows import WindowGrid

MUSIC = Path(__file__).parents[1] / "monitor" / "demo" / "music" / "area1-game.opus"
GRID = WindowGrid(sample_rate=8000, window=8000, hop=4000)
SEGMENT_SECONDS = 2.0
# A read waits at the live edge for the next segment (1.5 segments at most), and past a missing one for 2 more: the read
# timeout must be longer (see the notes on HLS in README, "Sources").
OPTIONS = IngestOptions(open_timeout=5.0, read_timeout=8.0, backoff_initial=0.2, backoff_max=0.5)


class LiveHls(FileServer):
    """A live HLS stream: FFmpeg plays `MUSIC` in real time into `folder`, served over HTTP. While `down` is set the
    server answers 503; names in `missing` get 404 (a segment deleted before it was read)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.down, self.missing = folder, threading.Event(), set[str]()
        self.encoder: subprocess.Popen | None = None
        super().__init__(folder)

    def refusal(self, name: str) -> int | None:
        if self.down.is_set():
            return 503
        return 404 if name in self.missing else None

    def encode(self, start: float = 0.0) -> None:
        """(Re)start the encoder at `start` s into the music: a restarted one starts its timestamps and segment numbers again."""
        self.encoder = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-ss", f"{start:.3f}", "-i", str(MUSIC), "-c:a", "aac", "-b:a", "64k",
             "-f", "hls", "-hls_time", str(SEGMENT_SECONDS), "-hls_list_size", "5", "-hls_flags", "delete_segments",
             "-hls_segment_filename", str(self.folder / "seg%d.ts"), str(self.folder / "live.m3u8")])

    def stop_encoder(self) -> None:
        if self.encoder is not None:
            self.encoder.kill()
            self.encoder.wait()

    def playlist(self) -> str:
        while not (self.folder / "live.m3u8").exists():
            time.sleep(0.05)
        return self.url("live.m3u8")

    def stop(self) -> None:
        self.stop_encoder()
        super().stop()


@pytest.fixture()
def live(tmp_path: Path) -> Iterator[LiveHls]:
    with LiveHls(tmp_path) as server:
        server.encode()
        yield server


@pytest.fixture(scope="module")
def music() -> np.ndarray:
    return load_audio(MUSIC, GRID.sample_rate).astype(np.float64)


def plain(url: str, options: IngestOptions = OPTIONS, metrics: metrics_module.Metrics | None = None) -> Iterator[AudioWindow]:
    return read_windows(StreamSource("hls", url), GRID, options, metrics)


def multiplexed(url: str, options: IngestOptions = OPTIONS, metrics: metrics_module.Metrics | None = None) -> Iterator[AudioWindow]:
    """The stream read with an audio selection (the multiplex reader's path, as for an HLS rendition's chosen language)."""
    items = read_mux(MuxSource.single(StreamSource("hls", url), AudioSelection()), GRID, options, metrics)
    return (item for item in items if isinstance(item, AudioWindow))


def test_live_hls_is_read_in_stream_time(live: LiveHls, music: np.ndarray) -> None:
    """Steady reading: the windows follow one another on the hop, each the music's next half second, no gap."""
    windows = read_until(read_windows(StreamSource("hls", live.playlist()), GRID, OPTIONS), seconds=6)
    assert len(windows) >= 8 and not any(w.after_gap for w in windows)
    assert [w.offset for w in windows] == [i * GRID.hop_seconds for i in range(len(windows))]
    check_continuous(windows, music, GRID)
    # Air times follow the hop; a later segment that arrived sooner after it was made moves them earlier (never more than one).
    aired = np.array([w.air_time - w.offset for w in windows])
    assert np.all(np.diff(aired) <= 1e-6) and aired[0] - aired[-1] <= SEGMENT_SECONDS


@pytest.mark.parametrize("read", [plain, multiplexed])
def test_live_hls_back_after_the_server_was_down_keeps_stream_time(live: LiveHls, music: np.ndarray,
                                                                  read: Callable[[str], Iterator[AudioWindow]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The server answers 503 for 4 s. FFmpeg's HLS reader ends at the playlist it cannot reload, and the new
    connection starts three segments behind the live edge: 6 s of audio that aired before it opened, at once. The
    base of the stream offset was taken at that burst's first chunk, so the audio after the break was put 3-4 s
    later than it aired (with an audio selection too). Now the stream time after the gap is the music's own, to within a segment (an HLS
    reader learns when audio aired only as segments arrive) and never early, and no audio is heard twice. The
    playlist's target duration is read once, not again at the reconnection."""
    from monitor.stages import sources

    target_reads = []
    read_target = sources.hls_target_duration
    monkeypatch.setattr(sources, "hls_target_duration", lambda *args: target_reads.append(args) or read_target(*args))
    windows = read_until(read(live.playlist()), seconds=18,
                         at={6.0: live.down.set, 10.0: live.down.clear})
    assert len(target_reads) == 1
    before, after = runs(windows)
    assert len(before) >= 6 and len(after) >= 6
    start_before, start_after = check_continuous(before, music, GRID), check_continuous(after, music, GRID)
    assert abs(start_after - start_before) <= SEGMENT_SECONDS + GRID.hop_seconds  # the music's position at stream offset 0
    aired = {w.seq: w.air_time - (start_before if w in before else start_after) - w.offset for w in windows}  # when music second 0 aired
    assert max(aired.values()) - min(aired.values()) <= SEGMENT_SECONDS + GRID.hop_seconds


@pytest.mark.parametrize("read", [plain, multiplexed])
def test_live_hls_joined_with_segments_listed_airs_every_window_when_it_aired(tmp_path: Path, music: np.ndarray,
                                                                             read: Callable[[str], Iterator[AudioWindow]]) -> None:
    """Joined as a monitor meets a station's playlist, with segments listed: FFmpeg starts three segments behind the live
    edge and reads them at once, 6 s of audio that aired before it opened. The first windows were placed by that
    burst's first chunk, 4-6 s later than they aired (a play on air when the monitor started was timed that late);
    now every window's air time is when the encoder played its audio, to within a segment and never early."""
    with LiveHls(tmp_path) as server:
        encoded = time.time()  # the encoder plays music second s at this time + s, or later by its start-up
        server.encode()
        while not (tmp_path / "seg4.ts").exists():  # four segments written and listed
            time.sleep(0.05)
        windows = read_until(read(server.playlist()), seconds=5)
    located = windows[2:]  # past the AAC decoder's start-up
    lags = [w.air_time - encoded - position(w, music, GRID)[0] for w in located]
    assert len(located) >= 8 and all(position(w, music, GRID)[1] > 0.95 for w in located)
    assert min(lags) >= -0.05 and max(lags) <= SEGMENT_SECONDS + GRID.hop_seconds


def silent(window: AudioWindow) -> bool:
    return not np.any(window.samples)


@pytest.mark.slow  # 16 s
def test_a_live_hls_segment_gone_before_it_was_read_is_silence_and_the_audio_after_it_keeps_its_time(live: LiveHls, music: np.ndarray) -> None:
    """The next segment answers 404: FFmpeg's HLS reader skips it, and the following segment's timestamps run 2 s
    ahead, which the decoder hears as a hole: 2 s of silence, the audio after it where it aired, nothing marked
    (as packets lost over UDP are: encoders.audio.Chunker)."""

    def lose_the_next_segment() -> None:
        listed = [line for line in (live.folder / "live.m3u8").read_text().split() if line.endswith(".ts")]
        live.missing.add(f"seg{int(listed[-1][3:-3]) + 1}.ts")

    windows = read_until(read_windows(StreamSource("hls", live.playlist()), GRID, OPTIONS), seconds=14, at={5.0: lose_the_next_segment})
    assert not any(w.after_gap for w in windows)
    assert [w.offset for w in windows] == [i * GRID.hop_seconds for i in range(len(windows))]
    quiet = [i for i, w in enumerate(windows) if silent(w)]
    assert 2 <= len(quiet) <= 3 and quiet == list(range(quiet[0], quiet[-1] + 1))  # 2 s of silence: 2-3 whole windows in it
    before, after = windows[: quiet[0] - 2], windows[quiet[-1] + 2 :]  # clear of the windows that straddle its edges
    assert abs(check_continuous(after, music, GRID) - check_continuous(before, music, GRID)) <= 0.005  # the AAC frames' timestamps, to 5 ms


@pytest.mark.slow  # 20 s
def test_live_hls_after_an_encoder_restart_keeps_stream_time(live: LiveHls, music: np.ndarray) -> None:
    """The encoder stops for 3 s and starts again where the programme is by then (its timestamps and segment numbers
    start again): FFmpeg's reader waits for segment numbers that never come until the read timeout, and the new
    connection begins with the new encoder's segments at once. The audio after the gap is where it aired, to
    within a segment and an encoder's start-up."""
    began = time.monotonic()

    def restart() -> None:
        live.stop_encoder()
        time.sleep(3.0)
        live.encode(start=time.monotonic() - began)

    windows = read_until(read_windows(StreamSource("hls", live.playlist()), GRID, OPTIONS), seconds=20, at={5.0: restart})
    before, after = runs(windows)
    assert len(before) >= 6 and len(after) >= 6
    assert abs(check_continuous(after, music, GRID) - check_continuous(before, music, GRID)) <= SEGMENT_SECONDS + GRID.hop_seconds


@pytest.mark.parametrize("read", [plain, pytest.param(multiplexed, marks=pytest.mark.slow)])
def test_a_live_hls_stream_with_segments_as_long_as_the_read_timeout_is_not_reopened(live: LiveHls, music: np.ndarray,
                                                                                    read: Callable[[str], Iterator[AudioWindow]]) -> None:
    """2 s segments and a 2 s read timeout (10 s segments and the default 10 s): a reader at the live edge must wait
    for the next segment without taking the wait for a stall. FFmpeg waits for it inside one read, which PyAV's read
    timeout counts: the stream was reopened every few segments (13 times in 30 s), and once heard 3 s twice. The
    playlist's target duration now sets the read timeout (three of them), found as the stream opens, which then
    opens once more; the one reopening is not a reconnect."""
    registry = CollectorRegistry()
    options = IngestOptions(open_timeout=5.0, read_timeout=SEGMENT_SECONDS, backoff_initial=0.2, backoff_max=0.5)
    windows = read_until(read(live.playlist(), options, metrics_module.create(registry)), seconds=12)
    assert registry.get_sample_value("airtrace_stream_reconnects_total", {"stream": "hls"}) is None
    assert not any(w.after_gap for w in windows)
    assert [w.offset for w in windows] == [i * GRID.hop_seconds for i in range(len(windows))]
    check_continuous(windows, music, GRID)


def test_a_playlists_target_duration_is_read_from_it_or_from_a_master_playlists_variant(tmp_path: Path) -> None:
    (tmp_path / "low").mkdir()
    (tmp_path / "master.m3u8").write_text('#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=64000,CODECS="mp4a.40.2"\nlow/live.m3u8\n')
    (tmp_path / "low" / "live.m3u8").write_text("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:7\n"
                                                "#EXTINF:10.0,\nseg7.ts\n")
    (tmp_path / "bare.m3u8").write_text("#EXTM3U\n#EXTINF:10.0,\nseg7.ts\n")
    with FileServer(tmp_path) as web:
        assert hls_target_duration(web.url("master.m3u8"), timeout=2.0) == 10.0
        assert hls_target_duration(web.url("low/live.m3u8"), timeout=2.0) == 10.0
        assert hls_target_duration(web.url("bare.m3u8"), timeout=2.0) is None
        with pytest.raises(OSError):  # read_timeout_for keeps the configured timeout, and says why
            hls_target_duration(web.url("gone.m3u8"), timeout=2.0)
