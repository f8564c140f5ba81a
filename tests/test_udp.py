"""A TV channel over UDP, as a head-end or an off-air receiver sends it: ffmpeg plays a transport stream in real time to
a loopback port through a relay that loses datagrams (tests/udp_fixtures.py), and ingest reads it as a plain stream.
Each test takes the real time of what it sends (5-12 s, waiting); the cases that passed with the code as it was are slow."""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from air_fixtures import position
from catalog_fixtures import MUSIC
from encoders import load_audio
from monitor.options import IngestOptions
from monitor.records import AudioWindow
from monitor.stages.ingest import read_windows
from monitor.stages.sources import StreamSource
from monitor.stages.windows import WindowGrid
from tv_fixtures import television
from udp_fixtures import Relay, free_udp_port, send

GRID = WindowGrid(sample_rate=8000, window=8000, hop=4000)
RETRY = IngestOptions(open_timeout=5.0, read_timeout=6.0, backoff_initial=0.1, backoff_max=0.5)


@pytest.fixture(scope="module")
def music() -> np.ndarray:
    return load_audio(MUSIC / "area1-game.opus", GRID.sample_rate).astype(np.float64)


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two encoder sessions of one channel (the second from 20 s on in the music), each with timestamps from the start."""
    folder = tmp_path_factory.mktemp("udp")
    return television(folder / "first.ts", 4.0), television(folder / "second.ts", 4.0, start=20.0)


class Reception:
    """read_windows on udp://127.0.0.1:PORT in a thread; each window with the wall-clock time it came."""

    def __init__(self, options: IngestOptions = RETRY, turns: AbstractContextManager = nullcontext(), query: str = ""):
        self.port = free_udp_port()
        self.windows: list[tuple[float, AudioWindow]] = []
        self.stop = threading.Event()
        source = StreamSource("tv", f"udp://127.0.0.1:{self.port}{query}")
        self.thread = threading.Thread(target=self._read, args=(source, options, turns), daemon=True)

    def _read(self, source: StreamSource, options: IngestOptions, turns: AbstractContextManager) -> None:
        for window in read_windows(source, GRID, options, stop=self.stop, turns=turns):
            self.windows.append((time.time(), window))

    def __enter__(self) -> "Reception":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(1.0)  # the last window's audio through the reader
        self.stop.set()  # the reader sees it at its next packet, or ends as it stalls: a daemon thread, not waited for
        self.windows = list(self.windows)


def sent(reception: Reception, transport_stream: Path, relay: Relay) -> tuple[float, float]:
    """`transport_stream` sent in real time through `relay`: when its sender started and ended (wall clock)."""
    started = time.time()
    send(transport_stream, relay.listen_port).wait()
    return started, time.time()


def in_order(windows: list[AudioWindow]) -> None:
    assert [w.seq for w in windows] == list(range(len(windows))) and np.all(np.diff([w.offset for w in windows]) > 0)


def test_a_channel_over_udp_is_read_in_real_time_from_its_first_open(sessions: tuple[Path, Path], music: np.ndarray) -> None:
    """4 s of a channel: every window in its time, no gap, its audio from the sender's first seconds on. Opened a
    first time to find a transport stream and again to read it, it lost what came to the first open (2.1 s). The
    reader's first audio comes at once after FFmpeg's probe: its first windows were placed by that burst's first chunk,
    0.5 s later than the windows after them; now each airs when the sender sent its audio, as late as every other."""
    with Reception() as reception, Relay(reception.port) as relay:
        started, ended = sent(reception, sessions[0], relay)
    windows = [window for _, window in reception.windows]
    in_order(windows)
    assert [w.offset for w in windows] == [i * GRID.hop_seconds for i in range(len(windows))] and not any(w.after_gap for w in windows)
    assert len(windows) >= GRID.count(3 * GRID.sample_rate)  # ffmpeg's start, the first tables and the resampler's tenth: under 1 s
    assert started <= windows[0].air_time and windows[-1].air_time + GRID.window_seconds <= ended + 0.1
    located = windows[1:]  # the first may hold the MP2 decoder's start-up
    lags = [w.air_time - started - position(w, music, GRID)[0] for w in located]  # the sender's start-up and the decoder's hold
    assert all(position(w, music, GRID)[1] > 0.95 for w in located) and min(lags) >= 0.0
    assert max(lags) - min(lags) <= GRID.hop_seconds / 2


@pytest.mark.parametrize("lost", [0.2, 2.0])
@pytest.mark.slow
def test_datagrams_lost_in_a_burst_are_silence_and_the_audio_after_them_keeps_its_time(sessions: tuple[Path, Path], lost: float) -> None:
    """`lost` s of datagrams dropped 1 s into the channel: the hole is silence (no reconnect, no gap) and the audio after
    it airs when it did, up to the sender's end."""
    with Reception() as reception, Relay(reception.port) as relay:
        threading.Timer(1.0, relay.lose, (lost,)).start()
        started, ended = sent(reception, sessions[0], relay)
    windows = [window for _, window in reception.windows]
    in_order(windows)
    assert relay.dropped > 0 and not any(w.after_gap for w in windows)
    assert [w.offset for w in windows] == [i * GRID.hop_seconds for i in range(len(windows))]
    assert len(windows) >= GRID.count(3 * GRID.sample_rate)
    silent = [w for w in windows if np.sqrt(np.mean(np.square(w.samples))) < 1e-4]
    assert len(silent) >= (lost - GRID.window_seconds) // GRID.hop_seconds  # the windows that lie in the hole
    assert windows[-1].air_time + GRID.window_seconds >= ended - 1.0  # a window and the resampler's tenth from the end, not `lost` early


@pytest.mark.parametrize("read_timeout", [6.0, pytest.param(2.0, marks=pytest.mark.slow)])
def test_a_udp_sender_that_stops_and_restarts_goes_on_where_the_wall_clock_says(sessions: tuple[Path, Path], read_timeout: float) -> None:
    """The encoder stops for 3 s and a new session starts, its timestamps from the start again. Within the read timeout
    the connection stays open: the timestamps alone cannot tell the restart's pause, and its audio came 3.3 s early (air
    times and offsets alike), with no gap marked. On a live input the wall clock tells it. Past the read timeout the
    input stalls and is reopened."""
    first, second = sessions
    with Reception(replace(RETRY, read_timeout=read_timeout)) as reception, Relay(reception.port) as relay:
        _, stopped = sent(reception, first, relay)
        time.sleep(3.0)
        restarted, _ = sent(reception, second, relay)
    windows = [window for _, window in reception.windows]
    in_order(windows)
    (gap,) = [i for i, w in enumerate(windows) if w.after_gap]
    before, after = windows[gap - 1], windows[gap]
    # each where it aired: never early, and late by less than a hop (the decoder's and the resampler's hold, about 0.1 s)
    assert before.air_time + GRID.window_seconds <= stopped + GRID.hop_seconds and after.air_time >= restarted
    assert after.offset - before.offset >= 3.0
    assert len(windows) - gap >= GRID.count(2 * GRID.sample_rate)  # the second session's 4 s, less a reopen's probe


def test_a_reader_held_up_past_its_udp_fifo_goes_on_over_a_hole(tmp_path: Path) -> None:
    """The reader held 2.5 s (its decode turn taken, as on a busy machine) with FFmpeg's FIFO a third of that: FFmpeg
    ended the input ("Input/output error") and the reconnect lost seconds behind a gap; now what did not fit is a hole,
    silence in its time. The channel goes on 7 s, so that its windows are placed while it is on (a connection's first
    windows wait for its clock to settle, a second of arrivals after the burst that the reader catches up with)."""
    turns = threading.Semaphore(1)
    channel = television(tmp_path / "channel.ts", 7.0)
    with Reception(turns=turns, query="?fifo_size=300") as reception, Relay(reception.port) as relay:  # 300 TS packets: 0.66 s of this channel
        threading.Timer(1.0, hold, (turns, 2.5)).start()
        started, ended = sent(reception, channel, relay)
    windows = [window for _, window in reception.windows]
    in_order(windows)
    assert not any(w.after_gap for w in windows)
    assert [w.offset for w in windows] == [i * GRID.hop_seconds for i in range(len(windows))]
    assert len(windows) >= GRID.count(3 * GRID.sample_rate) and windows[-1].air_time + GRID.window_seconds >= ended - 1.0


def hold(turns: threading.Semaphore, seconds: float) -> None:
    with turns:
        time.sleep(seconds)
