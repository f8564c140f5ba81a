"""A small random-weight encoder and catalogs of the shipped demo music, for the catalog and matcher tests.

Random convolutions with batch-norm statistics taken from real music give embeddings that differ from
track to track (fresh batch-norm statistics would map every window to nearly the same point), and the
very same audio always gives the very same embedding: enough to test search, alignment and bookkeeping.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders import Encoder, EncoderConfig, load_audio, load_encoder
from monitor.catalog import Catalog
from monitor.windows import WindowGrid

MUSIC = Path(__file__).resolve().parent.parent / "monitor" / "demo" / "music"
CATALOG_TRACKS = ("area1-game", "area2-game", "over-theme")  # the other demo tracks stay out: non-catalog music
SAMPLE_RATE = 8000


def random_encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    encoder = Encoder(EncoderConfig.for_backbone("compact", backbone_args={"channels": [24, 48, 96, 160]}))
    windows = WindowGrid.for_encoder(encoder).cut(music("gardien-go")).copy()
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


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_encoder().save(tmp_path_factory.mktemp("encoder") / "random")


@pytest.fixture(scope="module")
def built_catalog(tmp_path_factory: pytest.TempPathFactory, encoder_dir: Path) -> Path:
    """A catalog of CATALOG_TRACKS, built once per module; copy it before changing it."""
    directory = tmp_path_factory.mktemp("catalog") / "catalog"
    catalog = Catalog.create(directory, load_encoder(encoder_dir), encoder_source=str(encoder_dir))
    report = catalog.add([MUSIC / f"{name}.opus" for name in CATALOG_TRACKS], progress=False)
    assert report.added == list(CATALOG_TRACKS)
    return directory


@pytest.fixture
def catalog_copy(built_catalog: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built_catalog, tmp_path / "catalog"))
