"""Recorded human speech from Debian's Asterisk voice prompts: single talkers and multi-talker babble.

Each voice is one speaker's prompts as a Debian package installs them under /usr/share/asterisk/sounds
(8 kHz telephone-band recordings, so nothing above 4 kHz: judge a wider front end with other speech).
One voice, HELD_OUT_VOICE, is never trained on; it voices the benchmark's babble rows. English prompts
(`asterisk-core-sounds-en*`) are deliberately absent: they are kept for independent evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from encoders.audio import AudioError, load_audio

log = logging.getLogger(__name__)

SOUNDS_DIR = Path("/usr/share/asterisk/sounds")
TRIM_FRAME_SECONDS = 0.02
TRIM_FLOOR_DB = -40.0  # frames this far below a clip's loudest frame are silence at its ends
MIN_CLIP_SECONDS = 0.3
PAUSE_SECONDS = (0.1, 0.6)  # between one talker's sentences


class SpeechError(AudioError):
    """Recorded speech that is missing or unusable; the message names the Debian package to install."""


@dataclass(frozen=True)
class Voice:
    """One speaker: the folder under the sounds directory that its Debian package fills, and its file type."""

    name: str
    language: str
    folder: str
    suffix: str
    package: str

    def directory(self, root: Path = SOUNDS_DIR) -> Path:
        return root / self.folder

    def __str__(self) -> str:
        return f"{self.name} ({self.language})"


# Every recorded voice airtrace knows. Two packages install into the plain language folders (`es`, `fr`),
# which are otherwise links to another voice: the suffix tells them apart (.gsm there, .wav for the links).
VOICES = (
    Voice("allison", "es", "es_MX_f_Allison", ".wav", "asterisk-core-sounds-es-wav"),
    Voice("june", "fr", "fr_CA_f_June", ".wav", "asterisk-core-sounds-fr-wav"),
    Voice("carlo", "it", "it_IT_m_Carlo", ".wav", "asterisk-core-sounds-it-wav"),
    Voice("ivrvoice", "ru", "ru_RU_f_IvrvoiceRU", ".wav", "asterisk-core-sounds-ru-wav"),
    Voice("menardi", "it", "it_IT_f_Menardi", ".wav", "asterisk-prompt-it-menardi-wav"),
    Voice("armelle", "fr", "fr", ".gsm", "asterisk-prompt-fr-armelle"),
    Voice("colombia", "es", "es", ".gsm", "asterisk-prompt-es-co"),
)
HELD_OUT_VOICE = "june"  # the benchmark's talkers; never in training


def _is_speech(path: Path) -> bool:
    """Prompts are speech except the beeps, tones and silences the packages ship beside them."""
    name = path.stem.lower()
    return "silence" not in path.parts and not name.startswith("beep") and "tone" not in name


def voice_files(voice: Voice, root: Path = SOUNDS_DIR) -> list[Path]:
    """The voice's spoken prompts, sorted; empty when its package is not installed."""
    directory = voice.directory(root)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob(f"*{voice.suffix}") if _is_speech(p.relative_to(directory)))


def installed_voices(root: Path = SOUNDS_DIR) -> list[Voice]:
    """The known voices whose prompts are installed."""
    return [v for v in VOICES if voice_files(v, root)]


def get_voice(name: str, root: Path = SOUNDS_DIR) -> Voice:
    """The voice called `name`; an unknown name or a missing package is an error that says what to do."""
    by_name = {v.name: v for v in VOICES}
    if name not in by_name:
        raise SpeechError(f"unknown voice {name!r}; known voices are {', '.join(by_name)}")
    voice = by_name[name]
    if not voice_files(voice, root):
        raise SpeechError(f"voice {voice} is not installed ({voice.directory(root)} holds no {voice.suffix} prompts); "
                          f"install it with `apt-get install {voice.package}`")
    return voice


def split_voices(root: Path = SOUNDS_DIR) -> tuple[list[Voice], Voice]:
    """(the installed voices to train on, the held-out voice); an error names the packages when either is missing."""
    held_out = get_voice(HELD_OUT_VOICE, root)
    train = [v for v in installed_voices(root) if v.name != HELD_OUT_VOICE]
    if not train:
        packages = " ".join(v.package for v in VOICES if v.name != HELD_OUT_VOICE)
        raise SpeechError(f"no training voice is installed under {root}; install them with `apt-get install {packages}`")
    return train, held_out


def trim_silence(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """The clip without the silence at its ends (frames TRIM_FLOOR_DB below its loudest frame)."""
    frame = max(1, int(TRIM_FRAME_SECONDS * sample_rate))
    usable = len(audio) // frame * frame
    if not usable:
        return audio
    energy = np.square(audio[:usable].reshape(-1, frame), dtype=np.float64).mean(axis=1)
    loud = np.flatnonzero(energy > energy.max() * 10 ** (TRIM_FLOOR_DB / 10))
    if not len(loud) or energy.max() <= 0:
        return audio[:0]
    return audio[loud[0] * frame : (loud[-1] + 1) * frame]


@lru_cache(maxsize=16)
def load_voice(voice: Voice, sample_rate: int, root: Path = SOUNDS_DIR) -> tuple[np.ndarray, ...]:
    """The voice's prompts decoded and resampled to `sample_rate`, silence trimmed; unreadable or
    near-empty files are logged and skipped."""
    clips = []
    for path in voice_files(voice, root):
        try:
            clip = trim_silence(load_audio(path, sample_rate), sample_rate)
        except AudioError as exc:
            log.warning("skipping a prompt of %s: %s", voice, exc)
            continue
        if len(clip) >= MIN_CLIP_SECONDS * sample_rate:
            clips.append(clip)
    if not clips:
        raise SpeechError(f"voice {voice} has no usable prompts in {voice.directory(root)}; reinstall `{voice.package}`")
    return tuple(clips)


def load_voices(voices: Sequence[Voice], sample_rate: int, root: Path = SOUNDS_DIR) -> tuple[tuple[np.ndarray, ...], ...]:
    """Each voice's clips (see load_voice), grouped by voice as `babble` takes them."""
    return tuple(load_voice(v, sample_rate, root) for v in voices)


def _unit_rms(audio: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    return (audio / max(rms, 1e-9)).astype(np.float32)


def talk(clips: Sequence[np.ndarray], length: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """`length` samples of one talker: random clips one after another with short pauses, entered at a
    random point of the first clip, at unit RMS."""
    if not clips:
        raise SpeechError("talk needs at least one speech clip")
    parts, total = [], 0
    while total < length:
        clip = clips[rng.integers(len(clips))]
        if not parts:
            clip = clip[rng.integers(len(clip)) :]
        pause = np.zeros(int(rng.uniform(*PAUSE_SECONDS) * sample_rate), np.float32)
        parts += [clip, pause]
        total += len(clip) + len(pause)
    return _unit_rms(np.concatenate(parts)[:length])


def babble(voices: Sequence[Sequence[np.ndarray]], length: int, sample_rate: int, talkers: int,
           rng: np.random.Generator) -> np.ndarray:
    """`length` samples of `talkers` people talking at once at equal level, unit RMS overall. Each talker
    is a different voice while the set has enough (then voices repeat, with other sentences)."""
    voices = [v for v in voices if len(v)]
    if not voices or talkers < 1:
        raise SpeechError(f"babble needs at least one voice with clips and one talker (got {len(voices)} voices, {talkers} talkers)")
    order = np.concatenate([rng.permutation(len(voices)) for _ in range(-(-talkers // len(voices)))])[:talkers]
    return _unit_rms(np.sum([talk(voices[i], length, sample_rate, rng) for i in order], axis=0))
