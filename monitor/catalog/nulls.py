"""Embedded audio that is not in the catalog, kept with each generation: what the matcher's confidence is
calibrated on (monitor.stages.calibration)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

from encoders import AudioError, Encoder, coloured_noise, synthesize_speech
from monitor.catalog.store import CatalogError
from monitor.stages.search import audible
from monitor.stages.windows import WindowGrid

log = logging.getLogger(__name__)

NULL_CLIP_SECONDS = 30.0
NULL_CLIPS = 64  # track excerpts kept, a uniform sample over all tracks ever added
NULL_FORMAT = 2  # 2: a track's own middle windows (1: time-reversed excerpts)
SPEECH_NULL = (
    "Good evening and welcome back. Here are the headlines at the top of the hour.",
    "The council met today to discuss the new budget for schools and roads in the region.",
    "Tomorrow will be cloudy in the north with some rain, and sunny spells in the south.",
)


class NullQuery(NamedTuple):
    vectors: np.ndarray  # consecutive windows' embeddings
    source: str | None  # the track the excerpt is from (its hits do not count); None for noise and speech
    reversed: bool  # a time-reversed excerpt, as older catalogs kept (see NullClips): only its own track left out


class NullClips:
    """Embedded audio the catalog does not hold: noise and speech, plus the middle windows of a uniform
    sample (reservoir) of the tracks ever added, each with the ordinal of its source track (-1 for noise and
    speech). Calibration queries an excerpt with its own track left out, and any track sharing its music
    (monitor.stages.calibration.same_music): against the rest it is real music of the catalog's kind that
    the catalog does not hold, which is what a stream carries between plays. Older catalogs kept
    time-reversed excerpts instead, flagged in `reversed` and replaced at their next commit
    (Catalog._renew_reversed_nulls): reversed music resembles the catalog's less than real music does."""

    def __init__(self, clips: list[np.ndarray], sources: list[int], offered: int, reversed_: list[bool] | None = None):
        self.clips, self.sources, self.offered = clips, sources, offered
        self.reversed = reversed_ if reversed_ is not None else [False] * len(clips)

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

    def offer(self, track_ord: int, digest: str, vectors: np.ndarray) -> None:
        """Reservoir sampling: the n-th track replaces a kept excerpt with probability NULL_CLIPS / n.
        `vectors`: the track's null windows (`null_windows`)."""
        self.offered += 1
        kept = [i for i, source in enumerate(self.sources) if source >= 0]
        if len(kept) < NULL_CLIPS:
            slot = None
        else:
            pick = int(np.random.default_rng(int(digest[:12], 16)).integers(self.offered))
            if pick >= NULL_CLIPS:
                return
            slot = kept[pick]
        if not len(vectors):
            return
        if slot is None:
            self.clips.append(vectors.astype(np.float16))
            self.sources.append(track_ord)
            self.reversed.append(False)
        else:
            self.clips[slot], self.sources[slot], self.reversed[slot] = vectors.astype(np.float16), track_ord, False

    def renew(self, track_ord: int, vectors: np.ndarray) -> None:
        """Replace the reversed excerpt of `track_ord` by its null windows."""
        slot = self.sources.index(track_ord)
        if len(vectors):
            self.clips[slot], self.reversed[slot] = vectors.astype(np.float16), False

    def queries(self, names: dict[int, str]) -> list[NullQuery]:
        """The clips as float32 queries, each named by its source track (`names`: ordinal -> track id). Clips of
        tracks since removed are left out: their music may be back under a new ordinal (a track removed and added
        again), which calibration cannot leave out without its own track, and would then score as a perfect null."""
        return [NullQuery(clip.astype(np.float32), names[source] if source >= 0 else None, was_reversed)
                for clip, source, was_reversed in zip(self.clips, self.sources, self.reversed) if source < 0 or source in names]

    def save(self, path: Path) -> None:
        np.savez(
            path,
            vectors=np.concatenate(self.clips) if self.clips else np.zeros((0, 0), np.float16),
            lengths=np.array([len(c) for c in self.clips], np.int64),
            sources=np.array(self.sources, np.int64),
            reversed=np.array(self.reversed, bool),
            offered=np.int64(self.offered),
        )

    @classmethod
    def load(cls, path: Path) -> "NullClips":
        try:
            with np.load(path) as data:
                lengths = data["lengths"]
                clips = np.split(data["vectors"], np.cumsum(lengths)[:-1]) if len(lengths) else []
                sources = data["sources"].tolist()
                was_reversed = data["reversed"].tolist() if "reversed" in data else [source >= 0 for source in sources]
                return cls(list(clips), sources, int(data["offered"]), was_reversed)
        except (OSError, ValueError, KeyError) as exc:
            raise CatalogError(f"{path} cannot be read ({exc}); the catalog is corrupt, rebuild it") from exc


def null_windows(vectors: np.ndarray, numbers: np.ndarray, seconds: float, grid: WindowGrid) -> np.ndarray:
    """A track's audible windows in its middle NULL_CLIP_SECONDS (already embedded for the index)."""
    first = (seconds - NULL_CLIP_SECONDS) / 2.0
    starts = grid.start(np.asarray(numbers))
    return vectors[(starts >= first) & (starts + grid.window_seconds <= first + NULL_CLIP_SECONDS)]
