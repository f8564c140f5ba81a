"""Labelled windows for the content classifier, built from real music, real recorded speech and synthesis.

Each example is a few seconds of one class, cut into the encoder's windows that all carry its label:
- music: an excerpt of a corpus track (quiet passages under MUSIC_FLOOR_DB skipped);
- speech: one recorded talker (encoders.speech.talk), sometimes over a room-noise floor or in a room;
- speech_over_music: a talker over music, the music SPEECH_OVER_MUSIC_DB below to above the voice;
- silence: digital zero, or a noise floor (and hum) at most -60 dBFS;
- other: noise, mains hum and buzz, test tones, dial and DTMF tones, beeps and sweeps at -45..-3 dBFS.
Programme examples (the first three) are then set to a broadcast level and sometimes coloured by a codec,
an equaliser, a band limit or a broadcast compressor. Everything is a function of (seed, example index),
so a training set is rebuilt exactly by its config.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from encoders.augment import Distortion, coloured_noise
from encoders.classes import CLASSES
from encoders.speech import talk

MUSIC_FLOOR_DB = -50.0  # a music excerpt quieter than this (a fade, a gap between movements) is not used
PROGRAMME_LEVEL_DB = (-45.0, -6.0)  # RMS of music and speech examples, dBFS
SPEECH_OVER_MUSIC_DB = (-15.0, 0.0)  # music level relative to the voice: a bed ducked 15 dB under the talker, up to as loud
SILENCE_FLOOR_DB = (-90.0, -60.0)  # near-silence: a noise floor no louder than this
OTHER_LEVEL_DB = (-45.0, -3.0)


@dataclass(frozen=True)
class ContentSources:
    """Audio at the working rate: music tracks, and each voice's speech clips (trimmed prompts)."""

    music: Sequence[np.ndarray]
    voices: Sequence[Sequence[np.ndarray]]


def rms_db(audio: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(audio, dtype=np.float64)) + 1e-20))


def at_level(audio: np.ndarray, level_db: float) -> np.ndarray:
    """`audio` scaled to RMS `level_db` dBFS."""
    return (audio * 10 ** ((level_db - rms_db(audio)) / 20)).astype(np.float32)


def music_excerpt(src: ContentSources, length: int, rng: np.random.Generator) -> np.ndarray:
    """A random stretch of a random track that is not a fade or a gap (a few tries, then the loudest seen)."""
    best = np.zeros(length, np.float32)
    for _ in range(8):
        track = src.music[rng.integers(len(src.music))]
        start = int(rng.integers(0, max(1, len(track) - length)))
        excerpt = np.asarray(track[start : start + length], dtype=np.float32)
        excerpt = np.pad(excerpt, (0, length - len(excerpt)))
        if rms_db(excerpt) > MUSIC_FLOOR_DB:
            return excerpt
        best = max(best, excerpt, key=rms_db)
    return best


def _voice(src: ContentSources, length: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    return talk(src.voices[rng.integers(len(src.voices))], length, sr, rng)


def _room(audio: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A studio or phone-in rarely sounds dry: sometimes a little reverb, sometimes a noise floor 25-50 dB down."""
    if rng.random() < 0.25:
        audio = Distortion("reverb", float(rng.uniform(0.15, 0.6))).apply(audio, sr, rng)
    if rng.random() < 0.4:
        floor = coloured_noise(len(audio), float(rng.choice([0.0, 1.0, 2.0])), rng)
        audio = audio + at_level(floor, rms_db(audio) - rng.uniform(25, 50))
    return audio.astype(np.float32)


def make_music(src: ContentSources, length: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    return music_excerpt(src, length, rng)


def make_speech(src: ContentSources, length: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    return _room(_voice(src, length, sr, rng), sr, rng)


def make_speech_over_music(src: ContentSources, length: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    voice = _room(_voice(src, length, sr, rng), sr, rng)
    music = at_level(music_excerpt(src, length, rng), rms_db(voice) + rng.uniform(*SPEECH_OVER_MUSIC_DB))
    return voice + music


def _hum(length: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Mains hum or buzz: 50 or 60 Hz and its harmonics, falling off slowly (buzz) or fast (hum)."""
    t = np.arange(length) / sr
    mains = float(rng.choice([50.0, 60.0]))
    decay = rng.uniform(0.5, 1.0) if rng.random() < 0.5 else rng.uniform(0.05, 0.4)
    harmonics = range(1, int(sr / 2 / mains))
    wave = sum(decay ** (k - 1) * np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 2 * np.pi)) for k in harmonics)
    return np.asarray(wave, np.float32)


def _tones(length: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A test tone, a dial or DTMF pair, a gated beep or a sweep."""
    t = np.arange(length) / sr
    kind = rng.choice(["tone", "pair", "beeps", "sweep"])
    if kind == "tone":
        wave = np.sin(2 * np.pi * rng.uniform(150, 0.47 * sr) * t)
    elif kind == "pair":
        low, high = rng.choice([350, 440, 480, 697, 770, 852, 941]), rng.choice([440, 620, 1209, 1336, 1477, 1633])
        wave = np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t)
    elif kind == "beeps":
        period, duty = rng.uniform(0.2, 1.5), rng.uniform(0.2, 0.7)
        wave = np.sin(2 * np.pi * rng.uniform(300, 3000) * t) * ((t % period) < duty * period)
    else:
        f0, f1 = rng.uniform(100, 1000), rng.uniform(1000, 0.47 * sr)
        duration = t[-1] if len(t) else 1.0
        wave = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * duration)))
    return np.asarray(wave, np.float32)


def make_silence(src: ContentSources, length: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.3:
        return np.zeros(length, np.float32)
    floor = at_level(coloured_noise(length, float(rng.choice([0.0, 1.0, 2.0])), rng), rng.uniform(*SILENCE_FLOOR_DB))
    if rng.random() < 0.3:
        floor = floor + at_level(_hum(length, sr, rng), rng.uniform(SILENCE_FLOOR_DB[0], SILENCE_FLOOR_DB[1]))
    return floor


def make_other(src: ContentSources, length: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    kind = rng.choice(["noise", "hum", "tones", "tones+noise"], p=[0.35, 0.2, 0.3, 0.15])
    if kind == "noise":
        wave = coloured_noise(length, float(rng.uniform(0.0, 2.0)), rng)
    elif kind == "hum":
        wave = _hum(length, sr, rng)
    else:
        wave = _tones(length, sr, rng)
        if kind == "tones+noise":
            wave = wave + at_level(coloured_noise(length, float(rng.uniform(0.0, 2.0)), rng), rms_db(wave) - rng.uniform(0, 20))
    return at_level(wave, rng.uniform(*OTHER_LEVEL_DB))


MAKERS: dict[str, Callable[[ContentSources, int, int, np.random.Generator], np.ndarray]] = {
    "music": make_music,
    "speech": make_speech,
    "speech_over_music": make_speech_over_music,
    "silence": make_silence,
    "other": make_other,
}
PROGRAMME = ("music", "speech", "speech_over_music")


def broadcast_colour(audio: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """What a station's chain does to programme: a level, and sometimes a codec, an EQ, a band limit, a compressor."""
    audio = at_level(audio, rng.uniform(*PROGRAMME_LEVEL_DB))
    steps = [
        (0.3, lambda: Distortion("eq", float(rng.uniform(3, 10)))),
        (0.2, lambda: Distortion("lowpass", float(rng.uniform(2500, 3800)))),
        (0.2, lambda: Distortion("highpass", float(rng.uniform(100, 400)))),
        (0.25, lambda: Distortion("compress", float(rng.uniform(2, 8)))),
        (0.35, lambda: Distortion(str(rng.choice(["mp3", "aac", "opus"])), float(rng.choice([24, 32, 48, 64])))),
    ]
    for p, make in steps:
        if rng.random() < p:
            audio = make().apply(audio, sr, rng)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def example(src: ContentSources, label: str, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """`seconds` of class `label`, as a station would air it."""
    length = int(seconds * sr)
    audio = MAKERS[label](src, length, sr, rng)
    return broadcast_colour(audio, sr, rng) if label in PROGRAMME else audio.astype(np.float32)


def labelled_windows(src: ContentSources, per_class: int, seconds: float, window: int, sr: int, seed: int,
                     classes: Sequence[str] = CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """(windows (N, window), class indices (N,)): `per_class` examples of each class, each cut into
    non-overlapping windows. Example i of class c depends only on (seed, c, i)."""
    windows, labels = [], []
    for c, label in enumerate(classes):
        for i in range(per_class):
            audio = example(src, label, seconds, sr, np.random.default_rng([seed, c, i]))
            cut = audio[: len(audio) // window * window].reshape(-1, window)
            windows.append(cut)
            labels.append(np.full(len(cut), c))
    return np.concatenate(windows), np.concatenate(labels)
