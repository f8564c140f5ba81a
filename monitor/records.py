"""The small frozen records that stages hand each other: ingest -> windows -> hits -> plays.

Times are seconds. A window's `offset` is where it starts in its stream (or query clip); a neighbour's
`ref_time` is where its reference window starts in the track. `air_time` is UTC epoch seconds.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

MAX_ID_BYTES = 255  # ids travel in Kafka message headers and keys, and are printed in one console line


def check_id(value: object, what: str) -> str:
    """The one rule for track and stream ids, returned unchanged when it holds: 1 to MAX_ID_BYTES bytes
    of UTF-8, printable (no tab, newline or other control or format character), no leading or trailing
    space. Ids are keys in catalogs, Redis and Kafka and columns in console output; anything else breaks
    one of them. Raises ValueError naming the problem and the fix."""
    rule = f"a {what} is 1 to {MAX_ID_BYTES} bytes of printable text without leading or trailing spaces"
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} {value!r} is empty or not text; {rule}")
    shown = repr(value) if len(value) <= 60 else repr(value[:60]) + f"... ({len(value)} characters)"
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        raise ValueError(f"{what} {shown} is {size} bytes long; {rule}")
    bad = next((c for c in value if not c.isprintable() and c != " "), None)
    if bad is not None:
        raise ValueError(f"{what} {shown} contains the unprintable character {bad!r} (U+{ord(bad):04X}); {rule}")
    if value != value.strip():
        raise ValueError(f"{what} {shown} starts or ends with a space; {rule}")
    return value


@dataclass(frozen=True)
class AudioWindow:
    """One window of a stream at the encoder's rate, stamped where and when it was on air."""

    stream_id: str
    seq: int  # window number since ingest of this stream began; never reused, also across reconnects
    offset: float  # stream time of the window start
    air_time: float  # UTC epoch seconds of the window start
    samples: np.ndarray = field(repr=False)
    after_gap: bool = False  # the stream dropped or stalled just before: no run of evidence spans this point
    run: int | None = None  # the ingest run that cut it: the number its windows are counted from (monitor.stages.ingest_runs)


@dataclass(frozen=True)
class Neighbour:
    """A reference window near a query window in embedding space."""

    track_id: str
    ref_time: float
    similarity: float


@dataclass(frozen=True)
class NeighbourTable:
    """A batch of query windows' nearest reference windows as arrays, best first: a batch is weighed whole
    (monitor.stages.search.backgrounds) before the few kept of each row become Neighbours, which cost a
    Python object each."""

    tracks: np.ndarray  # (n, k) track ordinals into track_ids; -1 where fewer than k were found
    ref_times: np.ndarray  # (n, k) seconds
    similarities: np.ndarray  # (n, k)
    track_ids: np.ndarray = field(repr=False)  # object array: a track ordinal's id

    def __len__(self) -> int:
        return len(self.tracks)

    def rows(self, k: int | None = None) -> list[tuple[Neighbour, ...]]:
        """Each query window's first `k` (all by default) neighbours."""
        names, columns = self.track_ids, slice(None, k)
        return [
            tuple(Neighbour(names[o], t, s) for o, t, s in zip(row_tracks, row_times, row_sims) if o >= 0)
            for row_tracks, row_times, row_sims in zip(self.tracks[:, columns].tolist(), self.ref_times[:, columns].tolist(),
                                                       self.similarities[:, columns].tolist())
        ]

    def part(self, begin: int, end: int) -> NeighbourTable:
        """The rows of query windows begin to end."""
        return NeighbourTable(self.tracks[begin:end], self.ref_times[begin:end], self.similarities[begin:end], self.track_ids)

    def of_tracks(self, track_ids: Collection[str]) -> np.ndarray:
        """Which neighbours are windows of these tracks, as an (n, k) mask."""
        return (self.tracks >= 0) & np.isin(self.track_ids[np.maximum(self.tracks, 0)], list(track_ids))


@dataclass(frozen=True)
class WindowHits:
    """The catalog's nearest reference windows for one query window."""

    stream_id: str
    seq: int
    offset: float
    air_time: float
    neighbours: tuple[Neighbour, ...]
    after_gap: bool = False
    content: str | None = None  # the content class the classifier heard (encoders.CLASSES); None without one
    # The window's embedding and its first hop of audio (int16), kept for music windows: what an unknown
    # stretch is searched and kept with. Audio stays in the process (it is not sent between workers).
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)
    audio: np.ndarray | None = field(default=None, repr=False, compare=False)
    # The similarity a hit must stand above to be evidence that a track plays: the window's nearness to the catalog
    # at large (monitor.stages.search.backgrounds). Noise and talk are near many reference windows at once.
    background: float = 0.0
    run: int | None = None  # the window's ingest run


@dataclass(frozen=True)
class EndOfStream:
    """A stream ended after window `seq - 1` (a file's end, or a stop): its open play closes. Ingest sends it
    after a stream's last window, Kafka carries it like a window, and a replayed one is caught by its seq."""

    stream_id: str
    seq: int
    run: int | None = None  # the ingest run that ended; None: whichever run of the stream is followed
