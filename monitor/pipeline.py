"""The embed-and-search step, shared by embedded mode and the Faust workers: windows in, hits out.

Windows of many streams are embedded in one batch (the encoder is fastest on big batches) and searched
in one call; each window keeps its stamps, so streams can be mixed freely within a batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from monitor.metrics import Metrics
from monitor.records import AudioWindow, Neighbour, WindowHits


class Embeds(Protocol):
    def embed(self, windows: np.ndarray) -> np.ndarray: ...


class Searches(Protocol):
    def search(self, embeddings: np.ndarray, k: int) -> list[tuple[Neighbour, ...]]: ...


def hits_for(windows: Sequence[AudioWindow], encoder: Embeds, catalog: Searches, k: int, metrics: Metrics | None = None) -> list[WindowHits]:
    """The k nearest reference windows of every window, in input order; times embedding and search."""
    if not windows:
        return []
    began = time.perf_counter()
    embeddings = encoder.embed(np.stack([w.samples for w in windows]))
    embedded = time.perf_counter()
    neighbours = catalog.search(embeddings, k)
    searched = time.perf_counter()
    if metrics is not None:
        metrics.embedding_batch_size.observe(len(windows))
        metrics.embedding_seconds.observe(embedded - began)
        metrics.search_seconds.observe(searched - embedded)
        for window in windows:
            metrics.hits.labels(window.stream_id).inc()
    return [WindowHits(w.stream_id, w.seq, w.offset, w.air_time, tuple(n), w.after_gap) for w, n in zip(windows, neighbours)]
