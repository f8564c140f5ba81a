"""How sure a match is: the matcher's scores on audio the catalog does not hold (its null clips), per
query duration, so that a confidence (1 minus the false-match rate) means the same on a catalog of ten
tracks and on one of a hundred thousand.

The null's music is the catalog's own: an excerpt of a track, queried with that track left out, is real
music of the catalog's kind that the catalog does not hold. A catalog may hold a recording twice, or a
passage of it (a duplicate file, a remaster, an edit, a game's loop of one tune): such a track matches the
excerpt there as well as its own track does, which is a true match, not chance, so it is left out too;
left in, a few of them set the tail, and with it the threshold, of a whole catalog (README, issue 13).

A calibration is computed once per catalog generation (a few seconds) and cached in the generation's
directory and in memory; the memory cache keeps the latest CACHED_CALIBRATIONS, so a long-running worker
that loads generation after generation does not grow.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from monitor.records import Neighbour
from monitor.constants import DEFAULT_K
from monitor.stages.matcher import SPEED_RANGE, TOLERANCE, Alignment, MatchError, align, hits_at
from monitor.stages.search import CONTRAST_RANK, backgrounds, contrasts

if TYPE_CHECKING:
    from monitor.catalog import Catalog
    from monitor.stages.windows import WindowGrid

log = logging.getLogger(__name__)

CALIBRATION_VERSION = 5  # 2: the tracks sharing a null excerpt's music left out; 3: contrasted similarities; 4: records whether
# contrasted; 5: no 30 s null
# Up to 20 s: a null clip lasts 30 s, so only clips with every window audible gave a 30 s sample (11 of 68 on the dev
# catalog), too few for a tail; long queries are scored by their best 20 s stretch instead (`false_match_rate`).
NULL_DURATIONS = (1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0)
NULL_SEGMENTS = 8  # null samples per clip and duration
TAIL = 0.1  # fraction of null scores whose excess is modelled as exponential
CACHED_CALIBRATIONS = 8  # (generation, k) pairs kept in memory
# Neighbours searched per null window, so that CONTRAST_RANK of other tracks are left for its background once the
# excerpt's own tracks are out: on the dev catalog 40 left fewer for a quarter of the windows (a loop fills them), 160 for 1 in 800.
NULL_NEIGHBOURS = 8 * CONTRAST_RANK
PASSAGE_SECONDS = 10.0  # another track matching some passage this long of a null excerpt at SAME_MUSIC_RATIO of the
SAME_MUSIC_RATIO = 0.6  # excerpt's own track holds that music too: measured 0.81-1.06 for the corpus's duplicates and
# shared passages, at most 0.4 for any other pair (arrangements of one tune included) and 0.37 for chance lines


@dataclass(frozen=True)
class Calibration:
    """The matcher's settings and the null: best-alignment scores of non-catalog queries, per query duration."""

    k: int
    speed_range: tuple[float, float]
    tolerance: float
    durations: tuple[float, ...]
    null_scores: tuple[np.ndarray, ...]  # sorted, one array per duration
    contrasted: bool = False  # scored above the windows' backgrounds, as hits are in a catalog that `contrasts`

    def false_match_rate(self, score: float, duration: float) -> float:
        """How often audio not in the catalog scores at least `score`, interpolated in log duration. A query
        longer than the longest null is scored by its best stretch of that length (`match_hits`), one of
        duration / longest such stretches that chance had, each a try: their rates add up."""
        tries = max(1.0, duration / self.durations[-1])
        return min(1.0, tries * self._stretch_rate(score, duration))

    def _stretch_rate(self, score: float, duration: float) -> float:
        d = np.log(np.clip(duration, self.durations[0], self.durations[-1]))
        logs = np.log(self.durations)
        j = int(np.clip(np.searchsorted(logs, d), 1, len(logs) - 1)) if len(logs) > 1 else 0
        i = max(j - 1, 0)
        lo, hi = _survival(self.null_scores[i], self._tails[i], score), _survival(self.null_scores[j], self._tails[j], score)
        t = 0.0 if j == i else float((d - logs[i]) / (logs[j] - logs[i]))
        return float(np.exp((1 - t) * np.log(lo) + t * np.log(hi)))

    def confidence(self, score: float, duration: float) -> float:
        return 1.0 - self.false_match_rate(score, duration)

    @cached_property
    def _tails(self) -> tuple[tuple[float, float, float] | None, ...]:
        """Each null's exponential tail, fitted once: a live stream asks for confidences at every window."""
        return tuple(_tail(null) for null in self.null_scores)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": CALIBRATION_VERSION, "k": self.k, "speed_range": list(self.speed_range), "tolerance": self.tolerance,
            "durations": list(self.durations), "null_scores": [np.round(s, 5).tolist() for s in self.null_scores],
            "contrasted": self.contrasted,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Calibration":
        if data.get("version") != CALIBRATION_VERSION:
            raise ValueError(f"calibration version {data.get('version')!r} is not {CALIBRATION_VERSION}")
        return cls(int(data["k"]), tuple(data["speed_range"]), float(data["tolerance"]), tuple(data["durations"]),
                   tuple(np.sort(np.asarray(s, dtype=np.float64)) for s in data["null_scores"]), bool(data["contrasted"]))


def _tail(null: np.ndarray) -> tuple[float, float, float] | None:
    """(u, scale, P(null >= u)) of the exponential fitted to the top TAIL of `null`; None for an empty null."""
    n = len(null)
    if n == 0:
        return None
    u = null[min(n - 1, int((1 - TAIL) * n))]
    excess = null[null > u] - u
    scale = float(excess.mean()) if len(excess) else max(0.05 * abs(u), 0.05)
    return u, scale, float(n - np.searchsorted(null, u, side="left")) / n


def _survival(null: np.ndarray, tail: tuple[float, float, float] | None, score: float) -> float:
    """P(null >= score): empirical in the bulk, the exponential `tail` beyond it."""
    if tail is None:
        return 1.0
    n, (u, scale, at_u) = len(null), tail
    if score <= u:
        return max(float(n - np.searchsorted(null, score, side="left")) / n, 1.0 / n)
    return max(at_u * math.exp(-(score - u) / scale), 1e-12)


_calibrations: OrderedDict[tuple[Path, int], Calibration] = OrderedDict()


def calibrate(catalog: "Catalog", k: int = DEFAULT_K) -> Calibration:
    """The catalog's null score distribution: cached in memory and in the generation directory, and
    computed (a few seconds) on first use after each catalog change."""
    key = (catalog.generation_dir(), k)
    if key in _calibrations:
        _calibrations.move_to_end(key)
        return _calibrations[key]
    path = key[0] / f"calibration-k{k}.json"
    calibration = None
    if path.is_file():
        try:
            calibration = Calibration.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("recomputing %s: %s", path, exc)
    if calibration is not None and calibration.contrasted != contrasts(catalog):
        # made by a release that drew the line between raw and contrasted catalogs elsewhere: its scores are not this one's
        log.warning("recomputing %s: its null was scored %s", path, "above backgrounds" if calibration.contrasted else "raw")
        calibration = None
    if calibration is None:
        calibration = null_calibration(catalog, k)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(calibration.to_json()))
            os.replace(tmp, path)
        except OSError as exc:  # a read-only catalog still works; it recalibrates per process
            log.warning("cannot cache the calibration in %s: %s", path, exc)
    _calibrations[key] = calibration
    while len(_calibrations) > CACHED_CALIBRATIONS:
        _calibrations.popitem(last=False)
    return calibration


def null_calibration(catalog: "Catalog", k: int = DEFAULT_K, speed_range: tuple[float, float] = SPEED_RANGE,
                     tolerance: float = TOLERANCE) -> Calibration:
    """Best-alignment scores of the catalog's null queries, cut into segments of each NULL_DURATIONS length
    (an excerpt's own track and the tracks sharing its music left out of its neighbours), each hit weighed above
    its window's background as a stream's are where the catalog `contrasts`."""
    grid = catalog.grid
    clips = catalog.null_queries()
    samples: list[list[float]] = [[] for _ in NULL_DURATIONS]
    contrast = contrasts(catalog)
    if clips:
        vectors = np.concatenate([clip.vectors for clip in clips])
        table = catalog.search_table(vectors, max(2 * k, NULL_NEIGHBOURS) if contrast else 2 * k)  # an empty catalog: CatalogError
        start = 0
        for clip in clips:
            part = table.part(start, start + len(clip.vectors))
            start += len(clip.vectors)
            found = part.rows()
            # SAME_MUSIC_RATIO was measured on 2 k neighbours: more give the excerpt's own line more hits than another's
            left_out = {clip.source} if clip.reversed else same_music([nb[: 2 * k] for nb in found], clip.source, grid, k)
            # the excerpt's own tracks are what a catalog window's nearest track is to its background: left out of it
            behind = backgrounds(part, part.of_tracks(left_out)).tolist() if contrast else [0.0] * len(found)
            hits = [hits_at(grid, i, tuple(n for n in nb if n.track_id not in left_out)[:k], b) for i, (nb, b) in enumerate(zip(found, behind))]
            for d, duration in enumerate(NULL_DURATIONS):
                size = grid.count(round(duration * grid.sample_rate))
                if not size or size > len(hits):
                    continue
                for begin in np.linspace(0, len(hits) - size, min(NULL_SEGMENTS, len(hits) - size + 1)).astype(int):
                    lines = align(hits[begin : begin + size], grid.window_seconds, speed_range, tolerance)
                    samples[d].append(lines[0].score if lines else 0.0)
    measured = [(d, np.sort(np.asarray(s, np.float64))) for d, s in zip(NULL_DURATIONS, samples) if s]
    if not measured:
        raise MatchError(f"{catalog.directory} has no null clips to calibrate on; rebuild the catalog")
    return Calibration(k, speed_range, tolerance, tuple(d for d, _ in measured), tuple(s for _, s in measured), contrast)


def same_music(found: Sequence[tuple[Neighbour, ...]], source: str | None, grid: "WindowGrid", k: int) -> set[str]:
    """The tracks holding the music of a null excerpt from `source`, given its windows' neighbours: the
    track itself and each track whose best line over some PASSAGE_SECONDS of the excerpt scores
    SAME_MUSIC_RATIO of the track's own line there (a duplicate, or a version sharing that passage)."""
    if source is None:
        return set()
    same = {source}
    size = min(len(found), grid.count(round(PASSAGE_SECONDS * grid.sample_rate)))
    for begin in range(0, len(found) - size + 1, max(1, size // 2)):
        passage = found[begin : begin + size]
        own = _best_line(passage, lambda track: track == source, grid, k)
        while own is not None and (other := _best_line(passage, lambda track: track not in same, grid, k)) is not None \
                and other.score >= SAME_MUSIC_RATIO * own.score:
            same.add(other.track_id)
    return same


def _best_line(found: Sequence[tuple[Neighbour, ...]], keep: Callable[[str], bool], grid: "WindowGrid", k: int) -> Alignment | None:
    """The best line through the neighbours of the tracks `keep` accepts."""
    lines = align([hits_at(grid, i, tuple(n for n in nb if keep(n.track_id))[:k]) for i, nb in enumerate(found)], grid.window_seconds)
    return lines[0] if lines else None
