"""Backbones map a batch of waveforms (B, samples) to features (B, F); the registry builds them by name."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from torch import nn

# name -> (module, class); imported on demand so `compact` never pays for transformers.
BACKBONES: dict[str, tuple[str, str]] = {
    "compact": ("encoders.backbones.compact", "CompactBackbone"),
    "nafp": ("encoders.backbones.nafp", "NafpBackbone"),
    "grafprint": ("encoders.backbones.grafprint", "GrafprintBackbone"),
    "mert": ("encoders.backbones.mert", "MertBackbone"),
    "muq": ("encoders.backbones.muq", "MuqBackbone"),
}


def backbone_class(name: str) -> Any:
    """The backbone class registered under `name`; an unknown name is an error listing the known ones."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(BACKBONES))}")
    module, cls = BACKBONES[name]
    return getattr(importlib.import_module(module), cls)


def build_backbone(name: str, args: dict[str, Any]) -> nn.Module:
    """Build a backbone's architecture from its JSON-able args (weights come separately)."""
    return backbone_class(name)(**args)


# The foundation models' configurations as released (name -> backbone, config.json), so their real sizes
# can be built and measured without the weights, which cannot be fetched at run time.
PUBLISHED_DIR = Path(__file__).parent / "published"
PUBLISHED: dict[str, tuple[str, str]] = {"mert-v1-95m": ("mert", "mert-v1-95m.json"), "muq-large": ("muq", "muq-large-msd-iter.json")}


def published_config(name: str) -> tuple[str, dict[str, Any]]:
    """(backbone, config.json contents) of a released foundation model, by the names in PUBLISHED."""
    if name not in PUBLISHED:
        raise ValueError(f"unknown published model {name!r}; choose one of {', '.join(PUBLISHED)}")
    backbone, file = PUBLISHED[name]
    return backbone, json.loads((PUBLISHED_DIR / file).read_text())
