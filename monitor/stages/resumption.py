"""A live stream reconnected after a short drop often starts by repeating audio it already delivered (Icecast's
burst-on-connect, an HLS reader three segments behind the live edge): recognised, the repeat is dropped and the
stream goes on as if it had never broken, so a play on air across the drop stays one play and nothing is heard
twice. Shared by a single stream's reader (monitor.stages.ingest) and a multiplex program's (monitor.stages.mux)."""

from __future__ import annotations

import math

import numpy as np

from monitor.constants import SILENCE_RMS

# A reconnected live stream's audio is compared with the last RESUME_KEEP_SECONDS delivered (longer than an Icecast
# burst of 64 KiB at 128 kb/s: 4 s), or RESUME_KEEP_BURSTS times the longest burst a connection opened with if that is
# longer (a burst is bytes: 64 KiB is 22 s of a 24 kb/s stream), up to RESUME_KEEP_MAX_SECONDS; from
# RESUME_SETTLE_SECONDS on, over RESUME_MATCH_SECONDS, a normalised cross-correlation of RESUME_MIN_CORRELATION or more
# is a repeat (other music scores far less).
RESUME_KEEP_SECONDS = 20.0
RESUME_KEEP_BURSTS = 2  # a burst is measured as it arrives, less the time it takes: in full only over a fast link
RESUME_KEEP_MAX_SECONDS = 60.0  # 3.8 MB a stream at 16 kHz, however far a server that sends too fast runs ahead
RESUME_SETTLE_SECONDS = 0.25
RESUME_MATCH_SECONDS = 1.0
RESUME_MIN_CORRELATION = 0.9


class Resumption:
    """Recognises a reconnected live stream that starts by repeating audio it already delivered. The last
    RESUME_KEEP_SECONDS of delivered audio are kept in a ring (`delivered`); after `reconnected`, the new connection's
    audio is held (`judge`) until its audio from RESUME_SETTLE_SECONDS on (past the decoder's start-up) is found in
    them by normalised cross-correlation, or not. Music repeats itself, so a second of it also matches a bar or a loop
    heard earlier: a repeat is taken only once the new audio matches the delivered audio from there to its very end.

    A server's burst is a size in bytes (Icecast's 64 KiB by default), so it lasts longer the lower the bitrate: the ring
    grows to hold RESUME_KEEP_BURSTS of the longest burst seen (`keep_bursts_of`). A burst that began before the audio
    kept was not recognised: a 25 s burst after a drop was heard again after a gap (22.7 s of it twice)."""

    def __init__(self, sample_rate: int):
        self.rate = sample_rate
        self.ring = np.zeros(int(RESUME_KEEP_SECONDS * sample_rate), np.float32)
        self.filled = self.end = 0
        self.settle, self.match = int(RESUME_SETTLE_SECONDS * sample_rate), int(RESUME_MATCH_SECONDS * sample_rate)
        self._held: list[np.ndarray] | None = None  # a new connection's audio while it is judged
        self._size = 0  # its samples
        self._repeat: int | None = None  # the repeat's length in it, once one is found

    def keep_bursts_of(self, burst_seconds: float) -> None:
        """A connection opened with a burst of `burst_seconds` (StreamClock.ahead): keep enough audio for its repeat."""
        size = int(min(RESUME_KEEP_BURSTS * burst_seconds, RESUME_KEEP_MAX_SECONDS) * self.rate)
        if size > len(self.ring):
            kept = self._tail().astype(np.float32)
            self.ring, self.filled, self.end = np.zeros(size, np.float32), 0, 0
            self.delivered(kept)

    def delivered(self, chunk: np.ndarray) -> None:
        chunk = chunk[-len(self.ring):]
        first = min(len(chunk), len(self.ring) - self.end)
        self.ring[self.end : self.end + first] = chunk[:first]
        self.ring[: len(chunk) - first] = chunk[first:]
        self.end = (self.end + len(chunk)) % len(self.ring)
        self.filled = min(len(self.ring), self.filled + len(chunk))

    def reconnected(self) -> None:
        """A new connection begins: its audio is judged (`judge`) before it is delivered."""
        self._held, self._size, self._repeat = [], 0, None

    @property
    def judging(self) -> bool:
        return self._held is not None

    def judge(self, chunk: np.ndarray) -> tuple[bool, np.ndarray] | None:
        """`chunk` of the connection being judged: None while it cannot tell yet; then whether the connection continues the
        delivered audio, and its audio so far, less the repeat where it does."""
        assert self._held is not None, "judge() before reconnected()"
        self._held.append(chunk)
        self._size += len(chunk)
        if self._size < self.settle + self.match or (self._repeat is not None and self._size < self._repeat):
            return None  # too little to look, or not yet the whole repeat, to check it to the end
        audio = np.concatenate(self._held)
        if self._repeat is None:
            self._repeat = self._repeat_length(audio)
            if self._repeat is None:
                return self._verdict(audio, repeat=None)
            if self._size < self._repeat:
                return None
        return self._verdict(audio, self._repeat if self._repeats_to_the_end(audio, self._repeat) else None)

    def cut_short(self) -> tuple[bool, np.ndarray] | None:
        """The connection ended while it was judged: its audio, as new (it ended within the repeat, or too soon to tell)."""
        if not self._held:
            self._held = None
            return None
        return self._verdict(np.concatenate(self._held), repeat=None)

    def _verdict(self, audio: np.ndarray, repeat: int | None) -> tuple[bool, np.ndarray]:
        self._held, self._size, self._repeat = None, 0, None
        return repeat is not None, audio[repeat or 0 :]

    def _tail(self) -> np.ndarray:
        """The delivered audio kept, oldest first."""
        return np.roll(self.ring, -self.end)[len(self.ring) - self.filled :].astype(np.float64)

    def _repeats_to_the_end(self, audio: np.ndarray, repeat: int) -> bool:
        """Whether `audio` from the settle point to `repeat` is the delivered audio's last samples, every
        RESUME_MATCH_SECONDS of it (silence in both passes): a loop heard earlier parts from it somewhere."""
        new = audio[self.settle : repeat].astype(np.float64)
        old = self._tail()[-len(new):]
        for begin in range(0, len(new), self.match):
            a, b = new[begin : begin + self.match], old[begin : begin + self.match]
            if np.sqrt(np.mean(b**2)) < SILENCE_RMS and np.sqrt(np.mean(a**2)) < SILENCE_RMS:
                continue
            if np.dot(a, b) < RESUME_MIN_CORRELATION * math.sqrt(np.dot(a, a) * np.dot(b, b)):
                return False
        return True

    def _repeat_length(self, audio: np.ndarray) -> int | None:
        """Samples at the start of `audio` that repeat the end of the delivered audio; None if it does not."""
        tail = self._tail()
        piece = audio[self.settle : self.settle + self.match].astype(np.float64)
        if len(piece) < self.match or len(tail) < self.match or np.sqrt(np.mean(piece**2)) < SILENCE_RMS:
            return None  # too little, or silence, which repeats anywhere
        n = 1 << (len(tail) + len(piece)).bit_length()
        dots = np.fft.irfft(np.fft.rfft(tail, n) * np.conj(np.fft.rfft(piece, n)), n)[: len(tail) - len(piece) + 1]
        energy = np.concatenate([[0.0], np.cumsum(tail**2)])
        norms = np.sqrt(np.maximum(energy[len(piece) :] - energy[: len(tail) - len(piece) + 1], 1e-12) * np.sum(piece**2))
        correlation = dots / norms
        best = int(np.argmax(correlation))
        if correlation[best] < RESUME_MIN_CORRELATION:
            return None
        return len(tail) - best + self.settle
