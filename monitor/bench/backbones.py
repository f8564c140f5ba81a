"""`airtrace bench backbones`: what a foundation-model backbone costs at its real size, without its weights.

No MERT or MuQ weights can be fetched here, so each backbone is built from its published configuration
with random weights (the cost does not depend on the values), saved as a pretrained directory in the Hub's
layout and loaded back through the same path a user's download takes. Each model is measured in a fresh
process, so its peak memory is its own: load time, parameters, windows embedded per CPU second on one
core, and the CPU seconds of one training step frozen (head and layer mix only) and fine-tuned.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from encoders import Encoder, EncoderConfig
from encoders.backbones import PUBLISHED, backbone_class, published_config
from encoders.train import nt_xent
from monitor.bench.report import Table
from monitor.bench.speed import windows_per_cpu_second
from monitor.stages.tracking import use_threads

PAIRS_PER_STEP = 8  # contrastive pairs in one measured training step (16 windows)


def save_pretrained(backbone: torch.nn.Module, config: dict[str, Any], directory: Path) -> None:
    """The directory a user would download: config.json and model.safetensors of the network itself."""
    network = backbone.hubert if hasattr(backbone, "hubert") else backbone.muq
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(directory / "model.safetensors"))


def training_step(encoder: Encoder, steps: int = 2) -> dict[str, float]:
    """CPU seconds of one contrastive training step (forward, backward, AdamW) after one warm-up step, and the
    parameters it trains."""
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    encoder.train()
    waves = torch.randn(2 * PAIRS_PER_STEP, encoder.window_samples) * 0.1
    spent = 0.0
    for step in range(steps + 1):
        started = time.process_time()
        loss = nt_xent(encoder(waves[:PAIRS_PER_STEP]), encoder(waves[PAIRS_PER_STEP:]), 0.05)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        spent += (time.process_time() - started) if step else 0.0
    return {"cpu_seconds": spent / steps, "trained_parameters": sum(p.numel() for p in trainable)}


def resident_gb() -> float:
    """This process's resident memory now (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 1e9


def measure(backbone: str, config: dict[str, Any]) -> dict[str, Any]:
    """Every figure of one model; run in its own process (see `run`)."""
    use_threads(1)  # every figure is per core
    cls = backbone_class(backbone)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(cls(config), config, Path(tmp) / "weights")
        started = time.perf_counter()
        loaded = cls.from_pretrained(Path(tmp) / "weights")
        load_seconds = time.perf_counter() - started
    args = loaded.config_args()
    encoder = Encoder(EncoderConfig.for_backbone(backbone, backbone_args=args), loaded)
    figures: dict[str, Any] = {
        "parameters": sum(p.numel() for p in loaded.parameters()),
        "load_seconds": load_seconds,
        "resident_gb_for_inference": resident_gb(),
        "finetuned_step": training_step(encoder),
        "peak_resident_gb_training": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,  # kilobytes on Linux
    }
    # Freezing sets requires_grad on the shared backbone, and inference mode leaves tensors autograd refuses:
    # so fine-tuning, then frozen, then inference.
    figures["frozen_step"] = training_step(Encoder(EncoderConfig.for_backbone(backbone, frozen=True, backbone_args=args), loaded))
    figures["windows_per_cpu_second"] = windows_per_cpu_second(encoder.eval(), windows=16)
    figures["streams_per_core"] = figures["windows_per_cpu_second"] * encoder.config.hop_seconds
    return figures


def run(models: Sequence[str]) -> tuple[list[Table], dict[str, Any]]:
    """Each model (a name in encoders' PUBLISHED, or BACKBONE=CONFIG.json) measured in a fresh spawned process."""
    results = {}
    context = multiprocessing.get_context("spawn")
    for name in models:
        if name in PUBLISHED:
            backbone, config = published_config(name)
        else:
            backbone, config_file = name.split("=", 1)
            config = json.loads(Path(config_file).read_text())
        with context.Pool(1) as pool:
            results[name] = pool.apply(measure, (backbone, config))
    table = Table("Foundation-model backbones at their published size (random weights; one core)",
                  ["model", "parameters", "load s", "memory GB (inference)", "windows/CPU-s", "streams per core",
                   f"frozen step CPU s ({PAIRS_PER_STEP} pairs)", f"fine-tuned step CPU s ({PAIRS_PER_STEP} pairs)",
                   "peak memory GB (training)"],
                  settings={"weights": "random, saved and loaded through the pretrained-directory path",
                            "streams per core": "windows/CPU-s x the encoder's hop"})
    for name, r in results.items():
        table.add(name, f"{r['parameters']:,}", round(r["load_seconds"], 1), round(r["resident_gb_for_inference"], 2),
                  round(r["windows_per_cpu_second"], 2), round(r["streams_per_core"], 2), round(r["frozen_step"]["cpu_seconds"], 2),
                  round(r["finetuned_step"]["cpu_seconds"], 2), round(r["peak_resident_gb_training"], 2))
    return [table], {"backbones": results}
