"""Run geometry for the play state machine: which windows support an alignment, runs of them back from
the newest window, the best run of a track, and least-squares fits of an alignment through its supports.
Pure functions of a stream's history and the settings; monitor.stages.plays makes the decisions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

from monitor.records import WindowHits
from monitor.stages.matcher import SPEED_RANGE, match_hits
from monitor.stages.play_state import CatalogInfo, Line, PlayConfig, Run, StreamState

FitSums = tuple[float, float, float, float, float]  # n, sum t, sum r, sum t*t, sum t*r of (t, r) points
# Supports must spread over this many seconds before a refit measures the speed (below it, a speed cannot be
# told from hits on a 0.5 s grid and the usual 1 is taken). Longer than the matcher's MIN_FIT_SPAN (3 s): a
# play's line is refitted at every window, and a speed measured on too short a span would drag it off.
FIT_SPAN_SECONDS = 4.0


class Runs:
    """The run geometry under one PlayConfig."""

    def __init__(self, config: PlayConfig):
        self.config = config

    def support(self, hits: WindowHits, line: Line) -> tuple[float, float] | None:
        """(similarity, ref_time) of the neighbour that puts `hits` on `line`, or None."""
        predicted = line.ref(hits.offset)
        best = None
        for n in hits.neighbours:
            on_line = n.track_id == line.track_id and abs(n.ref_time - predicted) <= self.config.tolerance_seconds
            if on_line and (best is None or n.similarity > best[0]):
                best = (n.similarity, n.ref_time)
        return best

    def usable(self, state: StreamState) -> list[WindowHits]:
        """The history without hits already spent on closed plays."""
        spent = dict(state.spent)
        out = []
        for h in state.history:
            keep = tuple(n for n in h.neighbours if h.seq > spent.get(n.track_id, -1))
            out.append(h if len(keep) == len(h.neighbours) else replace(h, neighbours=keep))
        return out

    def find(self, state: StreamState, catalog: CatalogInfo) -> Run | None:
        """The best line through the usable history that is still playing and supported by enough windows."""
        if not self.worth_matching(state):
            return None
        history = self.usable(state)
        runs: dict[str, Run | None] = {}  # each track's best run: the same whichever stretch found the track
        for recent in self.stretches(history):
            matches = match_hits(recent, self.config.window_seconds, calibration=catalog.calibration,
                                 min_confidence=min(self.config.min_confidence, self.config.patient_confidence, self.config.notice_confidence))
            for match in matches:
                noticed = match.confidence >= min(self.config.min_confidence, self.config.notice_confidence)
                if match.track_id not in runs:
                    runs[match.track_id] = self.best(history, match.track_id, catalog)
                run = runs[match.track_id]
                if run is not None and (noticed or self.count(history, run.line) >= self.config.patient_windows):
                    return replace(run, line=replace(run.line, confidence=match.confidence))  # the confidence that found it
        return None

    def sure(self, state: StreamState, line: Line, catalog: CatalogInfo) -> float | None:
        """The confidence at which `line` is as sure as a play must be to be reported, not only noticed, or None:
        the matcher finds its track at `min_confidence` in one of the recent stretches, or `patient_windows`
        windows support it at `patient_confidence` (then its own confidence). Without notices below the sure level
        every play opened sure, whatever its history holds now."""
        if line.confidence >= self.config.min_confidence or self.config.notice_confidence >= self.config.min_confidence:
            return line.confidence
        history = self.usable(state)
        if self.count(history, line) >= self.config.patient_windows and line.confidence >= self.config.patient_confidence:
            return line.confidence
        for recent in self.stretches(history):
            matches = match_hits(recent, self.config.window_seconds, calibration=catalog.calibration, min_confidence=self.config.min_confidence)
            if found := [m.confidence for m in matches if m.track_id == line.track_id]:
                return found[0]
        return None

    def stretches(self, history: Sequence[WindowHits]) -> Iterator[list[WindowHits]]:
        """The latest `match_seconds` of `history`, shortest first, each holding `min_windows` or more and more
        windows than the one before (a history shorter than a stretch gives it once)."""
        newest, tried = history[-1], 0
        for seconds in self.config.match_seconds:
            recent = [h for h in history if h.offset > newest.offset - seconds]
            if len(recent) >= self.config.min_windows and len(recent) > tried:
                tried = len(recent)
                yield recent

    def count(self, history: Sequence[WindowHits], line: Line) -> int:
        """Windows of `history` that support `line`, holes allowed (noise thins a play's support out)."""
        return sum(self.support(h, line) is not None for h in history)

    def best(self, history: Sequence[WindowHits], track: str, catalog: CatalogInfo) -> Run | None:
        """The line of `track` best supported by the whole history that still plays now. A short stretch
        says that a track plays; where in the track takes the longest context, as music repeats itself."""
        own = [replace(h, neighbours=tuple(n for n in h.neighbours if n.track_id == track)) for h in history]
        for match in match_hits(own, self.config.window_seconds, calibration=catalog.calibration, min_confidence=0.0):
            run = self.run(history, Line.of(match, self.config.window_seconds))
            if run is not None and history[-1].seq - run.supports[-1][0].seq <= 1 and len(run.supports) >= self.config.min_windows:
                return run
        return None

    def worth_matching(self, state: StreamState) -> bool:
        """A cheap necessary condition for `find` to succeed, so the matcher runs only when it might.

        A run ends at the newest window or the one before, so one of their neighbours (t, r) is on the line,
        and every other support (t', r') lies within two tolerances of r + speed * (t' - t) for some speed
        of the matcher's range; `walk` also allows at most `max_hole_windows` between supports. So count,
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
            if self.chain(seq, reachable) + 1 >= self.config.min_windows:
                return True
        return False

    def chain(self, seq: int, earlier: Sequence[int]) -> int:
        """How many of `earlier` (newest first) follow `seq` back with holes `walk` would cross."""
        count = 0
        for other in earlier:
            if seq - other > self.config.max_hole_windows + 1:
                break
            count, seq = count + 1, other
        return count

    def run(self, history: Sequence[WindowHits], line: Line) -> Run | None:
        """The supports of `line` back from the newest (see `walk`), with the line refitted to them twice."""
        run = None
        for _ in range(2):
            run = self.walk(history, line)
            if run is None:
                return None
            line = run.line
        return run

    def walk(self, history: Sequence[WindowHits], line: Line) -> Run | None:
        """Walk back from the newest supporting window while holes between supports stay short; a lone
        support at the far end (chance, in a small catalog) does not move the start back."""
        supports: list[tuple[WindowHits, float, float]] = []
        for h in reversed(history):
            if supports and supports[-1][0].seq - h.seq > self.config.max_hole_windows + 1:
                break
            support = self.support(h, line)
            if support is not None:
                supports.append((h, *support))
        if supports:  # nor do supports at the far end well below the run's level (chance, as in `PlayTracker._follow`)
            level = self.config.level_ratio * sum(sim for _, sim, _ in supports) / len(supports)
            while len(supports) > 1 and supports[-1][1] < level:
                supports.pop()
        while len(supports) > 1 and supports[-2][0].seq - supports[-1][0].seq > 1:
            supports.pop()
        if not supports:
            return None
        supports.reverse()
        origin = supports[0][0].offset
        return Run(refit(line, fit_sums([(h.offset - origin, ref) for h, _, ref in supports]), origin), tuple(supports))


def refit(line: Line, fit: FitSums, origin: float) -> Line:
    """Least squares through the supports (t from `origin`) once they span a few seconds; before that
    a speed cannot be told from hits on a 0.5 s grid, so take the usual one, 1, and fit the intercept."""
    n, st, sr, stt, str_ = fit
    variance = stt / n - (st / n) ** 2
    speed = 1.0
    if variance * 12 >= FIT_SPAN_SECONDS**2:  # supports spread evenly over FIT_SPAN_SECONDS or more
        fitted = (str_ / n - st / n * sr / n) / variance
        speed = fitted if SPEED_RANGE[0] <= fitted <= SPEED_RANGE[1] else line.speed
    return replace(line, speed=speed, intercept=sr / n - speed * (st / n + origin))


def fit_sums(points: list[tuple[float, float]]) -> FitSums:
    """Least-squares sums (n, sum t, sum r, sum t*t, sum t*r) of (t, r) points."""
    return (float(len(points)), sum(t for t, _ in points), sum(r for _, r in points),
            sum(t * t for t, _ in points), sum(t * r for t, r in points))
