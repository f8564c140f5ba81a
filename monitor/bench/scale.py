"""Search at catalog scale, measured: an index of 40 M windows built, reloaded by a worker process and searched.

The windows are the corpus's real embeddings plus synthetic ones drawn from a Gaussian mixture fitted to
them (spherical k-means clusters of the real embeddings, each with its own mean and full covariance), then
L2-normalised like the encoder's output. The index is the one `catalog add` would choose for that many
windows (`auto_factory`), trained and filled by the catalog's own code (`VectorIndex.train` and `add`: its
coarse centroids by two-level k-means, each window's list found by its IVF coarse quantizer), so the
build time is what `catalog add` spends on the index at this size. Set OMP_NUM_THREADS=1 on a shared
machine: FAISS's and BLAS's threads spin while they wait for a core (most of the CPU of a loaded 2-core
machine, measured).

A worker holds the index as a catalog does (`VectorIndex.load` in a fresh process): its resident memory,
the reload time, and search in batches of one second of `STREAMS` streams' windows are measured there.
Recall@1 compares the index's first result with exact search over every window (brute force, chunk by
chunk while the index is built) for distorted real windows.
"""

from __future__ import annotations

import math
import multiprocessing
import resource
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from monitor.bench.references import BenchError, Reference
from monitor.bench.report import Table, verdict
from monitor.bench.speed import distorted
from monitor.catalog.index import VectorIndex, auto_factory
from monitor.options import WorkerOptions
from monitor.stages.windows import WindowGrid

STREAMS = 200  # streams whose one second of windows makes one search batch
TARGET_RSS_GB = 16.0
TARGET_P99_SECONDS = 0.050
TARGET_RECALL = 0.98
CHUNK = 500_000  # windows generated, added and searched exactly at a time: memory stays bounded
POINTS_PER_COMPONENT = 4  # real embeddings per mixture component, in multiples of the dimension (a full covariance)
EXACT_BLOCK = 25_000_000  # query-window similarities computed at a time in exact search (100 MB)
TRAIN_DRAW, QUERY_DRAW = 1 << 31, (1 << 31) + 1  # random streams apart from the chunks' (chunk i draws from [seed, i])


@dataclass(frozen=True)
class Mixture:
    """Gaussian components (weight, mean, Cholesky factor of the covariance); samples are L2-normalised."""

    weights: np.ndarray
    means: np.ndarray
    factors: np.ndarray

    @classmethod
    def fit(cls, real: np.ndarray, seed: int = 0) -> "Mixture":
        """One component per spherical k-means cluster of `real`, with enough points per cluster for a full
        covariance (a small ridge keeps it positive definite)."""
        n, dim = real.shape
        components = max(1, min(64, n // (POINTS_PER_COMPONENT * dim)))
        if components > 1:
            kmeans = faiss.Kmeans(dim, components, niter=20, spherical=True, seed=seed)
            kmeans.train(real)
            labels = kmeans.index.search(real, 1)[1][:, 0]
        else:
            labels = np.zeros(n, np.int64)
        weights, means, factors = [], [], []
        for c in range(components):
            members = real[labels == c].astype(np.float64)
            if len(members) <= dim:  # too few for a covariance: merged into the others' weights
                continue
            cov = np.cov(members, rowvar=False) + 1e-6 * np.eye(dim)
            weights.append(len(members))
            means.append(members.mean(axis=0))
            factors.append(np.linalg.cholesky(cov))
        if not weights:
            raise BenchError(f"{n} real embeddings are too few to fit a distribution in {dim} dimensions; index more audio")
        w = np.array(weights, np.float64)
        return cls(w / w.sum(), np.array(means, np.float32), np.array(factors, np.float32))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` unit vectors, component by component (their order does not matter to an index)."""
        out = np.empty((n, self.means.shape[1]), np.float32)
        ends = np.cumsum(rng.multinomial(n, self.weights))
        for begin, end, mean, factor in zip(np.r_[0, ends[:-1]], ends, self.means, self.factors):
            out[begin:end] = rng.standard_normal((end - begin, len(mean)), dtype=np.float32) @ factor.T + mean
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out

    def describe(self) -> str:
        return (f"Gaussian mixture of {len(self.weights)} components (spherical k-means clusters of the real embeddings, "
                "each its own mean and full covariance), L2-normalised")


def windows(real: np.ndarray, mixture: Mixture, total: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(vectors, ids) of the index in chunks: the real embeddings first, then synthetic ones up to `total`;
    chunk i is drawn from its own seed, so the same call yields the same windows again."""
    for i, start in enumerate(range(0, total, CHUNK)):
        stop = min(total, start + CHUNK)
        real_part = real[start:stop]
        synthetic = mixture.sample(stop - start - len(real_part), np.random.default_rng([seed, i]))
        yield np.concatenate([real_part, synthetic]), np.arange(start, stop, dtype=np.int64)


def exact_top1(queries: np.ndarray, chunks: Iterator[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Ids of each query's exact nearest window (inner product) over all chunks, by brute force."""
    best = np.full(len(queries), -np.inf, np.float32)
    ids = np.full(len(queries), -1, np.int64)
    for vectors, chunk_ids in chunks:
        update_top1(queries, vectors, chunk_ids, best, ids)
    return ids


def update_top1(queries: np.ndarray, vectors: np.ndarray, chunk_ids: np.ndarray, best: np.ndarray, ids: np.ndarray) -> None:
    """Fold `vectors` into each query's best (similarity, id) so far; one matrix product per block (BLAS: about
    10x faster than FAISS's k=1 scan), blocks small enough that the similarities take ~100 MB."""
    step = max(1, EXACT_BLOCK // max(1, len(queries)))
    for begin in range(0, len(vectors), step):
        sims = queries @ vectors[begin : begin + step].T
        found = sims.argmax(axis=1)
        top = sims[np.arange(len(queries)), found]
        better = top > best
        best[better], ids[better] = top[better], chunk_ids[begin + found[better]]


def recall_at_1(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of queries whose first result is their exact nearest window."""
    return float(np.mean(np.asarray(found) == np.asarray(exact)))


def batch_size(encoder: Any, hop_seconds: float, streams: int = STREAMS) -> int:
    """Windows that `streams` streams make in one second at the catalog's hop."""
    grid = WindowGrid.for_encoder(encoder, hop_seconds)
    return round(streams / grid.hop_seconds)


def _clock() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime


def _since(start: tuple[float, float]) -> dict[str, float]:
    wall, cpu = _clock()
    return {"wall_seconds": wall - start[0], "cpu_seconds": cpu - start[1]}


def build(real: np.ndarray, total: int, queries: np.ndarray, factory: str, seed: int = 0
          ) -> tuple[VectorIndex, np.ndarray, dict[str, Any]]:
    """The index of `total` windows, the exact nearest window of each query, and how the build went: trained
    on a uniform sample of the catalog's training size and filled as `catalog add` fills it."""
    mixture = Mixture.fit(real, seed)
    index = VectorIndex.empty(factory, real.shape[1])
    started = _clock()
    if not index.faiss.is_trained:
        index.train(_training_sample(real, mixture, total, index.train_size(), seed))
    trained = _since(started)
    best, exact = np.full(len(queries), -np.inf, np.float32), np.full(len(queries), -1, np.int64)
    started = _clock()
    for vectors, ids in tqdm(windows(real, mixture, total, seed), "adding", math.ceil(total / CHUNK), unit="chunk", disable=None):
        update_top1(queries, vectors, ids, best, exact)
        index.add(vectors, ids)
    added = _since(started)
    return index, exact, {"mixture": mixture.describe(), "train": trained, "add": added}


def _training_sample(real: np.ndarray, mixture: Mixture, total: int, size: int, seed: int) -> np.ndarray:
    """A uniform sample of `size` of the index's windows: the real ones in their share, the rest drawn."""
    rng = np.random.default_rng([seed, TRAIN_DRAW])
    size = min(total, size)
    real_part = real[rng.random(len(real)) < size / total]
    return np.concatenate([real_part, mixture.sample(size - len(real_part), rng)]).astype(np.float32)


def rss_bytes() -> tuple[int, int]:
    """(resident, peak resident) bytes of this process, from /proc/self/status."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def hold_and_search(path: str, factory: str, settings: Sequence[str], threads: int, batches: list[np.ndarray],
                    recall_queries: np.ndarray, k: int) -> dict[str, Any]:
    """In a fresh process, as a worker holds a catalog's index: load it, then under each search setting time
    every batch's search and find the recall queries' first results."""
    faiss.omp_set_num_threads(threads)
    before, _ = rss_bytes()
    started = _clock()
    index = VectorIndex.load(Path(path), factory, settings[0])
    reload = _since(started)
    loaded, _ = rss_bytes()
    searched = []
    for params in settings:
        index = VectorIndex(index.faiss, factory, params)
        index.search(batches[0], k)  # warm-up
        times = []
        for batch in batches:
            started = _clock()
            index.search(batch, k)
            times.append(_since(started))
        found = np.concatenate([index.search(recall_queries[i : i + len(batches[0])], k)[1][:, 0]
                                for i in range(0, len(recall_queries), len(batches[0]))])
        searched.append({"search_params": params, "batches": times, "found": found})
    rss, peak = rss_bytes()
    return {"rss_before_load": before, "rss_loaded": loaded, "rss_after_search": rss, "rss_peak": peak,
            "reload": reload, "ntotal": index.ntotal, "searched": searched}


def _search_figures(searched: dict[str, Any], exact: np.ndarray, per_batch: int) -> dict[str, Any]:
    walls = np.array([t["wall_seconds"] for t in searched["batches"]])
    cpus = np.array([t["cpu_seconds"] for t in searched["batches"]])
    return {"search_params": searched["search_params"],
            "batch_p50_seconds": float(np.percentile(walls, 50)), "batch_p99_seconds": float(np.percentile(walls, 99)),
            "batch_cpu_p50_seconds": float(np.percentile(cpus, 50)), "batch_cpu_p99_seconds": float(np.percentile(cpus, 99)),
            "searches_per_second": per_batch * len(walls) / float(walls.sum()),
            "searches_per_cpu_second": per_batch * len(cpus) / float(cpus.sum()),
            "recall_at_1": recall_at_1(searched["found"], exact)}


def measure(real: np.ndarray, total: int, encoder: Any, hop_seconds: float, factory: str | None = None,
            search_params: Sequence[str] = (), recall_queries: int = 500, batches: int = 100, threads: int = 1,
            seed: int = 0, work_dir: Path | None = None) -> dict[str, Any]:
    """Build, save, reload in a worker process, search under the catalog's search parameters and any others
    given: every figure of the scale report."""
    if total < len(real):
        raise BenchError(f"--windows {total:,} is fewer than the {len(real):,} real embeddings; ask for more windows")
    factory = factory or auto_factory(total, real.shape[1])
    rng = np.random.default_rng([seed, QUERY_DRAW])
    per_batch = batch_size(encoder, hop_seconds)
    queries = distorted(real, rng.integers(0, len(real), recall_queries), rng)
    timed = [distorted(real, rng.integers(0, len(real), per_batch), rng) for _ in range(batches)]
    index, exact, built = build(real, total, queries, factory, seed)
    settings = list(dict.fromkeys([index.search_params, *search_params]))
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        path = Path(tmp) / "index.faiss"
        index.save(path)
        del index
        size = path.stat().st_size
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            worker = pool.apply(hold_and_search, (str(path), factory, settings, threads, timed, queries, WorkerOptions().k))
    return {
        "windows": total, "real_windows": len(real), "synthetic_windows": total - len(real), "dim": real.shape[1],
        "factory": factory, "index_bytes": size, **built,
        "worker": {k: v for k, v in worker.items() if k != "searched"},
        "batch_windows": per_batch, "batches": batches, "threads": threads, "k": WorkerOptions().k,
        "recall_queries": recall_queries, "search": [_search_figures(s, exact, per_batch) for s in worker["searched"]],
        "peak_rss_build": rss_bytes()[1],
    }


def report(r: dict[str, Any], hop_seconds: float, source: str) -> list[Table]:
    """The build and memory table, then one row per search setting (the catalog's first)."""
    gb = 1e9
    worker, chosen = r["worker"], auto_factory(r["windows"], r["dim"])
    built = Table(f"An index of {r['windows']:,} windows, built and held by a worker process", ["measure", "value", "target"], settings={
        "windows": f"{r['real_windows']:,} real (the compact encoder's embeddings of {source}) + "
                   f"{r['synthetic_windows']:,} synthetic: {r['mixture']}",
        "index": f"{r['factory']}, dim {r['dim']}" + (" (the catalog's choice for this many windows)" if r["factory"] == chosen
                                                      else f" (given; the catalog would choose {chosen})"),
        "CPU s": "process time (user + system): what the work costs when other work shares the machine",
    })
    built.add("train wall / CPU s", f"{r['train']['wall_seconds']:.0f} / {r['train']['cpu_seconds']:.0f}", "-")
    built.add("add wall / CPU s (generating the windows and exact top-1 of the recall queries included)",
              f"{r['add']['wall_seconds']:.0f} / {r['add']['cpu_seconds']:.0f}", "-")
    built.add("index file GB", f"{r['index_bytes'] / gb:.2f}", "-")
    built.add("worker resident GB (whole process, index loaded)", f"{worker['rss_loaded'] / gb:.2f}",
              f"{verdict(worker['rss_loaded'] / gb, TARGET_RSS_GB, below=True, digits=2)} (<= {TARGET_RSS_GB:g})")
    built.add("of which the index GB", f"{(worker['rss_loaded'] - worker['rss_before_load']) / gb:.2f}", "-")
    built.add("worker peak resident GB (after searching)", f"{worker['rss_peak'] / gb:.2f}", "-")
    built.add("reload wall / CPU s", f"{worker['reload']['wall_seconds']:.1f} / {worker['reload']['cpu_seconds']:.1f}", "-")
    built.add("build peak resident GB", f"{r['peak_rss_build'] / gb:.2f}", "-")
    p99_target, recall_target = f"p99 < {TARGET_P99_SECONDS * 1e3:g} ms", f"recall@1 >= {TARGET_RECALL:g}"
    search = Table(f"Search at {r['windows']:,} windows, one batch = one second of {STREAMS} streams",
                   ["search params", "p50 ms", p99_target, "p50 / p99 CPU ms", "searches/s wall", "searches/s CPU", recall_target],
                   settings={
                       "batch": f"{r['batch_windows']} windows (the catalog hop {hop_seconds} s), k={r['k']}, "
                                f"{r['batches']} batches, FAISS threads {r['threads']}",
                       "recall": f"{r['recall_queries']} real windows with noise (cosine ~0.8 to their source); "
                                 "the index's first result against exact search over every window (brute force)",
                   })
    for s in r["search"]:
        search.add((s["search_params"] or "-") + (" (the catalog's)" if s is r["search"][0] else ""),
                   round(s["batch_p50_seconds"] * 1e3), verdict(s["batch_p99_seconds"] * 1e3, TARGET_P99_SECONDS * 1e3, below=True, digits=0),
                   f"{s['batch_cpu_p50_seconds'] * 1e3:.0f} / {s['batch_cpu_p99_seconds'] * 1e3:.0f}",
                   round(s["searches_per_second"]), round(s["searches_per_cpu_second"]), verdict(s["recall_at_1"], TARGET_RECALL, digits=3))
    return [built, search]


def real_embeddings(encoder_name: str, references: Sequence[Reference], cache_dir: Path, hop_seconds: float) -> tuple[np.ndarray, Any]:
    """The references' window embeddings under the encoder, from the benches' cached catalog (built once)."""
    from monitor.bench.engines import NeuralEngine

    catalog = NeuralEngine.open_or_build(encoder_name, references, cache_dir, hop_seconds).catalog
    return np.concatenate([vectors for vectors, _ in catalog.stored_windows()]).astype(np.float32), catalog.encoder


def run(encoder_name: str, references: Sequence[Reference], source: str, cache_dir: Path, hop_seconds: float, total: int,
        factory: str | None, search_params: Sequence[str], recall_queries: int, batches: int, threads: int, seed: int
        ) -> tuple[list[Table], dict[str, Any]]:
    real, encoder = real_embeddings(encoder_name, references, cache_dir, hop_seconds)
    result = measure(real, total, encoder, hop_seconds, factory, search_params, recall_queries, batches, threads, seed, cache_dir)
    return report(result, hop_seconds, source), {"scale": result}

