"""Repeated unknown content: each new unknown stretch searched against the kept stretches of every stream,
with the same line-fitting matcher as catalog plays (so tempo and speed changes are found too).

A process holds, per stream, the embeddings (and first hop of audio) of its latest windows while a
stretch may be open, and a FAISS index of the stretches kept in the shared UnknownStore within the
retention window, refreshed from the store before each search. When a new stretch's windows line up with
a kept one, the new one joins that stretch's cluster; the cluster is named after its earliest occurrence
(`monitor.events.cluster_id`), so two workers that find the same repeat at once name it alike. A stretch
whose windows this process never held (it was heard before a restart) is reported but cannot be kept.
Audio is encoded and kept for repeats only (the airing that forms or joins a cluster): a cluster gets
its excerpt from its second airing, and first airings, most of which never repeat, cost no encoding.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, replace

import faiss
import numpy as np

from encoders import encode_ogg
from monitor.events import UnknownEvent, cluster_id
from monitor.records import Neighbour, WindowHits
from monitor.options import UnknownConfig
from monitor.stages.matcher import Confidence, match_hits
from monitor.stages.unknown_store import KeptStretch, UnknownStore
from monitor.stages.windows import hop_start_in_window

log = logging.getLogger(__name__)

DAY = 86400.0
SPEED_EDGE = 0.005  # a fitted speed this near an end of the matcher's range was stopped there
EXPIRY_EVERY = 3600.0  # seconds of air time between expiries (the local index is rebuilt from the store then)


@dataclass(frozen=True)
class Heard:
    seq: int
    offset: float
    embedding: np.ndarray | None


@dataclass(frozen=True)
class Resolved:
    """A decided stretch with what it matched, and what to keep of it once its event is out."""

    event: UnknownEvent
    kept: KeptStretch | None


class KeptIndex:
    """The kept stretches' window embeddings in one FAISS index, with each vector's stretch and offset."""

    def __init__(self) -> None:
        self.index: faiss.Index | None = None
        self.owner: list[int] = []  # per vector: its stretch
        self.offsets: list[float] = []
        self.stretches: list[KeptStretch] = []
        self.row = 0  # the store's newest row added

    def add(self, stretches: Iterable[KeptStretch]) -> None:
        for stretch in stretches:
            self.row = max(self.row, stretch.row)
            vectors = np.ascontiguousarray(stretch.embeddings, np.float32)
            if self.index is None:
                self.index = faiss.IndexFlatIP(vectors.shape[1])
            if vectors.shape[1] != self.index.d:
                log.warning("kept stretch %s has %d-d embeddings, this encoder gives %d-d; it is not searched",
                            stretch.unknown_id, vectors.shape[1], self.index.d)
                continue
            self.index.add(vectors)
            self.owner += [len(self.stretches)] * len(vectors)
            self.offsets += [float(t) for t in stretch.offsets]
            self.stretches.append(replace(stretch, embeddings=np.zeros((0, 0), np.float16)))  # the index holds them

    def hits(self, offsets: np.ndarray, embeddings: np.ndarray, k: int, exclude: str, aired_after: float) -> list[WindowHits]:
        """Per window of a new stretch (offsets from its start): its nearest kept windows as neighbours whose
        track is the kept stretch's unknown id, leaving out the stretch itself and expired ones."""
        if self.index is None or self.index.ntotal == 0:
            return []
        similarity, found = self.index.search(np.ascontiguousarray(embeddings, np.float32), min(k, self.index.ntotal))
        out = []
        for seq, (offset, sims, ids) in enumerate(zip(offsets, similarity, found)):
            neighbours = []
            for sim, vector in zip(sims, ids):
                if vector < 0:
                    continue
                stretch = self.stretches[self.owner[vector]]
                if stretch.unknown_id != exclude and stretch.started_at > aired_after:
                    neighbours.append(Neighbour(stretch.unknown_id, self.offsets[vector], float(sim)))
            out.append(WindowHits("unknown", seq, float(offset), float(offset), tuple(neighbours)))
        return out


class UnknownSearch:
    def __init__(self, store: UnknownStore, config: UnknownConfig, window_seconds: float, hop_seconds: float, sample_rate: int):
        self.store, self.config = store, config
        self.window_seconds, self.hop, self.rate = window_seconds, hop_seconds, sample_rate
        self.centre = hop_start_in_window(window_seconds, hop_seconds)
        self.heard: dict[str, deque[Heard]] = defaultdict(lambda: deque(maxlen=max(1, round(config.buffer_seconds / hop_seconds))))
        # the first hop of audio of the latest `excerpt_seconds` of windows (what memory per stream is spent on);
        # a worker's embed agent fills it from another thread than the track agent's, hence the lock
        self.audio: dict[str, deque[tuple[int, np.ndarray]]] = defaultdict(lambda: deque(maxlen=max(1, round(config.excerpt_seconds / hop_seconds))))
        self.audio_lock = threading.Lock()
        self.kept = KeptIndex()
        self.expired_at = -math.inf  # air time of the last expiry

    def hear(self, hits: Iterable[WindowHits]) -> None:
        """Hold the windows' embeddings while a stretch of them may be decided unknown (and their audio, where
        the hits carry it: embedded mode)."""
        hits = [h for h in hits if h.content is not None]
        for h in hits:
            self.heard[h.stream_id].append(Heard(h.seq, h.offset, h.embedding))
        self.hear_audio(hits)

    def hear_audio(self, hits: Iterable[WindowHits]) -> None:
        """Hold the windows' audio for excerpts: a worker's embed agent calls this with the hits it has just
        made, since audio does not travel to the track agent with them."""
        with self.audio_lock:
            for h in hits:
                if h.audio is not None:
                    self.audio[h.stream_id].append((h.seq, h.audio))

    def resolve(self, event: UnknownEvent, calibration: Confidence) -> Resolved:
        """The stretch with its repeat found (cluster, matched stretch, where and how fast), and what to keep."""
        windows = [w for w in self.heard.get(event.stream_id, ()) if event.stream_start <= w.offset + self.centre < event.stream_end]
        music = [w for w in windows if w.embedding is not None]
        if not music:
            log.info("unknown stretch %s of %s was heard before this process started; it is reported, not kept", event.unknown_id, event.stream_id)
            return Resolved(event, None)
        offsets = np.array([w.offset - event.stream_start for w in music], np.float32)
        embeddings = np.stack([w.embedding for w in music])
        aired_after = event.started_at - self.config.retention_days * DAY
        if event.started_at - self.expired_at >= EXPIRY_EVERY:  # forget what aired before the retention window
            self.store.expire(aired_after)
            self.kept, self.expired_at = KeptIndex(), event.started_at
        self.kept.add(self.store.added_since(self.kept.row, aired_after))
        event = self._match(event, offsets, embeddings, calibration, aired_after)
        excerpt = self._excerpt(event.stream_id, windows[0].seq, windows[-1].seq) if event.cluster_id is not None else None  # only a
        # repeat's audio is worth its CPU and bytes
        kept = KeptStretch(event.unknown_id, event.stream_id, event.started_at, event.duration, offsets,
                           embeddings.astype(np.float16), event.cluster_id, excerpt)
        return Resolved(event, kept)

    def _match(self, event: UnknownEvent, offsets: np.ndarray, embeddings: np.ndarray, calibration: Confidence,
               aired_after: float) -> UnknownEvent:
        hits = self.kept.hits(offsets, embeddings, self.config.neighbours, event.unknown_id, aired_after)
        matches = [m for m in match_hits(hits, self.window_seconds, calibration=calibration, min_confidence=self.config.min_confidence)
                   if m.query_end - m.query_start >= self.config.min_match_windows * self.hop
                   and self._inside(m.speed, calibration.speed_range)] if hits else []
        if not matches:
            return event
        best = matches[0]
        cluster = self.store.clusters_of([best.track_id]).get(best.track_id) or cluster_id(best.track_id)
        return replace(event, cluster_id=cluster, matched_unknown_id=best.track_id, score=best.score, speed=best.speed,
                       ref_start=best.ref_start - best.speed * best.query_start)

    @staticmethod
    def _inside(speed: float, speed_range: tuple[float, float]) -> bool:
        """Whether a fitted speed lies inside the matcher's range: the fit stops at its ends, so a line there
        wanted a speed beyond it, which chance lines among short stretches do and real repeats do not
        (`bench unknowns`: a jingle joined 12 s of other music at 0.80)."""
        return speed_range[0] + SPEED_EDGE < speed < speed_range[1] - SPEED_EDGE

    def _excerpt(self, stream_id: str, first: int, last: int) -> bytes | None:
        """The audio of windows `first` to `last` (the latest `excerpt_seconds` of them held), silence where
        a window is missing; None where this process held none of it (another worker embedded it)."""
        with self.audio_lock:
            held = [(seq, audio) for seq, audio in self.audio.get(stream_id, ()) if first <= seq <= last]
        if not held:
            return None
        first, hop = held[0][0], len(held[0][1])
        pcm = np.zeros((held[-1][0] + 1 - first) * hop, np.int16)
        for seq, audio in held:
            pcm[(seq - first) * hop : (seq - first) * hop + len(audio)] = audio
        return encode_ogg(pcm, self.rate)

    def keep(self, resolved: Iterable[Resolved]) -> None:
        """After the events are out: keep the stretches, and put the ones they matched into their clusters."""
        for item in resolved:
            if item.kept is not None:
                self.store.keep(item.kept)
            if item.event.matched_unknown_id is not None:
                self.store.join(item.event.matched_unknown_id, item.event.cluster_id)

    def forget(self, stream_id: str) -> None:
        """A stream ended: its held windows go."""
        self.heard.pop(stream_id, None)
        with self.audio_lock:
            self.audio.pop(stream_id, None)
