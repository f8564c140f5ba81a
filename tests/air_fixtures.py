"""Ground truth for the live-input tests (test_hls_live.py, test_udp.py): where in the music a window's audio lies, so
that where the monitor put it (its stream offset, its air time) can be compared with where it was."""

from __future__ import annotations

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
