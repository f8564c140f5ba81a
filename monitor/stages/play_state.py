"""The play state machine's records: its settings, what it needs of the catalog, alignments, the open play, the airing
and a stream's whole state, which round-trips through JSON so that a worker can keep it in Redis and
another carry on from it (monitor.stages.plays decides, monitor.stages.play_runs measures runs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import orjson

from encoders import CLASSES
from monitor.catalog import Catalog, CatalogError
from monitor.constants import DEFAULT_HOP_SECONDS, DEFAULT_K, NOTICE_CONFIDENCE
from monitor.records import Neighbour, WindowHits
from monitor.stages.calibration import Calibration, calibrate
from monitor.stages.matcher import Match

RECENT_WINDOWS = 4  # OpenPlay.recent remembers the support of this many latest windows


STATE_VERSION = 7  # 2 added OpenPlay.first_support_offset and .published, 3 the airing, 4 the herald, 5 the hits' backgrounds,
# 6 OpenPlay.measured, 7 the ingest run followed and the progress; older states are still read


class TrackLike(Protocol):
    seconds: float  # the whole track's length
    metadata: dict[str, Any]


@dataclass(frozen=True)
class CatalogInfo:
    """What the state machine needs of the catalog: the matcher's calibration (it makes confidences
    comparable across catalogs) and each track's length and metadata (None for an unknown track).
    Build a new one when the catalog reloads."""

    calibration: Calibration
    track: Callable[[str], TrackLike | None]

    @classmethod
    def of(cls, catalog: Catalog, k: int = DEFAULT_K) -> "CatalogInfo":
        """The catalog's calibration for `k` neighbours a window (what its windows are searched for)."""
        def track(track_id: str) -> TrackLike | None:
            try:
                return catalog.track(track_id)
            except CatalogError:  # removed from the catalog since it was matched
                return None

        return cls(calibrate(catalog, k), track)


@dataclass(frozen=True)
class PlayConfig:
    window_seconds: float = 1.0  # the stream's window and hop (the encoder's)
    hop_seconds: float = DEFAULT_HOP_SECONDS
    history_seconds: float = 12.0
    match_seconds: tuple[float, ...] = (2.0, 3.0, 6.0, 12.0)  # recent stretches matched, shortest first: a short one
    # finds a new play soonest, a long one finds a weak (noisy, talked-over) play that a short one cannot
    min_windows: int = 4  # supporting windows that open a play (about 2 s at a 0.5 s hop) ...
    confirm_windows: int = 2  # consecutive windows that must find the same line before a play opens
    max_hole_windows: int = 2  # windows without support inside a run: noise thins a play's support out (2 rather than 1:
    # on the broadcasts, plays under noise open sooner, with the same phantoms and withdrawals)
    # ... at this calibrated confidence (1 - the false-match rate of one query). A stream asks the matcher
    # again at every window, so it needs a stricter one than a single query (the matcher's 0.99).
    min_confidence: float = 0.999
    notice_confidence: float = NOTICE_CONFIDENCE  # a run this sure opens a play provisionally (a first notice, withdrawn if
    # it stops short); its started event waits until the matcher finds it at `min_confidence` (or the patient rule holds),
    # as do a newcomer ending another play and a run carrying a reported play on. At `min_confidence` (the default)
    # no play is noticed before it is sure
    patient_windows: int = 12  # or this many supports in the history at `patient_confidence`: a noisy play is
    patient_confidence: float = 0.99  # found a little later, and seconds of chance resemblance open nothing
    tolerance_seconds: float = 0.75  # |ref_time - predicted| for a neighbour to support the alignment
    level_ratio: float = 0.8  # a support must reach this fraction of the play's (a run's) mean similarity: in a
    # small catalog a neighbour of the track lands on the line by chance, but far below the play's own level
    min_play_seconds: float = 5.0  # supported seconds before a play is reported: non-catalog music that quotes a
    # catalog track, or talk, lands on a line for a few seconds (phantoms of up to ~5 s measured); the cost is
    # this much detection latency, since `started` waits until the evidence spans it
    dropout_seconds: float = 15.0  # a play survives this long without support on its line (talk-over, a noise
    # burst, lost hits) and resumes as the same play; its ended event waits until this has passed
    takeover_seconds: float = 3.0  # similar tracks (one composer, one game) take turns on a line for a second or two
    same_airing_seconds: float = 3.0  # a line of the play's own track found this near its own after a dropout (a refit
    # lands a little off) carries the play's fit on; a farther one (a loop, a reprise) moves a young play onto it, and
    # an older one follows it on while its events keep reporting the alignment measured before
    realign_seconds: float = 20.0  # until its support spans this, a play may move to another line of its track: music
    # repeats itself, so its first seconds can fit an alignment one loop away. Later, another line is the track again
    start_edge_seconds: float = 0.25  # the music starts this long after the first supporting window does
    end_edge_seconds: float = 0.0  # and ends this long before the last supporting window does
    snap_start_seconds: float = 5.0  # a voice over the intro hides the track's first seconds
    snap_end_seconds: float = 3.0
    switch_run_seconds: float = 10.0  # of a stream published by two ingest runs, the other is followed once the one followed
    # is silent this long in its air time (its ingest was killed); around the followed run's windows, the other's are
    # set aside (monitor.stages.ingest_runs). Longer than a live stream's first burst, by which air times step back


@dataclass(frozen=True)
class Line:
    """An alignment t_ref = speed * t + intercept, with the evidence behind it."""

    track_id: str
    speed: float
    intercept: float
    confidence: float

    @classmethod
    def of(cls, match: Match, window_seconds: float) -> "Line":
        """The matcher's line through window centres, as a line through window starts. Its ref_start is
        clamped at the track's start, its ref_end (at query_end, after the last window) is not."""
        intercept = match.ref_end + (match.speed - 1) * window_seconds / 2 - match.speed * match.query_end
        return cls(match.track_id, match.speed, intercept, match.confidence)

    def ref(self, t: float) -> float:
        return self.speed * t + self.intercept

    def stream_time(self, ref: float) -> float:
        return (ref - self.intercept) / self.speed


@dataclass(frozen=True)
class OpenPlay:
    play_id: str
    line: Line
    start_seq: int
    stream_start: float
    start_snapped: bool  # stream_start is where the line puts the track's start: refined as the line is
    air_minus_offset: float  # air_time - offset on this connection: maps stream time to UTC
    score: float  # sum of the similarities of the supporting windows (the fit's: score / fit[0] is their mean)
    first_support_offset: float
    last_support_seq: int
    last_support_offset: float
    published: bool  # its started event is out: it had `min_play_seconds` of support. Until then it is
    # provisional, and a provisional play that ends leaves no event at all
    recent: int  # support of the latest RECENT_WINDOWS windows as bits, newest in bit 0
    fit: tuple[float, float, float, float, float]  # n, sum t, sum r, sum t*t, sum t*r of confirmed supports,
    # t counted from stream_start (hours of stream time would drown a least-squares fit in rounding)
    measured: Line | None = None  # the alignment its events report, when `line` is another one of its airing that
    # it follows (a reprise or an edit heard a loop away, past its first seconds); None: `line`

    @property
    def reported(self) -> Line:
        return self.line if self.measured is None else self.measured


@dataclass(frozen=True)
class Airing:
    """One stream's music stretch and hourly content counts, which monitor.stages.airing decides on."""

    music_seq: int = -1  # first window of the current music stretch; -1: none
    music_start: float = 0.0  # its offset
    music_last: float = 0.0  # offset of the stretch's newest music window
    music_windows: int = 0
    air_minus_offset: float = 0.0  # maps the stretch's stream time to UTC
    catalog_open: bool = False  # a published catalog play is open: nothing here is unknown
    catalog_until: float = 0.0  # where the last catalog play ended: no unknown stretch starts before
    hour: float = -1.0  # the UTC hour counted, -1: none yet
    hour_seq: int = -1  # the first window counted in it
    counts: tuple[int, ...] = (0,) * len(CLASSES)  # windows of each class, in CLASSES order

    def to_json(self) -> list:
        return [self.music_seq, self.music_start, self.music_last, self.music_windows, self.air_minus_offset,
                self.catalog_open, self.catalog_until, self.hour, self.hour_seq, list(self.counts)]

    @classmethod
    def from_json(cls, data: list) -> "Airing":
        *fields, counts = data
        return cls(*fields, tuple(counts))


@dataclass(frozen=True)
class Following:
    """The ingest run whose windows a stream's state follows (monitor.stages.ingest_runs)."""

    run: int | None = None  # None: none yet, or its windows carry no run (published by an earlier release)
    air_time: float | None = None  # of its newest window taken; None: not known (a state saved by an earlier release)
    ended: bool = False  # its EndOfStream came
    newest: int | None = None  # the latest-started run the stream has followed: a run started later is a new one

    def to_json(self) -> list:
        return [self.run, self.air_time, self.ended, self.newest]


@dataclass(frozen=True)
class StreamState:
    stream_id: str
    last_seq: int = -1
    floor_offset: float = 0.0  # the first offset after the latest gap: no play starts before it
    history: tuple[WindowHits, ...] = ()
    play: OpenPlay | None = None
    spent: tuple[tuple[str, int], ...] = ()  # (track, seq): that track's hits up to seq belong to a closed play
    pending: tuple[str, float, float, int] | None = None  # (track, speed, intercept, times found) of a line not yet confirmed
    airing: Airing = Airing()  # its music stretch and hourly content counts (monitor.stages.airing)
    herald: OpenPlay | None = None  # a newcomer announced provisionally while `play` still held the stream
    following: Following = Following()
    progress: int = -1  # grows with every window and end taken, as last_seq does until following another run moves last_seq back

    @property
    def position(self) -> int:
        """How far the stream's tracking got, which orders saves of its state (StateStore.save)."""
        return max(self.last_seq, self.progress)

    def to_json(self) -> str:
        # orjson: a worker saves every stream's state at every batch, and the standard library's float
        # formatting took a tenth of its CPU. The text is the standard library's; NumPy scalars are written as numbers.
        return orjson.dumps(
            {
                "v": STATE_VERSION,
                "stream_id": self.stream_id,
                "last_seq": self.last_seq,
                "floor_offset": self.floor_offset,
                "history": [
                    [h.seq, h.offset, h.air_time, h.after_gap, [[n.track_id, n.ref_time, n.similarity] for n in h.neighbours], h.background]
                    for h in self.history
                ],
                "play": _play_json(self.play),
                "herald": _play_json(self.herald),
                "spent": self.spent,
                "pending": self.pending,
                "airing": self.airing.to_json(),
                "following": self.following.to_json(),
                "progress": self.progress,
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        ).decode()

    @classmethod
    def from_json(cls, text: str) -> "StreamState":
        data = orjson.loads(text)
        if data.get("v") not in (1, 2, 3, 4, 5, 6, STATE_VERSION):
            raise ValueError(f"play state version {data.get('v')!r} is not {STATE_VERSION}; it was saved by another release")
        stream_id = data["stream_id"]
        # Hits saved before version 5 lack their backgrounds, without which the matcher would be sure of them too
        # soon: they are let go (seconds of context; the open play is kept).
        history = tuple(
            WindowHits(stream_id, seq, offset, air, tuple(Neighbour(*n) for n in neighbours), gap, background=behind)
            for seq, offset, air, gap, neighbours, behind in (data["history"] if data["v"] >= 5 else ())
        )
        play = data["play"]
        if play is not None and data["v"] == 1:  # version 1 announced every play as it opened
            play = {**play, "first_support_offset": play["stream_start"], "published": True}
        spent = tuple((track, seq) for track, seq in data["spent"])
        pending = None if data["pending"] is None else tuple(data["pending"])
        airing = Airing.from_json(data["airing"]) if "airing" in data else Airing()
        following = Following(*data["following"]) if "following" in data else Following()
        return cls(stream_id, data["last_seq"], data["floor_offset"], history, _play_of(play), spent, pending, airing, _play_of(data.get("herald")),
                   following, data.get("progress", -1))


def _play_json(play: OpenPlay | None) -> dict[str, Any] | None:
    return None if play is None else asdict(play)


def _play_of(data: dict[str, Any] | None) -> OpenPlay | None:
    if data is None:
        return None
    measured = data.get("measured")
    return OpenPlay(**{**data, "line": Line(**data["line"]), "fit": tuple(data["fit"]), "measured": measured and Line(**measured)})


@dataclass(frozen=True)
class Run:
    """The windows of a history that support one line, back from the newest support."""

    line: Line
    supports: tuple[tuple[WindowHits, float, float], ...]  # (window, similarity, matched ref_time), oldest first
