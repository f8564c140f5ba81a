"""The encoder: a backbone plus a projection head, mapping audio windows to L2-normalised embeddings.

An encoder is saved as one directory: config.json (what to build) and model.safetensors (its weights).
Loading rebuilds the architecture from the config, then loads the weights strictly, so a config that
does not match its weights is caught at load time, not at the first wrong answer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from encoders.backbones import backbone_class, build_backbone

FORMAT_VERSION = 1
MODELS_DIR = Path(__file__).parent / "models"
DEFAULT_ENCODER = "compact3"


class EncoderError(ValueError):
    """An encoder directory or input that cannot be used; the message says what to do instead."""


@dataclass(frozen=True)
class EncoderConfig:
    """Everything needed to rebuild an encoder; the window and hop are the encoder's, not the caller's."""

    backbone: str
    sample_rate: int
    window_seconds: float
    hop_seconds: float
    dim: int = 128
    head: str = "mlp"
    frozen: bool = False
    backbone_args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_backbone(cls, backbone: str, **overrides: Any) -> "EncoderConfig":
        """A config with the backbone's own defaults for sample rate, window and hop; a backbone built for
        another sample rate (`backbone_args: {sample_rate: ...}`) is fed audio at that rate."""
        defaults = dict(backbone_class(backbone).defaults)
        if "sample_rate" in (overrides.get("backbone_args") or {}):
            defaults["sample_rate"] = overrides["backbone_args"]["sample_rate"]
        defaults.update({k: v for k, v in overrides.items() if v is not None})
        return cls(backbone=backbone, **defaults)

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "config") -> "EncoderConfig":
        data = dict(data)
        version = data.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise EncoderError(f"{source}: format_version {version!r} is not {FORMAT_VERSION}; retrain or convert the encoder")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EncoderError(f"{source}: unknown field(s) {', '.join(unknown)}; known fields are {', '.join(sorted(known))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise EncoderError(f"{source}: {exc}") from exc


class MlpHead(nn.Module):
    """Two-layer projection, as in SimCLR."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 2 * dim), nn.ReLU(inplace=True), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SplitHead(nn.Module):
    """NAFP's divide-and-encode head: each output dimension sees only its own slice of the features."""

    def __init__(self, in_dim: int, dim: int, hidden: int = 32):
        super().__init__()
        if in_dim % dim:
            raise EncoderError(f"split head needs features ({in_dim}) divisible by dim ({dim})")
        self.expand = nn.Conv1d(in_dim, dim * hidden, 1, groups=dim)
        self.reduce = nn.Conv1d(dim * hidden, dim, 1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduce(nn.functional.elu(self.expand(x.unsqueeze(-1)))).squeeze(-1)


HEADS = {"mlp": MlpHead, "split": SplitHead}


class Encoder(nn.Module):
    """Audio windows at `sample_rate` -> (N, dim) float32, L2-normalised."""

    def __init__(self, config: EncoderConfig, backbone: nn.Module | None = None):
        super().__init__()
        if config.head not in HEADS:
            raise EncoderError(f"unknown head {config.head!r}; choose one of {', '.join(HEADS)}")
        self.config = config
        self.backbone = backbone if backbone is not None else build_backbone(config.backbone, config.backbone_args)
        self.head = HEADS[config.head](self.backbone.feature_dim, config.dim)
        if config.frozen:
            self.backbone.requires_grad_(False)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def window_samples(self) -> int:
        return round(self.config.window_seconds * self.config.sample_rate)

    @property
    def hop_samples(self) -> int:
        return round(self.config.hop_seconds * self.config.sample_rate)

    @property
    def dim(self) -> int:
        return self.config.dim

    def train(self, mode: bool = True) -> "Encoder":
        """A frozen backbone stays in eval mode, so its normalisation statistics never drift either.

        In eval mode convolution weights are held channels-last: oneDNN's CPU convolutions then embed 12-20 %
        faster (`compact`, `nafp`; same outputs to float32 rounding, the weights' hash unchanged). Training
        keeps the default layout, so a training run's numbers do not depend on it."""
        if mode != self.training:
            self.to(memory_format=torch.contiguous_format if mode else torch.channels_last)
        super().train(mode)
        if self.config.frozen:
            self.backbone.eval()
        return self

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.head(self.backbone(wave)), dim=-1)

    def as_windows(self, windows: np.ndarray) -> np.ndarray:
        """`windows` as a writable float32 (N, window_samples) array (one window may come alone), or an error
        that says how to cut them; strided views of a signal are copied, since torch wants memory it may own."""
        windows = np.asarray(windows, dtype=np.float32)
        if windows.ndim == 1:
            windows = windows[None]
        if windows.ndim != 2 or windows.shape[1] != self.window_samples:
            raise EncoderError(
                f"expected windows of {self.window_samples} samples ({self.config.window_seconds} s at "
                f"{self.sample_rate} Hz), got shape {windows.shape}; cut audio with the encoder's window"
            )
        return windows if windows.flags.writeable else windows.copy()

    @torch.inference_mode()
    def embed(self, windows: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Embed windows of exactly `window_samples` each; (N, window_samples) or one (window_samples,)."""
        windows = self.as_windows(windows)
        self.eval()
        out = [self(torch.from_numpy(windows[i : i + batch_size])) for i in range(0, len(windows), batch_size)]
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return torch.cat(out).numpy().astype(np.float32, copy=False)

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write config.json and model.safetensors atomically (a temporary directory, then a rename)."""
        return save_model_dir(directory, {**self.config.to_json(), **(extra or {})}, self.state_dict())

    def fingerprint(self) -> str:
        """A short hash of the weights: a catalog records it, so a catalog never meets a different model."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def save_model_dir(directory: str | Path, config: dict[str, Any], state: dict[str, torch.Tensor]) -> Path:
    """Write a model directory (config.json, model.safetensors) atomically: a temporary directory, then a rename."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old")
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old)
    else:
        os.replace(tmp, directory)
    return directory


def resolve_encoder_path(name_or_path: str | Path) -> Path:
    """A directory path as given, or the name of a model shipped under encoders/models/. A folder that holds
    no model (a training run's, named after the encoder it trains) does not hide the shipped model of its name."""
    path, shipped = Path(name_or_path), MODELS_DIR / str(name_or_path)
    if path.is_dir() and ((path / "config.json").is_file() or not shipped.is_dir()):
        return path
    if shipped.is_dir():
        return shipped
    names = sorted(p.name for p in MODELS_DIR.iterdir() if p.is_dir()) if MODELS_DIR.is_dir() else []
    raise EncoderError(f"no encoder directory at {name_or_path}; give a path or one of the shipped names: {', '.join(names) or 'none'}")


def model_files(name_or_path: str | Path, what: str) -> tuple[Path, Path, Path]:
    """(directory, config.json, model.safetensors) of a saved model (a shipped name or a directory), or an
    error that says which file is missing; `what` names the kind of model for the message."""
    path = resolve_encoder_path(name_or_path)
    config_file, weights_file = path / "config.json", path / "model.safetensors"
    for needed in (config_file, weights_file):
        if not needed.is_file():
            raise EncoderError(f"{path} lacks {needed.name}; {what} directory holds config.json and model.safetensors")
    return path, config_file, weights_file


def load_encoder(name_or_path: str | Path = DEFAULT_ENCODER) -> Encoder:
    """Load an encoder directory (or a shipped name) for inference, on the CPU, in eval mode."""
    path, config_file, weights_file = model_files(name_or_path, "an encoder")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise EncoderError(f"{config_file} is not valid JSON ({exc}); restore it from the trained model") from exc
    raw.pop("training", None)
    config = EncoderConfig.from_json(raw, source=str(config_file))
    encoder = Encoder(config)
    try:
        state = load_file(str(weights_file))
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise EncoderError(f"{weights_file} cannot be read ({exc}); the file is corrupt or not safetensors") from exc
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise EncoderError(f"{config_file} does not match {weights_file.name}: {first}; use the config saved with these weights") from exc
    return encoder.eval()
