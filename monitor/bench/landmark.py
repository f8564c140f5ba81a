"""A classical landmark fingerprinter (Shazam/Dejavu-style), the benchmark's baseline engine.

Spectral peaks are paired into landmarks (f1, f2 - f1, dt), each hashed to an integer and stored with
its track and time. A query votes for (track, time offset) pairs; a true match piles its votes on one
offset. The offset is fixed, so tempo and speed changes defeat it: that is the point of the baseline.
It lives inside the benchmark only; airtrace itself identifies music with neural embeddings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


OFFSET_BIAS = 1 << 31  # keeps (track << 32) + offset decodable when the offset is negative


@dataclass(frozen=True)
class LandmarkParams:
    """Front end, peak picking and hashing; audfprint's defaults scaled to 8 kHz."""

    sample_rate: int = 8000
    n_fft: int = 512
    hop: int = 128  # 16 ms frames
    peak_bins: int = 10  # a peak is the largest value within +-peak_bins of frequency ...
    peak_frames: int = 8  # ... and +-peak_frames of time
    level_frames: int = 31  # ... and stands min_level above the mean spectrum of the surrounding +-level_frames
    min_level: float = 1.5  # natural log of magnitude: 1.5 is 13 dB
    fan_out: int = 4  # landmarks per anchor peak: its nearest targets in time
    max_dt: int = 63  # target zone: 1..max_dt frames after the anchor (6 bits) ...
    max_df: int = 63  # ... and within +-max_df bins (7 bits)
    min_votes: int = 8  # aligned landmarks needed to report a match
    max_matches: int = 5

    def seconds(self, frames: np.ndarray | int) -> np.ndarray | float:
        return frames * self.hop / self.sample_rate


def spectrogram(audio: np.ndarray, params: LandmarkParams) -> np.ndarray:
    """Log magnitude, (frames, bins), with a Hann window."""
    if len(audio) < params.n_fft:
        return np.zeros((0, params.n_fft // 2 + 1), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(audio.astype(np.float32, copy=False), params.n_fft)[:: params.hop]
    spec = np.abs(np.fft.rfft(frames * np.hanning(params.n_fft).astype(np.float32), axis=1))
    return np.log(spec + 1e-4).astype(np.float32)


def _running_max(values: np.ndarray, radius: int, axis: int) -> np.ndarray:
    pad = [(0, 0)] * values.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(values, pad, constant_values=-np.inf)
    return np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1, axis=axis).max(axis=-1)


def _moving_mean(values: np.ndarray, radius: int) -> np.ndarray:
    """Mean over +-radius samples, over fewer at the ends."""
    total = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    index = np.arange(len(values))
    lo, hi = np.maximum(index - radius, 0), np.minimum(index + radius + 1, len(values))
    return ((total[hi] - total[lo]) / (hi - lo)).astype(np.float32)


def find_peaks(audio: np.ndarray, params: LandmarkParams) -> tuple[np.ndarray, np.ndarray]:
    """(frame, bin) of local spectral maxima that stand out of their surroundings, in frame order.

    Every test looks only a fraction of a second around a peak, so an excerpt finds the same peaks as its
    whole track did (a normalisation over the clip, or a peak budget per clip second, would not).
    """
    spec = spectrogram(audio, params)
    if len(spec) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    level = spec - _moving_mean(spec.mean(axis=1), params.level_frames)[:, None]  # gain and loudness drop out
    local_max = _running_max(_running_max(level, params.peak_bins, 1), params.peak_frames, 0)
    frames, bins = np.nonzero((level == local_max) & (level > params.min_level))
    return frames, bins


def landmarks(audio: np.ndarray, params: LandmarkParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hash, anchor frame, target frame) of every landmark: each peak paired with its next fan_out peaks in the zone."""
    frames, bins = find_peaks(audio, params)
    hashes, anchors, targets = [], [], []
    taken = np.zeros(len(frames), np.int64)
    for step in range(1, 4 * params.fan_out):  # look past peaks outside the zone, up to a bound
        if step >= len(frames):
            break
        dt = frames[step:] - frames[:-step]
        df = bins[step:] - bins[:-step]
        ok = (dt >= 1) & (dt <= params.max_dt) & (np.abs(df) <= params.max_df) & (taken[:-step] < params.fan_out)
        anchor = np.nonzero(ok)[0]
        taken[anchor] += 1
        hashes.append((bins[anchor] << 13) | ((df[anchor] + params.max_df) << 6) | dt[anchor])
        anchors.append(frames[anchor])
        targets.append(frames[anchor + step])
    if not hashes:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(hashes), np.concatenate(anchors), np.concatenate(targets)


@dataclass(frozen=True)
class LandmarkMatch:
    """One aligned run of landmarks; times in seconds, speed fixed at 1."""

    track_id: str
    query_start: float
    query_end: float
    ref_start: float
    ref_end: float
    votes: int
    fraction: float  # of the query's landmarks that voted for it


class LandmarkIndex:
    """Landmarks of the references, sorted by hash for binary search."""

    def __init__(self, params: LandmarkParams, track_ids: list[str], hashes: np.ndarray, tracks: np.ndarray, times: np.ndarray):
        self.params, self.track_ids = params, track_ids
        self.hashes, self.tracks, self.times = hashes, tracks, times

    @classmethod
    def build(cls, references: Iterable[tuple[str, np.ndarray]], params: LandmarkParams = LandmarkParams()) -> "LandmarkIndex":
        """Index (track_id, audio at params.sample_rate) pairs."""
        track_ids, parts = [], []
        for track_id, audio in references:
            hashes, anchors, _ = landmarks(audio, params)
            parts.append((hashes, np.full(len(hashes), len(track_ids), np.int32), anchors.astype(np.int32)))
            track_ids.append(track_id)
        hashes = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        order = np.argsort(hashes, kind="stable")
        tracks = np.concatenate([p[1] for p in parts])[order] if parts else np.zeros(0, np.int32)
        times = np.concatenate([p[2] for p in parts])[order] if parts else np.zeros(0, np.int32)
        return cls(params, track_ids, hashes[order].astype(np.int32), tracks, times)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, hashes=self.hashes, tracks=self.tracks, times=self.times,
                 track_ids=np.array(self.track_ids), params=json.dumps(asdict(self.params)))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "LandmarkIndex":
        with np.load(path) as data:
            params = LandmarkParams(**json.loads(str(data["params"])))
            return cls(params, [str(t) for t in data["track_ids"]], data["hashes"], data["tracks"], data["times"])

    def identify(self, audio: np.ndarray) -> list[LandmarkMatch]:
        """Matches in a query at params.sample_rate, most votes first; none below min_votes."""
        p = self.params
        q_hash, q_anchor, q_target = landmarks(audio, p)
        lo = np.searchsorted(self.hashes, q_hash, "left")
        hi = np.searchsorted(self.hashes, q_hash, "right")
        counts = hi - lo
        if counts.sum() == 0:
            return []
        which = np.repeat(np.arange(len(q_hash)), counts)
        entries = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        offsets = self.times[entries].astype(np.int64) - q_anchor[which]
        keys = (self.tracks[entries].astype(np.int64) << 32) + offsets + OFFSET_BIAS  # one bin per (track, frame offset)
        unique, votes = np.unique(keys, return_counts=True)
        # a landmark may land one frame off: pool each bin with its two neighbours
        pooled = votes.copy()
        for shift in (-1, 1):
            pos = np.searchsorted(unique, unique + shift)
            found = (pos < len(unique)) & (unique[np.minimum(pos, len(unique) - 1)] == unique + shift)
            pooled[found] += votes[pos[found]]
        matches: list[LandmarkMatch] = []
        seen_tracks: set[int] = set()
        for i in np.argsort(-pooled, kind="stable"):
            if pooled[i] < p.min_votes or len(matches) >= p.max_matches:
                break
            track = int(unique[i] >> 32)
            if track in seen_tracks:
                continue
            seen_tracks.add(track)
            voters = np.abs(keys - unique[i]) <= 1
            start, end = int(q_anchor[which[voters]].min()), int(q_target[which[voters]].max())
            offset = float(p.seconds(int(unique[i] - (track << 32) - OFFSET_BIAS)))
            q_start, q_end = float(p.seconds(start)), float(p.seconds(end))
            matches.append(LandmarkMatch(self.track_ids[track], q_start, q_end, q_start + offset, q_end + offset,
                                         int(pooled[i]), float(pooled[i]) / len(q_hash)))
        return matches

