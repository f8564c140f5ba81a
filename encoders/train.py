"""Contrastive training: NT-Xent over in-batch negatives on (clean window, distorted window) pairs.

Checkpoints are self-describing ({state, optimizer, step, config, version}), written to a temporary
file and renamed, so a killed run resumes from its last checkpoint and never from half a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from encoders.augment import RECIPES, Sources
from encoders.backbones import backbone_class
from encoders.data import NonMusic, PairPool, list_audio, load_tracks, voice_sources
from encoders.model import Encoder, EncoderConfig, EncoderError, load_encoder
from encoders.speech import load_voices, split_voices

log = logging.getLogger(__name__)
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """One training run; written beside the exported encoder so anyone can retrain it."""

    data: str
    backbone: str = "compact"
    backbone_args: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None  # local directory of pretrained MERT/MuQ weights
    init: str | None = None  # fine-tune: start from this encoder's weights (a shipped name or a directory)
    frozen: bool = False
    dim: int = 128
    head: str = "mlp"
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    temperature: float = 0.05
    seed: int = 0
    pool_chunks: int = 2048
    chunk_seconds: float = 8.0
    refresh_per_step: int = 8
    max_shift_seconds: float = 0.2
    batch_groups: int = 0  # > 0: each batch from the tracks of this many folders (albums) only: hard negatives
    non_music: int = 0  # windows of talk and noise added to each batch as negatives for every pair (encoders.data.NonMusic)
    voice_over: bool = True
    augment: str = "v1"  # a recipe of encoders.augment.RECIPES: warp ranges and voices
    checkpoint_every: int = 50
    threads: int = 0  # 0: torch's default
    device: str = "cpu"  # "cuda" to train foundation models on a GPU

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """Read YAML or JSON; an unknown field or a value of the wrong type is an error that names it,
        before any training starts."""
        raw = read_config(cls, path, overrides, "data", "an audio folder or a manifest.csv", TRAIN_BOUNDS)
        if raw.get("augment", "v1") not in RECIPES:
            raise ValueError(f"{path}: `augment: {raw['augment']!r}` is not a recipe; choose one of {', '.join(RECIPES)}")
        return cls(**raw)


# Lowest values a field takes, (value, whether the value itself is refused): 0 steps, a batch of one pair,
# checkpoint_every 0 or temperature 0 failed deep in a run (ZeroDivisionError, an MKL error) or trained
# nothing (a lone pair has no negative, lr 0 moves no weight) and still wrote an encoder.
Bound = tuple[float, bool]
TRAIN_BOUNDS: dict[str, Bound] = {
    "dim": (1, False), "steps": (1, False), "batch_size": (2, False), "lr": (0, True), "weight_decay": (0, False),
    "warmup_steps": (0, False), "temperature": (0, True), "pool_chunks": (1, False), "chunk_seconds": (0, True),
    "refresh_per_step": (0, False), "max_shift_seconds": (0, False), "batch_groups": (0, False), "non_music": (0, False),
    "checkpoint_every": (1, False), "threads": (0, False),
}


def read_config(cls: type, path: str | Path, overrides: dict[str, Any], required: str, what: str,
                bounds: dict[str, Bound]) -> dict[str, Any]:
    """The fields of a YAML (or JSON) config for dataclass `cls`, with `overrides` applied: an unknown field,
    a value of the wrong type or under its bound, or a missing `required` field is an error that names it,
    before any work."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start + 1}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of field: value")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {', '.join(unknown)}; known fields are {', '.join(sorted(known))}")
    if required not in raw:
        raise ValueError(f"{path}: `{required}` is required ({what})")
    for f in dataclasses.fields(cls):
        if f.name in raw and not _has_type(raw[f.name], f.type):
            raise ValueError(f"{path}: `{f.name}: {raw[f.name]!r}` must be {FIELD_TYPES[f.type][1]}")
    for name, (low, refused) in bounds.items():
        value = raw.get(name, getattr(cls, name))
        if value < low or (refused and value == low) or value != value:  # value != value: NaN
            raise ValueError(f"{path}: `{name}: {value!r}` must be {'above' if refused else 'at least'} {low:g}")
    return raw


# The annotations the training configs use: the Python types a value may have, and how to say so.
FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "str": ((str,), "text"),
    "str | None": ((str, type(None)), "text"),
    "int": ((int,), "a whole number"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
    "dict[str, Any]": ((dict,), "a mapping of name: value"),
}


def _has_type(value: Any, annotation: str) -> bool:
    """Whether a config value fits its field; a YAML `yes` is no number, nor `3` a flag."""
    types = FIELD_TYPES[annotation][0]
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def portable_path(path: str | None) -> str | None:
    """A path as any machine can read it in a shipped file: relative to the working directory when inside it,
    otherwise only its name (a machine's absolute path means nothing elsewhere)."""
    if path is None:
        return None
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.name


def data_digest(data: str | Path) -> str:
    """sha256 of a manifest's bytes, or of a folder's sorted audio file names and sizes: which data, without a path."""
    digest = hashlib.sha256()
    path = Path(data)
    if path.is_file():
        digest.update(path.read_bytes())
    else:
        for file in list_audio(path):
            digest.update(f"{file.relative_to(path).as_posix()}\t{file.stat().st_size}\n".encode())
    return digest.hexdigest()


def training_record(cfg: TrainConfig) -> dict[str, Any]:
    """The run's settings as written beside the exported encoder: every field, paths made portable."""
    record = dataclasses.asdict(cfg)
    record.update(data=portable_path(cfg.data), data_sha256=data_digest(cfg.data), weights=portable_path(cfg.weights))
    if cfg.init:
        record.update(init=portable_path(cfg.init) if Path(cfg.init).is_dir() else cfg.init,
                      init_fingerprint=load_encoder(cfg.init).fingerprint())
    return record


def nt_xent(anchors: torch.Tensor, positives: torch.Tensor, temperature: float, negatives: torch.Tensor | None = None) -> torch.Tensor:
    """SimCLR's loss: each embedding must pick its partner out of the other 2N-2 in the batch, and out of
    `negatives` (embeddings that are nobody's partner) where given."""
    z = torch.cat([anchors, positives])
    n = len(anchors)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    if negatives is not None:
        logits = torch.cat([logits, z @ negatives.T / temperature], dim=1)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return torch.nn.functional.cross_entropy(logits, targets)


def build_encoder(cfg: TrainConfig) -> Encoder:
    """A fresh encoder for `cfg`: random weights, a pretrained foundation model from `cfg.weights`, or the
    weights of the encoder `cfg.init` to fine-tune (its architecture must be the one `cfg` describes)."""
    if cfg.init:
        start = load_encoder(cfg.init)
        wanted = EncoderConfig.for_backbone(cfg.backbone, dim=cfg.dim, head=cfg.head, frozen=cfg.frozen, backbone_args=cfg.backbone_args)
        if start.config != wanted:
            raise EncoderError(f"init encoder {cfg.init} is a {start.config}, but the config describes a {wanted}; "
                               "make backbone, backbone_args, dim and head match it")
        return start.train()
    cls = backbone_class(cfg.backbone)
    if cfg.weights:
        backbone = cls.from_pretrained(cfg.weights, **cfg.backbone_args)
        args = backbone.config_args()
    else:
        backbone, args = None, cfg.backbone_args
    config = EncoderConfig.for_backbone(cfg.backbone, dim=cfg.dim, head=cfg.head, frozen=cfg.frozen, backbone_args=args)
    return Encoder(config, backbone)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + np.cos(np.pi * min(progress, 1.0)))


def save_checkpoint(path: Path, encoder: Encoder, optimizer: torch.optim.Optimizer, step: int, cfg: TrainConfig) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "version": CHECKPOINT_VERSION,
            "step": step,
            "config": dataclasses.asdict(cfg),
            "encoder_config": encoder.config.to_json(),
            "state": encoder.state_dict(),
            "optimizer": optimizer.state_dict(),
        },
        tmp,
    )
    os.replace(tmp, path)


# Settings a run may resume with changed: they say how long and where it runs, not what it learns.
RESUMABLE = frozenset({"steps", "threads", "device", "checkpoint_every"})


def load_checkpoint(path: Path, encoder: Encoder, optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> int:
    """Restore weights and optimizer; returns the step to continue from. A checkpoint of other settings,
    or one past `cfg.steps`, is refused: resuming it would mix two runs under one record."""
    ckpt = torch.load(path, map_location=next(encoder.parameters()).device, weights_only=False)
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {ckpt.get('version')!r} is not {CHECKPOINT_VERSION}; start a new run directory")
    ours = dataclasses.asdict(cfg)
    changed = [f"{name}: {value!r} (now {ours.get(name)!r})" for name, value in ckpt["config"].items()
               if name not in RESUMABLE and ours.get(name) != value]
    if changed:
        raise ValueError(f"{path} was written with {', '.join(changed)}; resume with its settings or give a new --run-dir")
    if ckpt["step"] > cfg.steps:
        raise ValueError(f"{path} has trained {ckpt['step']} steps, more than steps: {cfg.steps}; "
                         f"give at least {ckpt['step']} steps or a new --run-dir")
    encoder.load_state_dict(ckpt["state"])
    optimizer.load_state_dict(ckpt["optimizer"])
    return int(ckpt["step"])


def _loss(encoder: Encoder, anchors: torch.Tensor, positives: torch.Tensor, non_music: torch.Tensor | None, cfg: TrainConfig) -> torch.Tensor:
    """NT-Xent of a batch; windows without music go through the encoder with the distorted side, which
    they resemble (batch norm then sees them among real queries, not as a batch of their own)."""
    encoded_anchors = encoder(anchors.to(cfg.device))
    queries = positives if non_music is None else torch.cat([positives, non_music])
    encoded = encoder(queries.to(cfg.device))
    return nt_xent(encoded_anchors, encoded[: len(positives)], cfg.temperature, encoded[len(positives) :])


@contextmanager
def stop_after_step() -> Iterator[Callable[[], bool]]:
    """Ctrl-C asks the loop to stop once the step under way is done, so the checkpoint it writes holds
    whole steps (an interrupt inside optimizer.step would leave half-updated weights); a second one stops
    at once. Outside the main thread signals cannot be caught and nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    asked = threading.Event()

    def ask(signum: int, frame: object) -> None:
        asked.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, ask)
    try:
        yield asked.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def train(cfg: TrainConfig, run_dir: str | Path) -> Path:
    """Train (resuming from run_dir/checkpoint.pt if present) and export run_dir/encoder."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    encoder = build_encoder(cfg).to(cfg.device)
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.exists() and (run_dir / "encoder").exists():
        raise ValueError(f"{run_dir} holds a trained encoder and no checkpoint to resume from; give a new --run-dir")
    start = load_checkpoint(checkpoint, encoder, optimizer, cfg) if checkpoint.exists() else 0
    if start:
        log.info("resuming %s at step %d", run_dir, start)

    sr = encoder.sample_rate
    tracks, groups = load_tracks(list_audio(cfg.data), sr, min_seconds=2 * encoder.config.window_seconds)
    recipe = RECIPES[cfg.augment]
    voices = voice_sources(recipe, sr, cfg.seed) if cfg.voice_over else Sources()
    pool = PairPool(tracks, sr, encoder.window_samples, cfg.pool_chunks, cfg.chunk_seconds, cfg.max_shift_seconds, cfg.seed,
                    voices, recipe, groups, cfg.batch_groups)
    pool.fill(start, cfg.refresh_per_step)
    non_music = NonMusic(load_voices(split_voices()[0], sr), sr, encoder.window_samples, cfg.seed) if cfg.non_music else None

    encoder.train()
    progress = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="training", unit="step")
    with stop_after_step() as interrupted:
        for step in progress:
            anchors, positives = pool.batch(step, cfg.batch_size)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            loss = _loss(encoder, anchors, positives, non_music.batch(step, cfg.non_music) if non_music else None, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            pool.refresh(step, cfg.refresh_per_step)
            progress.set_postfix(loss=f"{loss.item():.3f}")
            if interrupted() or (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                save_checkpoint(checkpoint, encoder, optimizer, step + 1, cfg)
                with (run_dir / "loss.tsv").open("a") as f:
                    f.write(f"{step + 1}\t{loss.item():.4f}\t{time.time():.0f}\n")
            if interrupted():
                log.warning("interrupted: %s holds step %d of %d; rerun the same command to resume", checkpoint, step + 1, cfg.steps)
                raise KeyboardInterrupt

    return encoder.cpu().eval().save(run_dir / "encoder", extra={"training": training_record(cfg)})
