"""Embedding and search: audio windows in, each window's nearest reference windows out.

`hits_for` is the step both modes run on streams: windows of many streams are embedded in one batch (the
encoder is fastest on big batches) and searched in one call; each window keeps its stamps, so streams can
be mixed freely within a batch. With a `ContentCount` the same pass also labels what each window holds,
and music windows keep their embedding and first hop of audio, which unknown stretches are made of.
`embed_audible` is how a catalog's tracks and `identify`'s clips are cut, cleared of silent windows and
embedded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from monitor.constants import SILENCE_RMS
from monitor.metrics import Metrics
from monitor.records import AudioWindow, Neighbour, NeighbourTable, WindowHits
from monitor.stages.windows import WindowGrid

MUSIC_CLASSES = frozenset({"music", "speech_over_music"})  # content that can be a catalog track or an unknown stretch

EMBED_CHUNK = 1024  # windows cut and embedded at a time, so a long file never sits in memory as windows
CONTRAST_RANK = 20  # the neighbour whose similarity is a window's background (see `backgrounds`) ...
SEARCHED = 2 * CONTRAST_RANK  # ... among this many searched, its nearest track's left out ...
CONTRAST_MIN_TRACKS = 50  # ... in a catalog of this many tracks or more (see `contrasts`)


class Embeds(Protocol):
    dim: int

    def embed(self, windows: np.ndarray) -> np.ndarray: ...


class Searches(Protocol):
    @property
    def track_count(self) -> int: ...

    def search_table(self, embeddings: np.ndarray, k: int) -> NeighbourTable: ...


class Classifies(Protocol):
    def embed_and_classify(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class ContentCount:
    """The content classifier (encoders.ContentClassifier) riding on the encoder's own pass: it gives the
    encoder's embeddings, and each window's class counts one hop of its stream in airtrace_content_seconds."""

    classifier: Classifies
    grid: WindowGrid  # the stream's windows

    def embed(self, windows: Sequence[AudioWindow], samples: np.ndarray, metrics: Metrics | None) -> tuple[np.ndarray, list[str]]:
        """The windows' embeddings and content classes."""
        embeddings, labels, _ = self.classifier.embed_and_classify(samples)
        labels = [str(label) for label in labels]
        if metrics is not None:
            for window, label in zip(windows, labels):
                metrics.content_seconds.labels(window.stream_id, label).inc(self.grid.hop_seconds)
        return embeddings, labels


def backgrounds(found: NeighbourTable, besides: np.ndarray | None = None) -> np.ndarray:
    """Each window's nearness to the catalog at large: the similarity of its CONTRAST_RANK-th nearest reference
    window of a track not `besides` (an (n, k) mask of left-out neighbours; by default those of each window's
    nearest track: a track's windows are near each other, a loop, a chorus), or of the last such where fewer
    were found; 0 where none was (a tiny catalog). Noise, talk and generic sounds (a pad, a drum loop) lie
    about as near to many reference windows as to their best one; a window of a catalog track stands out
    above its background. The matcher weighs each hit by how far it stands out (on the dev catalog that cut
    false matches on non-catalog audio 3-5 fold, README "Contrast"), and the calibration's null is weighed
    the same way, so confidences keep their meaning."""
    if besides is None:
        besides = found.tracks == found.tracks[:, :1]
    others = (found.tracks >= 0) & ~besides
    rank = np.cumsum(others, axis=1)
    wanted = np.minimum(rank[:, -1], CONTRAST_RANK)
    column = np.argmax(others & (rank == wanted[:, None]), axis=1)
    return np.where(wanted > 0, found.similarities[np.arange(len(found)), column], 0.0)


def contrasts(catalog: Searches) -> bool:
    """Whether hits are weighed above their windows' backgrounds in `catalog`: a background is the catalog at
    large, and in a catalog of a few tracks it is one or two tracks' windows. The calibration's null, whose
    excerpts leave their own tracks out, has one track fewer to draw it from than a stream has, which in a
    catalog of 2-6 tracks made chance lines sure (the tests' catalogs). Measured at 10, 20, 40, 75 and 448
    tracks (README "Contrast"): at 20 and 40 it cut the false matches of queries up to 10 s too, but whole
    tracks queried at once against 39 gave 44 sure matches in 85 tracks it lacks, against 13 raw (README
    "Long queries", with long queries weighed by their stretches), so catalogs under 50 tracks are weighed raw."""
    return catalog.track_count >= CONTRAST_MIN_TRACKS


def nearest(catalog: Searches, embeddings: np.ndarray, k: int) -> list[tuple[tuple[Neighbour, ...], float]]:
    """Each embedding's `k` nearest reference windows and its background (0 where the catalog `contrasts` not)."""
    if not contrasts(catalog):
        return [(found, 0.0) for found in catalog.search_table(embeddings, k).rows()]
    found = catalog.search_table(embeddings, max(k, SEARCHED))
    return list(zip(found.rows(k), backgrounds(found).tolist()))


def hits_for(windows: Sequence[AudioWindow], encoder: Embeds, catalog: Searches, k: int, metrics: Metrics | None = None,
             content: ContentCount | None = None) -> list[WindowHits]:
    """The k nearest reference windows of every window and its background (`nearest`), in input order; none for a
    window quieter than the silence level. Times embedding (with the content classes, when given) and search."""
    if not windows:
        return []
    began = time.perf_counter()
    samples = np.stack([w.samples for w in windows])
    if content is None:
        embeddings, labels = encoder.embed(samples), [None] * len(windows)
    else:
        embeddings, labels = content.embed(windows, samples, metrics)
    embedded = time.perf_counter()
    loud = audible(samples)  # as catalogs and `identify` are cut: silence (or a faint hiss) is near every track
    found = iter(nearest(catalog, embeddings[loud], k) if loud.any() else ())
    neighbours = [next(found) if heard else ((), 0.0) for heard in loud]
    searched = time.perf_counter()
    if metrics is not None:
        metrics.embedding_batch_size.observe(len(windows))
        metrics.embedding_seconds.observe(embedded - began)
        metrics.search_seconds.observe(searched - embedded)
        for window in windows:
            metrics.hits.labels(window.stream_id).inc()
    hop = None if content is None else content.grid.hop
    return [_hits(w, found, label, vector, hop) for w, found, label, vector in zip(windows, neighbours, labels, embeddings)]


def _hits(window: AudioWindow, found: tuple[tuple[Neighbour, ...], float], label: str | None, embedding: np.ndarray,
          hop: int | None) -> WindowHits:
    """The window's hits; a labelled window keeps its first hop of audio (an unknown stretch's excerpt is made
    of them, talk inside it included), a music window its embedding too."""
    neighbours, behind = found
    if label is None:
        return WindowHits(window.stream_id, window.seq, window.offset, window.air_time, neighbours, window.after_gap, background=behind, run=window.run)
    audio = np.round(np.clip(window.samples[:hop], -1.0, 1.0) * 32767.0).astype(np.int16)
    vector = np.asarray(embedding, np.float32) if label in MUSIC_CLASSES else None
    return WindowHits(window.stream_id, window.seq, window.offset, window.air_time, neighbours, window.after_gap, label, vector, audio,
                      behind, window.run)


def audible(windows: np.ndarray) -> np.ndarray:
    """Which windows are louder than the silence threshold; silence matches every silent stretch of every track."""
    windows = np.asarray(windows, dtype=np.float32)
    return np.sqrt(np.mean(np.square(windows), axis=1)) >= SILENCE_RMS


def embed_audible(encoder: Embeds, grid: WindowGrid, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut `audio` on `grid`, keep the audible windows and embed them (in chunks: a long file never sits in memory
    as windows); returns their embeddings and window numbers. Catalogs and `identify` go through here."""
    windows = grid.cut(np.ascontiguousarray(audio, dtype=np.float32))
    vectors, numbers = [], []
    for begin in range(0, len(windows), EMBED_CHUNK):
        chunk = windows[begin : begin + EMBED_CHUNK]
        keep = np.flatnonzero(audible(chunk))
        if len(keep):
            vectors.append(encoder.embed(chunk[keep]))
            numbers.append(keep + begin)
    if not vectors:
        return np.zeros((0, encoder.dim), np.float32), np.zeros(0, np.int64)
    return np.concatenate(vectors), np.concatenate(numbers)
