"""The vector index behind a catalog: FAISS indexes chosen by size, window ids, and a scale measurement.

Every indexed vector carries one 64-bit id that says whose window it is: the track's ordinal in the
high bits and the window number in the low `WINDOW_BITS`. Search results map back to (track, time)
with two shifts, so the index needs no per-window lookup table beside it.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import faiss
import numpy as np

WINDOW_BITS = 20  # up to 1,048,576 windows per track: 145 h at a 0.5 s hop
EXACT_LIMIT = 500_000  # exact search up to here (~1,300 tracks); IVF above
TRAIN_PER_LIST = 64  # k-means sample per inverted list (FAISS warns below 39)
# From this many lists the coarse centroids come from two-level k-means: one-level k-means costs
# TRAIN_PER_LIST * nlist^2 * dim multiply-adds per iteration, over an hour at 32,768 lists on 2 cores.
TWO_LEVEL_LISTS = 4096
# Batches of at least this many queries are searched as one matrix product (BLAS) rather than one scan of the
# index per query. FAISS as shipped sets 128,000, so a monitor's batches (a few dozen windows of many streams)
# scanned the whole index once per window: exact search of a 22,500-window catalog took 0.7 ms per window,
# against 0.11 at 32 windows a batch. The similarities differ in rounding only.
BLAS_QUERIES = 20
faiss.cvar.distance_compute_blas_threshold = BLAS_QUERIES


class VectorIndexError(RuntimeError):
    """An index that cannot be built, read or searched; the catalog turns it into a CatalogError."""


def window_ids(track_ord: int, windows: np.ndarray) -> np.ndarray:
    """Ids of a track's windows (window numbers on the catalog grid)."""
    if len(windows) and int(windows.max()) >= 1 << WINDOW_BITS:
        raise VectorIndexError(f"a track of more than {1 << WINDOW_BITS} windows does not fit an id; split it into parts")
    return (np.int64(track_ord) << WINDOW_BITS) | windows.astype(np.int64)


def split_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(track ordinals, window numbers) of ids; -1 ids (no result) give ordinal -1."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.where(ids < 0, -1, ids >> WINDOW_BITS), ids & ((1 << WINDOW_BITS) - 1)


def auto_factory(n_vectors: int, dim: int) -> str:
    """The FAISS guidelines' choice by size: exact below EXACT_LIMIT, then IVF with 4-bit PQ fast-scan codes
    re-ranked by float16 codes.

    The fast-scan codes (dim/2 bytes) only pick candidates; their top `k_factor_rf` x k are re-ranked by
    the float16 codes, whose similarities the matcher's scores and calibration then see. The PQ codes
    encode each window's residual from its list centroid (`fsr`): FAISS's fast-scan default encodes the
    window itself, which at 40 M windows left the exact nearest window out of the candidates often enough
    to cost 1-2 points of recall@1. 8-bit re-ranking codes round similarities by up to 0.02, enough to
    swap near neighbours (recall@1 0.974 against 0.990). The coarse quantizer is itself an IVF over the
    list centroids, so finding a window's lists does not cost an inner product with every centroid.
    Measured at 40 M windows on one core: README, "Search at 40 M windows". nlist ~ 4 sqrt(n), a power of 2.
    """
    if n_vectors < EXACT_LIMIT:
        return "Flat"
    return ivf_factory(2 ** round(math.log2(4 * math.sqrt(n_vectors))), dim)


def ivf_factory(nlist: int, dim: int) -> str:
    """`auto_factory`'s IVF index with `nlist` lists: sqrt(nlist) groups of centroids, 2 dimensions per PQ code."""
    sub = dim // 2 if dim % 2 == 0 else dim
    return f"IVF{nlist}(IVF{math.isqrt(nlist)},Flat),PQ{sub}x4fsr,Refine(SQfp16)"


def default_search_params(factory: str) -> str:
    """Search-time parameters for FAISS's ParameterSpace, as a catalog records them."""
    params = []
    if "IVF" in factory:
        params.append("nprobe=64")
    if "(IVF" in factory:  # an IVF coarse quantizer: lists of list centroids searched
        params.append("quantizer_nprobe=32")
    if "Refine" in factory or factory.endswith(",RFlat"):
        params.append("k_factor_rf=16")
    return ",".join(params)


class VectorIndex:
    """A FAISS inner-product index over L2-normalised vectors, addressed by window ids."""

    def __init__(self, index: faiss.Index, factory: str, search_params: str):
        self.faiss, self.factory, self.search_params = index, factory, search_params
        if search_params:
            try:
                faiss.ParameterSpace().set_index_parameters(index, search_params)
            except RuntimeError as exc:
                raise VectorIndexError(f"search parameters {search_params!r} do not apply to {factory!r}: {_first_line(exc)}") from exc

    @classmethod
    def empty(cls, factory: str, dim: int, search_params: str | None = None) -> "VectorIndex":
        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise VectorIndexError(f"bad index factory {factory!r}: {_first_line(exc)}; try Flat or IVF4096,SQ8") from exc
        if not isinstance(index, faiss.IndexIVF):  # IVF indexes store ids themselves; others need a map
            index = faiss.IndexIDMap(index)
        return cls(index, factory, default_search_params(factory) if search_params is None else search_params)

    @classmethod
    def build(cls, factory: str, dim: int, chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
              search_params: str | None = None, seed: int = 0) -> "VectorIndex":
        """Train (if the factory needs it) on a sample of `chunks()`, then add every (vectors, ids) chunk.

        `chunks` is called once or twice (sample, then add), so a catalog streams its shards from disk
        instead of holding all vectors in memory.
        """
        index = cls.empty(factory, dim, search_params)
        if not index.faiss.is_trained:
            index.train(_sample(chunks(), index.train_size(), seed))
        for vectors, ids in chunks():
            index.add(vectors, ids)
        return index

    def train_size(self) -> int:
        ivf = faiss.try_extract_index_ivf(self.faiss)
        return TRAIN_PER_LIST * ivf.nlist if ivf is not None else 100_000

    def train(self, vectors: np.ndarray) -> None:
        ivf = faiss.try_extract_index_ivf(self.faiss)
        if ivf is not None and len(vectors) < ivf.nlist:
            raise VectorIndexError(
                f"{self.factory} needs at least {ivf.nlist} vectors to train its {ivf.nlist} lists, got {len(vectors)}; "
                "add more audio at once or use a smaller factory (Flat, or let the catalog choose)"
            )
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if ivf is not None and isinstance(coarse := faiss.downcast_index(ivf.quantizer), faiss.IndexIVF):
            coarse.make_direct_map()  # residual codes read their list's centroid back from an IVF coarse quantizer
        if ivf is not None and ivf.nlist >= TWO_LEVEL_LISTS and ivf.quantizer.ntotal == 0:
            _train_coarse(ivf, vectors)
        self.faiss.train(vectors)  # the codes (and the coarse centroids unless already in place)

    @property
    def ntotal(self) -> int:
        return int(self.faiss.ntotal)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        if len(vectors):
            self.faiss.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))

    def remove_track(self, track_ord: int) -> bool:
        """Drop a track's windows in place; False when this index type cannot remove (rebuild it instead)."""
        low = np.int64(track_ord) << WINDOW_BITS
        try:
            self.faiss.remove_ids(faiss.IDSelectorRange(int(low), int(low + (1 << WINDOW_BITS))))
        except RuntimeError:
            return False
        return True

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each (n, k); missing results have id -1."""
        return self.faiss.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def save(self, path: Path) -> None:
        faiss.write_index(self.faiss, str(path))

    @classmethod
    def load(cls, path: Path, factory: str, search_params: str) -> "VectorIndex":
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise VectorIndexError(f"{path} cannot be read ({_first_line(exc)})") from exc
        return cls(index, factory, search_params)


def _train_coarse(ivf: faiss.IndexIVF, vectors: np.ndarray) -> None:
    """Put an IVF's list centroids into its coarse quantizer, found by two-level spherical k-means
    (FAISS's recipe for large nlist: sqrt(nlist) clusters, then each split in proportion to its size)."""
    with contextlib.redirect_stdout(io.StringIO()):  # the module prints a notice about scipy when imported
        from faiss.contrib.clustering import two_level_clustering
    centroids, _ = two_level_clustering(vectors, math.isqrt(ivf.nlist), ivf.nlist, spherical=True, seed=0)
    if not ivf.quantizer.is_trained:
        ivf.quantizer.train(centroids)
    ivf.quantizer.add(centroids)


def _sample(chunks: Iterable[tuple[np.ndarray, np.ndarray]], size: int, seed: int) -> np.ndarray:
    """A uniform sample of up to `size` rows over all chunks, reading each chunk once."""
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    keys: list[np.ndarray] = []
    for vectors, _ in chunks:
        key = rng.random(len(vectors))
        kept.append(np.asarray(vectors, dtype=np.float32))
        keys.append(key)
        all_keys = np.concatenate(keys)
        if len(all_keys) > size:  # keep the `size` rows with the smallest keys: a uniform sample
            cut = np.partition(all_keys, size - 1)[size - 1]
            kept = [v[k <= cut] for v, k in zip(kept, keys)]
            keys = [k[k <= cut] for k in keys]
    return np.concatenate(kept) if kept else np.zeros((0, 0), np.float32)


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
