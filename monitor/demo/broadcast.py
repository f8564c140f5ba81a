"""Synthetic broadcasts with exact truth, and the scoring of detected plays against it.

A programme is a list of pieces: catalog tracks, music that is not in the catalog, and talk. Each piece
is an excerpt of its source run through a distortion chain of `encoders` (tempo, speed, noise, ...) and
placed after the previous one, overlapping it by `overlap` seconds, either crossfaded (a DJ mix) or
mixed over it (a voice over an intro). The truth is where each catalog excerpt landed on the stream,
fades included. The demo and `airtrace bench broadcast` build theirs here and score with `score_plays`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile

from encoders import Sources, parse_chain
from monitor.events import Event, PlayEvent, ProvisionalEvent

SAMPLE_RATE = 16000
LEVEL_DBFS = {"track": -20.0, "music": -20.0, "talk": -18.0}  # loudness each piece is brought to (RMS)


@dataclass(frozen=True)
class Piece:
    kind: Literal["track", "music", "talk"]  # a catalog track, music not in the catalog, or speech
    name: str  # the track id for a catalog track
    audio: np.ndarray = field(repr=False)  # the whole source at SAMPLE_RATE
    ref_start: float = 0.0  # where the excerpt starts in the source
    seconds: float | None = None  # excerpt length in the source; None: to the end
    chain: str = "clean"  # distortions (encoders.parse_chain), e.g. "speed:1.04+noise:15"
    overlap: float = 0.0  # seconds this piece starts before the previous one ends
    crossfade: bool = True  # fade the overlap; False mixes this piece over the previous one's tail


@dataclass(frozen=True)
class TruePlay:
    track_id: str
    stream_start: float
    stream_end: float
    ref_start: float
    ref_end: float
    speed: float
    how: str = ""  # the distortions and the way in ("crossfade", "voice-over"), to read errors by condition


def compose(pieces: Sequence[Piece], rng: np.random.Generator, sources: Sources = Sources()) -> tuple[np.ndarray, list[TruePlay]]:
    """The broadcast's audio at SAMPLE_RATE and the true plays of its catalog tracks."""
    audio, aired = arrange(pieces, rng, sources)
    return audio, [where for piece, where in aired if piece.kind == "track"]


def arrange(pieces: Sequence[Piece], rng: np.random.Generator, sources: Sources = Sources()) -> tuple[np.ndarray, list[tuple[Piece, TruePlay]]]:
    """The broadcast's audio at SAMPLE_RATE and where every piece landed on it (its `track_id` is the
    piece's name): catalog tracks for the play truth, and the rest for benchmarks of what is not in the catalog."""
    placed: list[tuple[int, np.ndarray]] = []
    aired: list[tuple[Piece, TruePlay]] = []
    end = 0
    for piece in pieces:
        begin = int(round(piece.ref_start * SAMPLE_RATE))
        stop = len(piece.audio) if piece.seconds is None else min(len(piece.audio), begin + int(round(piece.seconds * SAMPLE_RATE)))
        chain = parse_chain(piece.chain)
        audio = _at_level(chain.apply(piece.audio[begin:stop].astype(np.float32), SAMPLE_RATE, rng, sources), LEVEL_DBFS[piece.kind])
        overlap = min(int(round(piece.overlap * SAMPLE_RATE)), end, len(audio))
        start = end - overlap
        if piece.crossfade and overlap and placed:
            _fade_tail(placed[-1], start, overlap)
            audio[:overlap] *= np.linspace(0.0, 1.0, overlap, dtype=np.float32)
        placed.append((start, audio))
        way_in = "" if not overlap else " crossfade" if piece.crossfade else " voice-over"
        aired.append((piece, TruePlay(piece.name, start / SAMPLE_RATE, (start + len(audio)) / SAMPLE_RATE,
                                      begin / SAMPLE_RATE, stop / SAMPLE_RATE, chain.rate, f"{chain}{way_in}")))
        end = max(end, start + len(audio))
    out = np.zeros(end, np.float32)
    for start, audio in placed:
        out[start : start + len(audio)] += audio
    peak = float(np.abs(out).max(initial=0.0))
    return (out / peak * 0.9 if peak > 0.9 else out), aired


def _at_level(audio: np.ndarray, dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    return (audio * (10 ** (dbfs / 20) / max(rms, 1e-9))).astype(np.float32)


def _fade_tail(placed: tuple[int, np.ndarray], from_sample: int, length: int) -> None:
    """Fade the placed piece out over `length` samples from stream sample `from_sample` (in place)."""
    start, audio = placed
    first = from_sample - start
    audio[first : first + length] *= np.linspace(1.0, 0.0, length, dtype=np.float32)[: len(audio) - first]
    audio[first + length :] = 0.0


def write_broadcast(path: Path, audio: np.ndarray, truth: Sequence[TruePlay]) -> Path:
    """The audio as MP3 (as a station would stream it) and the truth beside it as JSON. Both are written
    under names of this process and renamed, the MP3 last: benchmarks keep broadcasts in a shared cache and
    take one whose MP3 is there, so two runs composing the same broadcast must never show a half-written one."""
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    soundfile.write(part, audio, SAMPLE_RATE, format="MP3")
    truth_part = part.with_suffix(".truth")
    truth_part.write_text(json.dumps([asdict(p) for p in truth], indent=1))
    truth_part.replace(truth_path(path))
    part.replace(path)
    return path


def truth_path(broadcast: Path) -> Path:
    return broadcast.with_suffix(".truth.json")


def read_truth(broadcast: Path) -> list[TruePlay]:
    return [TruePlay(**p) for p in json.loads(truth_path(broadcast).read_text())]


@dataclass(frozen=True)
class Pairing:
    truth: TruePlay | None  # None: a detected play with no true play (a false play)
    detected: PlayEvent | None  # the ended event; None: a missed play
    latency: float | None = None  # stream seconds from the true start to the started event's decision
    heard: float | None = None  # ... to the first notice of the play: its provisional event, or its started one

    @property
    def start_error(self) -> float | None:
        return None if self.truth is None or self.detected is None else self.detected.stream_start - self.truth.stream_start

    @property
    def end_error(self) -> float | None:
        if self.truth is None or self.detected is None or self.detected.stream_end is None:
            return None
        return self.detected.stream_end - self.truth.stream_end


@dataclass(frozen=True)
class Scorecard:
    pairings: tuple[Pairing, ...]

    def _count(self, truth: bool, detected: bool) -> int:
        return sum((p.truth is not None) == truth and (p.detected is not None) == detected for p in self.pairings)

    @property
    def precision(self) -> float:
        matched, false = self._count(True, True), self._count(False, True)
        return matched / (matched + false) if matched + false else 1.0

    @property
    def recall(self) -> float:
        matched, missed = self._count(True, True), self._count(True, False)
        return matched / (matched + missed) if matched + missed else 1.0

    def _values(self, name: str) -> list[float]:
        return [v for p in self.pairings if (v := getattr(p, name)) is not None]

    def median_abs(self, name: Literal["start_error", "end_error", "latency", "heard"]) -> float | None:
        values = self._values(name)
        return float(np.median(np.abs(values))) if values else None

    def p95(self, name: Literal["start_error", "end_error", "latency", "heard"]) -> float | None:
        values = self._values(name)
        return float(np.percentile(values, 95)) if values else None


def score_plays(truth: Sequence[TruePlay], events: Sequence[Event]) -> Scorecard:
    """Pair each detected play with a true play of the same track that it overlaps (largest overlap
    first, each at most once); the rest are false plays and missed plays. Other kinds of event are not plays."""
    plays = [e for e in events if isinstance(e, PlayEvent)]
    ended = [e for e in plays if e.state == "ended"]
    decided = {e.play_id: e.decided_offset for e in plays if e.state == "started"}
    heard = {**decided, **{e.play_id: e.decided_offset for e in events if isinstance(e, ProvisionalEvent) and e.kind == "provisional"}}
    candidates = sorted(
        ((_overlap(t, e), i, j) for i, t in enumerate(truth) for j, e in enumerate(ended) if t.track_id == e.track_id),
        reverse=True,
    )
    used_t, used_e, pairings = set(), set(), []
    for overlap, i, j in candidates:
        if overlap > 0 and i not in used_t and j not in used_e:
            used_t.add(i)
            used_e.add(j)
            since = truth[i].stream_start
            play = ended[j].play_id
            pairings.append(Pairing(truth[i], ended[j], decided[play] - since if play in decided else None,
                                    heard[play] - since if play in heard else None))
    pairings += [Pairing(t, None) for i, t in enumerate(truth) if i not in used_t]
    pairings += [Pairing(None, e) for j, e in enumerate(ended) if j not in used_e]
    pairings.sort(key=lambda p: (p.truth or p.detected).stream_start)  # type: ignore[union-attr]
    return Scorecard(tuple(pairings))


def _overlap(truth: TruePlay, event: PlayEvent) -> float:
    return min(truth.stream_end, event.stream_end or event.stream_start) - max(truth.stream_start, event.stream_start)


def table(card: Scorecard) -> str:
    """Truth against detection, one line per play, and the totals."""
    lines = [f"{'track':<28} {'true start-end':>15} {'detected':>15} {'start err':>9} {'end err':>8} {'latency':>8}  how"]
    for p in card.pairings:
        track = (p.truth or p.detected).track_id  # type: ignore[union-attr]
        true = f"{p.truth.stream_start:6.1f}-{p.truth.stream_end:6.1f}" if p.truth else "(not played)"
        found = f"{p.detected.stream_start:6.1f}-{p.detected.stream_end or 0:6.1f}" if p.detected else "(missed)"
        errors = [_signed(p.start_error), _signed(p.end_error), "" if p.latency is None else f"{p.latency:.1f} s"]
        how = p.truth.how if p.truth else ""
        lines.append(f"{track[:28]:<28} {true:>15} {found:>15} {errors[0]:>9} {errors[1]:>8} {errors[2]:>8}  {how}")
    lines.append(
        f"precision {card.precision:.2f}  recall {card.recall:.2f}  median |start error| {_seconds(card.median_abs('start_error'))}  "
        f"median |end error| {_seconds(card.median_abs('end_error'))}  latency p95 {_seconds(card.p95('latency'))}"
    )
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f} s"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"
