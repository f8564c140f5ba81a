"""Track-level queries: seeded excerpts of reference tracks under named distortions, and non-catalog audio.

Queries are decoded at 22050 Hz, distorted there, and only then resampled to each engine's rate, as a
live stream reaches the monitor. A query distorted with rate r (tempo or speed) that lasts L seconds
covers L * r seconds of its reference, so excerpts are cut long enough for the longest query length.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from encoders import AudioError, Sources, coloured_noise, load_audio, parse_chain, synthesize_speech
from encoders.speech import HELD_OUT_VOICE, SpeechError, get_voice, load_voices
from monitor.bench.references import BenchError, Reference, audible_span
from monitor.constants import SILENCE_DBFS

log = logging.getLogger(__name__)

DECODE_RATE = 22050
QUERY_LENGTHS = (1.0, 3.0, 5.0, 10.0)
MARGIN_SECONDS = 1.0  # spare audio after the longest query, so codecs and filters never run short

# Rows of the track-level table: encoders' distortion names at named strengths (see encoders.augment).
TRACK_ROWS = (
    "clean",
    "tempo:0.8", "tempo:0.9", "tempo:1.1", "tempo:1.2",
    "pitch:-2", "pitch:-1", "pitch:1", "pitch:2",
    "speed:0.9", "speed:0.95", "speed:1.05", "speed:1.1",
    "noise:15", "noise:5",
    "mp3:64", "mp3:32", "aac:48", "opus:24",
    "highpass:500", "lowpass:2000", "eq:10",
    "echo:150", "reverb:0.8",
    "speech:5", "compress:8", "clip:0.5", "gain:-20",
    # broadcast-like: a station's processing chain, a DJ over an intro, a pitched-up mix, a noisy room
    "eq:6+compress:6+mp3:64",
    "speed:1.03+compress:4+aac:48",
    "speech:5+compress:6+opus:24",
    "tempo:0.95+reverb:0.5+noise:10+mp3:32",
    # four recorded talkers of the held-out voice (last, so the rows above draw the queries they always did)
    "babble:5", "babble:0",
)

# Voice-over and non-catalog speech; different lines from those the encoder was trained with.
SPEECH_LINES = (
    "And that brings us to the top of the hour, here are tonight's headlines.",
    "You are tuned to the late show, stay with us for the next half hour of music.",
    "Traffic on the ring road is moving slowly after an accident near the bridge.",
    "Thanks for all your messages, keep them coming on the usual number.",
    "The forecast for tomorrow is bright and dry with a light westerly breeze.",
)
VOICES = ("en", "en-us", "de", "fr")


@dataclass(frozen=True)
class Query:
    """A distorted excerpt at DECODE_RATE; `ref_start` is where it begins in track `track_id`."""

    kind: str  # "catalog" for excerpts of catalog tracks; else the non-catalog kind
    row: str  # the distortion chain, as written in the table
    track_id: str | None
    ref_start: float
    rate: float
    audio: np.ndarray


@lru_cache(maxsize=2)
def speech_clips(sample_rate: int = DECODE_RATE) -> tuple[np.ndarray, ...]:
    """espeak-ng speech in several voices, for the voice-over row and the non-catalog speech queries."""
    try:
        return tuple(synthesize_speech(line, sample_rate, voice) for line in SPEECH_LINES for voice in VOICES)
    except AudioError as exc:
        raise BenchError(f"{exc} (the benchmark needs it for voice-over and speech queries)") from exc


@lru_cache(maxsize=1)
def held_out_talkers() -> tuple[tuple[np.ndarray, ...], ...]:
    """The recorded voice no encoder is trained on, for the babble rows."""
    try:
        return load_voices([get_voice(HELD_OUT_VOICE)], DECODE_RATE)
    except SpeechError as exc:
        raise BenchError(f"{exc} (the benchmark's babble rows need it)") from exc


def excerpt_bounds(audio: np.ndarray, sample_rate: int) -> tuple[int, int]:
    """The samples excerpts of a track are cut from: all of it, unless it begins or ends in silence, where an
    excerpt would be a query that no engine can answer (two dev tracks are 20 s of music and 64 s of
    digital silence); then its span above the catalog's silence level."""
    first, last = audible_span(audio, sample_rate, SILENCE_DBFS)
    return int(first * sample_rate), (len(audio) if last >= len(audio) // sample_rate else int(last * sample_rate))


def needed_seconds(row: str, lengths: Sequence[float]) -> float:
    """Reference audio a query of this row needs for its longest length."""
    return max(lengths) * parse_chain(row).rate + MARGIN_SECONDS


def plan(references: Sequence[Reference], rows: Sequence[str], per_row: int, lengths: Sequence[float],
         seed: int) -> list[tuple[int, int, Reference, float]]:
    """(row index, query index, track, where in the track's spare length it starts, 0..1) for every query;
    each row draws its own tracks and starts."""
    planned = []
    for r, row in enumerate(rows):
        need = needed_seconds(row, lengths)
        usable = [ref for ref in references if ref.seconds >= need]
        if not usable:
            raise BenchError(f"no reference track lasts the {need:.0f} s a {row} query needs; give longer tracks")
        rng = np.random.default_rng([seed, r])
        for i in range(per_row):
            planned.append((r, i, usable[rng.integers(len(usable))], float(rng.random())))
    return planned


def catalog_queries(references: Sequence[Reference], rows: Sequence[str], per_row: int,
                    lengths: Sequence[float], seed: int) -> Iterator[Query]:
    """Distorted excerpts, decoding each track once; yields in track order."""
    by_track: dict[Reference, list[tuple[int, int, float]]] = defaultdict(list)
    for r, i, ref, where in plan(references, rows, per_row, lengths, seed):
        by_track[ref].append((r, i, where))
    sources = Sources(speech=speech_clips() if any("speech" in row for row in rows) else (),
                      talkers=held_out_talkers() if any("babble" in row for row in rows) else ())
    for ref, wanted in by_track.items():
        audio = load_audio(ref.path, DECODE_RATE)
        low, high = excerpt_bounds(audio, DECODE_RATE)
        for r, i, where in wanted:
            row, need = rows[r], int(needed_seconds(rows[r], lengths) * DECODE_RATE)
            if high - low < need:  # the manifest said longer, or most of it is silence: skip rather than query with a short clip
                log.warning("skipping a %s query of %s: it decodes to %.1f s of sound", row, ref.track_id, (high - low) / DECODE_RATE)
                continue
            first = low + int(where * (high - low - need))
            chain = parse_chain(row)
            distorted = chain.apply(audio[first : first + need], DECODE_RATE, np.random.default_rng([seed, r, i, 1]), sources)
            yield Query("catalog", row, ref.track_id, first / DECODE_RATE, chain.rate, distorted)


def noncatalog_queries(holdout: Sequence[Reference], per_kind: int, lengths: Sequence[float], seed: int) -> Iterator[Query]:
    """Audio that must match nothing: held-out music (clean and broadcast-processed), speech, coloured noise."""
    length = int((max(lengths) + MARGIN_SECONDS) * DECODE_RATE)
    rng = np.random.default_rng([seed, 7])
    processing = parse_chain("eq:6+compress:6+mp3:64")
    if holdout:
        for i in range(per_kind):
            ref = holdout[rng.integers(len(holdout))]
            audio = load_audio(ref.path, DECODE_RATE)
            low, high = excerpt_bounds(audio, DECODE_RATE)
            start = int(rng.integers(low, max(low + 1, high - length)))
            excerpt = audio[start : start + length]
            if i % 2:
                excerpt = processing.apply(excerpt, DECODE_RATE, rng)
            yield Query("held-out music", str(processing) if i % 2 else "clean", ref.track_id, start / DECODE_RATE, 1.0, excerpt)
    clips = speech_clips()
    for _ in range(per_kind):
        speech = np.concatenate([clips[j] for j in rng.permutation(len(clips))[:4]])[:length]
        yield Query("speech", "clean", None, 0.0, 1.0, np.pad(speech, (0, max(0, length - len(speech)))))
    for i in range(per_kind):
        noise = 0.1 * coloured_noise(length, (0.0, 1.0, 2.0)[i % 3], rng)
        yield Query("noise", ("white", "pink", "brown")[i % 3], None, 0.0, 1.0, noise)
