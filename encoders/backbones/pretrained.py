"""What the foundation-model backbones (MERT, MuQ) share: hidden states pooled into one feature vector, and
loading a pretrained directory the user fetched beforehand (never downloaded at run time).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from encoders.model import EncoderError


class PretrainedBackbone(nn.Module):
    """A pretrained network's hidden states -> (B, feature_dim): one layer, or a learned softmax mix of all.

    Subclasses build the network, set `feature_dim` and return its hidden states from `hidden_states`.
    Layers differ in what they keep (early ones the signal, late ones the music), so `layer="weighted"`
    lets training choose; the mix is then mean-pooled over time.
    """

    def __init__(self, num_states: int, layer: int | str):
        super().__init__()
        if layer == "weighted":
            self.layer_weights = nn.Parameter(torch.zeros(num_states))
        elif not isinstance(layer, int) or isinstance(layer, bool) or not -num_states <= layer < num_states:
            raise EncoderError(f"layer {layer!r} is neither \"weighted\" nor the index of one of the {num_states} hidden states (negative counts from the last)")
        self.layer = layer

    def hidden_states(self, wave: torch.Tensor) -> Sequence[torch.Tensor]:
        """(B, samples) -> one (B, frames, feature_dim) tensor per hidden state, the input embedding first."""
        raise NotImplementedError

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        states = self.hidden_states(wave)
        if self.layer == "weighted":
            weights = torch.softmax(self.layer_weights, dim=0)
            mixed = torch.einsum("l,lbtd->btd", weights, torch.stack(tuple(states)))
        else:
            mixed = states[self.layer]
        return mixed.mean(dim=1)

    def requires_grad_(self, requires_grad: bool = True) -> "PretrainedBackbone":
        """Freezing freezes the pretrained network only: the layer mix is trained with the head, as a frozen
        backbone with a fixed uniform mix would not be `learned layer weighting` at all."""
        for name, param in self.named_parameters():
            param.requires_grad_(requires_grad or name == "layer_weights")
        return self


def read_config(weights_dir: str | Path, fetch: str) -> dict[str, Any]:
    """config.json of a pretrained directory; a missing directory or file says how to fetch the weights."""
    path = Path(weights_dir)
    config_file = path / "config.json"
    if not path.is_dir():
        raise EncoderError(f"no pretrained weights directory at {path}; {fetch}")
    if not config_file.is_file():
        raise EncoderError(f"{path} has no config.json, so it is not a downloaded model directory; {fetch}")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise EncoderError(f"{config_file} is not valid JSON ({exc}); fetch the model again: {fetch}") from exc
    if not isinstance(config, dict):
        raise EncoderError(f"{config_file} is not a JSON object; fetch the model again: {fetch}")
    return config


def read_weights(weights_dir: str | Path, names: Sequence[str], fetch: str) -> dict[str, torch.Tensor]:
    """The first of `names` found in `weights_dir` (safetensors, or a pickled state dict read weights-only)."""
    path = Path(weights_dir)
    for name in names:
        weights_file = path / name
        if not weights_file.is_file():
            continue
        try:
            if weights_file.suffix == ".safetensors":
                return load_file(str(weights_file))
            return torch.load(weights_file, map_location="cpu", weights_only=True)
        except Exception as exc:  # safetensors and torch.load raise their own types for truncated or foreign files
            raise EncoderError(f"{weights_file} cannot be read ({exc}); the download is incomplete: {fetch}") from exc
    raise EncoderError(f"{path} holds none of {', '.join(names)}; {fetch}")


def load_pretrained(module: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load every weight strictly, so a checkpoint that does not fit its config fails here, not in training.

    Old weight-norm names (`weight_g`, `weight_v`, as in MERT-v1's checkpoints) need no renaming: torch's
    weight-norm parametrization maps them on load.
    """
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:400]
        raise EncoderError(f"{source}: the weights do not fit its config.json ({detail})") from exc
