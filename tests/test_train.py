"""Training: the loss, determinism, and resuming a killed run to the very same weights."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

import encoders.train
from encoders import coloured_noise, load_audio, load_encoder
from encoders.model import MODELS_DIR
from encoders.data import PairPool, list_audio, load_tracks
from encoders.train import TrainConfig, build_encoder, data_digest, nt_xent, train
from monitor.cli import main

DEMO = Path(__file__).parents[1] / "monitor" / "demo" / "music"
TINY = dict(
    data=str(DEMO), backbone_args={"channels": [8, 16]}, dim=16, batch_size=8, pool_chunks=6, chunk_seconds=3.0,
    refresh_per_step=2, warmup_steps=1, checkpoint_every=2, voice_over=False, threads=1,
)


def test_nt_xent_rewards_matching_pairs() -> None:
    z = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    other = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    assert nt_xent(z, z, 0.1) < nt_xent(z, other, 0.1)


def test_extra_negatives_are_nobodys_partner() -> None:
    """None of them leaves the loss exactly as SimCLR's; negatives that look like the pairs make it harder."""
    z = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    partners = torch.nn.functional.normalize(z + 0.3 * torch.randn(16, 8), dim=1)
    assert torch.equal(nt_xent(z, partners, 0.1, torch.empty(0, 8)), nt_xent(z, partners, 0.1))
    assert nt_xent(z, partners, 0.1, partners) > nt_xent(z, partners, 0.1, -partners) > nt_xent(z, partners, 0.1)


def test_non_music_windows_are_talk_or_noise_at_broadcast_levels_and_the_same_for_a_step() -> None:
    from encoders.content_data import OTHER_LEVEL_DB, PROGRAMME_LEVEL_DB, rms_db
    from encoders.data import NonMusic
    from encoders.speech import load_voices, split_voices

    source = NonMusic(load_voices(split_voices()[0][:2], 8000), 8000, 8000, seed=0)
    batch = source.batch(3, 24)
    assert batch.shape == (24, 8000) and torch.equal(batch, source.batch(3, 24)) and not torch.equal(batch, source.batch(4, 24))
    levels = [rms_db(w) for w in batch.numpy()]
    tolerance = 10 * np.log10(1 + 8 * np.finfo(np.float32).eps)  # dB: float32 rounding of the scaled samples' power
    low, high = min(PROGRAMME_LEVEL_DB[0], OTHER_LEVEL_DB[0]), max(PROGRAMME_LEVEL_DB[1], OTHER_LEVEL_DB[1])
    assert all(low - tolerance <= level <= high + tolerance for level in levels), levels


def test_training_with_non_music_negatives_changes_what_it_learns(tmp_path: Path) -> None:
    plain, negatives = (weights(train(TrainConfig(steps=2, **{**TINY, "non_music": n}), tmp_path / f"run{n}").parent) for n in (0, 4))
    assert any(not torch.equal(plain[k], negatives[k]) for k in plain if plain[k].is_floating_point())


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "encoder" / "model.safetensors"))


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    straight = train(TrainConfig(steps=4, **TINY), tmp_path / "straight")
    train(TrainConfig(steps=2, **TINY), tmp_path / "resumed")
    train(TrainConfig(steps=4, **TINY), tmp_path / "resumed")
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    encoder = load_encoder(straight)
    assert encoder.dim == 16


@pytest.mark.parametrize("change, said", [
    ({"seed": 5}, "seed: 0 (now 5)"), ({"dim": 32}, "dim: 16 (now 32)"), ({"steps": 1}, "has trained 2 steps, more than steps: 1"),
])
def test_a_run_is_never_resumed_with_other_settings(tmp_path: Path, change: dict, said: str) -> None:
    """Another seed or lr mixed two runs under the new one's record, another shape was a load_state_dict
    traceback, and fewer steps re-exported the longer run's weights recorded as the shorter run."""
    exported = train(TrainConfig(steps=2, **TINY), tmp_path / "run")
    before = weights(exported.parent)
    with pytest.raises(ValueError, match=re.escape(said) + ".*new --run-dir"):
        train(TrainConfig(**{**TINY, "steps": 2, **change}), tmp_path / "run")
    assert all(torch.equal(before[k], v) for k, v in weights(exported.parent).items())


def test_a_trained_encoder_without_its_checkpoint_is_not_trained_over(tmp_path: Path) -> None:
    exported = train(TrainConfig(steps=1, **TINY), tmp_path / "run")
    (tmp_path / "run" / "checkpoint.pt").unlink()
    before = weights(exported.parent)
    with pytest.raises(ValueError, match="holds a trained encoder and no checkpoint"):
        train(TrainConfig(steps=1, **TINY), tmp_path / "run")
    assert all(torch.equal(before[k], v) for k, v in weights(exported.parent).items())


def test_ctrl_c_keeps_the_steps_done_and_the_resumed_run_is_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C lost every step since the last checkpoint (checkpoint_every of them, minutes on a real run)."""
    cfg = TrainConfig(steps=5, **{**TINY, "checkpoint_every": 100})
    straight = weights(train(cfg, tmp_path / "straight").parent)
    lr_at = encoders.train.lr_at

    def ctrl_c_at_step_two(step: int, config: TrainConfig) -> float:
        if step == 2:
            signal.raise_signal(signal.SIGINT)
        return lr_at(step, config)

    monkeypatch.setattr(encoders.train, "lr_at", ctrl_c_at_step_two)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed")
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["step"] == 3
    monkeypatch.setattr(encoders.train, "lr_at", lr_at)
    resumed = weights(train(cfg, tmp_path / "resumed").parent)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_exported_config_names_its_data_without_a_machine_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shipped config.json must not carry this machine's paths: data relative to the working directory when
    inside it, else its name, and a content hash that says which data it was either way."""
    monkeypatch.chdir(DEMO.parents[2])
    inside = json.loads((train(TrainConfig(steps=1, **TINY), tmp_path / "inside") / "config.json").read_text())["training"]
    assert inside["data"] == "monitor/demo/music"
    elsewhere = tmp_path / "music"
    shutil.copytree(DEMO, elsewhere)
    outside = json.loads((train(TrainConfig(steps=1, **{**TINY, "data": str(elsewhere)}), tmp_path / "outside") / "config.json").read_text())["training"]
    assert outside["data"] == "music"
    assert inside["data_sha256"] == outside["data_sha256"] and len(inside["data_sha256"]) == 64
    (elsewhere / "area1-game.opus").unlink()
    assert data_digest(elsewhere) != inside["data_sha256"]


SHIPPED_ENCODERS = ("compact", "compact3", "grafprint", "nafp")


@pytest.mark.parametrize("name", SHIPPED_ENCODERS)
def test_shipped_model_records_no_machine_path(name: str) -> None:
    training = json.loads((MODELS_DIR / name / "config.json").read_text())["training"]
    assert not Path(training["data"]).is_absolute()


@pytest.mark.parametrize("name", ["compact3", "grafprint"])
def test_a_shipped_encoder_records_exactly_what_its_config_asks(name: str) -> None:
    """`airtrace train encoders/configs/NAME.yaml` reproduces the shipped weights' recipe, step for step."""
    config = yaml.safe_load((Path(__file__).parents[1] / "encoders" / "configs" / f"{name}.yaml").read_text())
    training = json.loads((MODELS_DIR / name / "config.json").read_text())["training"]
    assert {key: training[key] for key in config} == config


def test_the_shipped_compact3_is_fine_tuned_from_the_shipped_compact() -> None:
    training = json.loads((MODELS_DIR / "compact3" / "config.json").read_text())["training"]
    assert training["init_fingerprint"] == load_encoder("compact").fingerprint()


@pytest.mark.parametrize("name", SHIPPED_ENCODERS)
def test_shipped_encoders_find_music_under_noise_among_its_neighbours(name: str) -> None:
    """Trained weights: each 1 s window of demo music (never trained on) under pink noise at 5 dB SNR is
    nearest its own clean window among 24: its track's other windows and another track's. Measured: 92-100 %
    trained, 8-50 % with random weights."""
    encoder = load_encoder(name)
    rate, count = encoder.sample_rate, 12
    clean, other = (load_audio(DEMO / f"{track}.opus", rate)[5 * rate : (5 + count) * rate] for track in ("area1-game", "gardien-go"))
    noise = coloured_noise(len(clean), 1.0, np.random.default_rng(0))
    noisy = clean + noise * np.sqrt(np.mean(clean**2) / np.mean(noise**2) / 10 ** (5 / 10))
    clean_e, noisy_e, other_e = (encoder.embed(audio.reshape(count, rate).astype(np.float32)) for audio in (clean, noisy, other))
    nearest = (noisy_e @ np.concatenate([clean_e, other_e]).T).argmax(axis=1)
    assert np.mean(nearest == np.arange(count)) >= 0.75, nearest


CONFIGS = Path(__file__).parents[1] / "encoders" / "configs"


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_reads_and_builds(config: Path) -> None:
    """A config that fine-tunes another config's run (`init: runs/NAME/encoder`, as `airtrace train
    encoders/configs/NAME.yaml --run-dir runs/NAME` writes it) names a config of this folder with the same
    architecture, and builds from fresh weights; a clean checkout has no runs."""
    cfg = TrainConfig.from_file(config)
    if cfg.init and Path(cfg.init).parts[0] == "runs":
        assert Path(cfg.init).parts[2:] == ("encoder",), cfg.init
        parent = TrainConfig.from_file(CONFIGS / f"{Path(cfg.init).parts[1]}.yaml")
        cfg = dataclasses.replace(cfg, init=None)
        assert build_encoder(dataclasses.replace(parent, init=None)).config == build_encoder(cfg).config  # what fine-tuning checks
    if cfg.weights is None:  # MERT/MuQ need their downloaded weights; tests/test_foundation_backbones.py covers them
        assert build_encoder(cfg).config.backbone == cfg.backbone


def test_grafprint_trains_and_exports_like_any_backbone(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=1, **{**TINY, "backbone": "grafprint", "backbone_args": {"size": "cpu"}})
    encoder = load_encoder(train(cfg, tmp_path / "run"))
    assert encoder.config.backbone == "grafprint" and encoder.config.backbone_args == {"size": "cpu"}


def test_training_moves_the_weights(tmp_path: Path) -> None:
    train(TrainConfig(steps=1, **TINY), tmp_path / "one")
    train(TrainConfig(steps=3, **TINY), tmp_path / "three")
    a, b = weights(tmp_path / "one"), weights(tmp_path / "three")
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_grouped_batches_draw_from_that_many_folders_and_the_default_from_all(tmp_path: Path) -> None:
    """Each folder's tracks are a constant level of their own, so an anchor window tells its folder."""
    for folder in range(4):
        (tmp_path / f"album{folder}").mkdir()
        for n in range(2):
            soundfile.write(tmp_path / f"album{folder}" / f"t{n}.wav", np.full(4 * 8000, 0.1 * (folder + 1), np.float32), 8000)
    tracks, groups = load_tracks(list_audio(tmp_path), 8000, min_seconds=2.0)
    assert groups == [0, 0, 1, 1, 2, 2, 3, 3]

    def folders_per_batch(batch_groups: int) -> set[int]:
        pool = PairPool(tracks, 8000, 8000, 24, 2.0, 0.0, seed=0, groups=groups, batch_groups=batch_groups)
        pool.fill(0, 2)
        return {len(set(np.round(pool.batch(step, 32)[0].mean(dim=1).numpy(), 2).tolist())) for step in range(5)}

    assert folders_per_batch(2) == {2}
    assert folders_per_batch(0) == {4}


def test_config_typo_is_named_by_the_cli(tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"data": str(DEMO), "stpes": 10}))
    result = CliRunner().invoke(main, ["train", str(config), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "stpes" in result.output


@pytest.mark.parametrize("field, value, said", [
    ("checkpoint_every", 0, "at least 1"), ("batch_size", 1, "at least 2"), ("steps", 0, "at least 1"),
    ("temperature", 0, "above 0"), ("lr", float("nan"), "above 0"), ("threads", -1, "at least 0"),
])
def test_a_setting_under_its_bound_is_one_line_before_any_work(tmp_path: Path, field: str, value: object, said: str) -> None:
    """These failed deep in the run (ZeroDivisionError after the first step, an MKL error, torch's thread
    check) or trained nothing and still wrote an encoder."""
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({**TINY, "steps": 1, field: value}))
    result = CliRunner().invoke(main, ["train", str(config), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and f"must be {said}" in result.output and f"`{field}:" in result.output
    assert not (tmp_path / "run").exists()


def test_missing_data_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest"):
        train(TrainConfig(steps=1, **{**TINY, "data": str(tmp_path / "nowhere")}), tmp_path / "run")


def test_a_manifest_of_no_tracks_says_so(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("track_id,path\n")
    with pytest.raises(ValueError, match="lists no tracks under its header"):
        list_audio(manifest)


def test_a_track_too_short_to_train_on_is_skipped_with_its_length(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rate = 8000
    soundfile.write(tmp_path / "long.wav", np.random.default_rng(0).standard_normal(3 * rate).astype(np.float32) * 0.1, rate)
    soundfile.write(tmp_path / "short.wav", np.random.default_rng(1).standard_normal(rate // 2).astype(np.float32) * 0.1, rate)
    tracks, _ = load_tracks([tmp_path / "long.wav", tmp_path / "short.wav"], rate, min_seconds=2.0)
    assert len(tracks) == 1
    assert "short.wav: 0.5 s of audio, under the 2 s" in caplog.text


def test_missing_pretrained_weights_are_a_message_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"data": str(DEMO), "backbone": "mert", "weights": str(tmp_path / "no-mert")}))
    result = CliRunner().invoke(main, ["train", str(config), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "no-mert" in result.output and "Traceback" not in result.output


def test_fine_tuning_starts_from_the_init_encoder_and_records_it(tmp_path: Path) -> None:
    start = train(TrainConfig(steps=1, **TINY), tmp_path / "start")
    cfg = TrainConfig(steps=1, **{**TINY, "init": str(start)})
    begun = build_encoder(cfg).state_dict()
    assert all(torch.equal(begun[k], v) for k, v in weights(tmp_path / "start").items())
    record = json.loads((train(cfg, tmp_path / "tuned") / "config.json").read_text())["training"]
    assert record["init_fingerprint"] == load_encoder(start).fingerprint()
    with pytest.raises(ValueError, match="backbone_args"):
        build_encoder(TrainConfig(steps=1, **{**TINY, "init": str(start), "dim": 32}))


def test_unknown_augmentation_recipe_is_named(tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"data": str(DEMO), "augment": "v9"}))
    with pytest.raises(ValueError, match="v9.*v1, v2"):
        TrainConfig.from_file(config)


def test_recorded_voices_train_without_the_held_out_voice(tmp_path: Path) -> None:
    from encoders.augment import RECIPES
    from encoders.data import voice_sources
    from encoders.speech import load_voice, split_voices

    train_voices, held_out = split_voices()
    voices = voice_sources(RECIPES["v2"], 8000, seed=0)
    assert len(voices.talkers) == len(train_voices) and len(voices.speech) >= len(train_voices)
    held_out_first = load_voice(held_out, 8000)[0]
    assert not any(len(c) == len(held_out_first) and np.array_equal(c, held_out_first) for clips in voices.talkers for c in clips)
    train(TrainConfig(steps=1, **{**TINY, "voice_over": True, "augment": "v2"}), tmp_path / "run")


def test_recipe_v3_talks_with_the_synthetic_and_the_recorded_voices_in_one_pool() -> None:
    from encoders.augment import RECIPES
    from encoders.data import speech_clips, voice_sources

    both, synthetic, recorded = (voice_sources(RECIPES[r], 8000, seed=0) for r in ("v3", "v1", "v2"))
    assert synthetic.speech and not synthetic.talkers
    assert len(both.speech) == len(synthetic.speech) + len(recorded.speech) and len(both.talkers) == len(recorded.talkers)
    assert all(np.array_equal(a, b) for a, b in zip(both.speech, speech_clips(8000) + recorded.speech))
