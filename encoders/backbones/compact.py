"""The shipped default: a small log-mel CNN in the NAFP family, sized for >= 400 windows/s on one core."""

from __future__ import annotations

import torch
from torch import nn

from encoders.frontend import LogMel, standardised


def conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class CompactBackbone(nn.Module):
    """8 kHz mono, 1 s windows; log-mel 300-4000 Hz, a strided CNN, mean+max pooled features.

    The spectrogram is standardised per window (see `standardised`).
    """

    defaults = {"sample_rate": 8000, "window_seconds": 1.0, "hop_seconds": 0.5}

    def __init__(
        self,
        sample_rate: int = 8000,
        n_fft: int = 512,
        hop: int = 128,
        n_mels: int = 64,
        fmin: float = 300.0,
        fmax: float = 4000.0,
        channels: tuple[int, ...] = (32, 64, 128, 192),
    ):
        super().__init__()
        self.melspec = LogMel(sample_rate, n_fft, hop, n_mels, fmin, fmax)
        layers, c_in = [], 1
        for c_out in channels:
            layers += [conv_block(c_in, c_out, 2), conv_block(c_out, c_out, 1)]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.feature_dim = 2 * c_in

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        fmap = self.convs(standardised(self.melspec(wave)).unsqueeze(1))
        return torch.cat([fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))], dim=1)
