"""The matcher: per-window neighbours in; which tracks play, where, how fast and how surely, out.

A track playing in the query leaves hits on one straight line t_ref = speed * t_query + offset: every
window finds its own moment of the reference. Hough votes over (track, speed, offset) find candidate
lines, a weighted least-squares fit on each line's inliers refines them, and query windows are handed
out greedily to the best supported line, so a loop that repeats in a track cannot win over the
alignment the query actually follows, and the end of one song and the start of the next are two matches.

A score is the similarity-weighted seconds of query audio on the line, each similarity counted above its
window's background (monitor.stages.search.backgrounds); its confidence comes from the catalog's calibration
(monitor.stages.calibration). Pure: hits in, matches out.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from monitor.records import Neighbour, WindowHits
from monitor.stages.windows import WindowGrid

log = logging.getLogger(__name__)

SPEED_RANGE = (0.8, 1.25)
SIMILARITY_FLOOR = 1e-6  # a dissimilar neighbour is no evidence, never negative
TOLERANCE = 0.5  # seconds a hit may lie off its line: half a reference hop plus the encoder's jitter
MIN_CONFIDENCE = 0.99
MAX_SPEEDS = 63  # Hough speed bins at most (odd, so 1.0 is one); the least-squares refit recovers what coarser bins lose
MAX_LINES = 12  # candidate lines refined per call, and as many again per calibrated duration a longer query adds
LINES_PER_TRACK = 3  # distinct alignments of one track considered (loops, a track played twice)
CELLS_PER_LINE = 40  # voted cells looked at per line sought: a line's votes spill into neighbouring speeds and offsets
MIN_FIT_SPAN = 3.0  # seconds of inliers before the speed is fitted rather than taken from the vote
STRAY_GAP = 5.0  # seconds without support that cut a line's first or last few windows off from the rest of it
STRAY_WINDOWS = 2  # so few windows cut off so are chance hits on the line, outside the span it reports


class Confidence(Protocol):
    """What matching needs of a calibration (monitor.stages.calibration.Calibration): its search settings and
    the confidence of a score."""

    speed_range: tuple[float, float]
    tolerance: float
    durations: tuple[float, ...]  # query durations the null was measured at, ascending

    def confidence(self, score: float, duration: float) -> float:
        """Never lower for a higher score at one duration: `match_hits` skips queries that no score they
        could reach makes confident enough. `duration` is the query's span; beyond the longest of
        `durations`, `score` is the line's best stretch of that length."""
        ...


class MatchError(ValueError):
    """A query that cannot be matched (too short); the message says what is needed."""


@dataclass(frozen=True)
class Match:
    """One track found in the query: where in the query, where in the track, at which speed, how surely."""

    track_id: str
    query_start: float
    query_end: float
    ref_start: float
    ref_end: float
    speed: float
    score: float
    confidence: float

    def to_json(self) -> dict[str, Any]:
        return {
            "track_id": self.track_id,
            **{name: round(getattr(self, name), 3) for name in ("query_start", "query_end", "ref_start", "ref_end")},
            "speed": round(self.speed, 4),
            "score": round(self.score, 3),
            "confidence": round(self.confidence, 4),
        }


@dataclass(frozen=True)
class Alignment:
    """A line t_ref = speed * (t_query - origin) + offset (window centres) and the query windows on it."""

    track_id: str
    speed: float
    origin: float
    offset: float
    windows: np.ndarray  # indices into the hits, ascending
    similarities: np.ndarray  # each window's best similarity on the line
    score: float

    def ref_time(self, query_time: float) -> float:
        return self.speed * (query_time - self.origin) + self.offset


# ---- alignment --------------------------------------------------------------------------------


def align(hits: Sequence[WindowHits], window_seconds: float, speed_range: tuple[float, float] = SPEED_RANGE,
          tolerance: float = TOLERANCE, tracks: Collection[str] | None = None, max_lines: int = MAX_LINES,
          hop: float | None = None) -> list[Alignment]:
    """Every credible-or-not line in `hits`, best first, each query window on at most one line; only lines
    of `tracks` if given (the lines of other tracks are found by the vote but neither refined nor assigned).
    `hop` weighs each window's similarity; by default the hits' own (a query's windows with holes in it
    need the query's)."""
    flat = _Flat.of(hits, window_seconds, hop)
    if flat is None:
        return []
    peaks = [peak for peak in _hough_peaks(flat, speed_range, tolerance, max_lines) if tracks is None or flat.tracks[peak[0]] in tracks]
    lines = [_refine(flat, peak, speed_range, tolerance) for peak in peaks]
    return _assign(flat, [line for line in lines if line is not None])


@dataclass(frozen=True)
class _Flat:
    """All neighbours of all windows as parallel arrays; times are window centres, query ones centred."""

    tracks: list[str]
    track: np.ndarray
    window: np.ndarray
    x: np.ndarray  # query centre - origin
    ref: np.ndarray  # reference centre
    sim: np.ndarray
    origin: float
    span: float
    hop: float
    n_windows: int

    @classmethod
    def of(cls, hits: Sequence[WindowHits], window_seconds: float, hop: float | None = None) -> "_Flat | None":
        neighbours = [nb for h in hits for nb in h.neighbours]
        if not neighbours:
            return None
        tracks, track = np.unique([nb.track_id for nb in neighbours], return_inverse=True)
        window = np.repeat(np.arange(len(hits)), [len(h.neighbours) for h in hits])
        offsets = np.array([h.offset for h in hits], np.float64)
        origin = float(offsets.min() + offsets.max()) / 2 + window_seconds / 2
        return cls(
            tracks.tolist(), track, window, offsets[window] + window_seconds / 2 - origin,
            np.array([nb.ref_time for nb in neighbours]) + window_seconds / 2,
            np.maximum([nb.similarity - h.background for h in hits for nb in h.neighbours], SIMILARITY_FLOOR),
            origin, float(offsets.max() - offsets.min()), hop or _hop(offsets, window_seconds), len(hits),
        )


def _hop(offsets: np.ndarray, window_seconds: float) -> float:
    """The query's hop, which weighs each window's similarity in a line's score."""
    return max(statistics.median(np.diff(offsets).tolist()) if len(offsets) > 1 else window_seconds, 1e-6)  # numpy's: 10x the time


def _speed_grid(span: float, speed_range: tuple[float, float], tolerance: float) -> np.ndarray:
    """The fewest log-spaced speeds such that any speed in range lies within half a step of one, and half
    a step drifts at most tolerance / 2 from the query's middle to its ends. Steps centre on 1.0, so a
    short query, which cannot tell speeds apart, tries speed 1.0 alone instead of adding chance lines."""
    lo, hi = math.log(speed_range[0]), math.log(speed_range[1])
    needed = max(1, math.ceil((hi - lo) * max(span, 1e-9) / (2 * tolerance)))
    n = min(needed + 1 - needed % 2, MAX_SPEEDS)
    step = (hi - lo) / n
    centre = (hi + lo) / 2
    return np.exp(centre + step * (np.arange(n) - (n - 1) / 2))


def _hough_peaks(flat: _Flat, speed_range: tuple[float, float], tolerance: float, max_lines: int) -> list[tuple[int, float, float]]:
    """(track, speed, offset) of the best-voted lines: each window votes once per (track, speed, offset bin)
    with its best similarity there. Ties go to the speed nearest 1, which a short query cannot tell apart."""
    speeds = _speed_grid(flat.span, speed_range, tolerance)
    offset = flat.ref[None, :] - speeds[:, None] * flat.x[None, :]
    bins = np.floor(offset / tolerance).astype(np.int64)
    bins -= bins.min()
    n_bins = int(bins.max()) + 1
    speed_idx = np.broadcast_to(np.arange(len(speeds))[:, None], bins.shape)
    cell = ((speed_idx * len(flat.tracks) + flat.track[None, :]) * n_bins + bins).ravel()
    voter = cell * flat.n_windows + np.broadcast_to(flat.window, bins.shape).ravel()
    sims = np.broadcast_to(flat.sim, bins.shape).ravel()
    order = np.lexsort((-sims, voter))
    first = np.ones(len(order), bool)
    first[1:] = voter[order][1:] != voter[order][:-1]
    kept = order[first]
    cells, inverse = np.unique(cell[kept], return_inverse=True)
    votes = np.bincount(inverse, weights=sims[kept])
    centres = np.bincount(inverse, weights=sims[kept] * offset.ravel()[kept]) / votes
    cell_speed = cells // (len(flat.tracks) * n_bins)
    cell_track = cells // n_bins % len(flat.tracks)
    nearness = np.abs(np.log(speeds))[cell_speed]
    ranked = _contenders(np.lexsort((nearness, -votes)), cell_track, max_lines)

    peaks: list[tuple[int, float, float]] = []
    per_track: dict[int, list[float]] = {}
    for c in ranked:
        track = int(cell_track[c])
        speed, centre = float(speeds[cell_speed[c]]), float(centres[c])
        lines = per_track.setdefault(track, [])
        if len(lines) >= LINES_PER_TRACK or any(abs(centre - b) <= 2 * tolerance for b in lines):
            continue
        lines.append(centre)
        peaks.append((track, speed, centre))
        if len(peaks) >= max_lines:
            break
    return peaks


def _contenders(ranked: np.ndarray, cell_track: np.ndarray, max_lines: int) -> np.ndarray:
    """The voted cells, best first, that can hold one of the `max_lines` best lines: each track's best
    CELLS_PER_LINE per line it may have, of the `max_lines` tracks with the best cells. A long line's votes
    spill into neighbouring speeds and offsets: ranked all together, the cells of a montage's three longest
    chunks filled the first CELLS_PER_LINE per line sought, and a 17 s chunk that matched at confidence 1.0
    on its own got no line."""
    owner = cell_track[ranked]
    by_track = np.argsort(owner, kind="stable")  # each track's cells, best first
    firsts = np.flatnonzero(np.r_[True, owner[by_track][1:] != owner[by_track][:-1]])
    rank_in_track = np.empty(len(ranked), np.int64)
    rank_in_track[by_track] = np.arange(len(ranked)) - np.repeat(firsts, np.diff(np.r_[firsts, len(ranked)]))
    leaders = owner[np.sort(by_track[firsts])[:max_lines]]  # the tracks with the best cells
    return ranked[(rank_in_track < CELLS_PER_LINE * LINES_PER_TRACK) & np.isin(owner, leaders)]


def _refine(flat: _Flat, peak: tuple[int, float, float], speed_range: tuple[float, float], tolerance: float) -> Alignment | None:
    """Gather the track's hits within `tolerance` of the line, one per window, and refit the line to them."""
    track, speed, offset = peak
    on_track = flat.track == track
    x, ref, sim, window = flat.x[on_track], flat.ref[on_track], flat.sim[on_track], flat.window[on_track]
    by_quality = np.lexsort((-sim, window))  # per window, its most similar hit first
    x, ref, sim, window = x[by_quality], ref[by_quality], sim[by_quality], window[by_quality]
    chosen = np.zeros(0, np.int64)
    for _ in range(3):
        near = np.flatnonzero(np.abs(ref - (speed * x + offset)) <= tolerance)
        if not len(near):
            return None
        previous, chosen = chosen, near[np.concatenate(([True], window[near][1:] != window[near][:-1]))]
        if np.array_equal(previous, chosen):
            break
        speed, offset = _fit(x[chosen], ref[chosen], sim[chosen], speed, speed_range)
    return Alignment(flat.tracks[track], speed, flat.origin, offset, window[chosen], sim[chosen], 0.0)


def _fit(x: np.ndarray, ref: np.ndarray, weight: np.ndarray, speed: float, speed_range: tuple[float, float]) -> tuple[float, float]:
    """Weighted least squares ref = speed * x + offset; the speed stays put until the inliers span enough time."""
    total = weight.sum()
    if len(x) >= 3 and x[-1] - x[0] >= MIN_FIT_SPAN:
        xm, rm = weight @ x / total, weight @ ref / total
        dx = x - xm
        speed = min(max(float(weight @ (dx * (ref - rm)) / (weight @ (dx * dx))), speed_range[0]), speed_range[1])
    return speed, float(weight @ (ref - speed * x) / total)


def _assign(flat: _Flat, lines: list[Alignment]) -> list[Alignment]:
    """Hand each query window to the best-scoring line that holds it, best line first."""
    claimed = np.zeros(flat.n_windows, bool)
    result = []
    while lines:
        free = [~claimed[line.windows] for line in lines]
        scores = [float(line.similarities[f].sum()) * flat.hop for line, f in zip(lines, free)]
        best = int(np.argmax(scores))
        if scores[best] <= 0:
            break
        line, keep = lines.pop(best), free.pop(best)
        result.append(Alignment(line.track_id, line.speed, line.origin, line.offset, line.windows[keep], line.similarities[keep], scores[best]))
        claimed[line.windows[keep]] = True
    return result


# ---- matches ----------------------------------------------------------------------------------


def match_hits(hits: Sequence[WindowHits], window_seconds: float, *, calibration: Confidence,
               min_confidence: float = MIN_CONFIDENCE) -> list[Match]:
    """The tracks playing in consecutive query windows' hits, best first; [] when nothing is credible.

    Pure and fast (about a millisecond for 30 windows x 10 neighbours), for clips and for the sliding
    history of a live stream alike. `calibration` comes from `calibrate(catalog)`.

    A query longer than the calibration's longest null clip (a montage, a recorded hour) holds more tracks,
    each with its loops, so it gets MAX_LINES candidate lines more per such duration; and a line is scored by
    its best stretch of that duration, because chance gathers on a line over a longer query more than any
    measured null says, and the calibration weighs that score by how many such stretches the query had.
    It may also hold a track aired more often than LINES_PER_TRACK, so the windows outside every match are
    matched again, up to once per such duration (a recorded hour of a rotation gave 3 airings of each track).
    """
    if not hits:
        return []
    longest = calibration.durations[-1]
    span = hits[-1].offset - hits[0].offset + window_seconds
    tracks = None
    if min_confidence > 0:  # a stream with nothing playing asks at every window: spare the lines that cannot be credible
        tracks = _credible(score_bounds(hits, window_seconds), span, calibration, min_confidence)
        if not tracks:
            return []
    stretches = max(1, math.ceil(span / longest))
    hop = _hop(np.array([h.offset for h in hits], np.float64), window_seconds)
    matches: list[Match] = []
    left = list(hits)
    for _ in range(stretches):
        reached = []  # the query each line found reaches, its stray windows too: none of it is matched again
        lines = align(left, window_seconds, calibration.speed_range, calibration.tolerance, tracks, MAX_LINES * stretches, hop)
        heard = _offsets_by_track(lines, left)
        for line in lines:
            score = line.score if span <= longest else _best_stretch(line, left, window_seconds, longest)
            confidence = calibration.confidence(score, span)
            if confidence >= min_confidence:
                matches.append(_match(line, left, window_seconds, confidence, heard[line.track_id]))
                reached.append((left[int(line.windows[0])].offset, left[int(line.windows[-1])].offset + window_seconds))
        left = [h for h in left if not any(start <= h.offset < end for start, end in reached)]
        if not reached or not left:
            break
    return matches


def _offsets_by_track(lines: Sequence[Alignment], hits: Sequence[WindowHits]) -> dict[str, np.ndarray]:
    """Per track, the query offsets of the windows on any of its lines, ascending."""
    by_track: dict[str, list[float]] = {}
    for line in lines:
        by_track.setdefault(line.track_id, []).extend(hits[int(w)].offset for w in line.windows)
    return {track: np.sort(np.array(offsets)) for track, offsets in by_track.items()}


def _match(line: Alignment, hits: Sequence[WindowHits], window_seconds: float, confidence: float, heard: np.ndarray) -> Match:
    first, last = _body(np.array([hits[int(w)].offset for w in line.windows]), heard)
    query_start = hits[int(line.windows[first])].offset
    query_end = hits[int(line.windows[last])].offset + window_seconds
    return Match(line.track_id, query_start, query_end, max(0.0, line.ref_time(query_start)), max(0.0, line.ref_time(query_end)),
                 line.speed, line.score, confidence)


def _body(offsets: np.ndarray, heard: np.ndarray) -> tuple[int, int]:
    """The first and last of a line's windows (at these query offsets, ascending) that its match spans: up to
    STRAY_WINDOWS windows at either end cut off from the rest by more than STRAY_GAP in which no line of the track
    (`heard`: its lines' windows' offsets, ascending) has a window are left out, as chance hits that lay on the
    line. In a 3-track catalog, one window of the next song 12.5 s after a play's last one (similarity 0.45)
    stretched the play's match over the whole song; a stream's state machine was never misled so. A gap that another
    line of the track fills (a loop: the track's other alignment took those windows) cuts nothing, and ends are cut
    once: a line that is sparse throughout (heavy noise) is not eaten away."""

    def cut_off(a: float, b: float) -> bool:  # a and b are windows of the line, so among `heard`
        return float(np.diff(heard[(heard >= a) & (heard <= b)]).max()) > STRAY_GAP

    last = len(offsets) - 1
    first = next((i + 1 for i in range(min(STRAY_WINDOWS, last)) if cut_off(offsets[i], offsets[i + 1])), 0)
    last = next((i - 1 for i in range(last, max(last - STRAY_WINDOWS, first), -1) if cut_off(offsets[i - 1], offsets[i])), last)
    return first, last


def _best_stretch(line: Alignment, hits: Sequence[WindowHits], window_seconds: float, seconds: float) -> float:
    """The line's score within its best-supported `seconds` of query (`align` weighs each similarity by the hop)."""
    offsets = np.array([hits[int(w)].offset for w in line.windows])
    total = np.concatenate(([0.0], np.cumsum(line.similarities)))
    ends = np.searchsorted(offsets, offsets + seconds - window_seconds + 1e-9, "right")
    return float((total[ends] - total[:-1]).max()) * line.score / float(total[-1])


def score_bounds(hits: Sequence[WindowHits], window_seconds: float) -> dict[str, float]:
    """No line of a track through `hits` scores more than its bound here: a line takes at most one hit per
    window, so its score is at most the hop times the sum, over windows, of the track's best similarity there.
    It mirrors how `align` scores (the hop and the floor under similarities as `_Flat` takes them); the tiny
    margin covers the other order in which `_assign` adds the same similarities up. (A bound that also asks
    the hits to lie on one line is tighter but costs about what it saves.)"""
    hop = _hop(np.array([h.offset for h in hits], np.float64), window_seconds)
    sums: dict[str, float] = {}
    for h in hits:
        best: dict[str, float] = {}
        for nb in h.neighbours:
            best[nb.track_id] = max(best.get(nb.track_id, SIMILARITY_FLOOR), nb.similarity - h.background)
        for track, similarity in best.items():
            sums[track] = sums.get(track, 0.0) + similarity
    return {track: total * hop * (1 + 1e-9) for track, total in sums.items()}


def _credible(bounds: dict[str, float], duration: float, calibration: Confidence, min_confidence: float) -> set[str]:
    """The tracks whose bound reaches `min_confidence`. Leaving the others' lines out changes no match: such a
    line is never credible, and it could only take windows from a line whose score, being lower than its own
    when it does, is not credible either."""
    credible = set()
    for track in sorted(bounds, key=bounds.__getitem__, reverse=True):  # confidence never falls as the score rises
        if calibration.confidence(bounds[track], duration) < min_confidence:
            break
        credible.add(track)
    return credible


def hits_at(grid: WindowGrid, index: int, neighbours: tuple[Neighbour, ...], background: float = 0.0) -> WindowHits:
    offset = float(grid.start(index))
    return WindowHits("query", index, offset, offset, neighbours, background=background)
