"""The play-event state machine: per-window catalog hits of one stream in, started/ended play events out.

`PlayTracker(config).update(state, hits, catalog)` is pure: it returns a new `StreamState` and the events
the window caused, and never touches its input. The whole per-stream state is one value that round-trips
through `to_json`/`from_json`, so a worker can keep it in Redis and another can carry on from it.

How a play is found and bounded (times are window starts in stream seconds; t_ref = speed * t + intercept):
- The state keeps the last `history_seconds` of hits. A window supports an alignment when one of its
  neighbours is the track within `tolerance_seconds` of the position the alignment predicts.
- With no play open, the matcher (match_hits, with its calibrated confidence) runs on the latest 2, 3, 6
  and 12 s: a short stretch finds a new track soonest, a long one finds a weak (noisy, talked-over) one.
  Where in the track it plays is then taken from the longest context (music repeats itself, so a few
  seconds can fit an alignment one loop away). A play opens when that alignment has `min_windows`
  supports in one run (holes of up to `max_hole_windows` allowed) reaching the newest window or the one
  before at the matcher's sure confidence, or `patient_windows` supports at a lower one, and when
  `confirm_windows` windows in a row found it (a chance line rarely survives the next window). A cheap
  necessary test spares the matcher on windows that cannot open anything.
- While a window supports the play and so did one of the three before it, the play extends (lone supports,
  which chance produces in a small catalog, do not) and the alignment is refitted by least squares over
  all its supports. A support counts only at `level_ratio` of the play's mean similarity or more (and a run
  starts at none below its own): in a small catalog a neighbour of the track lands near the line by chance,
  far below the track's own similarity, and would carry the play on past its end. A window that holds the
  track elsewhere may move the play to a better-supported alignment of the same track.
- A play is provisional until its support spans `min_play_seconds`: only then is its `started` event
  published (back-dated: its boundaries come from the evidence, so the rule costs latency, not accuracy).
  Non-catalog music that quotes a catalog track, or talk, lands on a line for a few seconds; a provisional
  play that ends leaves no event at all, so no play is ever withdrawn and consumers need no such event.
- One airing, one play: a play survives `dropout_seconds` without support (a DJ over the intro, a noise
  burst, lost hits) and carries on when its line is heard again; the ended event is decided only once that
  gap has passed. Another line of its track found meanwhile is the same airing (a line refitted a little
  off, or one loop away), unless it starts the track from the top after the play fell silent: the track
  played again. The play ends sooner, after `takeover_seconds`, if another track's run spanning
  `min_play_seconds` is found meanwhile, and at once at a gap of the stream.
- Boundaries come from the alignment, not from hit windows: the first and last supporting windows,
  corrected by `start_edge_seconds` / `end_edge_seconds` (a window matches once part of it holds the
  track; the figures are medians measured with `airtrace bench broadcast`), or the track's own
  start or end where the alignment puts it within `snap_start_seconds` / `snap_end_seconds`.
- Replays are harmless: a window whose seq is not newer than the last one seen changes nothing, and ids
  are deterministic (monitor.events), so reprocessing yields the same events.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from monitor.catalog import Catalog, CatalogError
from monitor.events import PlayEvent, play_id
from monitor.stages.calibration import Calibration, calibrate
from monitor.stages.matcher import SPEED_RANGE, Match, match_hits
from monitor.records import Neighbour, WindowHits

STATE_VERSION = 2  # 2 added OpenPlay.first_support_offset and .published; version 1 states are still read


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
    def of(cls, catalog: Catalog) -> "CatalogInfo":
        def track(track_id: str) -> TrackLike | None:
            try:
                return catalog.track(track_id)
            except CatalogError:  # removed from the catalog since it was matched
                return None

        return cls(calibrate(catalog), track)


@dataclass(frozen=True)
class PlayConfig:
    window_seconds: float = 1.0  # the stream's window and hop (the encoder's)
    hop_seconds: float = 0.5
    history_seconds: float = 12.0
    match_seconds: tuple[float, ...] = (2.0, 3.0, 6.0, 12.0)  # recent stretches matched, shortest first: a short one
    # finds a new play soonest, a long one finds a weak (noisy, talked-over) play that a short one cannot
    min_windows: int = 4  # supporting windows that open a play (about 2 s at a 0.5 s hop) ...
    confirm_windows: int = 2  # consecutive windows that must find the same line before a play opens
    max_hole_windows: int = 1  # windows without support inside a run (noise thins a play's support out)
    # ... at this calibrated confidence (1 - the false-match rate of one query). A stream asks the matcher
    # again at every window, so it needs a stricter one than a single query (the matcher's 0.99).
    min_confidence: float = 0.999
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
    # lands a little off) carries the play's fit on; a farther one (a loop, a reprise) moves the play onto it
    realign_seconds: float = 20.0  # until its support spans this, a play may move to another line of its track: music
    # repeats itself, so its first seconds can fit an alignment one loop away. Later, another line is the track again
    start_edge_seconds: float = 0.25  # the music starts this long after the first supporting window does
    end_edge_seconds: float = 0.0  # and ends this long before the last supporting window does
    snap_start_seconds: float = 5.0  # a voice over the intro hides the track's first seconds
    snap_end_seconds: float = 3.0

    @classmethod
    def for_grid(cls, window_seconds: float, hop_seconds: float, **overrides: Any) -> "PlayConfig":
        return cls(window_seconds=window_seconds, hop_seconds=hop_seconds, **overrides)


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
    recent: int  # support of the latest windows as bits, newest in bit 0
    fit: tuple[float, float, float, float, float]  # n, sum t, sum r, sum t*t, sum t*r of confirmed supports,
    # t counted from stream_start (hours of stream time would drown a least-squares fit in rounding)


@dataclass(frozen=True)
class StreamState:
    stream_id: str
    last_seq: int = -1
    floor_offset: float = 0.0  # the first offset after the latest gap: no play starts before it
    history: tuple[WindowHits, ...] = ()
    play: OpenPlay | None = None
    spent: tuple[tuple[str, int], ...] = ()  # (track, seq): that track's hits up to seq belong to a closed play
    pending: tuple[str, float, float, int] | None = None  # (track, speed, intercept, times found) of a line not yet confirmed

    def to_json(self) -> str:
        play = None
        if self.play is not None:
            play = {**asdict(self.play), "line": asdict(self.play.line)}
        return json.dumps(
            {
                "v": STATE_VERSION,
                "stream_id": self.stream_id,
                "last_seq": self.last_seq,
                "floor_offset": self.floor_offset,
                "history": [
                    [h.seq, h.offset, h.air_time, h.after_gap, [[n.track_id, n.ref_time, n.similarity] for n in h.neighbours]]
                    for h in self.history
                ],
                "play": play,
                "spent": self.spent,
                "pending": self.pending,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> "StreamState":
        data = json.loads(text)
        if data.get("v") not in (1, STATE_VERSION):
            raise ValueError(f"play state version {data.get('v')!r} is not {STATE_VERSION}; it was saved by another release")
        stream_id = data["stream_id"]
        history = tuple(
            WindowHits(stream_id, seq, offset, air, tuple(Neighbour(*n) for n in neighbours), gap)
            for seq, offset, air, gap, neighbours in data["history"]
        )
        play = data["play"]
        if play is not None:
            if data["v"] == 1:  # version 1 announced every play as it opened
                play = {**play, "first_support_offset": play["stream_start"], "published": True}
            play = OpenPlay(**{**play, "line": Line(**play["line"]), "fit": tuple(play["fit"])})
        spent = tuple((track, seq) for track, seq in data["spent"])
        pending = None if data["pending"] is None else tuple(data["pending"])
        return cls(stream_id, data["last_seq"], data["floor_offset"], history, play, spent, pending)


@dataclass(frozen=True)
class Run:
    """The windows of a history that support one line, back from the newest support."""

    line: Line
    supports: tuple[tuple[WindowHits, float, float], ...]  # (window, similarity, matched ref_time), oldest first


class PlayTracker:
    def __init__(self, config: PlayConfig = PlayConfig()):
        self.config = config

    def update(self, state: StreamState, hits: WindowHits, catalog: CatalogInfo) -> tuple[StreamState, list[PlayEvent]]:
        """Feed one window's hits (in seq order); returns the new state and the events it caused."""
        if hits.seq <= state.last_seq:
            return state, []
        events: list[PlayEvent] = []
        if hits.after_gap:
            state, events = self.close(state, catalog)
            state = replace(state, floor_offset=hits.offset)
        history = tuple(h for h in state.history if h.offset > hits.offset - self.config.history_seconds) + (hits,)
        spent = tuple((track, seq) for track, seq in state.spent if seq >= history[0].seq)
        state = replace(state, history=history, last_seq=hits.seq, spent=spent)
        if state.play is not None:
            state, ended = self._follow(state, hits, catalog)
            events += ended
            if state.play is not None:
                return state, events
        state, run = self._candidate(state, catalog)
        if run is not None:
            state, started = self._open(state, run, hits, catalog)
            events += started
        return state, events

    def close(self, state: StreamState, catalog: CatalogInfo) -> tuple[StreamState, list[PlayEvent]]:
        """End the open play (at a gap or the end of the stream) and forget the history."""
        events = [] if state.play is None else self._ending(state, state.play, catalog)
        return replace(state, history=(), play=None, spent=(), pending=None), events

    def _support(self, hits: WindowHits, line: Line) -> tuple[float, float] | None:
        """(similarity, ref_time) of the neighbour that puts `hits` on `line`, or None."""
        predicted = line.ref(hits.offset)
        best = None
        for n in hits.neighbours:
            on_line = n.track_id == line.track_id and abs(n.ref_time - predicted) <= self.config.tolerance_seconds
            if on_line and (best is None or n.similarity > best[0]):
                best = (n.similarity, n.ref_time)
        return best

    def _follow(self, state: StreamState, hits: WindowHits, catalog: CatalogInfo) -> tuple[StreamState, list[PlayEvent]]:
        """Extend the open play with this window, or end it after a dropout or a takeover."""
        play = state.play
        assert play is not None
        support = self._support(hits, play.line)
        if support is not None and support[0] < self.config.level_ratio * play.score / play.fit[0]:
            support = None  # a chance neighbour on the line, well below the play's level
        recent = ((play.recent << 1) | (support is not None)) & 0b1111
        if support is not None and recent & 0b1110:
            play = self._extend(play, hits, support)
        play = replace(play, recent=recent)
        if support is None and any(n.track_id == play.line.track_id for n in hits.neighbours):
            play = self._realign(replace(state, play=play), play, catalog)
        state, started = self._announce(replace(state, play=play), play, hits, catalog)
        play = state.play
        assert play is not None
        silent = hits.offset - play.last_support_offset
        if silent >= self.config.dropout_seconds:
            return self._end(state, play), started + self._ending(state, play, catalog)
        if silent >= self.config.takeover_seconds:
            state, run = self._candidate(state, catalog)
            if run is not None and run.line.track_id == play.line.track_id and not self._restart(state, play, run, catalog):
                state, announced = self._announce(state, self._rejoin(state, play, run, catalog), hits, catalog)
                return state, started + announced
            if run is not None and run.supports[-1][0].offset - run.supports[0][0].offset >= self.config.min_play_seconds:
                ended = self._ending(state, play, catalog)  # only a newcomer that cannot be a phantom ends our play
                state, opened = self._open(self._end(state, play), run, hits, catalog)
                return state, [*started, *ended, *opened]
        return state, started

    def _announce(self, state: StreamState, play: OpenPlay, hits: WindowHits, catalog: CatalogInfo) -> tuple[StreamState, list[PlayEvent]]:
        """Publish the started event of a provisional play once its support spans `min_play_seconds`."""
        if play.published or play.last_support_offset - play.first_support_offset < self.config.min_play_seconds:
            return replace(state, play=play), []
        play = replace(play, published=True)
        return replace(state, play=play), [self._started(state, play, hits, catalog)]

    def _ending(self, state: StreamState, play: OpenPlay, catalog: CatalogInfo) -> list[PlayEvent]:
        """The ended event of a published play; a provisional one ends unheard of (it was never reported)."""
        return [self._ended(state, play, catalog)] if play.published else []

    def _extend(self, play: OpenPlay, hits: WindowHits, support: tuple[float, float]) -> OpenPlay:
        similarity, ref = support
        n, st, sr, stt, str_ = play.fit
        t = hits.offset - play.stream_start
        fit = (n + 1, st + t, sr + ref, stt + t * t, str_ + t * ref)
        return replace(
            play, line=self._refit(play.line, fit, play.stream_start), fit=fit, score=play.score + similarity,
            last_support_seq=hits.seq, last_support_offset=hits.offset,
        )

    def _refit(self, line: Line, fit: tuple[float, float, float, float, float], origin: float) -> Line:
        """Least squares through the supports (t from `origin`) once they span a few seconds; before that
        a speed cannot be told from hits on a 0.5 s grid, so take the usual one, 1, and fit the intercept."""
        n, st, sr, stt, str_ = fit
        variance = stt / n - (st / n) ** 2
        speed = 1.0
        if variance * 12 >= 4.0**2:  # a span of about 4 s or more (uniform spacing)
            fitted = (str_ / n - st / n * sr / n) / variance
            speed = fitted if SPEED_RANGE[0] <= fitted <= SPEED_RANGE[1] else line.speed
        return replace(line, speed=speed, intercept=sr / n - speed * (st / n + origin))

    def _candidate(self, state: StreamState, catalog: CatalogInfo) -> tuple[StreamState, Run | None]:
        """A run to open a play with, once `confirm_windows` windows in a row found the same line: a chance
        line through the latest hits rarely survives the next window, a real one grows stronger."""
        run = self._find_run(state, catalog)
        if run is None:
            return replace(state, pending=None), None
        count, now = 1, state.history[-1].offset
        if state.pending is not None:
            track, speed, intercept, seen = state.pending
            if track == run.line.track_id and abs(speed * now + intercept - run.line.ref(now)) <= self.config.tolerance_seconds:
                count = seen + 1
        if count >= self.config.confirm_windows:
            return replace(state, pending=None), run
        return replace(state, pending=(run.line.track_id, run.line.speed, run.line.intercept, count)), None

    def _end(self, state: StreamState, play: OpenPlay) -> StreamState:
        return replace(state, play=None, spent=state.spent + ((play.line.track_id, state.last_seq),))

    def _usable(self, state: StreamState) -> list[WindowHits]:
        """The history without hits already spent on closed plays."""
        spent = dict(state.spent)
        out = []
        for h in state.history:
            keep = tuple(n for n in h.neighbours if h.seq > spent.get(n.track_id, -1))
            out.append(h if len(keep) == len(h.neighbours) else replace(h, neighbours=keep))
        return out

    def _find_run(self, state: StreamState, catalog: CatalogInfo) -> Run | None:
        """The best line through the usable history that is still playing and supported by enough windows."""
        if not self._worth_matching(state):
            return None
        history = self._usable(state)
        newest, tried = history[-1], 0
        for seconds in self.config.match_seconds:
            recent = [h for h in history if h.offset > newest.offset - seconds]
            if len(recent) < self.config.min_windows or len(recent) == tried:
                continue
            tried = len(recent)
            matches = match_hits(recent, self.config.window_seconds, calibration=catalog.calibration,
                                 min_confidence=min(self.config.min_confidence, self.config.patient_confidence))
            for match in matches:
                sure = match.confidence >= self.config.min_confidence
                run = self._best_run(history, match.track_id, catalog)
                if run is not None and (sure or self._count(history, run.line) >= self.config.patient_windows):
                    return replace(run, line=replace(run.line, confidence=match.confidence))  # the confidence that found it
        return None

    def _count(self, history: Sequence[WindowHits], line: Line) -> int:
        """Windows of `history` that support `line`, holes allowed (noise thins a play's support out)."""
        return sum(self._support(h, line) is not None for h in history)

    def _best_run(self, history: Sequence[WindowHits], track: str, catalog: CatalogInfo) -> Run | None:
        """The line of `track` best supported by the whole history that still plays now. A short stretch
        says that a track plays; where in the track takes the longest context, as music repeats itself."""
        own = [replace(h, neighbours=tuple(n for n in h.neighbours if n.track_id == track)) for h in history]
        for match in match_hits(own, self.config.window_seconds, calibration=catalog.calibration, min_confidence=0.0):
            run = self._run(history, Line.of(match, self.config.window_seconds))
            if run is not None and history[-1].seq - run.supports[-1][0].seq <= 1 and len(run.supports) >= self.config.min_windows:
                return run
        return None

    def _worth_matching(self, state: StreamState) -> bool:
        """A cheap necessary condition for `_find_run` to succeed, so the matcher runs only when it might.

        A run ends at the newest window or the one before, so one of their neighbours (t, r) is on the line,
        and every other support (t', r') lies within two tolerances of r + speed * (t' - t) for some speed
        of the matcher's range; `_walk` also allows at most `max_hole_windows` between supports. So count,
        per anchor, the windows that could be such supports in an unbroken chain back from it.
        """
        spent = dict(state.spent)
        low, high = SPEED_RANGE
        reach = 2 * self.config.tolerance_seconds
        newest = state.history[-1].seq
        points: dict[str, list[tuple[int, float, float]]] = {}
        anchors = []
        for h in state.history:
            for n in h.neighbours:
                if h.seq > spent.get(n.track_id, -1):
                    points.setdefault(n.track_id, []).append((h.seq, h.offset, n.ref_time))
                    if h.seq >= newest - 1:
                        anchors.append((n.track_id, h.seq, h.offset, n.ref_time))
        for track, seq, t, r in anchors:
            reachable = sorted({
                other_seq for other_seq, other_t, other_r in points[track]
                if other_seq < seq and min(low * (other_t - t), high * (other_t - t)) - reach
                <= other_r - r <= max(low * (other_t - t), high * (other_t - t)) + reach
            }, reverse=True)
            if self._chain(seq, reachable) + 1 >= self.config.min_windows:
                return True
        return False

    def _chain(self, seq: int, earlier: Sequence[int]) -> int:
        """How many of `earlier` (newest first) follow `seq` back with holes `_walk` would cross."""
        count = 0
        for other in earlier:
            if seq - other > self.config.max_hole_windows + 1:
                break
            count, seq = count + 1, other
        return count

    def _run(self, history: Sequence[WindowHits], line: Line) -> Run | None:
        """The supports of `line` back from the newest (see `_walk`), with the line refitted to them twice."""
        run = None
        for _ in range(2):
            run = self._walk(history, line)
            if run is None:
                return None
            line = run.line
        return run

    def _walk(self, history: Sequence[WindowHits], line: Line) -> Run | None:
        """Walk back from the newest supporting window while holes between supports stay short; a lone
        support at the far end (chance, in a small catalog) does not move the start back."""
        supports: list[tuple[WindowHits, float, float]] = []
        for h in reversed(history):
            if supports and supports[-1][0].seq - h.seq > self.config.max_hole_windows + 1:
                break
            support = self._support(h, line)
            if support is not None:
                supports.append((h, *support))
        if supports:  # nor do supports at the far end well below the run's level (chance, as in `_follow`)
            level = self.config.level_ratio * sum(sim for _, sim, _ in supports) / len(supports)
            while len(supports) > 1 and supports[-1][1] < level:
                supports.pop()
        while len(supports) > 1 and supports[-2][0].seq - supports[-1][0].seq > 1:
            supports.pop()
        if not supports:
            return None
        supports.reverse()
        origin = supports[0][0].offset
        return Run(self._refit(line, _fit([(h.offset - origin, ref) for h, _, ref in supports]), origin), tuple(supports))

    def _open(self, state: StreamState, run: Run, hits: WindowHits, catalog: CatalogInfo) -> tuple[StreamState, list[PlayEvent]]:
        first, last = run.supports[0][0], run.supports[-1][0]
        start, snapped = self._start(state, run, catalog)
        play = OpenPlay(
            play_id=play_id(state.stream_id, run.line.track_id, first.seq),
            line=run.line,
            start_seq=first.seq,
            stream_start=start,
            start_snapped=snapped,
            air_minus_offset=first.air_time - first.offset,
            score=sum(sim for _, sim, _ in run.supports),
            first_support_offset=first.offset,
            last_support_seq=last.seq,
            last_support_offset=last.offset,
            published=False,
            recent=0b1 if last.seq == hits.seq else 0b10,
            fit=_fit([(h.offset - start, ref) for h, _, ref in run.supports]),
        )
        return self._announce(state, play, hits, catalog)

    def _started(self, state: StreamState, play: OpenPlay, hits: WindowHits, catalog: CatalogInfo) -> PlayEvent:
        """The started event of `play`, decided at the window `hits`."""
        line, start = play.line, self._play_start(state, play)
        return PlayEvent(
            play_id=play.play_id, state="started", stream_id=state.stream_id, track_id=line.track_id,
            started_at=play.air_minus_offset + start, stream_start=start, ref_start=max(0.0, line.ref(start)),
            speed=line.speed, score=play.score, confidence=line.confidence,
            decided_offset=hits.offset + self.config.window_seconds, track=_metadata(catalog.track(line.track_id)),
        )

    def _play_start(self, state: StreamState, play: OpenPlay) -> float:
        """Where the play starts, with a snapped start refined by the line as it is known now."""
        if play.start_snapped:
            refined = max(play.line.stream_time(0.0), state.floor_offset)
            if abs(refined - play.stream_start) <= self.config.snap_start_seconds:
                return refined
        return play.stream_start

    def _start(self, state: StreamState, run: Run, catalog: CatalogInfo) -> tuple[float, bool]:
        """Where the play starts, and whether that is the track's own start: the first supporting window
        corrected for the window's edge, or where the alignment puts the track's start if that is near."""
        start = max(run.supports[0][0].offset + self.config.start_edge_seconds, state.floor_offset)
        track_start = run.line.stream_time(0.0)
        if catalog.track(run.line.track_id) is not None and abs(track_start - start) <= self.config.snap_start_seconds:
            return max(track_start, state.floor_offset), True
        return start, False

    def _realign(self, state: StreamState, play: OpenPlay, catalog: CatalogInfo) -> OpenPlay:
        """Move the play to a better line of its own track. Music repeats itself, so the first seconds of
        a play can fit an alignment one loop away; when another line of the track is supported by clearly
        more windows since the play opened, that one is where the track really is. The start moves with
        it when either line put it at the track's own start; else the earlier evidence stands, since the
        new line's run may reach back less far (a noisy stretch, or the history's end)."""
        if not self._young(play):
            return play
        history = self._usable(state)
        run = self._best_run(history, play.line.track_id, catalog)
        now = history[-1].offset
        if run is None or abs(run.line.ref(now) - play.line.ref(now)) <= self.config.tolerance_seconds:
            return play
        since = [h for h in history if h.seq >= play.start_seq]
        current, better = self._count(since, play.line), self._count(since, run.line)
        if better < max(current + self.config.min_windows, 1.5 * current):  # loops offer near-equal lines: keep ours
            return play
        return self._move(state, play, run, catalog)

    def _restart(self, state: StreamState, play: OpenPlay, run: Run, catalog: CatalogInfo) -> bool:
        """Whether `run`, of the play's own track, is the track played again: it starts the track from its top
        after the play fell silent, and the play is past its first seconds. Any other line of the track found
        while the play is silent is the same airing, heard again after a dropout on a line refitted a little
        off ours, or one loop away."""
        return not self._young(play) and run.supports[0][0].seq >= play.last_support_seq and self._start(state, run, catalog)[1]

    def _rejoin(self, state: StreamState, play: OpenPlay, run: Run, catalog: CatalogInfo) -> OpenPlay:
        """The play carried on by `run` of its own airing: near its line, the run's newer supports join the
        fit (keeping the speed the play's long evidence measured); far from it, the play moves to the run's line."""
        now = state.history[-1].offset
        if self._young(play) or abs(run.line.ref(now) - play.line.ref(now)) > self.config.same_airing_seconds:
            return self._move(state, play, run, catalog)
        for h, similarity, ref in run.supports:
            if h.seq > play.last_support_seq:
                play = self._extend(play, h, (similarity, ref))
        return play

    def _young(self, play: OpenPlay) -> bool:
        """Whether the play may still move to another line of its track (see `realign_seconds`)."""
        return play.last_support_offset - play.first_support_offset < self.config.realign_seconds

    def _move(self, state: StreamState, play: OpenPlay, run: Run, catalog: CatalogInfo) -> OpenPlay:
        """The play on the line of `run`, its evidence restarted from that run's."""
        history = state.history
        start, snapped = self._start(state, run, catalog)
        if not snapped and not play.start_snapped or run.supports[0][0].seq == history[0].seq:
            start, snapped = min(start, play.stream_start), snapped and start <= play.stream_start
        first, last = run.supports[0][0], run.supports[-1][0]
        return replace(
            play, line=replace(run.line, confidence=play.line.confidence), stream_start=start, start_snapped=snapped,
            first_support_offset=min(play.first_support_offset, first.offset), last_support_seq=last.seq, last_support_offset=last.offset,
            score=sum(sim for _, sim, _ in run.supports), fit=_fit([(h.offset - start, ref) for h, _, ref in run.supports]),
        )

    def _ended(self, state: StreamState, play: OpenPlay, catalog: CatalogInfo) -> PlayEvent:
        """The ended event of `play`, as of the newest window in `state`."""
        line, config = play.line, self.config
        seen_until = state.history[-1].offset + config.window_seconds if state.history else play.last_support_offset + config.window_seconds
        start = self._play_start(state, play)
        end = play.last_support_offset + config.window_seconds - config.end_edge_seconds
        info = catalog.track(line.track_id)
        if info is not None:
            track_end = line.stream_time(info.seconds)
            if abs(track_end - end) <= config.snap_end_seconds:
                end = track_end
        end = max(min(end, seen_until), start)
        ref_end = line.ref(end) if info is None else min(line.ref(end), info.seconds)
        return PlayEvent(
            play_id=play.play_id, state="ended", stream_id=state.stream_id, track_id=line.track_id,
            started_at=play.air_minus_offset + start, stream_start=start,
            ref_start=max(0.0, line.ref(start)), speed=line.speed, score=play.score,
            confidence=line.confidence, decided_offset=seen_until, ended_at=play.air_minus_offset + end,
            stream_end=end, ref_end=ref_end, track=_metadata(info),
        )


def _metadata(info: TrackLike | None) -> dict[str, Any]:
    return dict(info.metadata or {}) if info is not None else {}


def _fit(points: list[tuple[float, float]]) -> tuple[float, float, float, float, float]:
    """Least-squares sums (n, sum t, sum r, sum t*t, sum t*r) of (t, r) points."""
    return (float(len(points)), sum(t for t, _ in points), sum(r for _, r in points),
            sum(t * t for t, _ in points), sum(t * r for t, r in points))
