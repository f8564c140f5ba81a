"""Speed on one CPU core: indexing references, embedding windows, searching catalogs of 10 k to 1 M windows.

Larger catalogs are measured by `bench scale` (monitor/bench/scale.py), which builds one of 40 M windows.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from encoders import Encoder, load_audio, load_encoder
from monitor.bench.landmark import LandmarkIndex, LandmarkParams
from monitor.bench.references import BenchError, Reference
from monitor.bench.report import Table, verdict
from monitor.catalog.index import VectorIndex, auto_factory
from monitor.stages.tracking import use_threads

TARGET_INDEX_RATE = 200.0  # seconds of audio indexed per second, one core
TARGET_WINDOWS = 400.0  # windows embedded per second, one core


def windows_per_cpu_second(encoder: Encoder, windows: int = 2048) -> float:
    """Windows embedded per CPU second on random audio (the cost does not depend on the content); CPU time,
    so work that shares the machine does not count, and per core when torch runs on one thread."""
    audio = np.random.default_rng(0).standard_normal((windows, encoder.window_samples)).astype(np.float32) * 0.1
    encoder.embed(audio[:256])  # warm-up
    started = time.process_time()
    encoder.embed(audio)
    return windows / (time.process_time() - started)


def encoder_rate(encoder_name: str, windows: int = 2048) -> dict[str, Any]:
    encoder = load_encoder(encoder_name)
    rate = windows_per_cpu_second(encoder, windows)
    return {"encoder": encoder_name, "windows": windows, "windows_per_second": rate,
            "streams_per_core": rate * encoder.config.hop_seconds}


def _index_audio(references: Sequence[Reference], seconds: float) -> list[Reference]:
    picked, total = [], 0.0
    for ref in references:
        if total >= seconds:
            break
        picked.append(ref)
        total += ref.seconds
    return picked


def indexing_rate(encoder_name: str, references: Sequence[Reference], seconds: float, hop_seconds: float) -> dict[str, Any]:
    """Audio seconds per wall second through `catalog add` (decode, embed, index, commit) into a fresh catalog."""
    from monitor.catalog import Catalog

    picked = _index_audio(references, seconds)
    encoder = load_encoder(encoder_name)
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog.create(Path(tmp) / "catalog", encoder, hop_seconds=hop_seconds, encoder_source=encoder_name)
        started, cpu = time.perf_counter(), time.process_time()
        report = catalog.add([r.path for r in picked], progress=False)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        audio = catalog.stats()["seconds"]
    if not report.added:
        raise BenchError(f"none of the {len(picked)} files could be indexed: {report.skipped[:1]}")
    return _rate(encoder_name, len(report.added), audio, wall, cpu)


def _rate(engine: str, tracks: int, audio: float, wall: float, cpu: float) -> dict[str, Any]:
    """Per wall second, and per CPU second (what one core does when no other work shares it)."""
    return {"engine": engine, "tracks": tracks, "audio_seconds": audio, "wall_seconds": wall, "cpu_seconds": cpu,
            "audio_seconds_per_second": audio / wall, "audio_seconds_per_cpu_second": audio / cpu}


def landmark_rate(references: Sequence[Reference], seconds: float) -> dict[str, Any]:
    """The same for the landmark baseline: decode and hash."""
    picked = _index_audio(references, seconds)
    params = LandmarkParams()
    started, cpu = time.perf_counter(), time.process_time()
    decoded = [(r.track_id, load_audio(r.path, params.sample_rate)) for r in picked]
    LandmarkIndex.build(decoded, params)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return _rate("landmark", len(picked), sum(len(a) for _, a in decoded) / params.sample_rate, wall, cpu)


def run(encoders: Sequence[str], references: Sequence[Reference], index_seconds: float, hop_seconds: float,
        sizes: Sequence[int], queries: int, landmark: bool) -> tuple[list[Table], dict[str, Any]]:
    use_threads(1)  # every figure here is per core
    embed = [encoder_rate(e) for e in encoders]
    index = [indexing_rate(e, references, index_seconds, hop_seconds) for e in encoders]
    if landmark:
        index.append(landmark_rate(references, index_seconds))
    dim = load_encoder(encoders[0]).dim if encoders else 128
    measured = [measure_index(n, dim, queries=queries) for n in sizes]

    t_index = Table("Reference indexing on one core (catalog add: decode, embed, index, commit)",
                    ["engine", "tracks", "audio s", "wall s", "CPU s", "audio s per wall s", "audio s per CPU s",
                     f"target >= {TARGET_INDEX_RATE:g}"],
                    settings={"catalog hop": f"{hop_seconds} s", "threads": "torch 1, FAISS 1",
                              "CPU s": "process time: what one core spends when other work shares the machine"})
    for r in index:
        t_index.add(r["engine"], r["tracks"], round(r["audio_seconds"]), round(r["wall_seconds"], 1), round(r["cpu_seconds"], 1),
                    round(r["audio_seconds_per_second"]), round(r["audio_seconds_per_cpu_second"]),
                    verdict(r["audio_seconds_per_second"], TARGET_INDEX_RATE, digits=0) if r["engine"] != "landmark" else "-")
    t_embed = Table("Encoder throughput on one core (per CPU second)", ["encoder", "windows/s", f"target >= {TARGET_WINDOWS:g}",
                                                       "streams per core at its hop"], settings={"batch": 256})
    for r in embed:
        t_embed.add(r["encoder"], round(r["windows_per_second"]), verdict(r["windows_per_second"], TARGET_WINDOWS, digits=0),
                    round(r["streams_per_core"]))
    t_search = Table("Search on one core (synthetic clustered vectors, batches of 100 queries, k=10)",
                     ["catalog windows", "index", "bytes/vector", "searches/s", "recall@1 vs exact"],
                     settings={"dim": dim, "queries": queries})
    for r in measured:
        t_search.add(f"{r['vectors']:,}", f"{r['factory']} {r['search_params']}".strip(), round(r["bytes_per_vector"], 1),
                     round(r["searches_per_second"]), round(r["recall_at_1"], 3))
    return [t_index, t_embed, t_search], {"embedding": embed, "indexing": index, "search": measured}


def synthetic_vectors(n: int, dim: int, rng: np.random.Generator, tracks: int | None = None) -> np.ndarray:
    """Unit vectors shaped like a catalog: clusters of ~400 (one per synthetic track) spread around a centre.

    Clustered data is what IVF partitions well or badly; uniform random points would flatter nothing
    and mislead on recall.
    """
    tracks = tracks or max(1, n // 400)
    centres = rng.standard_normal((tracks, dim)).astype(np.float32)
    owner = np.sort(rng.integers(0, tracks, n))
    out = np.empty((n, dim), np.float32)
    step = 50_000
    for i in range(0, n, step):
        part = centres[owner[i : i + step]] + 1.5 * rng.standard_normal((min(step, n - i), dim)).astype(np.float32)
        out[i : i + step] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return out


def distorted(vectors: np.ndarray, picks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at cosine ~0.8 to `vectors[picks]`, like distorted broadcast windows to their reference's."""
    dim = vectors.shape[1]
    noisy = vectors[picks] + 0.75 / math.sqrt(dim) * rng.standard_normal((len(picks), dim)).astype(np.float32)
    return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)


def measure_index(n_vectors: int, dim: int = 128, factory: str | None = None, queries: int = 1000, k: int = 10,
                  search_params: str | None = None, seed: int = 0) -> dict[str, float | str]:
    """Build an index of synthetic fingerprint-like vectors and report its cost and quality.

    Reports bytes per vector (the serialised index, ids included: what it takes in memory), train,
    add and search time, searches per second (batches of 100 queries, the current FAISS thread count),
    and recall@1 / recall@k against exact search. Queries are catalog vectors plus noise (cosine ~0.8
    to their source), like distorted broadcast windows.
    """
    factory = factory or auto_factory(n_vectors, dim)
    rng = np.random.default_rng(seed)
    vectors = synthetic_vectors(n_vectors, dim, rng)
    ids = np.arange(n_vectors, dtype=np.int64)
    noisy = distorted(vectors, rng.integers(0, n_vectors, queries), rng)

    index = VectorIndex.empty(factory, dim, search_params)
    started = time.perf_counter()
    if not index.faiss.is_trained:
        index.train(vectors[rng.permutation(n_vectors)[: index.train_size()]])
    trained = time.perf_counter()
    for i in range(0, n_vectors, 200_000):
        index.add(vectors[i : i + 200_000], ids[i : i + 200_000])
    added = time.perf_counter()
    _, found = index.search(noisy[:100], k)  # warm-up
    started_search = time.perf_counter()
    found = np.concatenate([index.search(noisy[i : i + 100], k)[1] for i in range(0, queries, 100)])
    searched = time.perf_counter()

    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    _, truth = exact.search(noisy, k)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.faiss"
        index.save(path)
        size = os.path.getsize(path)
    return {
        "factory": factory,
        "search_params": index.search_params,
        "vectors": n_vectors,
        "dim": dim,
        "bytes_per_vector": size / n_vectors,
        "train_seconds": trained - started,
        "add_seconds": added - trained,
        "searches_per_second": queries / (searched - started_search),
        "recall_at_1": float(np.mean(found[:, 0] == truth[:, 0])),
        f"recall_at_{k}": float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)])),
        "threads": faiss.omp_get_max_threads(),
    }
