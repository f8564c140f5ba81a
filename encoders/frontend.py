"""Log-mel front end in plain torch (torchaudio does not import beside this torch build)."""

from __future__ import annotations

import math

import torch
from torch import nn


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float, unit_area: bool = True
) -> torch.Tensor:
    """Triangular HTK-mel filters, (n_mels, n_fft // 2 + 1).

    Unit area keeps band energies comparable across band widths; `unit_area=False` gives triangles of
    peak height one, torchaudio's default, which pretrained models such as MuQ were trained on.
    """

    def hz_to_mel(hz: float | torch.Tensor) -> float | torch.Tensor:
        return 2595.0 * (torch.log10(1.0 + hz / 700.0) if torch.is_tensor(hz) else math.log10(1.0 + hz / 700.0))

    mel_points = torch.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2)
    hz_points = 700.0 * (10.0 ** (mel_points / 2595.0) - 1.0)
    bins = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = hz_points[:-2, None], hz_points[1:-1, None], hz_points[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    filters = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return filters / filters.sum(dim=1, keepdim=True).clamp(min=1e-8) if unit_area else filters


def standardised(mel: torch.Tensor) -> torch.Tensor:
    """Each (B, F, T) spectrogram to zero mean and unit variance, so a gain change does not move the embedding."""
    return (mel - mel.mean(dim=(1, 2), keepdim=True)) / (mel.std(dim=(1, 2), keepdim=True) + 1e-5)


class LogMel(nn.Module):
    """Waveform (B, samples) -> log-mel (B, n_mels, frames); `floor` is the power added before the log."""

    def __init__(self, sample_rate: int, n_fft: int, hop: int, n_mels: int, fmin: float, fmax: float, floor: float = 1e-6):
        super().__init__()
        self.n_fft, self.hop, self.floor = n_fft, hop, floor
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("filters", mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wave, self.n_fft, self.hop, window=self.window, center=False, return_complex=True)
        power = spec.real.square() + spec.imag.square()
        return torch.log(torch.matmul(self.filters, power) + self.floor)


def max_referenced(log_mel: torch.Tensor, dynamic_range_db: float = 80.0) -> torch.Tensor:
    """Each (B, F, T) natural-log spectrogram relative to its own peak, the `dynamic_range_db` below it
    scaled to [-1, 1] and anything quieter clipped: a gain change does not move it (NAFP's input)."""
    span = dynamic_range_db / 10.0 * math.log(10.0)
    relative = log_mel - log_mel.amax(dim=(1, 2), keepdim=True)
    return relative.clamp(min=-span) / (span / 2) + 1.0
