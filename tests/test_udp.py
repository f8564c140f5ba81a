"""A TV channel over UDP, as a head-end or an off-air receiver sends it: ffmpeg plays a transport stream in real time to
a loopback port through a relay that loses datagrams (tests/udp_fixtures.py), and ingest reads it as a plain stream.
Each test takes the real time of what it sends."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

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
def sessions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two encoder sessions of one channel (the second from 20 s on in the music), each with timestamps of its own."""
    folder = tmp_path_factory.mktemp("udp")
    return television(folder / "first.ts", 6.0), television(folder / "second.ts", 5.0, start=20.0)


class Reception:
    """read_windows on udp://127.0.0.1:PORT in a thread; each window with the wall-clock time it came."""

    def __init__(self, options: IngestOptions = RETRY):
        self.port = free_udp_port()
        self.windows: list[tuple[float, AudioWindow]] = []
        self.stop = threading.Event()
        source = StreamSource("tv", f"udp://127.0.0.1:{self.port}")
        self.thread = threading.Thread(target=self._read, args=(source, options), daemon=True)

    def _read(self, source: StreamSource, options: IngestOptions) -> None:
        for window in read_windows(source, GRID, options, stop=self.stop):
            self.windows.append((time.time(), window))

    def __enter__(self) -> "Reception":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(1.0)  # the last window's audio through the reader
        self.stop.set()
        self.thread.join(timeout=10)


def test_a_udp_sender_that_restarts_within_the_read_timeout_goes_on_where_the_wall_clock_says(sessions: tuple[Path, Path]) -> None:
    """The encoder stops for 3 s (less than the read timeout, so the connection stays open) and a new session starts,
    its timestamps from the start again: its audio came 3 s early (air times and offsets alike), with no gap marked,
    as the timestamps alone cannot tell a restart's pause. On a live input the wall clock does."""
    first, second = sessions
    with Reception() as reception, Relay(reception.port) as relay:
        sender = send(first, relay.listen_port)
        sender.wait()
        stopped = time.time()
        time.sleep(3.0)
        restarted = time.time()
        send(second, relay.listen_port).wait()
    windows = [window for _, window in reception.windows]
    assert [w.seq for w in windows] == list(range(len(windows))) and np.all(np.diff([w.offset for w in windows]) > 0)
    (gap,) = [i for i, w in enumerate(windows) if w.after_gap]
    before, after = windows[gap - 1], windows[gap]
    assert before.air_time + GRID.window_seconds <= stopped and after.air_time >= restarted  # each where it aired: never early
    assert after.offset - before.offset >= 3.0
    assert len(windows) - gap >= GRID.count(4 * GRID.sample_rate)  # the second session's audio, less its first second at most
