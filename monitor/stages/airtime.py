"""A live input's time, shared by single streams (monitor.stages.ingest) and multiplex programs
(monitor.stages.mux): the clock that maps samples to stream offsets and UTC air times, dead air, and the windows
cut and placed by them."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np

from monitor.metrics import Metrics
from monitor.options import IngestOptions
from monitor.records import AudioWindow
from monitor.stages.resumption import RESUME_KEEP_MAX_SECONDS, Resumption
from monitor.stages.windows import StreamWindower, WindowGrid

log = logging.getLogger(__name__)


class DeadAir:
    """Counts and logs runs of silent windows that last at least `min_seconds`."""

    def __init__(self, stream_id: str, options: IngestOptions, hop_seconds: float, metrics: Metrics | None):
        self.stream_id, self.options, self.hop, self.metrics = stream_id, options, hop_seconds, metrics
        self.run = 0.0  # seconds of the current silent run

    def observe(self, window: np.ndarray, offset: float) -> None:
        rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64))))
        if 20 * np.log10(max(rms, 1e-10)) >= self.options.silence_dbfs:
            self.end(offset)
            return
        self.run += self.hop
        minimum = self.options.dead_air_seconds
        if self.run >= minimum:
            added = self.run if self.run - self.hop < minimum else self.hop  # the whole run once it qualifies
            if self.metrics:
                self.metrics.silence_seconds.labels(self.stream_id).inc(added)
            if added > self.hop:
                log.warning("dead air on %s since stream offset %.1f s", self.stream_id, offset - self.run + self.hop)

    def end(self, offset: float) -> None:
        if self.run >= self.options.dead_air_seconds:
            log.info("dead air on %s ended at stream offset %.1f s after %.1f s", self.stream_id, offset, self.run)
        self.run = 0.0


# A live connection's start is placed (its base and its first windows' air times fixed) once its anchor has held, not
# dropping by more than SETTLE_TOLERANCE_SECONDS, for SETTLE_SECONDS of arrivals, or SETTLE_MAX_SECONDS after it began
# (a server that sends faster than real time lowers it for ever).
SETTLE_SECONDS = 1.0
SETTLE_TOLERANCE_SECONDS = 0.05
NOTED_RISE_SECONDS = 0.25  # an anchor that rises by more at once is logged: audio lost, or a clock stepped (drift creeps)
SETTLE_MAX_SECONDS = 2.0


class StreamClock:
    """Maps a connection's samples to stream offsets and UTC air times.

    A recording whose air start is known (`air_start`, UTC epoch seconds: monitor.stages.sources) airs from then,
    however fast it is read. Any other file read as fast as it decodes airs from the moment it was opened. A live
    (or paced) source is
    anchored at the earliest moment consistent with when its samples arrived: sample s cannot have been
    on air later than it reached us, so the anchor is the minimum of (arrival - s / rate) over the arrivals of the
    last `memory` seconds. Within that memory it only falls: arrivals late for a while (a network stall, a busy
    reader catching up) move nothing. Beyond it, audio that keeps arriving later than the anchor says moves it
    later: a source whose clock runs slow (its air times fell behind the wall clock, 4 s a day at 50 ppm), audio lost
    inside the connection (a fallback mount's switch, segments skipped), this host's clock stepped forward. Air times
    follow it; stream offsets, which count the connection's audio, do not.
    After a reconnect, the stream offset resumes at the wall-clock time elapsed since the stream began
    (never less than the audio already delivered, and the input time known to have passed unheard), so gaps
    show in offsets as they did on air: the difference of the connection's anchor and the first connection's.

    A live connection often begins with a burst of audio that aired before it opened: an Icecast server's
    burst-on-connect, an HLS playlist's last segments (FFmpeg starts three segments behind the live edge). Its
    first chunk's arrival says it aired seconds later than it did, and a base taken there put every window after
    a reconnection that much late (3-4 s after an HLS server was down for 4 s, with 2 s segments). So the base
    follows the anchor until the connection's first offset is taken, and `settled` says when the anchor has stopped
    falling: a connection's windows are held until then (ClockedWindows). A first connection's offsets start at 0
    whatever its anchor.
    """

    def __init__(self, sample_rate: int, live: bool, air_start: float | None = None, memory: float = IngestOptions.anchor_memory_seconds,
                 stream_id: str = ""):
        self.rate, self.live, self.air_start, self.memory, self.stream_id = sample_rate, live, air_start, memory, stream_id
        self.first_anchor: float | None = None  # where stream offset 0 aired: the first connection's anchor, lowered as anchors settle
        self.end_offset = 0.0  # stream offset just after the last delivered sample
        self.base = 0.0  # stream offset of this connection's sample 0
        self.anchor = 0.0  # UTC epoch of this connection's sample 0
        self.received = 0  # samples this connection delivered
        self.unheard = 0.0  # input seconds known to have passed without audio before this connection's first sample
        self.floor = 0.0  # the least base this connection may take: the audio delivered and the input time known unheard
        self.placed = False  # this connection's first offset was taken: its base is fixed
        self.began = self.arrived = self.lowered = 0.0  # this connection's first arrival, its last, and the last that lowered its anchor
        # what the arrivals of the last `memory` seconds say of the anchor: (second, least said then), rising from the
        # least said since any second before it, so the first is the anchor
        self.said: deque[tuple[int, float]] = deque()

    def connect(self, unheard: float = 0.0) -> None:
        """A new connection, or audio back after `unheard` seconds of the input without it (a program that left a
        multiplex: a file read faster than real time cannot tell them by the wall clock)."""
        self.received = -1  # the first chunk sets base and anchor
        self.unheard = unheard

    def chunk(self, n_samples: int, now: float) -> None:
        if self.received < 0:
            self.received, self.placed = 0, False
            self.floor = self.end_offset + self.unheard
            self.began = self.lowered = now
            self.said.clear()
            self.anchor = self.air_start if self.air_start is not None else now - (n_samples / self.rate if self.live else 0.0)
            if self.first_anchor is None:
                self.first_anchor = self.anchor
            self.base = max(self.floor, self.anchor - self.first_anchor)
            if self.air_start is not None:  # a recording's audio back after an absence aired where it resumes in the recording
                self.anchor = self.air_start + self.base
        self.received += n_samples
        self.arrived = now
        if self.live and self.air_start is None:
            self._move_anchor(self._remembered(now - self.received / self.rate))
        self.end_offset = self.base + self.received / self.rate

    def _remembered(self, arrival_says: float) -> float:
        """The least the arrivals of the last `memory` seconds, this one's included, say of the anchor (a sliding
        minimum, kept per second: a few hundred numbers a stream)."""
        second = int(self.arrived)
        while self.said and self.said[-1][1] >= arrival_says:
            self.said.pop()
        if not self.said or self.said[-1][0] != second:
            self.said.append((second, arrival_says))
        while second - self.said[0][0] > self.memory:
            self.said.popleft()
        return self.said[0][1]

    def _move_anchor(self, least_said: float) -> None:
        """The anchor moved to what the remembered arrivals say of it; the base with it while this connection is
        unplaced (a rise is only ever seen long after that)."""
        if least_said < self.anchor - SETTLE_TOLERANCE_SECONDS:
            self.lowered = self.arrived
        elif least_said > self.anchor + NOTED_RISE_SECONDS:
            log.info("stream %s: its audio has arrived %.2f s later than its clock said for %g s; its air times follow (audio lost "
                     "in the connection, or the source's clock or this host's moved)", self.stream_id, least_said - self.anchor, self.memory)
        self.anchor = least_said
        if not self.placed:
            self.base = max(self.floor, self.anchor - self.first_anchor)
        self.first_anchor = min(self.first_anchor, self.anchor - self.base)  # offset 0's air time, as the anchor settles

    @property
    def ahead(self) -> float:
        """How far this live connection's audio ran ahead of the wall clock (s): the burst it opened with (audio a server
        sent at once, which aired before it opened), less the time that burst took to arrive; 0 for a source read as fast
        as it decodes."""
        return self._lead() if self.live and self.received > 0 else 0.0

    def came_as_it_plays(self) -> bool:
        """Whether this connection's audio, whatever the source said of itself, arrived at the pace it plays, as a live
        stream's does: ahead of the wall clock by no more than the longest burst ingest allows for (a file downloads far
        faster)."""
        return self.received > 0 and self._lead() <= RESUME_KEEP_MAX_SECONDS

    def _lead(self) -> float:
        return self.received / self.rate - (self.arrived - self.began)

    @property
    def settled(self) -> bool:
        """Whether this connection's start is known as well as its arrivals will tell: its burst is over."""
        if not self.live or self.air_start is not None:
            return True
        return self.arrived - self.lowered >= SETTLE_SECONDS or self.arrived - self.began >= SETTLE_MAX_SECONDS

    def offset(self, seconds_in_connection: float) -> float:
        self.placed = True
        return self.base + seconds_in_connection

    def air_time(self, seconds_in_connection: float) -> float:
        return self.anchor + seconds_in_connection


class ClockedWindows:
    """A stream's audio cut into windows, each numbered as it is cut and placed in stream and air time by the stream's
    clock once the clock has settled (StreamClock.settled): a live connection's first windows wait up to
    SETTLE_MAX_SECONDS for the burst it opened with to arrive, for they aired before it opened; placed as they came,
    a station joined three HLS segments behind its live edge had its first windows 4-6 s late. A live stream's new
    connection (`resumable`) is first judged by a Resumption: one that repeats what was delivered goes on unbroken, the
    repeat dropped. Shared by a single stream's reader and a multiplex program's, which differ in when they connect,
    not in how their windows are timed. `after_gap` marks the next window cut; `seq` counts windows cut."""

    def __init__(self, stream_id: str, grid: WindowGrid, options: IngestOptions, metrics: Metrics | None, live: bool,
                 air_start: float | None = None, resumable: bool = False):
        self.stream_id, self.grid, self.metrics = stream_id, grid, metrics
        self.clock = StreamClock(grid.sample_rate, live, air_start, options.anchor_memory_seconds, stream_id)
        self.dead_air = DeadAir(stream_id, options, grid.hop_seconds, metrics)
        self.resumption = Resumption(grid.sample_rate) if resumable else None
        self.windower = StreamWindower(grid)
        self.seq, self.after_gap = 0, False
        self._held: list[tuple[int, float, np.ndarray, bool]] = []  # seq, start in its connection (s), samples, after_gap
        self._placed: deque[AudioWindow] = deque()

    def connect(self, unheard: float = 0.0, resumable: bool = False) -> None:
        """A new connection, or audio back after `unheard` seconds of the input without it (StreamClock.connect): a fresh
        cut, a gap if windows came before; the windows held from before are placed by the clock they were cut on. A live
        stream's new connection (`resumable`) is judged first: its audio is held until the Resumption can tell."""
        self._release_judged()
        self._place()
        if resumable and self.resumption is not None and self.seq > 0:
            self.resumption.reconnected()
        else:
            self._fresh_cut(unheard)

    def push(self, chunk: np.ndarray) -> None:
        """`chunk` arrived now: its windows cut, and placed with those held once the clock has settled."""
        if self.resumption is not None and self.resumption.judging:
            verdict = self.resumption.judge(chunk)
            if verdict is None:
                return
            continues, chunk = verdict
            if continues:  # it repeated what was delivered: nothing was lost, the stream goes on unbroken
                log.info("stream %s resumed where it broke off", self.stream_id)
                self.after_gap = False
            else:
                self._fresh_cut(0.0)
        self._deliver(chunk)

    def _fresh_cut(self, unheard: float) -> None:
        self.windower = StreamWindower(self.grid)
        self.clock.connect(unheard)
        self.after_gap = self.after_gap or self.seq > 0

    def _deliver(self, chunk: np.ndarray) -> None:
        self.clock.chunk(len(chunk), time.time())
        self._cut(self.windower.push(chunk))
        if self.resumption is not None:
            self.resumption.delivered(chunk)
            self.resumption.keep_bursts_of(self.clock.ahead)
        if self.clock.settled:
            self._place()

    def _release_judged(self) -> None:
        """A connection judged no longer (it ended, or another began): what it held, as new audio after a gap."""
        if self.resumption is not None and self.resumption.judging and (verdict := self.resumption.cut_short()) is not None:
            self._fresh_cut(0.0)
            self._deliver(verdict[1])

    def _cut(self, windows: Iterable[tuple[int, np.ndarray]]) -> None:
        for index, samples in windows:
            self._held.append((self.seq, self.grid.start(index), samples, self.after_gap))
            self.seq, self.after_gap = self.seq + 1, False

    def _place(self) -> None:
        """The held windows placed by the clock as it stands, ready to `take`."""
        for seq, start, samples, after_gap in self._held:
            window = AudioWindow(self.stream_id, seq, self.clock.offset(start), self.clock.air_time(start), samples, after_gap)
            self.dead_air.observe(samples, window.offset)
            self._placed.append(window)
        self._held.clear()

    def take(self) -> Iterator[AudioWindow]:
        """The windows placed and not yet taken, in order, each counted as ingested as it is taken."""
        while self._placed:
            window = self._placed.popleft()
            if self.metrics:
                self.metrics.windows_ingested.labels(self.stream_id).inc()
            yield window

    def end(self) -> None:
        """The connection is over, or the program left the multiplex: its held windows placed as the clock stands, and a
        dead-air run ended."""
        self._release_judged()
        self._place()
        self.dead_air.end(self.clock.end_offset)
