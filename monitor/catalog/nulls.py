"""Embedded audio certainly not in the catalog, kept with each generation: what the matcher's confidence
is calibrated on (monitor.stages.calibration)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from encoders import AudioError, Encoder, coloured_noise, synthesize_speech
from monitor.catalog.store import CatalogError
from monitor.stages.search import audible
from monitor.stages.windows import WindowGrid

log = logging.getLogger(__name__)

NULL_CLIP_SECONDS = 30.0
NULL_CLIPS = 64  # reversed excerpts kept, a uniform sample over all tracks ever added
SPEECH_NULL = (
    "Good evening and welcome back. Here are the headlines at the top of the hour.",
    "The council met today to discuss the new budget for schools and roads in the region.",
    "Tomorrow will be cloudy in the north with some rain, and sunny spells in the south.",
)


class NullClips:
    """Embedded audio that is certainly not in the catalog: noise and speech, plus time-reversed excerpts
    of a uniform sample (reservoir) of the tracks ever added, each with the ordinal of its source track
    (-1 for noise and speech). A reversed excerpt still resembles its own track, so calibration ignores
    that track's hits: against every other track it is music the catalog does not hold."""

    def __init__(self, clips: list[np.ndarray], sources: list[int], offered: int):
        self.clips, self.sources, self.offered = clips, sources, offered

    @classmethod
    def noise_and_speech(cls, encoder: Encoder, grid: WindowGrid) -> "NullClips":
        rng = np.random.default_rng(0)
        n = int(NULL_CLIP_SECONDS * encoder.sample_rate)
        audio = [coloured_noise(n, exponent, rng) * 0.1 for exponent in (0.0, 1.0, 2.0)]
        try:
            speech = np.concatenate([synthesize_speech(line, encoder.sample_rate, voice) for line in SPEECH_NULL for voice in ("en", "de")])
            audio.append(speech[:n])
        except AudioError as exc:
            log.warning("no speech among the null clips: %s", exc)
        clips = []
        for clip in audio:
            windows = grid.cut(clip)
            windows = windows[audible(windows)]
            if len(windows):
                clips.append(encoder.embed(windows).astype(np.float16))
        return cls(clips, [-1] * len(clips), 0)

    def offer(self, track_ord: int, digest: str, null_vectors: Callable[[], np.ndarray]) -> None:
        """Reservoir sampling: the n-th track replaces a kept excerpt with probability NULL_CLIPS / n.
        `null_vectors` gives the embedded null_excerpt of the track, computed only if it is kept."""
        self.offered += 1
        kept = [i for i, source in enumerate(self.sources) if source >= 0]
        if len(kept) < NULL_CLIPS:
            slot = None
        else:
            pick = int(np.random.default_rng(int(digest[:12], 16)).integers(self.offered))
            if pick >= NULL_CLIPS:
                return
            slot = kept[pick]
        vectors = null_vectors()
        if not len(vectors):
            return
        if slot is None:
            self.clips.append(vectors.astype(np.float16))
            self.sources.append(track_ord)
        else:
            self.clips[slot], self.sources[slot] = vectors.astype(np.float16), track_ord

    def save(self, path: Path) -> None:
        np.savez(
            path,
            vectors=np.concatenate(self.clips) if self.clips else np.zeros((0, 0), np.float16),
            lengths=np.array([len(c) for c in self.clips], np.int64),
            sources=np.array(self.sources, np.int64),
            offered=np.int64(self.offered),
        )

    @classmethod
    def load(cls, path: Path) -> "NullClips":
        try:
            with np.load(path) as data:
                lengths = data["lengths"]
                clips = np.split(data["vectors"], np.cumsum(lengths)[:-1]) if len(lengths) else []
                return cls(list(clips), data["sources"].tolist(), int(data["offered"]))
        except (OSError, ValueError, KeyError) as exc:
            raise CatalogError(f"{path} cannot be read ({exc}); the catalog is corrupt, rebuild it") from exc


def null_excerpt(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """The middle NULL_CLIP_SECONDS of a track, time-reversed: music like the catalog's but not in it."""
    length = int(NULL_CLIP_SECONDS * sample_rate)
    start = max(0, (len(audio) - length) // 2)
    return audio[start : start + length][::-1].copy()
