"""A small random-weight encoder and the shipped demo music, for the catalog and matcher tests (conftest.py
builds catalogs of it as fixtures).

Random convolutions with batch-norm statistics taken from real music give embeddings that differ from
track to track (fresh batch-norm statistics would map every window to nearly the same point), and the
very same audio always gives the very same embedding: enough to test search, alignment and bookkeeping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from encoders import Encoder, EncoderConfig, load_audio
from monitor.stages.windows import WindowGrid

MUSIC = Path(__file__).resolve().parent.parent / "monitor" / "demo" / "music"
CATALOG_TRACKS = ("area1-game", "area2-game", "over-theme")  # the other demo tracks stay out: non-catalog music
SAMPLE_RATE = 8000


def random_encoder(seed: int = 0, tracks: tuple[str, ...] = ("gardien-go",), hop_seconds: float | None = None) -> Encoder:
    """Random weights, with batch-norm statistics measured on the windows of `tracks` (at the encoder's hop
    unless `hop_seconds` is given), untouched every window would map to nearly one point."""
    torch.manual_seed(seed)
    encoder = Encoder(EncoderConfig.for_backbone("compact", backbone_args={"channels": [24, 48, 96, 160]}))
    grid = WindowGrid.for_encoder(encoder, hop_seconds)
    windows = np.concatenate([grid.cut(music(track)) for track in tracks])
    for module in encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batch below
    encoder.train()
    with torch.no_grad():
        encoder(torch.from_numpy(windows))
    return encoder.eval()


def music(name: str) -> np.ndarray:
    return load_audio(MUSIC / f"{name}.opus", SAMPLE_RATE)
