"""The engines a benchmark compares, behind one small interface: airtrace (catalog + matcher) per encoder,
and the landmark baseline. Each builds its index of the reference set once and caches it by content."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from encoders import AudioError, load_audio, load_encoder
from monitor.bench.landmark import LandmarkIndex, LandmarkParams
from monitor.bench.references import BenchError, Reference
from monitor.catalog import Catalog
from monitor.catalog.nulls import NULL_FORMAT
from monitor.stages.identify import identify
from monitor.stages.matcher import Match

log = logging.getLogger(__name__)


class Engine(Protocol):
    """Identifies music in audio at its own sample rate."""

    name: str
    sample_rate: int
    settings: dict[str, Any]  # printed with every table the engine appears in
    track_ids: frozenset[str]  # what its index actually holds (unreadable files and duplicates drop out)
    index_bytes: int  # what its index takes on disk, about what it takes in memory
    calibrated: bool  # whether a match's confidence is 1 - its false-match rate (the matcher's calibration)

    def identify(self, audio: np.ndarray) -> list[Match]: ...


def warm_up(engine: Engine) -> None:
    """One query before timing starts: the matcher calibrates on its first call (seconds), once per catalog."""
    engine.identify(np.random.default_rng(0).standard_normal(3 * engine.sample_rate).astype(np.float32) * 0.1)


def _cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _signatures(references: Sequence[Reference]) -> list[tuple[str, str, int]]:
    return sorted(r.signature() for r in references)


class NeuralEngine:
    """airtrace itself: a catalog of the references under one encoder, queried through the matcher."""

    calibrated = True

    def __init__(self, name: str, catalog: Catalog, build_seconds: float | None):
        self.name, self.catalog = name, catalog
        self.sample_rate = catalog.encoder.sample_rate
        self.track_ids = frozenset(t.track_id for t in catalog.tracks())
        stats = catalog.stats()
        self.index_bytes = stats["index_bytes"]
        self.settings = {
            "catalog": f"{stats['tracks']} tracks, {stats['seconds'] / 3600:.1f} h, {stats['windows']:,} windows",
            "encoder": f"{stats['encoder']} ({stats['encoder_fingerprint']}, {stats['window_seconds']} s windows, "
                       f"catalog hop {stats['hop_seconds']} s, dim {stats['dim']})",
            "index": f"{stats['index_factory']} {stats['search_params']}".strip(),
            "built": "from cache" if build_seconds is None else f"in {build_seconds:.0f} s",
        }

    @classmethod
    def open_or_build(cls, encoder_name: str, references: Sequence[Reference], cache_dir: Path, hop_seconds: float,
                      base: Catalog | None = None) -> "NeuralEngine":
        """Reuse a catalog cached for exactly this encoder, hop and reference files; else build it, from a copy
        of `base` (a catalog of some of the references, same encoder and hop) plus the references it lacks."""
        encoder = load_encoder(encoder_name)
        key = _cache_key(encoder.fingerprint(), hop_seconds, _signatures(references), NULL_FORMAT)
        name = Path(encoder_name).name
        directory = cache_dir / f"catalog-{name}-{key}"
        if directory.is_dir():
            return cls(name, Catalog.open(directory, encoder), None)
        cache_dir.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".building-{name}-{key}-", dir=cache_dir))  # this process's own: benches run at once
        try:
            started = time.perf_counter()
            _build(building, encoder, encoder_name, references, hop_seconds, base)
            elapsed = time.perf_counter() - started
            try:
                (building / "catalog").rename(directory)
            except OSError:  # another bench built the same catalog meanwhile: theirs is as good
                if not directory.is_dir():
                    raise
                log.info("another process built the %s catalog meanwhile; using it", name)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        return cls(name, Catalog.open(directory, encoder), elapsed)

    def identify(self, audio: np.ndarray) -> list[Match]:
        return identify(self.catalog, audio)


def _build(building: Path, encoder: Any, encoder_name: str, references: Sequence[Reference], hop_seconds: float,
           base: Catalog | None) -> None:
    """A catalog of `references` in `building`/catalog, from a copy of `base` plus the references it lacks."""
    if base is None:
        catalog = Catalog.create(building / "catalog", encoder, hop_seconds=hop_seconds, encoder_source=encoder_name)
    else:
        shutil.copytree(base.directory, building / "catalog")
        catalog = Catalog.open(building / "catalog", encoder)
        held = {t.track_id for t in catalog.tracks()}
        references = [r for r in references if r.track_id not in held]
    manifest = building / "references.csv"
    with manifest.open("w", newline="") as f:  # absolute paths: the catalog reads them as given
        writer = csv.writer(f)
        writer.writerow(["track_id", "path"])
        writer.writerows((r.track_id, str(r.path.resolve())) for r in references)
    report = catalog.add([manifest])
    log.info("catalog for %s: %s", encoder_name, report.summary())
    for path, reason in report.skipped + report.duplicates:
        log.warning("not in the %s catalog: %s (%s)", encoder_name, path, reason)


class LandmarkEngine:
    """The classical baseline: peak-pair landmarks and offset voting."""

    name = "landmark"
    calibrated = False  # its matches carry vote counts, not a confidence

    def __init__(self, index: LandmarkIndex, build_seconds: float | None):
        self.index = index
        self.sample_rate = index.params.sample_rate
        self.track_ids = frozenset(index.track_ids)
        self.index_bytes = index.hashes.nbytes + index.tracks.nbytes + index.times.nbytes
        p = index.params
        self.settings = {
            "catalog": f"{len(index.track_ids)} tracks, {len(index.hashes):,} landmarks",
            "landmarks": f"{p.sample_rate} Hz, FFT {p.n_fft}/{p.hop}, peaks {p.min_level:g} nats over their surroundings, fan-out {p.fan_out}, "
                         f">= {p.min_votes} aligned votes",
            "built": "from cache" if build_seconds is None else f"in {build_seconds:.0f} s",
        }

    @classmethod
    def open_or_build(cls, references: Sequence[Reference], cache_dir: Path, params: LandmarkParams = LandmarkParams()) -> "LandmarkEngine":
        path = cache_dir / f"landmark-{_cache_key(asdict(params), _signatures(references))}.npz"
        if path.is_file():
            return cls(LandmarkIndex.load(path), None)
        started = time.perf_counter()
        index = LandmarkIndex.build(_decoded(references, params.sample_rate), params)
        cache_dir.mkdir(parents=True, exist_ok=True)
        index.save(path)
        return cls(index, time.perf_counter() - started)

    def identify(self, audio: np.ndarray) -> list[Match]:
        return [Match(m.track_id, m.query_start, m.query_end, m.ref_start, m.ref_end, 1.0, float(m.votes), m.fraction)
                for m in self.index.identify(audio)]


def _decoded(references: Sequence[Reference], sample_rate: int) -> Iterator[tuple[str, np.ndarray]]:
    for ref in tqdm(references, desc="landmarks", unit="track"):
        try:
            yield ref.track_id, load_audio(ref.path, sample_rate)
        except AudioError as exc:
            log.warning("not in the landmark index: %s", exc)


def open_engines(encoders: Sequence[str], landmark: bool, references: Sequence[Reference], cache_dir: Path,
                 hop_seconds: float, smaller: Sequence[Engine] = ()) -> list[Engine]:
    """One engine per encoder (airtrace), then the landmark baseline; at least one is needed. Catalogs not
    cached grow from those of `smaller` engines (of some of the references) rather than start empty."""
    if not encoders and not landmark:
        raise BenchError("nothing to benchmark: give --encoder (repeatable) or keep --landmark")
    bases = {e.name: e.catalog for e in smaller if isinstance(e, NeuralEngine)}
    engines: list[Engine] = [NeuralEngine.open_or_build(e, references, cache_dir, hop_seconds, bases.get(Path(e).name))
                             for e in encoders]
    if landmark:
        engines.append(LandmarkEngine.open_or_build(references, cache_dir))
    return engines
