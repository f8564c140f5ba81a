"""MERT-v1 (Li et al. 2023, 95M or 330M) on transformers' own HubertModel: no remote code, no download.

MERT's custom model code is HuBERT plus options that MERT-v1 leaves off (a CQT front end, DeepNorm with
relaxed attention); with those checked off, its config.json maps onto HubertConfig field for field and its
weights load into HubertModel as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import HubertConfig, HubertModel

from encoders.backbones.pretrained import PretrainedBackbone, load_pretrained, read_config, read_weights
from encoders.model import EncoderError

SAMPLE_RATE = 24000
FETCH = "fetch MERT first, e.g. `hf download m-a-p/MERT-v1-95M --local-dir pretrained/MERT-v1-95M`"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HUBERT_FIELDS = tuple(HubertConfig.__annotations__)
# Training-time randomness off: layerdrop would skip layers (and their hidden states) at random, and the
# contrastive pairs already carry the augmentation that SpecAugment's frame masking would add.
FIXED = {"layerdrop": 0.0, "apply_spec_augment": False}


def hubert_config(config: dict[str, Any]) -> HubertConfig:
    """A MERT-v1 (or plain HuBERT) config.json as a HubertConfig; MERT options HubertModel lacks are refused."""
    if config.get("feature_extractor_cqt", False):
        raise EncoderError("this MERT config uses the CQT front end (feature_extractor_cqt); only MERT-v1 checkpoints, which do not, load into HubertModel")
    # MERT's code applies attention_relax only inside its DeepNorm encoder, so deepnorm off means plain HuBERT.
    if config.get("deepnorm", False):
        raise EncoderError("this MERT config uses DeepNorm residuals and relaxed attention (deepnorm); only MERT-v1 checkpoints, which do not, load into HubertModel")
    rate = config.get("sample_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE:
        raise EncoderError(f"this MERT config expects {rate} Hz audio; airtrace runs MERT-v1 at {SAMPLE_RATE} Hz (MERT-v0 used 16 kHz)")
    fields = {key: value for key, value in config.items() if key in HUBERT_FIELDS}
    try:
        return HubertConfig(**{**fields, **FIXED})
    except (TypeError, ValueError) as exc:
        raise EncoderError(f"MERT config does not make a HubertConfig: {exc}") from exc


class MertBackbone(PretrainedBackbone):
    """24 kHz, 1 s windows at 0.5 s hop; each window is standardised as MERT's processor does."""

    defaults = {"sample_rate": SAMPLE_RATE, "window_seconds": 1.0, "hop_seconds": 0.5}

    def __init__(self, config: dict[str, Any] | None = None, layer: int | str = "weighted"):
        if config is None:
            raise EncoderError(f"the mert backbone is built from a pretrained MERT directory: set `weights:` to it; {FETCH}")
        hubert = hubert_config(config)
        super().__init__(hubert.num_hidden_layers + 1, layer)
        self.hubert = HubertModel(hubert)
        self.feature_dim = hubert.hidden_size

    @classmethod
    def from_pretrained(cls, weights_dir: str | Path, layer: int | str = "weighted") -> "MertBackbone":
        """MERT from a local directory holding config.json and model.safetensors or pytorch_model.bin."""
        backbone = cls(read_config(weights_dir, FETCH), layer)
        load_pretrained(backbone.hubert, read_weights(weights_dir, WEIGHT_FILES, FETCH), weights_dir)
        return backbone

    def config_args(self) -> dict[str, Any]:
        config = self.hubert.config.to_dict()
        return {"config": {key: config[key] for key in HUBERT_FIELDS}, "layer": self.layer}

    def hidden_states(self, wave: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mean = wave.mean(dim=1, keepdim=True)
        var = wave.var(dim=1, keepdim=True, unbiased=False)
        return self.hubert((wave - mean) / torch.sqrt(var + 1e-7), output_hidden_states=True).hidden_states
