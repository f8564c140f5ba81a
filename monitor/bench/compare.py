"""`airtrace bench compare`: encoders side by side in the shape of the paper's table (arXiv 2511.05399).

It trains nothing: each encoder (a shipped name or a trained directory) gets a catalog of the same
references, every engine answers the same queries as in `bench tracks`, and one summary row per engine
adds what the accuracy alone hides: model size, speed on one core, and index bytes per second of audio.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from monitor.bench import tracks
from monitor.bench.engines import Engine, LandmarkEngine, NeuralEngine
from monitor.bench.landmark import landmarks
from monitor.bench.references import ReferenceSet
from monitor.bench.report import Table, percent
from monitor.bench.speed import windows_per_cpu_second
from monitor.stages.tracking import use_threads

PROBE_SECONDS = 60.0  # of random audio, to time the landmark hasher


def footprint(engine: Engine, audio_seconds: float) -> dict[str, Any]:
    """Parameters, audio seconds fingerprinted per CPU second on one core, and index bytes per second of audio."""
    if isinstance(engine, NeuralEngine):
        encoder, stats = engine.catalog.encoder, engine.catalog.stats()
        rate = windows_per_cpu_second(encoder)
        return {"parameters": sum(p.numel() for p in encoder.parameters()), "windows_per_cpu_second": rate,
                "realtime_factor": rate * encoder.config.hop_seconds,
                "index_bytes_per_second": engine.index_bytes / stats["seconds"]}
    if isinstance(engine, LandmarkEngine):
        index = engine.index
        probe = np.random.default_rng(0).standard_normal(int(PROBE_SECONDS * engine.sample_rate)).astype(np.float32) * 0.1
        started = time.process_time()
        landmarks(probe, index.params)
        return {"parameters": 0, "windows_per_cpu_second": None,
                "realtime_factor": PROBE_SECONDS / (time.process_time() - started),
                "index_bytes_per_second": engine.index_bytes / audio_seconds}
    raise TypeError(f"no footprint for engine {engine.name!r}")


def summary_table(engines: Sequence[Engine], records: Sequence[list[Any]], lengths: Sequence[float], audio_seconds: float) -> Table:
    """One row per engine: top-1 over every distortion row at each length, false matches, and its footprint."""
    table = Table("Comparison (the paper's shape): top-1 (%) over all distortion rows, false matches, cost",
                  ["engine", *(f"top-1 {n:g}s" for n in lengths), "false matches %", "parameters",
                   "windows/CPU-s (1 core)", "x real time (1 core)", "index bytes per audio s"],
                  settings={"false matches": "non-catalog music, speech and noise, all lengths together",
                            "x real time": "audio seconds fingerprinted per CPU second: streams one core carries"})
    use_threads(1)  # every figure is per core
    for engine in engines:
        mine = [r for r in records if r[0] == engine.name]
        top1 = [[r[5] for r in mine if r[2] == n and r[5] is not None] for n in lengths]
        false = [r[7] is not None for r in mine if r[5] is None]
        cost = footprint(engine, audio_seconds)
        rate = cost["windows_per_cpu_second"]
        table.add(engine.name, *(percent(sum(t), len(t)) for t in top1), percent(sum(false), len(false)),
                  f"{cost['parameters']:,}", "-" if rate is None else round(rate), round(cost["realtime_factor"]),
                  round(cost["index_bytes_per_second"]))
    return table


def run(refs: ReferenceSet, engines: Sequence[Engine], rows: Sequence[str], per_row: int, lengths: Sequence[float],
        negatives: int, seed: int) -> tuple[list[Table], dict[str, Any]]:
    """`bench tracks` for every engine, with the one-row-per-engine summary first."""
    tables, extra = tracks.run(refs, engines, rows, per_row, lengths, negatives, seed)
    audio_seconds = sum(r.seconds for r in refs.catalog)
    return [summary_table(engines, extra["per_query"], lengths, audio_seconds), *tables], extra
