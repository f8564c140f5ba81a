"""Identify a clip or a file: cut -> audible windows -> embed -> search -> match, with the catalog's calibration.
`airtrace identify` and the track-level benchmark call it; streams go through monitor.stages.tracking."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from monitor.stages.calibration import calibrate
from monitor.stages.matcher import MIN_CONFIDENCE, Match, MatchError, hits_at, match_hits
from monitor.stages.search import embed_audible, nearest
from monitor.stages.windows import WindowGrid

if TYPE_CHECKING:
    from monitor.catalog import Catalog


def identify(catalog: "Catalog", audio: np.ndarray, hop_seconds: float | None = None,
             min_confidence: float = MIN_CONFIDENCE) -> list[Match]:
    """Match a clip at the encoder's sample rate: windows on the query grid (the catalog hop unless a
    finer one is given), embeddings, neighbours, matches."""
    grid = WindowGrid.for_encoder(catalog.encoder, hop_seconds or catalog.grid.hop_seconds)
    if not grid.count(len(audio)):
        raise MatchError(f"the query lasts {len(audio) / grid.sample_rate:.2f} s, shorter than one window ({grid.window_seconds:g} s); give a longer clip")
    vectors, numbers = embed_audible(catalog.encoder, grid, audio)
    if not len(numbers):
        return []
    calibration = calibrate(catalog)
    hits = [hits_at(grid, int(i), *found) for i, found in zip(numbers, nearest(catalog, vectors, calibration.k))]
    return match_hits(hits, grid.window_seconds, calibration=calibration, min_confidence=min_confidence)


def identify_file(catalog: "Catalog", path: str | Path | BinaryIO, hop_seconds: float | None = None,
                  min_confidence: float = MIN_CONFIDENCE, name: str | None = None) -> dict[str, Any]:
    """`identify`'s JSON line for one file (or the bytes of one, as `name`): its matches, or the error that kept
    it from being matched."""
    from encoders import AudioError, load_audio

    name = str(path) if name is None else name
    try:
        audio = load_audio(path, catalog.encoder.sample_rate)
        matches = identify(catalog, audio, hop_seconds, min_confidence)
    except (AudioError, MatchError) as exc:
        return {"file": name, "error": str(exc)}
    return {"file": name, "matches": [m.to_json() for m in matches]}
