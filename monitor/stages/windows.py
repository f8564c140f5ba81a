"""Window and hop arithmetic, in one place for catalogs, clips and live streams alike."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowGrid:
    """Windows of `window` samples every `hop` samples at `sample_rate`; window i starts at i * hop."""

    sample_rate: int
    window: int
    hop: int

    @classmethod
    def for_encoder(cls, encoder: "object", hop_seconds: float | None = None) -> "WindowGrid":
        """The encoder's own window, at its hop or at a finer one (catalogs index at a finer hop)."""
        hop = encoder.hop_samples if hop_seconds is None else round(hop_seconds * encoder.sample_rate)
        if hop <= 0:
            raise ValueError(f"hop must be positive, got {hop_seconds} s")
        return cls(encoder.sample_rate, encoder.window_samples, hop)

    @property
    def window_seconds(self) -> float:
        return self.window / self.sample_rate

    @property
    def hop_seconds(self) -> float:
        return self.hop / self.sample_rate

    def count(self, n_samples: int) -> int:
        """How many whole windows fit in `n_samples`."""
        return 0 if n_samples < self.window else 1 + (n_samples - self.window) // self.hop

    def start(self, index: int | np.ndarray) -> float | np.ndarray:
        """Start time in seconds of window `index`."""
        return index * self.hop / self.sample_rate

    def centre(self, index: int | np.ndarray) -> float | np.ndarray:
        """Centre time in seconds of window `index`: the moment a window's embedding stands for."""
        return (index * self.hop + self.window / 2) / self.sample_rate

    def cut(self, audio: np.ndarray) -> np.ndarray:
        """All whole windows of `audio` as a (count, window) view; no copy."""
        n = self.count(len(audio))
        if n == 0:
            return np.zeros((0, self.window), dtype=audio.dtype)
        step = audio.strides[0]
        return np.lib.stride_tricks.as_strided(audio, (n, self.window), (self.hop * step, step), writeable=False)


def hop_start_in_window(window_seconds: float, hop_seconds: float) -> float:
    """Seconds from a window's start to the hop its embedding stands for: the hop around the window's centre,
    so that consecutive windows tile the stream hop by hop."""
    return (window_seconds - hop_seconds) / 2


class StreamWindower:
    """Cuts an endless stream, fed in chunks of any size, into the grid's windows as soon as each is whole."""

    def __init__(self, grid: WindowGrid):
        self.grid = grid
        self._buffer = np.zeros(0, dtype=np.float32)
        self._next_index = 0
        self._buffer_start = 0  # stream sample at which _buffer begins

    @property
    def samples_seen(self) -> int:
        return self._buffer_start + len(self._buffer)

    def push(self, chunk: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (window index, window samples) for every window that `chunk` completes."""
        self._buffer = np.concatenate([self._buffer, np.asarray(chunk, dtype=np.float32)])
        grid = self.grid
        while True:
            begin = self._next_index * grid.hop - self._buffer_start
            if begin + grid.window > len(self._buffer):
                break
            yield self._next_index, self._buffer[begin : begin + grid.window].copy()
            self._next_index += 1
        drop = self._next_index * grid.hop - self._buffer_start
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._buffer_start += drop
