"""Ground truth for the live-input tests (test_hls_live.py, test_icecast.py, test_udp.py): where in the music a window's
audio lies, so that where the monitor put it (its stream offset, its air time) can be compared with where it was; and
windows read for a while, with faults made on the way."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from monitor.records import AudioWindow
from monitor.stages.windows import WindowGrid


def position(window: AudioWindow, music: np.ndarray, grid: WindowGrid) -> tuple[float, float]:
    """Where in `music` (float64 at the grid's rate) `window`'s audio lies (s) by normalised cross-correlation, and how
    well it matches there."""
    samples, n = window.samples.astype(np.float64), 1 << (len(music) + grid.window).bit_length()
    dots = np.fft.irfft(np.fft.rfft(music, n) * np.conj(np.fft.rfft(samples, n)), n)[: len(music) - grid.window + 1]
    energy = np.concatenate([[0.0], np.cumsum(music**2)])
    norms = np.sqrt(np.maximum(energy[grid.window :] - energy[: -grid.window], 1e-12) * np.dot(samples, samples))
    best = int(np.argmax(dots / norms))
    return best / grid.sample_rate, float(dots[best] / norms[best])


def read_until(windows: Iterator[AudioWindow], seconds: float, at: dict[float, Callable[[], object]] | None = None) -> list[AudioWindow]:
    """Windows read for `seconds` of wall-clock time; `at` maps times since the start to actions done then."""
    timers = [threading.Timer(when, action) for when, action in (at or {}).items()]
    for timer in timers:
        timer.start()
    out, began = [], time.monotonic()
    try:
        for window in windows:
            out.append(window)
            if time.monotonic() - began >= seconds:
                break
    finally:
        for timer in timers:
            timer.cancel()
    return out


def runs(windows: list[AudioWindow]) -> list[list[AudioWindow]]:
    """The windows split where a gap is marked."""
    out: list[list[AudioWindow]] = []
    for window in windows:
        if window.after_gap or not out:
            out.append([])
        out[-1].append(window)
    return out


def check_continuous(run: list[AudioWindow], music: np.ndarray, grid: WindowGrid) -> float:
    """Each window of a run is the music's audio where its offset puts it (stream time and audio go on together:
    nothing lost, nothing repeated); the run's music position at offset 0. Its first two windows may hold a decoder's
    start-up (AAC's), so it is located from its third."""
    located = run[2]
    at, match = position(located, music, grid)
    assert match > 0.95
    start = at - located.offset
    for window in run[2:]:
        expected = music[round((start + window.offset) * grid.sample_rate) :][: grid.window]
        assert np.corrcoef(window.samples, expected)[0, 1] > 0.9, window.seq
    return start
