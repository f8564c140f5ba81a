"""Named distortions: each changes the audio as its name says and keeps the time mapping true."""

from __future__ import annotations

import numpy as np
import pytest

from encoders import Sources, parse_chain, random_chain, synthesize_speech
from encoders.augment import BABBLE_TALKERS, DISTORTIONS, RANGES, RECIPES
from encoders.speech import load_voices, split_voices

SR = 8000
STRENGTHS = {
    "tempo": 1.1, "pitch": 1, "speed": 0.95, "mp3": 64, "aac": 48, "opus": 24, "highpass": 500, "lowpass": 2000,
    "eq": 6, "echo": 100, "reverb": 0.6, "noise": 5, "speech": 5, "babble": 5, "background": 5, "gain": -6, "compress": 4, "clip": 0.5,
}


def tone(freq: float, seconds: float = 4.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * SR / len(audio))


@pytest.fixture(scope="module")
def sources() -> Sources:
    _, held_out = split_voices()
    talkers = tuple(clips[:30] for clips in load_voices([held_out], SR))
    return Sources(speech=(synthesize_speech("the traffic news, after this", SR),), talkers=talkers, backgrounds=(tone(300),))


def test_every_distortion_has_a_strength_and_a_unit() -> None:
    assert set(STRENGTHS) == set(DISTORTIONS) == set(RANGES)


@pytest.mark.parametrize("text, said", [
    ("tempo:0", "tempo takes factor from 0.5 to 4, not 0"), ("speed:-1", "speed takes factor from 0.25 to 4"),
    ("pitch:100", "pitch takes semitones from -12 to 12"), ("noise:nan", "noise takes dB SNR"), ("gain:inf", "gain takes dB"),
    ("mp3:0", "mp3 takes kbps from 8"), ("echo:0", "echo takes ms"), ("compress:0", "compress takes ratio"),
    ("clip:0", "clip takes fraction of peak"), ("eq:-3", "eq takes dB from 0"), ("reverb:-1", "reverb takes RT60 s"),
])
def test_a_strength_outside_its_range_is_refused_when_read(text: str, said: str) -> None:
    """FFmpeg refused these deep in PyAV (OverflowError) or they gave NaN, silence or nothing, at apply time."""
    with pytest.raises(ValueError, match=f"bad distortion '{text}': {said}"):
        parse_chain(text)


@pytest.mark.parametrize("name", sorted(STRENGTHS))
def test_every_strength_of_its_range_applies(name: str, sources: Sources) -> None:
    """The ends of each range are strengths FFmpeg and the mixers take, so the range refuses nothing that works."""
    _, low, high = RANGES[name]
    for value in (low, high):
        out = parse_chain(f"{name}:{value}").apply(tone(440, 2.0), SR, np.random.default_rng(0), sources)
        assert len(out) and np.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(STRENGTHS))
def test_distortion_keeps_length_unless_it_changes_tempo(name: str, sources: Sources) -> None:
    chain = parse_chain(f"{name}:{STRENGTHS[name]}")
    audio = tone(440)
    out = chain.apply(audio, SR, np.random.default_rng(0), sources)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert abs(len(out) - len(audio) / chain.rate) < 0.01 * len(audio)
    if name not in ("gain", "clip"):
        assert not np.allclose(out[: len(audio)], audio[: len(out)], atol=1e-3)


def test_speed_moves_pitch_and_tempo_together() -> None:
    out = parse_chain("speed:1.1").apply(tone(440), SR, np.random.default_rng(0))
    assert dominant_hz(out) == pytest.approx(484, abs=4)
    assert len(out) == pytest.approx(len(tone(440)) / 1.1, rel=0.01)


def test_pitch_moves_pitch_but_keeps_tempo() -> None:
    out = parse_chain("pitch:2").apply(tone(440), SR, np.random.default_rng(0))
    assert dominant_hz(out) == pytest.approx(440 * 2 ** (2 / 12), abs=6)
    assert len(out) == pytest.approx(len(tone(440)), rel=0.01)


def test_tempo_keeps_pitch() -> None:
    out = parse_chain("tempo:1.2").apply(tone(440), SR, np.random.default_rng(0))
    assert dominant_hz(out) == pytest.approx(440, abs=4)


def test_noise_lands_at_the_requested_snr() -> None:
    clean = tone(440)
    noisy = parse_chain("noise:5").apply(clean, SR, np.random.default_rng(0))
    snr = 10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2))
    assert snr == pytest.approx(5, abs=0.1)


def test_chain_rate_multiplies() -> None:
    assert parse_chain("tempo:1.1+speed:0.9+noise:10").rate == pytest.approx(0.99)
    assert str(parse_chain("clean")) == "clean"


@pytest.mark.parametrize("bad", ["tempo", "tempo:fast", "wobble:3"])
def test_bad_chain_says_how_to_write_one(bad: str) -> None:
    with pytest.raises(ValueError, match="bad distortion"):
        parse_chain(bad)


def test_speech_needs_recordings() -> None:
    with pytest.raises(ValueError, match="speech"):
        parse_chain("speech:5").apply(tone(440), SR, np.random.default_rng(0))


def test_babble_is_recorded_talkers_at_the_requested_snr(sources: Sources) -> None:
    clean = tone(440)
    mixed = parse_chain("babble:0").apply(clean, SR, np.random.default_rng(0), sources)
    crowd = mixed - clean
    assert 10 * np.log10(np.mean(clean**2) / np.mean(crowd**2)) == pytest.approx(0, abs=0.1)
    spectrum = np.abs(np.fft.rfft(crowd))
    assert spectrum[: len(spectrum) // 2].sum() > 0.5 * spectrum.sum()  # speech, not a tone or white noise
    with pytest.raises(ValueError, match="recorded voices"):
        parse_chain("babble:0").apply(clean, SR, np.random.default_rng(0), Sources(speech=sources.speech))
    assert BABBLE_TALKERS == 4  # the benchmark's rows and the independent evaluation's: four talkers


def draws(recipe: str, sources: Sources, n: int = 400) -> list[str]:
    return [str(step) for s in range(n) for step in random_chain(np.random.default_rng(s), sources, RECIPES[recipe]).steps]


def test_recipes_set_warp_ranges_and_voices(sources: Sources) -> None:
    def extremes(recipe: str, name: str) -> tuple[float, float]:
        values = [float(d.split(":")[1]) for d in draws(recipe, sources) if d.startswith(name + ":")]
        return min(values), max(values)

    assert extremes("v1", "tempo")[0] >= 0.8 and extremes("v1", "pitch")[1] <= 2.5
    assert not [d for d in draws("v1", sources) if d.startswith("babble")]  # the shipped compact's training
    low, high = extremes("v2", "speed")
    assert low < 0.78 and high > 1.28  # past the matcher's 0.8-1.25
    assert max(map(abs, extremes("v2", "pitch"))) > 3
    assert [d for d in draws("v2", sources) if d.startswith("babble")]
    assert extremes("v3", "tempo")[0] >= 0.8 and extremes("v3", "pitch")[1] <= 2.5  # v1's warps
    assert [d for d in draws("v3", sources) if d.startswith("babble")]
    assert extremes("v3", "noise")[0] >= -3 and extremes("v4", "noise")[0] < -6  # v4: v3 with noise down to -9 dB


def test_random_chains_are_seeded(sources: Sources) -> None:
    first = [str(random_chain(np.random.default_rng(s), sources)) for s in range(20)]
    again = [str(random_chain(np.random.default_rng(s), sources)) for s in range(20)]
    assert first == again and len(set(first)) > 10
