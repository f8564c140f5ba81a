"""The benchmark's reference set: tracks queried, tracks only in the catalog, and tracks held out of it."""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np

from encoders import audio_files

log = logging.getLogger(__name__)


class BenchError(ValueError):
    """Benchmark input that cannot be used; the message says what to give instead."""


@dataclass(frozen=True)
class Reference:
    track_id: str
    path: Path
    seconds: float

    def signature(self) -> tuple[str, str, int]:
        """What a cached catalog of this track depends on: its id, file and size."""
        return self.track_id, str(self.path.resolve()), self.path.stat().st_size


def audible_span(audio: np.ndarray, sample_rate: int, floor_dbfs: float = -50.0) -> tuple[float, float]:
    """The span from the first to the last audible second: silence at either end would be a play no one
    hears and a query no one can answer (some game tracks are 20 s of music and a minute of nothing)."""
    seconds = len(audio) // sample_rate
    levels = 20 * np.log10(np.sqrt(np.mean(np.square(audio[: seconds * sample_rate].reshape(seconds, sample_rate)), axis=1)) + 1e-10)
    loud = np.flatnonzero(levels > floor_dbfs)
    if not len(loud):
        return 0.0, 0.0
    return (0.0 if loud[0] == 0 else float(loud[0])), float(loud[-1] + 1)


def _probe_seconds(path: Path) -> float:
    try:
        with av.open(str(path), metadata_errors="replace") as container:
            return (container.duration or 0) / av.time_base
    except (av.FFmpegError, OSError) as exc:
        raise BenchError(f"cannot read {path}: {exc}; fix or remove the file") from exc


def read_references(source: str | Path, limit: int | None = None) -> list[Reference]:
    """Tracks of a manifest.csv (track_id,path[,seconds], paths relative to it) or of a folder of audio files."""
    source = Path(source)
    if source.is_file() and source.suffix == ".csv":
        with source.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and not {"track_id", "path"} <= set(rows[0]):
            raise BenchError(f"{source} lacks a track_id or path column; a manifest lists track_id,path[,seconds] per line")
        found = [
            Reference(row["track_id"], source.parent / row["path"],
                      float(row["seconds"]) if row.get("seconds") else _probe_seconds(source.parent / row["path"]))
            for row in rows[:limit]
        ]
    elif source.is_dir():
        files = audio_files(source)[:limit]
        found = [Reference(p.relative_to(source).with_suffix("").as_posix(), p, _probe_seconds(p)) for p in files]  # ids as the catalog names them
    else:
        raise BenchError(f"{source} not found: give a manifest.csv (track_id,path[,seconds]) or a folder of audio files")
    if not found:
        raise BenchError(f"{source} lists no audio tracks; give a manifest or folder with at least one")
    missing = [r.path for r in found if not r.path.is_file()]
    if missing:
        raise BenchError(f"{len(missing)} file(s) of {source} are missing, e.g. {missing[0]}; fetch the corpus or fix the manifest")
    return found


@dataclass(frozen=True)
class ReferenceSet:
    """`queried` tracks are in the catalog and queried; `distractors` only fill the catalog;
    `holdout` tracks are kept out of the catalog as non-catalog music for the false-match rate."""

    queried: tuple[Reference, ...]
    distractors: tuple[Reference, ...]
    holdout: tuple[Reference, ...]

    @property
    def catalog(self) -> tuple[Reference, ...]:
        return self.queried + self.distractors

    def describe(self) -> dict[str, str]:
        """The reference set in words, for the settings printed above every table."""
        hours = sum(r.seconds for r in self.catalog) / 3600
        return {
            "reference set": f"{len(self.catalog)} catalog tracks ({hours:.1f} h): {len(self.queried)} queried + "
                             f"{len(self.distractors)} distractors; {len(self.holdout)} held out of the catalog",
        }

    def with_distractors(self, count: int | None) -> "ReferenceSet":
        """The set with `count` of its distractors (all with None): a stable sample that holds every smaller
        one, so catalogs of growing counts grow by adding tracks, as a real catalog does."""
        if count is None:
            return self
        if count > len(self.distractors):
            raise BenchError(f"{count} distractors asked for, {len(self.distractors)} given; ask for fewer, or 'all'")
        return replace(self, distractors=tuple(sorted(self.distractors, key=_stable_order)[:count]))


def _unique(references: list[Reference], taken: set[str]) -> list[Reference]:
    """The first reference of each track id; a repeated id (a manifest listing one file twice) is dropped with a warning."""
    kept, dropped = [], []
    for ref in references:
        (dropped if ref.track_id in taken else kept).append(ref)
        taken.add(ref.track_id)
    if dropped:
        log.warning("%d repeated track id(s) dropped, the first kept: %s", len(dropped), ", ".join(sorted({r.track_id for r in dropped})))
    return kept


def _stable_order(reference: Reference) -> str:
    """A stable, seed-independent shuffle, so the held-out tracks and distractor samples (and their cached catalogs) never change."""
    return hashlib.sha256(reference.track_id.encode()).hexdigest()


def reference_set(reference: list[str], distractors: list[str], holdout: int, limit: int | None = None) -> ReferenceSet:
    """Read the sets; `holdout` tracks of `reference` leave the catalog. Errors name the missing piece."""
    if not reference:
        raise BenchError("no --reference given: name a manifest.csv or folder of tracks to query")
    queried = _unique([r for source in reference for r in read_references(source, limit)], set())
    if holdout >= len(queried):
        raise BenchError(f"--holdout {holdout} leaves none of the {len(queried)} reference tracks to query; hold out fewer")
    held = set(sorted(queried, key=_stable_order)[:holdout])
    extra = _unique([r for source in distractors for r in read_references(source, limit)], {r.track_id for r in queried})
    return ReferenceSet(
        queried=tuple(r for r in queried if r not in held),
        distractors=tuple(extra),
        holdout=tuple(r for r in queried if r in held),
    )
