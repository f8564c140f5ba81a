"""MuQ (Zhu et al. 2025) through the `muq` package's own model code, without the imports that break here.

`import muq` runs the package's __init__, which pulls in MuLan, x_clip and torchvision, and its feature
module imports torchaudio; neither imports beside this torch build. So the package is registered without
running its __init__, a plain-torch copy of torchaudio's mel spectrogram stands in for the feature module,
and only the model module `muq.muq` is imported. Under transformers 5 the conformer no longer returns hidden
states, so they are gathered with hooks instead. Install: `pip install --no-deps muq einops easydict`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import random
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from encoders.backbones.pretrained import PretrainedBackbone, load_pretrained, read_config, read_weights
from encoders.frontend import mel_filterbank
from encoders.model import EncoderError

SAMPLE_RATE = 24000
FETCH = "fetch MuQ first, e.g. `hf download OpenMuQ/MuQ-large-msd-iter --local-dir pretrained/MuQ-large-msd-iter`"
INSTALL = "install it with `pip install --no-deps muq einops easydict` (its declared dependencies would pull another torch)"


class MelSTFT:
    """Drop-in for muq's torchaudio-based MelSTFT: power mel spectrogram of centred, reflect-padded frames
    with a periodic Hann window, optionally in dB (10 log10, floored at 1e-10), as torchaudio computes it."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_fft: int = 2048, hop_length: int = 240, n_mels: int = 128, is_db: bool = False):
        self.n_fft, self.hop_length, self.is_db = n_fft, hop_length, is_db
        self.window = torch.hann_window(n_fft)
        self.filters = mel_filterbank(sample_rate, n_fft, n_mels, 0.0, sample_rate // 2, unit_area=False).T

    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(waveform, self.n_fft, self.hop_length, window=self.window, center=True, pad_mode="reflect", return_complex=True)
        mel = torch.matmul(spec.abs().pow(2.0).transpose(-1, -2), self.filters).transpose(-1, -2)
        return 10.0 * torch.log10(torch.clamp(mel, min=1e-10)) if self.is_db else mel

    def to(self, device: torch.device | str) -> "MelSTFT":
        self.window, self.filters = self.window.to(device), self.filters.to(device)
        return self


def muq_class() -> type[nn.Module]:
    """muq.muq.MuQ, imported without muq/__init__.py and with MelSTFT above as its feature module."""
    if "muq.muq.muq" not in sys.modules:
        spec = importlib.util.find_spec("muq")
        if spec is None:
            raise EncoderError(f"the muq backbone needs the `muq` package; {INSTALL}")
        sys.modules.setdefault("muq", importlib.util.module_from_spec(spec))
        features = types.ModuleType("muq.muq.modules.features", "torch stand-in for muq's torchaudio front end")
        features.MelSTFT = MelSTFT  # type: ignore[attr-defined]
        sys.modules.setdefault("muq.muq.modules.features", features)
    try:
        return importlib.import_module("muq.muq.muq").MuQ
    except ImportError as exc:
        raise EncoderError(f"the muq package does not import ({exc}); {INSTALL}") from exc


def muq_config(config: dict[str, Any]) -> dict[str, Any]:
    """A released MuQ config.json, fitted to inference here: eager attention (transformers 5 wants it named,
    and the relative-position variant needs it), no layerdrop, and no training-target checkpoint path."""
    if config.get("is_flash", False):
        raise EncoderError("this MuQ config asks for flash attention (is_flash), which muq's CPU path lacks; released MuQ models set is_flash false")
    if config.get("use_encodec_target", False):
        raise EncoderError("this MuQ config trains on EnCodec targets (use_encodec_target), which needs the encodec package; released MuQ models do not")
    if not isinstance(config.get("w2v2_config"), dict) or not config["w2v2_config"]:
        raise EncoderError("this MuQ config has no w2v2_config (the conformer's settings); use the config.json saved with the MuQ weights")
    w2v2 = {**config["w2v2_config"], "layerdrop": 0.0, "_attn_implementation": "eager"}
    return {**config, "w2v2_config": w2v2, "rvq_ckpt_path": None}


@contextmanager
def global_rng_kept() -> Iterator[None]:
    """MuQ's constructor reseeds torch and `random` (for its fixed random quantizer); keep the caller's seeds."""
    state = random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(state)


class MuqBackbone(PretrainedBackbone):
    """24 kHz, 1 s windows at 0.5 s hop: 128-band dB mel at 100 frames/s, conv subsampling to 25 frames/s,
    then the conformer; hidden states are the input to each conformer layer and the final layer norm's output,
    as MuQ returns them under transformers 4."""

    defaults = {"sample_rate": SAMPLE_RATE, "window_seconds": 1.0, "hop_seconds": 0.5}

    def __init__(self, config: dict[str, Any] | None = None, layer: int | str = "weighted"):
        if config is None:
            raise EncoderError(f"the muq backbone is built from a pretrained MuQ directory: set `weights:` to it; {FETCH}")
        config = muq_config(config)
        muq = muq_class()
        super().__init__(int(config.get("encoder_depth", 12)) + 1, layer)
        try:
            with global_rng_kept():
                self.muq = muq(config)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise EncoderError(f"MuQ config does not build a MuQ model ({exc!r}); use the config.json saved with the weights") from exc
        self.feature_dim = self.muq.config.encoder_dim

    @classmethod
    def from_pretrained(cls, weights_dir: str | Path, layer: int | str = "weighted") -> "MuqBackbone":
        """MuQ from a local directory holding config.json and model.safetensors (as the Hub's MuQ repos do)."""
        backbone = cls(read_config(weights_dir, FETCH), layer)
        load_pretrained(backbone.muq, read_weights(weights_dir, ("model.safetensors",), FETCH), weights_dir)
        return backbone

    def config_args(self) -> dict[str, Any]:
        return {"config": dataclasses.asdict(self.muq.config), "layer": self.layer}

    def hidden_states(self, wave: torch.Tensor) -> list[torch.Tensor]:
        model = self.muq.model
        mel = model.normalize(model.preprocessing(wave, features=["melspec_2048"]))["melspec_2048"]
        conformer = model.conformer
        states: list[torch.Tensor] = []
        hooks = [layer.register_forward_pre_hook(lambda module, args: states.append(args[0])) for layer in conformer.layers]
        hooks.append(conformer.layer_norm.register_forward_hook(lambda module, args, out: states.append(out)))
        try:
            conformer(model.conv(mel))
        finally:
            for hook in hooks:
                hook.remove()
        return states
