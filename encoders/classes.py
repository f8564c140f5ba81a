"""Content classes: what each encoder window holds (music, speech, speech over music, silence, other).

The classifier rides on the fingerprint encoder's own pass: it reads the encoder's raw log-mel (before
the per-window standardisation throws the level away) and its pooled backbone features, adds a few
level, spectral-shape and modulation statistics, and a small head (a strided CNN over the shared
log-mel, then a two-layer MLP) maps them to the classes. So labelling a window costs a fraction
(about a seventh) of embedding it, and `embed_and_classify` gives both from
one pass. A classifier is tied to the exact encoder weights it was trained on (config.json records
the encoder's fingerprint), and is saved like an encoder: config.json and model.safetensors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from encoders.frontend import LogMel, standardised
from encoders.model import MODELS_DIR, Encoder, EncoderError, load_encoder, model_files, save_model_dir

CLASSES = ("music", "speech", "speech_over_music", "silence", "other")
FORMAT_VERSION = 1
DEFAULT_CLASSIFIER = "classes"
LEVEL_FLOOR_DB = -100.0  # digital silence reads as this level, not as -inf
MODULATION_BINS = 15  # of the frame energy's modulation spectrum, from 1 Hz up
MEL_GROUPS = 8  # band groups whose syllable-rate modulation is measured apiece
SYLLABLE_BINS = slice(2, 8)  # 3-8 Hz in a 1 s window


@dataclass(frozen=True)
class ClassifierConfig:
    """What the head was trained on: the encoder (shipped name or path, and its weights' fingerprint)
    and the feature set, so a head never meets features it was not trained for."""

    encoder: str
    encoder_fingerprint: str
    features: str  # "taps": level/shape/modulation statistics + backbone features; "embedding": the embedding alone
    feature_dim: int
    hidden: int = 64
    conv_channels: int = 16  # of the small CNN over the standardised log-mel (0: none; always 0 for "embedding")
    classes: tuple[str, ...] = CLASSES

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> "ClassifierConfig":
        data = {k: v for k, v in data.items() if k != "training"}
        version = data.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise EncoderError(f"{source}: format_version {version!r} is not {FORMAT_VERSION}; retrain the classifier")
        try:
            return cls(**{**data, "classes": tuple(data.get("classes", CLASSES))})
        except TypeError as exc:
            raise EncoderError(f"{source}: {exc}; use the config saved with these weights") from exc


FEATURE_SETS = ("taps", "embedding")


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ContentHead(nn.Module):
    """(features, standardised log-mel) -> class logits. The features are standardised with statistics
    kept in the weights; a three-layer strided CNN over the log-mel (when `conv_channels`) sees the
    spectro-temporal shapes (formants, syllables, notes) that pooled statistics blur."""

    def __init__(self, feature_dim: int, hidden: int, classes: int, conv_channels: int = 0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("scale", torch.ones(feature_dim))
        c = conv_channels
        self.conv = nn.Sequential(_conv(1, c), _conv(c, 2 * c), _conv(2 * c, 2 * c)) if c else None
        self.net = nn.Sequential(nn.Linear(feature_dim + 4 * c, hidden), nn.ReLU(inplace=True), nn.Dropout(0.1), nn.Linear(hidden, classes))

    def fit_standardisation(self, features: torch.Tensor) -> None:
        self.mean.copy_(features.mean(dim=0))
        self.scale.copy_(features.std(dim=0).clamp(min=1e-4))

    def forward(self, features: torch.Tensor, mel: torch.Tensor | None = None) -> torch.Tensor:
        inputs = [(features - self.mean) / self.scale]
        if self.conv is not None:
            if mel is None:
                raise EncoderError("this content head has a log-mel CNN; pass the standardised log-mel too")
            fmap = self.conv(mel.unsqueeze(1))
            inputs += [fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))]
        return self.net(torch.cat(inputs, dim=1))


def level_db(wave: torch.Tensor) -> torch.Tensor:
    """Each window's RMS level in dB full scale, floored at LEVEL_FLOOR_DB."""
    return 10 * torch.log10(wave.square().mean(dim=1) + 10 ** (LEVEL_FLOOR_DB / 10))


def _modulation(energy: torch.Tensor, bins: slice) -> torch.Tensor:
    """(..., T) log energies -> the share of their modulation spectrum (1 bin ~ 1 Hz in a 1 s window) in `bins`."""
    spectrum = torch.fft.rfft(energy - energy.mean(dim=-1, keepdim=True), dim=-1).abs()[..., 1:]
    return spectrum[..., bins] / (spectrum.sum(dim=-1, keepdim=True) + 1e-6)


def mel_statistics(mel: torch.Tensor) -> torch.Tensor:
    """(B, n_mels, T) natural-log mel power -> (B, 2 * n_mels + MODULATION_BINS + MEL_GROUPS + 6) level-free statistics.

    The spectral envelope relative to its mean, each band's spread over time, the modulation spectrum of
    the frame energy and each band group's share of syllable-rate (3-8 Hz) modulation (syllables move
    bands at 4-8 Hz, sustained notes do not), and per-frame energy, flatness and flux statistics: tones
    are flat in time and peaked in frequency, noise flat in both, speech has pauses and fast onsets.
    """
    frames = mel.shape[2]
    envelope = mel.mean(dim=2)
    band_spread = ((mel.square().mean(dim=2) - envelope.square()) * frames / max(frames - 1, 1)).clamp(min=0).sqrt()  # std, 4x faster than torch.std
    envelope = envelope - envelope.mean(dim=1, keepdim=True)
    power = mel.exp()
    frame_energy = power.sum(dim=1).log()
    modulation = _modulation(frame_energy, slice(0, MODULATION_BINS))
    syllabic = _modulation(power.unflatten(1, (MEL_GROUPS, -1)).sum(dim=2).log(), SYLLABLE_BINS).sum(dim=2)
    flatness = mel.mean(dim=1) - frame_energy + np.log(mel.shape[1])
    flux = (mel[:, :, 1:] - mel[:, :, :-1]).abs().mean(dim=1)
    quiet = (frame_energy < frame_energy.amax(dim=1, keepdim=True) - np.log(100.0)).float().mean(dim=1)  # 20 dB down
    scalars = torch.stack([frame_energy.std(dim=1), quiet, flatness.mean(dim=1), flatness.std(dim=1), flux.mean(dim=1), flux.std(dim=1)], dim=1)
    return torch.cat([envelope, band_spread, modulation, syllabic, scalars], dim=1)


@contextmanager
def _captured_log_mel(encoder: Encoder) -> Iterator[list[torch.Tensor]]:
    """The raw log-mel the encoder's front end computes during the pass inside the block."""
    front = getattr(encoder.backbone, "melspec", None)
    if not isinstance(front, LogMel):
        raise EncoderError(f"backbone {encoder.config.backbone!r} has no log-mel front end to share; the content classifier needs one (use compact)")
    captured: list[torch.Tensor] = []
    handle = front.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        yield captured
    finally:
        handle.remove()


class Taps(NamedTuple):
    """What one encoder pass gives the classifier: the embeddings, its features, and the standardised
    log-mel (None for the "embedding" feature set)."""

    embeddings: torch.Tensor
    features: torch.Tensor
    mel: torch.Tensor | None


def encoder_pass(encoder: Encoder, wave: torch.Tensor, features: str) -> Taps:
    """One pass of the encoder over (B, samples) that also taps what the classifier reads."""
    if features == "embedding":
        embeddings = encoder(wave)
        return Taps(embeddings, embeddings, None)
    with _captured_log_mel(encoder) as mel:
        backbone = encoder.backbone(wave)
    embeddings = nn.functional.normalize(encoder.head(backbone), dim=-1)
    statistics = torch.cat([level_db(wave)[:, None] / 20, mel_statistics(mel[0]), backbone], dim=1)
    return Taps(embeddings, statistics, standardised(mel[0]))


class ContentClassifier:
    """Labels encoder windows with CLASSES; use `embed_and_classify` beside fingerprinting."""

    def __init__(self, config: ClassifierConfig, head: ContentHead, encoder: Encoder):
        if config.features not in FEATURE_SETS:
            raise EncoderError(f"unknown feature set {config.features!r}; choose one of {', '.join(FEATURE_SETS)}")
        self.config, self.head, self.encoder = config, head.eval(), encoder.eval()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.config.classes

    @classmethod
    def load(cls, name_or_path: str | Path = DEFAULT_CLASSIFIER, encoder: Encoder | None = None) -> "ContentClassifier":
        """A classifier directory (or a shipped name), with its encoder: the one given, else the one it names.
        An encoder whose weights differ from those the classifier was trained on is refused."""
        path, config_file, weights_file = model_files(name_or_path, "a classifier")
        try:
            config = ClassifierConfig.from_json(json.loads(config_file.read_text()), str(config_file))
        except json.JSONDecodeError as exc:
            raise EncoderError(f"{config_file} is not valid JSON ({exc}); restore it from the trained classifier") from exc
        encoder = encoder if encoder is not None else load_encoder(config.encoder)
        if encoder.fingerprint() != config.encoder_fingerprint:
            raise EncoderError(
                f"{path} was trained on encoder weights {config.encoder_fingerprint}, not these ({encoder.fingerprint()}); "
                "retrain the classifier for this encoder (python -m encoders.content_train)"
            )
        head = ContentHead(config.feature_dim, config.hidden, len(config.classes), config.conv_channels)
        try:
            head.load_state_dict(load_file(str(weights_file)), strict=True)
        except Exception as exc:  # safetensors' own errors for foreign files, RuntimeError for mismatched shapes
            raise EncoderError(f"{weights_file} does not fit {config_file.name} ({str(exc).splitlines()[0]}); use the config saved with these weights") from exc
        return cls(config, head, encoder)

    @torch.inference_mode()
    def embed_and_classify(self, windows: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(embeddings (N, dim) as `Encoder.embed` gives them, labels (N,) of class names, probabilities (N, classes))."""
        windows = self.encoder.as_windows(windows)
        embedded, probabilities = [], []
        for i in range(0, len(windows), batch_size):
            taps = encoder_pass(self.encoder, torch.from_numpy(windows[i : i + batch_size]), self.config.features)
            embedded.append(taps.embeddings)
            probabilities.append(torch.softmax(self.head(taps.features, taps.mel), dim=1))
        if not embedded:
            return np.zeros((0, self.encoder.dim), np.float32), np.zeros(0, dtype=object), np.zeros((0, len(self.classes)), np.float32)
        probs = torch.cat(probabilities).numpy()
        return torch.cat(embedded).numpy(), np.array(self.classes, dtype=object)[probs.argmax(axis=1)], probs

    @classmethod
    def for_encoder(cls, encoder: Encoder) -> "ContentClassifier":
        """The shipped classifier trained on `encoder`'s weights: each shipped encoder has its own, so a
        catalog built with any of them keeps its content classes."""
        fingerprint = encoder.fingerprint()
        for config_file in sorted(MODELS_DIR.glob("*/config.json")):
            if json.loads(config_file.read_text()).get("encoder_fingerprint") == fingerprint:
                return cls.load(config_file.parent, encoder)
        raise EncoderError(
            f"no shipped classifier was trained on encoder weights {fingerprint}; train one for this encoder "
            "(python -m encoders.content_train CONFIG, with `encoder:` naming it) and load it by its directory"
        )

    def classify(self, windows: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(labels (N,), probabilities (N, classes)) for windows of the encoder's length."""
        _, labels, probs = self.embed_and_classify(windows, batch_size)
        return labels, probs

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        return save_model_dir(directory, {**self.config.to_json(), **(extra or {})}, self.head.state_dict())
