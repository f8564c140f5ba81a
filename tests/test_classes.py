"""The content classifier: the shipped weights on real excerpts, one pass beside the encoder, training, bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from encoders import load_audio, load_encoder
from encoders.classes import CLASSES, ContentClassifier
from encoders.content_data import ContentSources, labelled_windows, rms_db
from encoders.content_train import ContentTrainConfig, TrainingSet, fit_head, train_classifier
from encoders.model import EncoderError
from monitor.cli import main

DEMO = Path(__file__).parents[1] / "monitor" / "demo" / "music"
SPEECH = Path(__file__).parent / "data" / "speech-june.opus"  # the held-out voice; see tests/data/LICENSE.md


SHIPPED_CLASSIFIERS = ("classes", "classes-compact3")  # one per shipped encoder that monitors (encoders/configs/classifiers)


@pytest.fixture(scope="module", params=SHIPPED_CLASSIFIERS)
def classifier(request: pytest.FixtureRequest) -> ContentClassifier:
    return ContentClassifier.load(request.param)


def windows_of(audio: np.ndarray, classifier: ContentClassifier) -> np.ndarray:
    size = classifier.encoder.window_samples
    return audio[: len(audio) // size * size].reshape(-1, size)


def share(labels: np.ndarray, label: str) -> float:
    return float(np.mean(labels == label))


@pytest.mark.parametrize("track", sorted(p.name for p in DEMO.glob("*.opus")))
def test_shipped_weights_hear_music_as_music(classifier: ContentClassifier, track: str) -> None:
    labels, probs = classifier.classify(windows_of(load_audio(DEMO / track, classifier.encoder.sample_rate), classifier))
    assert share(labels, "music") >= 0.8, dict(zip(*np.unique(labels, return_counts=True)))
    assert probs.shape == (len(labels), len(CLASSES))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_shipped_weights_hear_a_held_out_voice_as_speech(classifier: ContentClassifier) -> None:
    audio = load_audio(SPEECH, classifier.encoder.sample_rate)
    labels, _ = classifier.classify(windows_of(audio, classifier))
    assert share(labels, "speech") >= 0.8, labels


def test_shipped_weights_hear_silence_and_a_noise_floor_as_silence(classifier: ContentClassifier) -> None:
    size = classifier.encoder.window_samples
    floor = np.random.default_rng(0).standard_normal((4, size)).astype(np.float32) * 10 ** (-75 / 20)
    labels, _ = classifier.classify(np.concatenate([np.zeros((4, size), np.float32), floor]))
    assert list(labels) == ["silence"] * 8


def test_shipped_weights_hear_a_test_tone_as_other(classifier: ContentClassifier) -> None:
    sr = classifier.encoder.sample_rate
    tone = 0.3 * np.sin(2 * np.pi * 1000 * np.arange(4 * sr) / sr).astype(np.float32)
    labels, _ = classifier.classify(windows_of(tone, classifier))
    assert list(labels) == ["other"] * 4


def test_one_pass_gives_the_encoders_own_embeddings(classifier: ContentClassifier) -> None:
    windows = windows_of(load_audio(DEMO / "area1-game.opus", classifier.encoder.sample_rate)[: 8 * 8000], classifier)
    embeddings, labels, probs = classifier.embed_and_classify(windows)
    np.testing.assert_allclose(embeddings, classifier.encoder.embed(windows), atol=1e-5)
    assert len(labels) == len(probs) == len(windows)
    empty = classifier.embed_and_classify(np.zeros((0, classifier.encoder.window_samples), np.float32))
    assert [a.shape[0] for a in empty] == [0, 0, 0]


def test_every_class_of_the_training_data_is_what_it_says() -> None:
    """Programme classes are at broadcast level, silence under -60 dBFS, other audible; the same seed rebuilds the same windows."""
    encoder = load_encoder()
    tracks = [load_audio(DEMO / "area2-game.opus", encoder.sample_rate)]
    src = ContentSources(music=tracks, voices=[tuple(load_audio(SPEECH, encoder.sample_rate)[i : i + 16000] for i in (0, 30000))])
    windows, labels = labelled_windows(src, 3, 2.0, encoder.window_samples, encoder.sample_rate, seed=5)
    again, _ = labelled_windows(src, 3, 2.0, encoder.window_samples, encoder.sample_rate, seed=5)
    np.testing.assert_array_equal(windows, again)
    assert sorted(set(labels.tolist())) == list(range(len(CLASSES)))
    levels = np.array([rms_db(w) for w in windows])
    assert levels[labels == CLASSES.index("silence")].max() < -59
    assert levels[labels == CLASSES.index("other")].min() > -50
    assert levels[labels == CLASSES.index("music")].min() > -50


def test_training_runs_and_exports_a_classifier_that_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DEMO.parents[2])
    cfg = ContentTrainConfig(music="monitor/demo/music", examples_per_class=2, example_seconds=2.0, epochs=2, batch_size=8)
    exported = train_classifier(cfg, tmp_path / "run")
    saved = json.loads((exported / "config.json").read_text())
    assert saved["training"]["music"] == "monitor/demo/music" and saved["encoder"] == "compact"
    labels, probs = ContentClassifier.load(exported).classify(np.zeros((2, 8000), np.float32))
    assert probs.shape == (2, len(CLASSES)) and set(labels) <= set(CLASSES)
    assert list((tmp_path / "run").glob("features-*.npz")), "features are cached for the next run"


def test_the_head_learns_separable_classes() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(CLASSES)), 20)
    features = (rng.standard_normal((len(labels), 12)) + 6 * np.eye(len(CLASSES), 12)[labels]).astype(np.float32)
    data = TrainingSet(features, np.zeros((len(labels), 0, 0), np.float16), labels)
    head = fit_head(data, ContentTrainConfig(music="unused", epochs=30, batch_size=32, hidden=16))
    predicted = head(torch.from_numpy(features)).argmax(dim=1).numpy()
    assert np.mean(predicted == labels) > 0.9


def test_a_classifier_refuses_an_encoder_it_was_not_trained_on() -> None:
    other = load_encoder()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(EncoderError, match="retrain the classifier"):
        ContentClassifier.load("classes", other)


@pytest.mark.parametrize("encoder_name, name", [("compact", "classes"), ("compact3", "classes-compact3")])
def test_each_shipped_encoder_finds_the_classifier_trained_on_its_weights(encoder_name: str, name: str) -> None:
    encoder = load_encoder(encoder_name)
    assert ContentClassifier.for_encoder(encoder).config == ContentClassifier.load(name).config
    with torch.no_grad():
        next(encoder.parameters()).add_(1.0)
    with pytest.raises(EncoderError, match="no shipped classifier was trained on encoder weights"):
        ContentClassifier.for_encoder(encoder)


def test_a_damaged_classifier_directory_is_named(tmp_path: Path) -> None:
    shipped = ContentClassifier.load().config
    broken = tmp_path / "broken"
    shutil.copytree(Path(__file__).parents[1] / "encoders" / "models" / "classes", broken)
    (broken / "config.json").write_text(json.dumps({**shipped.to_json(), "hidden": shipped.hidden + 1}))
    with pytest.raises(EncoderError, match="does not fit config.json"):
        ContentClassifier.load(broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(EncoderError, match="lacks model.safetensors"):
        ContentClassifier.load(broken)


def test_a_bad_training_config_is_named_before_any_work(tmp_path: Path) -> None:
    config = tmp_path / "classes.yaml"
    config.write_text("music: data\nepochs: many\n")
    with pytest.raises(ValueError, match="epochs"):
        ContentTrainConfig.from_file(config)
    config.write_text("music: data\nfeatures: wavelets\n")
    with pytest.raises(ValueError, match="taps"):
        ContentTrainConfig.from_file(config)
    config.write_text("musik: data\n")
    with pytest.raises(ValueError, match="musik"):
        ContentTrainConfig.from_file(config)


@pytest.mark.parametrize("field, value, said", [("epochs", 0, "at least 1"), ("examples_per_class", 0, "at least 1"),
                                                ("lr", 0, "above 0"), ("example_seconds", -4, "above 0")])
def test_a_training_setting_under_its_bound_is_named_before_any_work(tmp_path: Path, field: str, value: float, said: str) -> None:
    config = tmp_path / "classes.yaml"
    config.write_text(f"music: data\n{field}: {value}\n")
    with pytest.raises(ValueError, match=f"`{field}: {value}` must be {said}"):
        ContentTrainConfig.from_file(config)


@pytest.mark.parametrize("name", SHIPPED_CLASSIFIERS)
def test_the_shipped_training_config_reads_and_matches_the_shipped_weights(name: str) -> None:
    config = Path(__file__).parents[1] / "encoders" / "configs" / "classifiers" / f"{name}.yaml"
    cfg = ContentTrainConfig.from_file(config)
    training = json.loads((Path(__file__).parents[1] / "encoders" / "models" / name / "config.json").read_text())["training"]
    assert {k: training[k] for k in dataclasses.asdict(cfg)} == dataclasses.asdict(cfg)


def test_bench_classes_reports_accuracy_confusion_tracks_and_cost(tmp_path: Path) -> None:
    out = tmp_path / "classes.json"
    result = CliRunner().invoke(main, ["bench", "classes", "--music", str(DEMO), "--examples", "1", "--seconds", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    tables = {t["title"].split(":")[0]: t for t in json.loads(out.read_text())["tables"]}
    per_window = tables["Content classes per 1 s window, held out"]
    assert [row[0] for row in per_window["rows"]] == [*CLASSES, "music vs speech", "all"]
    assert sum(map(sum, (row[1:] for row in tables["Confusion (rows"]["rows"]))) == len(CLASSES) * 2
    assert sum(row[1] for row in tables["Whole held-out tracks as released, audible seconds"]["rows"]) == 6 * 40
    assert tables["CPU cost per window (one thread)"]["rows"][0][2] > 0


def test_bench_classes_names_missing_music() -> None:
    result = CliRunner().invoke(main, ["bench", "classes", "--music", "no/such/dir"])
    assert result.exit_code != 0 and "does not exist" in result.output
