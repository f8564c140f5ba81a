"""What each `airtrace bench` subcommand does: read the references, open the engines, run, publish."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from monitor.bench import backbones, compare, engines, growth, scale, segments, speed, tracks
from monitor.bench.references import read_references, reference_set
from monitor.bench.report import publish

DEMO_MUSIC = Path(__file__).resolve().parent.parent / "demo" / "music"


def default_cache_dir() -> Path:
    """Built catalogs and landmark indexes, keyed by content, so reruns skip the build."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "airtrace" / "bench"


def _command() -> str:
    return shlex.join(["airtrace", *sys.argv[1:]])


def run_tracks(reference: Sequence[str], distractors: Sequence[str], encoders: Sequence[str], landmark: bool,
               queries: int, negatives: int, lengths: Sequence[float], rows: Sequence[str], holdout: int,
               limit: int | None, hop: float, seed: int, cache_dir: Path, out: str | None, summary: bool = False,
               distractor_counts: str | None = None) -> None:
    """`bench tracks`; with `summary`, `bench compare` (the same queries, one cost-and-accuracy row per engine first);
    with `distractor_counts`, the tracks bench at each count as one curve."""
    refs = reference_set(list(reference), list(distractors), holdout, limit)
    if distractor_counts is not None:
        counts = growth.parse_counts(distractor_counts)
        tables, extra = growth.run(refs, counts, lambda sized, smaller: engines.open_engines(
            encoders, landmark, sized.catalog, cache_dir, hop, smaller), rows, queries, lengths, negatives, seed)
    else:
        opened = engines.open_engines(encoders, landmark, refs.catalog, cache_dir, hop)
        tables, extra = (compare.run if summary else tracks.run)(refs, opened, rows, queries, lengths, negatives, seed)
    publish(tables, out, _command(), extra)


def run_segments(reference: Sequence[str], distractors: Sequence[str], encoders: Sequence[str], landmark: bool,
                 presets: Sequence[str], queries: int, holdout: int, limit: int | None, hop: float, seed: int,
                 cache_dir: Path, query_dir: Path | None, out: str | None) -> None:
    refs = reference_set(list(reference), list(distractors), holdout, limit)
    opened = engines.open_engines(encoders, landmark, refs.catalog, cache_dir, hop)
    tables, extra = segments.run(refs, opened, presets, queries, seed, query_dir or cache_dir / f"segments-seed{seed}")
    publish(tables, out, _command(), extra)


def run_speed(encoders: Sequence[str], reference: Sequence[str], index_seconds: float, hop: float, sizes: Sequence[int],
              queries: int, landmark: bool, out: str | None) -> None:
    refs = [r for source in (reference or [str(DEMO_MUSIC)]) for r in read_references(source)]
    tables, extra = speed.run(encoders, refs, index_seconds, hop, sizes, queries, landmark)
    publish(tables, out, _command(), extra)


def run_backbones(models: Sequence[str], out: str | None) -> None:
    tables, extra = backbones.run(models)
    publish(tables, out, _command(), extra)


def run_scale(encoder: str, reference: str | None, windows: int, factory: str | None, search_params: Sequence[str],
              hop: float, recall_queries: int, batches: int, threads: int, seed: int, cache_dir: Path, out: str | None) -> None:
    source = reference or str(DEMO_MUSIC)
    tables, extra = scale.run(encoder, read_references(source), source, cache_dir, hop, windows, factory, search_params,
                              recall_queries, batches, threads, seed)
    publish(tables, out, _command(), extra)
