"""Train and evaluate the content classifier's head on frozen encoder features.

    python -m encoders.content_train encoders/configs/classifiers/classes.yaml --run-dir runs/classes

builds the labelled windows (encoders.content_data) from the training music and voices, runs the
encoder over them once (features cached in RUN_DIR/features-*.npz), trains the small head in seconds,
and exports RUN_DIR/classifier. `evaluate` scores a classifier on held-out music and the held-out voice.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from tqdm import tqdm

from encoders.classes import CLASSES, FEATURE_SETS, ClassifierConfig, ContentClassifier, ContentHead, encoder_pass
from encoders.content_data import ContentSources, labelled_windows
from encoders.audio import AudioError
from encoders.data import list_audio, load_tracks
from encoders.model import Encoder, EncoderError, load_encoder
from encoders.speech import get_voice, load_voices, split_voices
from encoders.train import Bound, data_digest, portable_path, read_config

log = logging.getLogger(__name__)


CONTENT_BOUNDS: dict[str, Bound] = {
    "tracks_per_package": (1, False), "hidden": (1, False), "conv_channels": (0, False), "examples_per_class": (1, False),
    "example_seconds": (0, True), "epochs": (1, False), "batch_size": (1, False), "lr": (0, True),
    "weight_decay": (0, False), "threads": (0, False),
}


@dataclass(frozen=True)
class ContentTrainConfig:
    """One training run of the head; written into the exported classifier's config.json."""

    music: str  # an audio folder or a corpus manifest.csv (with a `package` column to sample per package)
    tracks_per_package: int = 4
    encoder: str = "compact"
    features: str = "taps"
    hidden: int = 64
    conv_channels: int = 16  # 0: a head on the pooled statistics alone
    examples_per_class: int = 600
    example_seconds: float = 4.0
    epochs: int = 40
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 1

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "ContentTrainConfig":
        """Read YAML; an unknown field or a value of the wrong type is an error naming it, before any work."""
        raw = read_config(cls, path, overrides, "music", "an audio folder or a corpus manifest.csv", CONTENT_BOUNDS)
        if raw.get("features", "taps") not in FEATURE_SETS:
            raise ValueError(f"{path}: `features: {raw['features']!r}` must be one of {', '.join(FEATURE_SETS)}")
        return cls(**raw)


def music_files(source: str | Path, per_package: int, seed: int) -> list[Path]:
    """Tracks of a folder, or of a corpus manifest at most `per_package` per package (a seeded draw),
    so a few long soundtracks cannot stand for all music."""
    path = Path(source)
    if not path.exists():
        raise AudioError(f"{path} does not exist; give an audio folder or a corpus manifest.csv "
                         "(fetch a split with ../shared/corpus/fetch dev data/corpus)")
    if not (path.is_file() and path.suffix == ".csv"):
        return list_audio(path)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "package" not in rows[0]:
        return list_audio(path)
    by_package: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_package[row["package"]].append(row["path"])
    rng = np.random.default_rng(seed)
    chosen = [p for package in sorted(by_package) for p in rng.permutation(sorted(by_package[package]))[:per_package]]
    return [path.parent / p for p in chosen]


def content_sources(music: str | Path, per_package: int, voices: list, sample_rate: int, seed: int) -> ContentSources:
    tracks, _ = load_tracks(music_files(music, per_package, seed), sample_rate, min_seconds=8.0)
    return ContentSources(music=tracks, voices=load_voices(voices, sample_rate))


@dataclass
class TrainingSet:
    """The head's inputs for every window: features, standardised log-mel (float16; empty for "embedding"), class indices."""

    features: np.ndarray
    mel: np.ndarray
    labels: np.ndarray


@torch.inference_mode()
def window_taps(encoder: Encoder, windows: np.ndarray, labels: np.ndarray, features: str, batch_size: int = 256) -> TrainingSet:
    encoder.eval()
    taps = [encoder_pass(encoder, torch.from_numpy(windows[i : i + batch_size]), features)
            for i in tqdm(range(0, len(windows), batch_size), desc="encoder features", unit="batch", leave=False)]
    mel = torch.cat([t.mel for t in taps]).half().numpy() if features == "taps" else np.zeros((len(labels), 0, 0), np.float16)
    return TrainingSet(torch.cat([t.features for t in taps]).numpy(), mel, labels)


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def training_set(cfg: ContentTrainConfig, encoder: Encoder, run_dir: Path) -> TrainingSet:
    """The training windows' head inputs, computed once per data setting and encoder."""
    train_voices, _ = split_voices()
    key = _digest(cfg.music, data_digest(cfg.music), cfg.tracks_per_package, cfg.examples_per_class, cfg.example_seconds,
                  cfg.seed, cfg.features, encoder.fingerprint(), [v.name for v in train_voices])
    cache = run_dir / f"features-{key}.npz"
    if cache.exists():
        saved = np.load(cache)
        return TrainingSet(saved["features"], saved["mel"], saved["labels"])
    src = content_sources(cfg.music, cfg.tracks_per_package, train_voices, encoder.sample_rate, cfg.seed)
    windows, labels = labelled_windows(src, cfg.examples_per_class, cfg.example_seconds, encoder.window_samples, encoder.sample_rate, cfg.seed)
    data = window_taps(encoder, windows, labels, cfg.features)
    partial = cache.with_suffix(".partial.npz")
    np.savez(partial, **dataclasses.asdict(data))
    os.replace(partial, cache)  # a killed run leaves no half-written cache behind
    return data


def fit_head(data: TrainingSet, cfg: ContentTrainConfig) -> ContentHead:
    """Cross-entropy with classes weighted to equal total weight, AdamW, a cosine-decayed learning rate."""
    torch.manual_seed(cfg.seed)
    x, y = torch.from_numpy(data.features).float(), torch.from_numpy(data.labels).long()
    mel = torch.from_numpy(data.mel) if data.mel.size else None
    head = ContentHead(x.shape[1], cfg.hidden, len(CLASSES), cfg.conv_channels if mel is not None else 0)
    head.fit_standardisation(x)
    counts = torch.bincount(y, minlength=len(CLASSES)).float().clamp(min=1)
    loss_fn = torch.nn.CrossEntropyLoss(weight=counts.sum() / counts / len(CLASSES))
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * -(-len(x) // cfg.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    generator = torch.Generator().manual_seed(cfg.seed)
    head.train()
    for epoch in range(cfg.epochs):
        order, total = torch.randperm(len(x), generator=generator), 0.0
        for i in range(0, len(x), cfg.batch_size):
            batch = order[i : i + cfg.batch_size]
            loss = loss_fn(head(x[batch], None if mel is None else mel[batch].float()), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        log.info("epoch %d: loss %.4f", epoch + 1, total / len(x))
    return head.eval()


def train_classifier(cfg: ContentTrainConfig, run_dir: str | Path) -> Path:
    """Build (or reuse) the training features, fit the head, export RUN_DIR/classifier."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    encoder = load_encoder(cfg.encoder)
    data = training_set(cfg, encoder, run_dir)
    head = fit_head(data, cfg)
    config = ClassifierConfig(encoder=portable_path(cfg.encoder) if Path(cfg.encoder).is_dir() else cfg.encoder,
                              encoder_fingerprint=encoder.fingerprint(), features=cfg.features, feature_dim=data.features.shape[1],
                              hidden=cfg.hidden, conv_channels=cfg.conv_channels if data.mel.size else 0)
    record = {**dataclasses.asdict(cfg), "music": portable_path(cfg.music), "music_sha256": data_digest(cfg.music),
              "voices": [v.name for v in split_voices()[0]], "windows": int(len(data.labels))}
    return ContentClassifier(config, head, encoder).save(run_dir / "classifier", extra={"training": record})


@dataclass
class Evaluation:
    """Held-out scores: `confusion[i][j]` counts windows of true class i labelled j."""

    classes: tuple[str, ...]
    confusion: np.ndarray

    def accuracy(self, labels: tuple[str, ...] | None = None) -> float:
        """Exact-label accuracy over windows whose truth is one of `labels` (all classes when None)."""
        rows = [self.classes.index(label) for label in (labels or self.classes)]
        return float(sum(self.confusion[i, i] for i in rows) / max(sum(self.confusion[i].sum() for i in rows), 1))


@dataclass
class HeldOut:
    """Labelled windows built like the training set from other music, another voice and another seed,
    and the music tracks themselves (decoded at the encoder's rate)."""

    windows: np.ndarray
    truth: np.ndarray
    settings: dict[str, Any]
    music: list[np.ndarray]


def held_out_windows(encoder: Encoder, music: str | Path, voice: str, examples_per_class: int, example_seconds: float,
                     seed: int, tracks_per_package: int = 1000) -> HeldOut:
    src = content_sources(music, tracks_per_package, [get_voice(voice)], encoder.sample_rate, seed)
    windows, truth = labelled_windows(src, examples_per_class, example_seconds, encoder.window_samples, encoder.sample_rate, seed)
    settings = {"music": str(music), "tracks": len(src.music), "voice": voice, "windows": int(len(truth)),
                "windows_per_example": int(example_seconds * encoder.sample_rate) // encoder.window_samples,
                "examples_per_class": examples_per_class, "example_seconds": example_seconds, "seed": seed}
    return HeldOut(windows, truth, settings, list(src.music))


def moving_mean(probabilities: np.ndarray, per_example: int, span: int) -> np.ndarray:
    """Each window's class probabilities averaged with its neighbours in a centred `span` inside its own
    example (consecutive runs of `per_example` windows), as a stream could smooth its labels."""
    runs = probabilities.reshape(-1, per_example, probabilities.shape[1])
    padded = np.pad(runs, ((0, 0), (span // 2, span // 2), (0, 0)), mode="edge")
    return np.mean([padded[:, i : i + per_example] for i in range(span)], axis=0).reshape(probabilities.shape)


def _confusion(truth: np.ndarray, probabilities: np.ndarray) -> Evaluation:
    confusion = np.zeros((len(CLASSES),) * 2, dtype=np.int64)
    np.add.at(confusion, (truth, probabilities.argmax(axis=1)), 1)
    return Evaluation(CLASSES, confusion)


def evaluate(classifier: ContentClassifier, windows: np.ndarray, truth: np.ndarray, per_example: int,
             span: int = 3) -> tuple[Evaluation, Evaluation]:
    """Score `classifier` on labelled windows (class indices in CLASSES order), each window on its own
    and with probabilities averaged over `span` consecutive windows of the same example."""
    if classifier.classes != CLASSES:
        raise EncoderError(f"the classifier's classes {classifier.classes} are not {CLASSES}; retrain it")
    _, probs = classifier.classify(windows)
    return _confusion(truth, probs), _confusion(truth, moving_mean(probs, per_example, span))


@click.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="Cached features and the exported classifier go here.")
@click.option("--music", help="Override the config's music: an audio folder or a corpus manifest.csv.")
def main(config: str, run_dir: str, music: str | None) -> None:
    """Train the content classifier's head from a YAML CONFIG."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = ContentTrainConfig.from_file(config, music=music)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        click.echo(f"classifier written to {train_classifier(cfg, run_dir)}")
    except (ValueError, OSError) as exc:  # EncoderError, AudioError and SpeechError are ValueErrors
        raise click.ClickException(str(exc)) from exc


if __name__ == "__main__":
    main()
