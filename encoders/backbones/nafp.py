"""NAFP (Chang et al. 2021) as published: 256-band log-mel referenced to its peak (as the authors' code does,
which takes the peak over the batch; here each window's own, so an embedding does not depend on its batch),
eight separable conv blocks, a divide-and-encode head.

Kept as the baseline the compact default is measured against.
"""

from __future__ import annotations

import torch
from torch import nn

from encoders.frontend import LogMel, max_referenced


class SeparableConv(nn.Module):
    """A 1xk conv across time, then a kx1 conv across frequency, each with layer norm and ReLU."""

    def __init__(self, c_in: int, c_out: int, freq_stride: int, time_stride: int):
        super().__init__()
        self.time_conv = nn.Conv2d(c_in, c_out, (1, 3), stride=(1, time_stride), padding=(0, 1))
        self.time_norm = nn.GroupNorm(1, c_out)
        self.freq_conv = nn.Conv2d(c_out, c_out, (3, 1), stride=(freq_stride, 1), padding=(1, 0))
        self.freq_norm = nn.GroupNorm(1, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.time_norm(self.time_conv(x)))
        return torch.relu(self.freq_norm(self.freq_conv(x)))


class NafpBackbone(nn.Module):
    """8 kHz, 1 s windows at 0.5 s hop, STFT 1024/256, 256 mel bands 300-4000 Hz."""

    defaults = {"sample_rate": 8000, "window_seconds": 1.0, "hop_seconds": 0.5}

    def __init__(
        self,
        sample_rate: int = 8000,
        n_mels: int = 256,
        width: int = 128,
        hidden: int = 1024,
        peak_reference: bool = True,
    ):
        """`peak_reference: false` only to load weights trained on the raw log-mel (the level then moves the
        embedding: 0.74 cosine to itself at -20 dB)."""
        super().__init__()
        self.peak_reference = peak_reference
        self.melspec = LogMel(sample_rate, 1024, 256, n_mels, 300.0, 4000.0, floor=1e-10 if peak_reference else 1e-6)
        widths = [width, width, 2 * width, 2 * width, 4 * width, 4 * width, hidden, hidden]
        time_strides = [2, 2, 2, 2, 1, 1, 1, 1]
        blocks, c_in = [], 1
        for c_out, t_stride in zip(widths, time_strides):
            blocks.append(SeparableConv(c_in, c_out, 2, t_stride))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = hidden

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        mel = self.melspec(wave)
        mel = (max_referenced(mel) if self.peak_reference else mel).unsqueeze(1)
        return self.blocks(mel).amax(dim=(2, 3))
