"""GraFPrint (Bhattacharjee et al., ICASSP 2025): a log-mel window as a graph of time-frequency patches.

Written here from the paper's description. A window's log-mel, with two channels giving each bin's time
and frequency position, passes through a strided conv "peak extractor" whose outputs are the graph's nodes.
Each Grapher block links every node to its k nearest neighbours in feature space (a new graph per block,
so the graph follows the content rather than the grid) and aggregates them by max-relative graph
convolution, [x_i, max_j (x_j - x_i)]; a feed-forward block follows. Four stages, with strided convs
between them, end in mean pooling; the encoder's head projects to the embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from encoders.frontend import LogMel, standardised

# The paper's ViG-Ti-like configuration, and one sized for this project's per-core budget.
CONFIGS: dict[str, dict[str, tuple[int, ...]]] = {
    "tiny": {"channels": (48, 96, 240, 384), "blocks": (2, 2, 6, 2)},
    "cpu": {"channels": (32, 64, 96, 128), "blocks": (1, 1, 2, 1)},
}


def nearest_neighbours(nodes: torch.Tensor, k: int) -> torch.Tensor:
    """(B, C, N) node features -> (B, N, k) indices of each node's k nearest nodes (itself included)."""
    unit = nn.functional.normalize(nodes, dim=1)
    similarity = unit.transpose(1, 2) @ unit  # (B, N, N); cosine, as distance on the unit sphere
    return similarity.topk(min(k, nodes.shape[-1]), dim=-1).indices


class MaxRelativeConv(nn.Module):
    """Graph convolution by max-relative aggregation: each node sees its own features and, per channel, the
    largest difference to any neighbour; cheap (no learned edge weights) and invariant to neighbour order."""

    def __init__(self, channels: int, k: int):
        super().__init__()
        self.k = k
        self.mix = nn.Sequential(nn.Conv1d(2 * channels, channels, 1), nn.BatchNorm1d(channels), nn.GELU())

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        relative = nodes.gather(2, strongest_neighbour(nodes, self.k)) - nodes
        return self.mix(torch.cat([nodes, relative], dim=1))


def strongest_neighbour(nodes: torch.Tensor, k: int) -> torch.Tensor:
    """(B, C, N) -> (B, C, N): per node and channel, which of its k nearest nodes holds the largest value.
    max_j (x_j - x_i) is max_j x_j - x_i, so max-relative aggregation is one gather at that index; choosing
    it without gradients and gathering once keeps the (B, C, N, k) tensors out of the backward pass, which
    made a training step several times slower."""
    b, c, n = nodes.shape
    with torch.no_grad():
        index = nearest_neighbours(nodes, k).unsqueeze(1).expand(b, c, n, -1)  # (B, C, N, k)
        gathered = nodes.unsqueeze(-1).expand(b, c, n, index.shape[-1]).gather(2, index)
        return index.gather(3, gathered.argmax(dim=-1, keepdim=True)).squeeze(-1)


class Grapher(nn.Module):
    """Linear in, graph convolution, linear out, with a residual: a ViG block's node-mixing half."""

    def __init__(self, channels: int, k: int):
        super().__init__()
        self.into = nn.Sequential(nn.Conv1d(channels, channels, 1), nn.BatchNorm1d(channels))
        self.graph = MaxRelativeConv(channels, k)
        self.out = nn.Sequential(nn.Conv1d(channels, channels, 1), nn.BatchNorm1d(channels))

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        return nodes + self.out(self.graph(self.into(nodes)))


class FeedForward(nn.Module):
    """Per-node MLP with a residual: a ViG block's channel-mixing half."""

    def __init__(self, channels: int, expansion: int = 4):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(channels, expansion * channels, 1), nn.BatchNorm1d(expansion * channels), nn.GELU(),
            nn.Conv1d(expansion * channels, channels, 1), nn.BatchNorm1d(channels),
        )

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        return nodes + self.net(nodes)


class Stage(nn.Module):
    """Grapher + feed-forward blocks over the nodes of one (freq, time) grid of features."""

    def __init__(self, channels: int, blocks: int, k: int):
        super().__init__()
        self.blocks = nn.Sequential(*(nn.Sequential(Grapher(channels, k), FeedForward(channels)) for _ in range(blocks)))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        b, c, f, t = grid.shape
        return self.blocks(grid.reshape(b, c, f * t)).reshape(b, c, f, t)


def with_positions(mel: torch.Tensor) -> torch.Tensor:
    """(B, F, T) -> (B, 3, F, T): the spectrogram, then each bin's frequency and time position in [0, 1]."""
    b, f, t = mel.shape
    freq = torch.linspace(0.0, 1.0, f, device=mel.device).view(1, 1, f, 1).expand(b, 1, f, t)
    time = torch.linspace(0.0, 1.0, t, device=mel.device).view(1, 1, 1, t).expand(b, 1, f, t)
    return torch.cat([mel.unsqueeze(1), freq, time], dim=1)


class GrafprintBackbone(nn.Module):
    """8 kHz mono, 1 s windows; log-mel 300-4000 Hz (as `compact`, so the two differ only in the network)."""

    defaults = {"sample_rate": 8000, "window_seconds": 1.0, "hop_seconds": 0.5}

    def __init__(
        self,
        size: str = "cpu",
        sample_rate: int = 8000,
        n_mels: int = 64,
        patch: tuple[int, int] = (4, 4),
        k: int = 9,
    ):
        super().__init__()
        if size not in CONFIGS:
            raise ValueError(f"unknown GraFPrint size {size!r}; choose one of {', '.join(CONFIGS)}")
        channels, blocks = CONFIGS[size]["channels"], CONFIGS[size]["blocks"]
        self.melspec = LogMel(sample_rate, 512, 128, n_mels, 300.0, 4000.0)
        self.peaks = nn.Sequential(nn.Conv2d(3, channels[0], tuple(patch), stride=tuple(patch)), nn.BatchNorm2d(channels[0]), nn.ReLU())
        layers: list[nn.Module] = []
        for i, (width, depth) in enumerate(zip(channels, blocks)):
            if i:
                layers.append(nn.Sequential(nn.Conv2d(channels[i - 1], width, 3, stride=2, padding=1), nn.BatchNorm2d(width)))
            layers.append(Stage(width, depth, k))
        self.stages = nn.Sequential(*layers)
        self.feature_dim = channels[-1]

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        grid = self.peaks(with_positions(standardised(self.melspec(wave))))
        return self.stages(grid).mean(dim=(2, 3))
