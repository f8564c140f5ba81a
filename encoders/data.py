"""Training data: tracks decoded into memory, and a pool of distorted chunks that training pairs are cut from.

Distorting audio costs far more than a training step, so each distorted chunk serves many pairs: the
pool holds whole chunks and every batch cuts windows from them at random offsets. Every chunk is a pure
function of (seed, the step that last refreshed it, its slot), so a resumed run rebuilds the very pool
an uninterrupted run would hold.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from encoders.audio import AUDIO_SUFFIXES, AudioError, load_audio
from encoders.augment import BABBLE_TALKERS, RECIPES, Chain, Recipe, Sources, random_chain, synthesize_speech
from encoders.content_data import PROGRAMME_LEVEL_DB, ContentSources, at_level, make_other, make_speech
from encoders.speech import babble, load_voices, split_voices, talk

log = logging.getLogger(__name__)


SPEECH_LINES = (
    "Good morning, you are listening to the breakfast show, and here is the next one for you.",
    "That was a classic. Coming up after the news, the weather and the traffic.",
    "Call us now on the studio line, the lines are open until nine.",
    "Win tickets to the concert this weekend, just text the word music to our number.",
    "It is twenty five past seven, and the roads into town are still very busy this morning.",
    "Stay with us, more music is on the way right after this short break.",
)
VOICES = ("en", "en-us", "en-gb-x-rp", "de", "fr", "es")


def list_audio(path: str | Path) -> list[Path]:
    """Audio files under a folder, or the tracks a manifest.csv (with a `path` column) lists."""
    path = Path(path)
    if path.is_file() and path.suffix == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
        if "path" not in (reader.fieldnames or ()):
            raise ValueError(f"{path} has no `path` column; a manifest lists track_id,path[,...] per line")
        if not rows:
            raise ValueError(f"{path} lists no tracks under its header; add a track_id,path line per track")
        return [path.parent / row["path"] for row in rows]
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    raise FileNotFoundError(f"{path} is neither an audio folder, an audio file nor a manifest.csv")


def load_tracks(paths: list[Path], sample_rate: int, min_seconds: float) -> tuple[list[np.ndarray], list[int]]:
    """Decode tracks to float16 (half the memory), with each one's group: the tracks of one folder (an
    album, a game's soundtrack) share a composer and instruments. A file that fails is logged and skipped."""
    tracks, folders = [], []
    for path in tqdm(paths, desc="decoding", unit="track"):
        try:
            audio = load_audio(path, sample_rate)
        except AudioError as exc:
            log.warning("skipping %s", exc)
            continue
        if len(audio) < min_seconds * sample_rate:
            log.warning("skipping %s: %.1f s of audio, under the %g s training cuts pairs from", path, len(audio) / sample_rate, min_seconds)
            continue
        tracks.append(audio.astype(np.float16))
        folders.append(str(Path(path).parent))
    if not tracks:
        raise ValueError(f"none of the {len(paths)} files gave {min_seconds} s of audio to train on")
    group = {folder: n for n, folder in enumerate(sorted(set(folders)))}
    return tracks, [group[f] for f in folders]


TALK_STREAMS_PER_VOICE = 8
TALK_STREAM_SECONDS = 30.0


def speech_clips(sample_rate: int) -> tuple[np.ndarray, ...]:
    """Voice-over material from espeak-ng in several voices; none if espeak-ng is not installed."""
    try:
        return tuple(synthesize_speech(line, sample_rate, voice) for line in SPEECH_LINES for voice in VOICES)
    except AudioError as exc:
        log.warning("training without voice-over: %s", exc)
        return ()


def voice_sources(recipe: Recipe, sample_rate: int, seed: int) -> Sources:
    """The voices a recipe talks over the music with: espeak-ng lines and/or the recorded training voices
    (never the held-out one) as continuous talk for voice-over and as prompts for babble."""
    kinds = set(recipe.voices.split("+"))
    speech = speech_clips(sample_rate) if "espeak" in kinds else ()
    if "recorded" not in kinds:
        return Sources(speech=speech)
    train_voices, held_out = split_voices()
    log.info("recorded voices: %s (held out: %s)", ", ".join(map(str, train_voices)), held_out)
    talkers = load_voices(train_voices, sample_rate)
    rng = np.random.default_rng([seed, 5])
    length = int(TALK_STREAM_SECONDS * sample_rate)
    speech += tuple(talk(clips, length, sample_rate, rng) for clips in talkers for _ in range(TALK_STREAMS_PER_VOICE))
    return Sources(speech=speech, talkers=talkers)


@dataclass
class PoolChunk:
    clean: np.ndarray
    distorted: np.ndarray
    rate: float
    chain: Chain
    group: int


class PairPool:
    """Pairs of (clean window, the same moment after a random distortion chain).

    With `batch_groups`, each batch's pairs come from the chunks of that many groups of tracks only, so a
    window's in-batch negatives include many of its own group's (one composer's instruments and themes):
    the music the catalog confuses most."""

    def __init__(
        self,
        tracks: list[np.ndarray],
        sample_rate: int,
        window: int,
        size: int,
        chunk_seconds: float,
        max_shift: float,
        seed: int,
        voices: Sources = Sources(),
        recipe: Recipe = RECIPES["v1"],
        groups: list[int] | None = None,
        batch_groups: int = 0,
    ):
        self.tracks, self.sample_rate, self.window = tracks, sample_rate, window
        self.groups = groups or [0] * len(tracks)
        self.batch_groups = batch_groups
        self.chunk = int(chunk_seconds * sample_rate)
        self.max_shift = int(max_shift * sample_rate)
        self.seed, self.voices, self.recipe = seed, voices, recipe
        self.slots: list[PoolChunk | None] = [None] * size

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key])

    def _make_chunk(self, version: int, slot: int) -> PoolChunk:
        rng = self._rng(version + 1, slot)
        index = int(rng.integers(len(self.tracks)))
        track = self.tracks[index]
        length = min(self.chunk, len(track))
        start = rng.integers(0, len(track) - length + 1)
        clean = track[start : start + length].astype(np.float32)
        backgrounds = (self.tracks[rng.integers(len(self.tracks))][:length].astype(np.float32),)
        sources = Sources(speech=self.voices.speech, talkers=self.voices.talkers, backgrounds=backgrounds)
        chain = random_chain(rng, sources, self.recipe)
        return PoolChunk(clean, chain.apply(clean, self.sample_rate, rng, sources), chain.rate, chain, self.groups[index])

    def fill(self, step: int, refresh_per_step: int) -> None:
        """Bring every slot to the content it holds at `step` (slots are refreshed round robin)."""
        size = len(self.slots)
        for slot in tqdm(range(size), desc="distorting pool", unit="chunk", leave=False):
            self.slots[slot] = self._make_chunk(self._last_refresh(slot, step, refresh_per_step), slot)

    def _last_refresh(self, slot: int, step: int, per_step: int) -> int:
        """The last step before `step` that refreshed `slot` (-1 for the initial fill)."""
        size = len(self.slots)
        for t in range(step - 1, max(-1, step - 1 - size // max(per_step, 1) - 1), -1):
            first = (t * per_step) % size
            if (slot - first) % size < per_step:
                return t
        return -1

    def refresh(self, step: int, count: int) -> None:
        size = len(self.slots)
        for i in range(count):
            slot = (step * count + i) % size
            self.slots[slot] = self._make_chunk(step, slot)

    def batch(self, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`size` pairs, each from a random chunk at a random offset, the positive shifted by up to max_shift."""
        rng = self._rng(1_000_003, step)
        slots = self._batch_slots(rng)
        anchors = np.empty((size, self.window), np.float32)
        positives = np.empty((size, self.window), np.float32)
        for i in range(size):
            chunk = self.slots[slots[rng.integers(len(slots))]]
            assert chunk is not None
            anchors[i], positives[i] = self._pair(chunk, rng)
        return torch.from_numpy(anchors), torch.from_numpy(positives)

    def _batch_slots(self, rng: np.random.Generator) -> np.ndarray:
        """The slots a batch draws from: all, or those of `batch_groups` groups drawn as often as they fill slots."""
        groups = np.array([chunk.group for chunk in self.slots if chunk is not None])
        if not self.batch_groups or len(set(groups.tolist())) <= self.batch_groups:
            return np.arange(len(groups))
        chosen: set[int] = set()
        while len(chosen) < self.batch_groups:
            chosen.add(int(groups[rng.integers(len(groups))]))
        return np.flatnonzero(np.isin(groups, list(chosen)))

    def _pair(self, chunk: PoolChunk, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        w = self.window
        start = int(rng.integers(0, max(1, len(chunk.clean) - w)))
        centre = (start + w / 2) / chunk.rate + rng.integers(-self.max_shift, self.max_shift + 1)
        pos_start = int(np.clip(centre - w / 2, 0, max(0, len(chunk.distorted) - w)))
        return _exact(chunk.clean[start : start + w], w), _exact(chunk.distorted[pos_start : pos_start + w], w)


def _exact(audio: np.ndarray, length: int) -> np.ndarray:
    return audio if len(audio) == length else np.pad(audio, (0, length - len(audio)))


class NonMusic:
    """Windows with no music in them, drawn afresh for each step: one recorded talker, a crowd of them, or
    noise, hum and tones (the content classifier's material, encoders.content_data). As extra negatives for
    every pair they push talk and noise away from all music, the quiet and noisy tracks included, where
    pairs of music alone leave them wherever there is room: a stretch of talk or noise that lands near a
    catalog track is a false match."""

    def __init__(self, talkers: tuple[tuple[np.ndarray, ...], ...], sample_rate: int, window: int, seed: int):
        self.sources = ContentSources(music=(), voices=talkers)
        self.sample_rate, self.window, self.seed = sample_rate, window, seed

    def batch(self, step: int, count: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, 2_000_003, step])
        return torch.from_numpy(np.stack([self._window(rng) for _ in range(count)]))

    def _window(self, rng: np.random.Generator) -> np.ndarray:
        kind = rng.integers(3)
        if kind == 0:
            return make_other(self.sources, self.window, self.sample_rate, rng)
        if kind == 1:
            voices = make_speech(self.sources, self.window, self.sample_rate, rng)
        else:
            voices = babble(self.sources.voices, self.window, self.sample_rate, BABBLE_TALKERS, rng)
        return at_level(voices, rng.uniform(*PROGRAMME_LEVEL_DB))
