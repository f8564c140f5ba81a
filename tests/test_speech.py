"""Recorded voices: the registry, the held-out split, decoding at any rate, talk and babble."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from encoders.audio import load_audio
from encoders.speech import (
    HELD_OUT_VOICE, SOUNDS_DIR, TRIM_FRAME_SECONDS, VOICES, SpeechError, babble, get_voice, load_voice,
    split_voices, talk, voice_files,
)

INSTALL_SCRIPT = Path(__file__).parent.parent / "deploy" / "install.sh"
RMS_TOLERANCE = 1e-4  # unit RMS computed in float64 from float32 samples


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def test_no_english_voice_is_known() -> None:
    """asterisk-core-sounds-en* is reserved for independent evaluation: never trained or benchmarked on."""
    assert all(v.language != "en" and not v.package.startswith("asterisk-core-sounds-en") for v in VOICES)


def test_install_script_installs_every_voice() -> None:
    script = INSTALL_SCRIPT.read_text()
    assert all(v.package in script for v in VOICES)
    assert "asterisk-core-sounds-en" not in script


def test_held_out_voice_is_kept_out_of_training() -> None:
    train, held_out = split_voices()
    assert held_out.name == HELD_OUT_VOICE
    assert held_out not in train and len(train) >= 3
    assert len({(v.folder, v.suffix) for v in train + [held_out]}) == len(train) + 1


def test_prompts_leave_out_beeps_tones_and_silence() -> None:
    files = voice_files(get_voice(HELD_OUT_VOICE))
    assert len(files) > 400
    assert not [f for f in files if "beep" in f.name or "tone" in f.name or "silence" in f.parts[len(SOUNDS_DIR.parts):]]


def test_a_missing_voice_names_the_package_to_install(tmp_path: Path) -> None:
    with pytest.raises(SpeechError, match="apt-get install asterisk-core-sounds-fr-wav"):
        get_voice("june", root=tmp_path)
    with pytest.raises(SpeechError, match="known voices are"):
        get_voice("nobody")


def test_a_split_without_training_voices_names_their_packages(tmp_path: Path) -> None:
    held_out = get_voice(HELD_OUT_VOICE)
    copy = tmp_path / held_out.folder
    copy.mkdir()
    for path in voice_files(held_out)[:3]:
        shutil.copy(path, copy / path.name)
    with pytest.raises(SpeechError, match="asterisk-prompt-fr-armelle"):
        split_voices(root=tmp_path)


def test_every_voice_decodes_including_gsm_prompts() -> None:
    for voice in VOICES:
        audio = load_audio(voice_files(get_voice(voice.name))[0], 8000)
        assert len(audio) > 0.2 * 8000 and rms(audio) > 1e-3, voice


def test_clips_are_resampled_and_trimmed() -> None:
    voice = get_voice(HELD_OUT_VOICE)
    narrow, wide = load_voice(voice, 8000), load_voice(voice, 16000)
    assert len(narrow) == len(wide) > 400
    frame_16k = TRIM_FRAME_SECONDS * 16000
    for a, b in zip(narrow[:50], wide[:50]):
        assert abs(len(b) - 2 * len(a)) <= 4 * frame_16k  # trimming may land a frame or two apart
    first = narrow[0][: int(TRIM_FRAME_SECONDS * 8000)]
    assert rms(first) > 0.01 * np.abs(narrow[0]).max()


@pytest.fixture(scope="module")
def voices() -> tuple[tuple[np.ndarray, ...], ...]:
    train, _ = split_voices()
    return tuple(load_voice(v, 8000)[:40] for v in train[:3])


def silent_fraction(audio: np.ndarray, sample_rate: int = 8000) -> float:
    frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)
    return float(np.mean(np.sqrt(np.mean(frames**2, axis=1)) < 0.05 * rms(audio)))


def test_talk_is_one_voice_at_unit_level(voices) -> None:
    out = talk(voices[0], 80_000, 8000, np.random.default_rng(0))
    assert out.dtype == np.float32 and len(out) == 80_000
    assert rms(out) == pytest.approx(1.0, abs=RMS_TOLERANCE)
    assert silent_fraction(out) > 0.02  # the pauses between sentences


def test_babble_is_seeded_and_fills_the_pauses(voices) -> None:
    one = babble(voices, 80_000, 8000, 1, np.random.default_rng(1))
    four = babble(voices, 80_000, 8000, 4, np.random.default_rng(1))  # more talkers than voices: one repeats
    again = babble(voices, 80_000, 8000, 4, np.random.default_rng(1))
    other = babble(voices, 80_000, 8000, 4, np.random.default_rng(2))
    assert len(four) == 80_000 and rms(four) == pytest.approx(1.0, abs=RMS_TOLERANCE)
    assert np.array_equal(four, again) and not np.allclose(four, other)
    assert silent_fraction(four) < silent_fraction(one) / 2


def test_babble_needs_a_voice() -> None:
    with pytest.raises(SpeechError, match="at least one voice"):
        babble((), 8000, 8000, 4, np.random.default_rng(0))
