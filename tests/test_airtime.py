"""A live connection's clock (monitor.stages.airtime.StreamClock) over hours and days of simulated arrivals: each chunk
of audio reaches the reader when its last sample aired plus a network delay, and the clock's air time for the chunk is
compared with when it aired; and a real HTTP station whose clock runs slow. Servers and their clocks are in test_ingest.py,
test_icecast.py and test_hls_live.py."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from air_fixtures import position
from catalog_fixtures import MUSIC
from encoders import load_audio
from monitor.bench.servers import LiveAudioServer, encode_mp3
from monitor.options import IngestOptions
from monitor.stages.airtime import SETTLE_MAX_SECONDS, StreamClock
from monitor.stages.ingest import read_windows
from monitor.stages.sources import StreamSource
from monitor.stages.windows import WindowGrid

RATE = 8000
CHUNK_SECONDS = 1.0
MEMORY = 300.0
DELAY = (0.05, 0.4)  # a chunk reaches the reader this long after its last sample aired: the chain's latency and jitter
EPOCH = 1_780_000_000.0


def air_time_errors(seconds: float, aired: Callable[[float], float], late: Callable[[float], float] = lambda t: 0.0,
                    clock: StreamClock | None = None) -> np.ndarray:
    """How much later than it aired (s) the clock puts each chunk of a connection `seconds` long, whose audio second s
    aired at `aired(s)` and reached the reader DELAY later and `late(t)` more, t seconds into the connection."""
    clock = clock or StreamClock(RATE, live=True, memory=MEMORY)
    clock.connect()
    rng = np.random.default_rng(0)
    n = round(CHUNK_SECONDS * RATE)
    errors = []
    for index in range(round(seconds / CHUNK_SECONDS)):
        start = index * CHUNK_SECONDS
        last_aired = aired(start + CHUNK_SECONDS)
        clock.chunk(n, last_aired + rng.uniform(*DELAY) + late(last_aired - EPOCH))
        errors.append(clock.air_time(start) - aired(start))
        assert len(clock.said) <= MEMORY + 2  # a few hundred numbers a stream, however long it runs
    return np.array(errors)


@pytest.mark.parametrize("ppm", [-50.0, 50.0])
def test_a_source_whose_clock_runs_slow_or_fast_airs_on_time_after_a_day(ppm: float) -> None:
    """A station's sound card 50 ppm slow makes 0.99995 s of audio a second. The clock was anchored once for good, so
    a connection held for a day put its air times 4.3 s early by the end (a week: 30 s); a fast card's were right. Now
    both stay within the delay the chain adds, less what the source drifts in the anchor's memory."""
    errors = air_time_errors(86_400, lambda s: EPOCH + s / (1 + ppm * 1e-6))
    drift_in_memory = MEMORY * abs(ppm) * 1e-6
    assert errors.min() >= -drift_in_memory - 1e-6
    assert errors.max() <= DELAY[1]


def test_air_times_follow_audio_that_arrives_later_for_good() -> None:
    """Two seconds of audio lost an hour into a connection (a fallback mount's switch, HLS segments skipped): everything
    after arrives 2 s later than the anchor says (as it does when the host's clock is stepped 2 s forward, by which air
    times are told). Air times within the anchor's memory after it may be early by those 2 s; after it they are right
    again, where they stayed early for good."""
    step_at, step = 3600.0, 2.0
    errors = air_time_errors(7200, lambda s: EPOCH + s + (step if s >= step_at else 0.0))
    chunks = np.arange(len(errors)) * CHUNK_SECONDS
    before, within, after = errors[chunks < step_at], errors[(chunks >= step_at) & (chunks < step_at + MEMORY + 2)], errors[chunks >= step_at + MEMORY + 2]
    assert 0.0 <= before.min() and before.max() <= DELAY[1]
    assert -step <= within.min() and within.max() <= DELAY[1]
    assert 0.0 <= after.min() and after.max() <= DELAY[1]


def test_a_reader_that_falls_behind_and_catches_up_moves_no_air_time() -> None:
    """A busy monitor (or a stalled network) leaves the audio of four minutes waiting, then reads it ten times as fast
    as it plays until it is back at the live edge: the arrivals say the audio aired up to four minutes later, which it
    did not. Air times keep their anchor, as before the anchor could rise."""
    behind_from, behind_for = 1000.0, 240.0

    def late(t: float) -> float:  # how long the chunk that aired at t waits in the backlog
        if t < behind_from:
            return 0.0
        caught_up = behind_from + behind_for * 10 / 9  # the backlog read at ten times real time from behind_from + behind_for
        if t >= caught_up:
            return 0.0
        read_at = behind_from + behind_for + (t - behind_from) / 10
        return max(0.0, read_at - t)

    errors = air_time_errors(3600, lambda s: EPOCH + s, late)
    steady = errors[: round(behind_from / CHUNK_SECONDS)].min()
    assert np.all(errors >= steady - 1e-6) and errors.max() <= DELAY[1]


def test_a_live_source_slower_than_real_time_airs_each_window_when_it_aired(tmp_path) -> None:
    """A station whose clock runs slow sends its programme second p at `began` + p / speed (here 20 % slow, a day of a
    sound card 50 ppm slow in a few seconds). Anchored once for good, the windows' air times fell behind by a quarter
    of a second per second heard (2.5 s after 10 s); now each window airs when it was sent, less what the source
    drifts in the anchor's memory (3 s here, 0.75 s), the same for every window once that memory has passed, to within
    that drift (the memory is kept per second: it moves on in steps of a second's drift, 0.25 s here, 50 us at 50 ppm)."""
    grid = WindowGrid(sample_rate=8000, window=8000, hop=4000)
    song = MUSIC / "area1-game.opus"
    speed, memory, count = 0.8, 3.0, 22
    music = load_audio(song, grid.sample_rate).astype(np.float64)
    mp3 = encode_mp3(song, tmp_path / "live.mp3").read_bytes()
    with LiveAudioServer(mp3, 50.0, speed=speed, once=True) as live:
        options = IngestOptions(open_timeout=2.0, read_timeout=2.0, anchor_memory_seconds=memory)
        windows = []
        for window in read_windows(StreamSource("slow", live.url()), grid, options):
            windows.append(window)
            if len(windows) == count:
                break
    assert not any(w.after_gap for w in windows)
    sent_at = [w.air_time - position(w, music, grid)[0] / speed for w in windows[2:]]  # `began` as each window's air time says
    steady = [began for began, w in zip(sent_at, windows[2:]) if w.offset >= memory + SETTLE_MAX_SECONDS]
    drift_in_memory = memory * (1 / speed - 1)
    assert len(steady) >= 10 and max(steady) - min(steady) < drift_in_memory
