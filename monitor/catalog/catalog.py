"""The catalog object: reference tracks, their window embeddings in a FAISS index, and everything needed to
trust a match. It adds and removes tracks in transactions that the generation store (monitor.catalog.store)
commits atomically, and running readers call `reload_if_changed`, which costs one stat() when nothing changed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from encoders import DEFAULT_ENCODER, AudioError, Encoder, EncoderError, load_audio, load_encoder
from monitor.catalog.index import VectorIndex, VectorIndexError, auto_factory, split_ids, window_ids
from monitor.catalog.nulls import NullClips, NullQuery, null_windows
from monitor.catalog.sources import AddReport, Source, expand_sources
from monitor.catalog.store import (CONFIG_FILE, FORMAT_VERSION, CatalogError, TrackInfo, check_new_catalog_folder, config_signature, gen_dir,
                                   read_config, read_shard, read_tracks, remove_shards, write_generation, write_shard,
                                   writer_lock)
from monitor.constants import DEFAULT_HOP_SECONDS
from monitor.records import Neighbour, NeighbourTable, check_id
from monitor.stages.search import embed_audible
from monitor.stages.windows import WindowGrid

log = logging.getLogger(__name__)

COMMIT_WINDOWS = 200_000  # a long `add` commits after about 500 tracks, or a quarter of the index if more:
COMMIT_GROWTH = 0.25  # every commit rewrites the index, so commits grow with it and the total stays ~5x its size


class EmbeddedAudio(NamedTuple):
    """A track's audio as embedded elsewhere (a part of a parallel build, see monitor.catalog.parts)."""

    digest: str  # content_hash of the samples
    seconds: float
    vectors: np.ndarray | None  # audible windows' embeddings; None: not embedded (a copy), decoded again if it must be added
    numbers: np.ndarray | None  # their window numbers on the catalog grid


def check_hop(encoder: Encoder, hop_seconds: float) -> None:
    if not 0 < hop_seconds <= encoder.config.window_seconds:
        raise CatalogError(f"hop {hop_seconds} s must be positive and at most the window ({encoder.config.window_seconds} s)")


def content_hash(audio: np.ndarray) -> str:
    """Hash of the decoded samples (16-bit), so a copy or a lossless re-wrap of a file is caught too."""
    pcm = np.round(np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767).astype("<i2")
    return hashlib.sha256(pcm.tobytes()).hexdigest()[:32]


class Catalog:
    """Reference tracks, their window embeddings in a FAISS index, and everything needed to trust a match."""

    def __init__(self, directory: Path, encoder: Encoder, config: dict[str, Any]):
        """Use Catalog.create or Catalog.open."""
        self.directory = directory
        self.encoder = encoder
        self.grid = WindowGrid.for_encoder(encoder, config["hop_seconds"])
        self._config = config
        self._lock_file: Any = None
        self._load()

    # ---- creating and opening -------------------------------------------------------------------

    @classmethod
    def create(cls, directory: str | Path, encoder: Encoder, hop_seconds: float = DEFAULT_HOP_SECONDS, index_factory: str | None = None,
               encoder_source: str | None = None) -> "Catalog":
        """A new empty catalog. `encoder_source` is how to load the encoder again (a shipped name or a
        directory); without it a copy of the encoder is saved inside the catalog. `index_factory`
        None lets the catalog choose by size (exact search, then IVF as it grows)."""
        directory = Path(directory)
        _check_no_catalog(directory)
        check_new_catalog_folder(directory)
        check_hop(encoder, hop_seconds)
        factory = index_factory or auto_factory(0, encoder.dim)
        try:
            index = VectorIndex.empty(factory, encoder.dim)
        except VectorIndexError as exc:
            raise CatalogError(str(exc)) from exc
        null = NullClips.noise_and_speech(encoder, WindowGrid.for_encoder(encoder, hop_seconds))
        directory.mkdir(parents=True, exist_ok=True)
        with writer_lock(directory):
            _check_no_catalog(directory)  # again: another `catalog add` may have created it since, and its tracks must stay
            if encoder_source is None:
                encoder.save(directory / "encoder")
                encoder_source = "encoder"
            elif Path(encoder_source).is_dir():
                encoder_source = str(Path(encoder_source).resolve())
            config = {
                "format_version": FORMAT_VERSION,
                "encoder": {"source": encoder_source, "fingerprint": encoder.fingerprint(), "backbone": encoder.config.backbone,
                            "sample_rate": encoder.sample_rate, "window_seconds": encoder.config.window_seconds, "dim": encoder.dim},
                "hop_seconds": float(hop_seconds),
                "index": {"requested": index_factory or "auto", "factory": factory, "search_params": index.search_params},
                "generation": 0,
            }
            write_generation(directory, config, index, {}, [], null)
        return cls(directory, encoder, read_config(directory))

    @classmethod
    def open(cls, directory: str | Path, encoder: Encoder | None = None) -> "Catalog":
        """Open a catalog; without `encoder`, load the one it records. A different encoder is an error."""
        directory = Path(directory)
        config = read_config(directory)
        return cls(directory, _recorded_encoder(directory, config, encoder), config)

    @classmethod
    def open_or_create(cls, directory: str | Path, encoder_source: str | None = None, hop_seconds: float | None = None,
                       index_factory: str | None = None) -> "Catalog":
        """What `catalog add` needs: the catalog at `directory`, or a new one with the named encoder
        (a shipped name or a directory; default the shipped default). Settings given for an existing
        catalog must match it."""
        directory = Path(directory)
        if not (directory / CONFIG_FILE).exists():
            source = encoder_source or DEFAULT_ENCODER
            try:
                encoder = load_encoder(source)
            except EncoderError as exc:
                raise CatalogError(str(exc)) from exc
            try:
                return cls.create(directory, encoder, DEFAULT_HOP_SECONDS if hop_seconds is None else hop_seconds, index_factory,
                                  encoder_source=source)
            except CatalogExists:
                pass  # another `catalog add` created it meanwhile: this one adds to it
        encoder, config = read_settings(directory, encoder_source, hop_seconds, index_factory)
        return cls(directory, encoder, config)

    def _load(self) -> None:
        """Read the generation catalog.json points at; retried once if a writer replaced it meanwhile."""
        for attempt in (1, 2):
            config = read_config(self.directory)
            try:
                self._load_generation(config)
                return
            except FileNotFoundError:
                if attempt == 2:
                    raise CatalogError(f"{self.directory}: generation {config['generation']} is missing; the catalog is damaged") from None

    def _load_generation(self, config: dict[str, Any]) -> None:
        if config["encoder"]["fingerprint"] != self._config["encoder"]["fingerprint"]:
            raise CatalogError(f"{self.directory} was rebuilt with another encoder; open it again")
        folder = gen_dir(self.directory, config["generation"])
        if not folder.is_dir():
            raise FileNotFoundError(folder)
        index_cfg = config["index"]
        try:
            index = VectorIndex.load(folder / "index.faiss", index_cfg["factory"], index_cfg["search_params"])
        except VectorIndexError as exc:
            raise CatalogError(f"{exc}: the index is corrupt; restore the catalog from a backup or rebuild it with `airtrace catalog add`") from exc
        tracks, ords, shards = read_tracks(folder / "tracks.sqlite")
        expected = sum(t.windows for t in tracks.values())
        if index.ntotal != expected:
            raise CatalogError(f"{folder}: the index holds {index.ntotal} windows but the tracks {expected}; the catalog is corrupt, rebuild it")
        self._install(config, index, tracks, ords, shards, NullClips.load(folder / "null.npz"))

    def _install(self, config: dict[str, Any], index: VectorIndex, tracks: dict[str, TrackInfo], ords: dict[str, int],
                 shards: list[str], null: "NullClips") -> None:
        """Make a committed generation the one this object serves, with nothing staged."""
        self._config, self._index, self._tracks, self._ords, self._shards, self._null = config, index, tracks, ords, shards, null
        self._hashes = {t.content_hash: t.track_id for t in tracks.values()}
        self._names = np.empty(max(ords.values(), default=-1) + 1, dtype=object)
        for track_id, track_ord in ords.items():
            self._names[track_ord] = track_id
        self._signature = config_signature(self.directory)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_windows = 0
        self._rebuild = False
        self._dirty = False

    def reload_if_changed(self) -> bool:
        """Pick up a generation another process committed; one stat() when nothing changed."""
        if config_signature(self.directory) == self._signature:
            return False
        if read_config(self.directory)["generation"] == self._config["generation"]:
            self._signature = config_signature(self.directory)
            return False
        self._load()
        return True

    # ---- reading ------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return int(self._config["generation"])

    def tracks(self) -> list[TrackInfo]:
        return sorted(self._tracks.values(), key=lambda t: t.track_id)

    @property
    def track_count(self) -> int:
        return len(self._tracks)

    def track(self, track_id: str) -> TrackInfo:
        try:
            return self._tracks[track_id]
        except KeyError:
            raise CatalogError(f"no track {track_id!r} in {self.directory}; `airtrace catalog list` shows the tracks") from None

    def stats(self) -> dict[str, Any]:
        folder = gen_dir(self.directory, self.generation)
        shard_bytes = sum(p.stat().st_size for p in (self.directory / "shards").glob("*.npz"))
        return {
            "directory": str(self.directory),
            "tracks": len(self._tracks),
            "windows": self._index.ntotal,
            "seconds": round(sum(t.seconds for t in self._tracks.values()), 3),
            "generation": self.generation,
            "encoder": self._config["encoder"]["source"],
            "encoder_fingerprint": self._config["encoder"]["fingerprint"],
            "window_seconds": self.grid.window_seconds,
            "hop_seconds": self.grid.hop_seconds,
            "dim": self.encoder.dim,
            "index_factory": self._index.factory,
            "search_params": self._index.search_params,
            "index_bytes": (folder / "index.faiss").stat().st_size,
            "shard_bytes": shard_bytes,
        }

    def search(self, embeddings: np.ndarray, k: int = 10) -> list[tuple[Neighbour, ...]]:
        """The k nearest reference windows of each query embedding, best first."""
        return self.search_table(embeddings, k).rows()

    def search_table(self, embeddings: np.ndarray, k: int = 10) -> NeighbourTable:
        """The k nearest reference windows of each query embedding, best first, as arrays."""
        if not self._tracks:
            raise CatalogError(f"{self.directory} is empty; add tracks with `airtrace catalog add --catalog {self.directory} PATH...`")
        queries = np.asarray(embeddings, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] != self.encoder.dim:
            raise CatalogError(f"queries must be (n, {self.encoder.dim}) embeddings of this catalog's encoder, got shape {queries.shape}")
        sims, ids = self._index.search(queries, k)
        ords, windows = split_ids(ids)
        return NeighbourTable(ords, self.grid.start(windows), sims, self._names)

    def null_queries(self) -> list[NullQuery]:
        """Audio the catalog does not hold, for the matcher to calibrate its confidence on: runs of consecutive
        window embeddings on the catalog grid (noise, speech, excerpts of tracks), each with the track it is
        from, whose hits do not count (None for noise and speech)."""
        return self._null.queries({track_ord: track_id for track_id, track_ord in self._ords.items()})

    def generation_dir(self) -> Path:
        """Where this generation's files lie; derived data (the matcher's calibration) may be cached here."""
        return gen_dir(self.directory, self.generation)

    # ---- writing ------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes into one commit. On an error nothing of the group since its last commit is kept."""
        if self._lock_file is not None:  # nested: the outer transaction commits
            yield
            return
        with writer_lock(self.directory) as lock:
            self._lock_file = lock
            try:
                self.reload_if_changed()
                yield
                self._commit()
            except BaseException:
                if self._dirty:  # drop what was staged, and the shards it wrote (a full disk needs their space back)
                    written = set(self._shards)
                    self._load()
                    remove_shards(self.directory, written - set(self._shards))
                raise
            finally:
                self._lock_file = None

    def add(self, sources: Sequence[str | Path], progress: bool = True, report: AddReport | None = None) -> AddReport:
        """Add audio files, folders (searched recursively) and manifest.csv files (track_id, path, metadata...).

        A file that cannot be read, or whose track id is taken, is reported in `skipped`; audio already in
        the catalog under another id is reported in `duplicates`. Commits as it goes (see COMMIT_WINDOWS).
        A caller that passes `report` still holds what was attempted if the add is interrupted.
        """
        report = AddReport() if report is None else report
        items = expand_sources(sources, report)
        self.add_items(((item, None) for item in items), len(items), report, progress)
        return report

    def add_items(self, items: Iterable[tuple[Source, EmbeddedAudio | None]], total: int, report: AddReport, progress: bool = True,
                  one_generation: bool = False) -> None:
        """Add each source from its file, or from its embeddings where given; results go to `report`, as `add`
        says. `one_generation` commits once at the end (a parallel build's merge) and meanwhile only moves
        staged windows into shards, so memory stays bounded and readers never see half of the build."""
        seen_ids: set[str] = set()
        with self.transaction():
            for item, embedded in tqdm(items, total=total, desc="indexing", unit="file", disable=not progress):
                self._add_file(item, report, seen_ids, embedded)
                if one_generation and self._pending_windows >= COMMIT_WINDOWS:
                    self._flush_pending()
                elif not one_generation and self._pending_windows >= max(COMMIT_WINDOWS, COMMIT_GROWTH * self._index.ntotal):
                    self._commit()

    def _add_file(self, item: Source, report: AddReport, seen_ids: set[str], embedded: EmbeddedAudio | None = None) -> None:
        try:
            check_id(item.track_id, "track id")
        except ValueError as exc:
            report.skipped.append((str(item.path), str(exc)))
            return
        if item.track_id in seen_ids:
            report.skipped.append((str(item.path), f"track id {item.track_id!r} is given twice in this run (twice in a manifest, or "
                                                   f"two files of one name); the first was added; give this one another id"))
            return
        if item.track_id in self._tracks:
            report.skipped.append((str(item.path), f"track id {item.track_id!r} is already in the catalog; remove it first or give another id"))
            return
        try:
            if embedded is not None and embedded.vectors is None:  # a copy its part did not embed: a duplicate without decoding again
                self.check_new(item.track_id, embedded.digest)
            if embedded is None or embedded.vectors is None:
                self.add_audio(item.track_id, load_audio(item.path, self.encoder.sample_rate), item.metadata)
            else:
                self.add_embedded(item.track_id, embedded, item.metadata)
        except AudioError as exc:
            report.skipped.append((str(item.path), str(exc)))
            return
        except _Duplicate as dup:
            report.duplicates.append((str(item.path), dup.track_id))
            return
        except CatalogError as exc:
            report.skipped.append((str(item.path), str(exc)))
            return
        seen_ids.add(item.track_id)
        report.added.append(item.track_id)

    def add_audio(self, track_id: str, audio: np.ndarray, metadata: dict | None = None) -> None:
        """Add one track from samples at encoder.sample_rate (committed now, or with the open transaction)."""
        try:
            check_id(track_id, "track id")
        except ValueError as exc:
            raise CatalogError(str(exc)) from None
        with self.transaction():
            audio = np.asarray(audio, dtype=np.float32)
            digest = content_hash(audio)
            self.check_new(track_id, digest)
            vectors, numbers = self._embed(audio)
            self._stage(track_id, digest, len(audio) / self.encoder.sample_rate, vectors, numbers, metadata)

    def add_embedded(self, track_id: str, audio: EmbeddedAudio, metadata: dict | None = None) -> None:
        """Add one track that was embedded elsewhere with this catalog's encoder and grid, as `add_audio`."""
        with self.transaction():
            self.check_new(track_id, audio.digest)
            self._stage(track_id, audio.digest, audio.seconds, audio.vectors, audio.numbers, metadata)

    def check_new(self, track_id: str, digest: str | None = None) -> None:
        check_new_track(track_id, digest, self._tracks, self._hashes)

    def _stage(self, track_id: str, digest: str, seconds: float, vectors: np.ndarray, numbers: np.ndarray,
               metadata: dict | None) -> None:
        if not len(vectors):
            raise CatalogError(f"track {track_id!r} has no audible window of {self.grid.window_seconds} s; it is too short or silent")
        track_ord = self._next_ord()
        try:
            ids = window_ids(track_ord, numbers)
        except VectorIndexError as exc:
            raise CatalogError(f"track {track_id!r}: {exc}") from exc
        self._pending.append((np.asarray(vectors).astype(np.float16), ids))
        self._pending_windows += len(ids)
        meta = {str(k): str(v) for k, v in (metadata or {}).items() if v is not None and str(v) != ""}
        self._tracks[track_id] = TrackInfo(track_id, seconds, len(ids), digest, meta)
        self._hashes[digest] = track_id
        self._ords[track_id] = track_ord
        self._null.offer(track_ord, digest, null_windows(vectors, numbers, seconds, self.grid))
        self._dirty = True

    def remove(self, track_id: str) -> None:
        """Remove a track (committed now, or with the open transaction)."""
        with self.transaction():
            self.track(track_id)
            track_ord = self._ords.pop(track_id)
            del self._hashes[self._tracks.pop(track_id).content_hash]
            kept = [split_ids(ids)[0] != track_ord for _, ids in self._pending]
            self._pending = [(vectors[k], ids[k]) for (vectors, ids), k in zip(self._pending, kept)]
            if not self._index.remove_track(track_ord):
                self._rebuild = True
            self._dirty = True

    def _next_ord(self) -> int:
        """Ordinals are never reused, so a removed track's rows left in shards can never come back."""
        track_ord = self._config.get("next_ord", 0)
        self._config["next_ord"] = track_ord + 1
        return track_ord

    def _embed(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return embed_audible(self.encoder, self.grid, audio)

    def _factory(self) -> str:
        """The index the staged tracks call for: the one requested, or the auto choice for their size."""
        index_cfg = self._config["index"]
        if index_cfg["requested"] != "auto":
            return index_cfg["factory"]
        return auto_factory(sum(t.windows for t in self._tracks.values()), self.encoder.dim)

    def _flush_pending(self) -> None:
        """Move staged windows into a shard that no generation lists yet (so cleaned up unless committed)
        and into the index, unless the index must be rebuilt at the commit anyway."""
        if not self._pending:
            return
        vectors = np.concatenate([v for v, _ in self._pending])
        ids = np.concatenate([i for _, i in self._pending])
        if len(ids):
            self._shards.append(write_shard(self.directory, self.generation + 1, vectors, ids))
        if self._rebuild or self._factory() != self._index.factory or not self._index.faiss.is_trained:
            self._rebuild = True
        else:
            try:
                self._index.add(vectors, ids)
            except VectorIndexError as exc:
                raise CatalogError(str(exc)) from exc
        self._pending, self._pending_windows = [], 0

    def _commit(self) -> None:
        """Write staged changes as the next generation (shard, index, tracks, null clips), then switch to it."""
        if not self._dirty:
            return
        generation = self.generation + 1
        self._flush_pending()
        self._renew_reversed_nulls()
        factory = self._factory()
        index_cfg = self._config["index"]
        if factory != self._index.factory or self._rebuild or not self._index.faiss.is_trained:
            try:
                self._index = self._rebuilt(factory)
            except VectorIndexError as exc:
                raise CatalogError(str(exc)) from exc
        config = {**self._config, "generation": generation,
                  "index": {**index_cfg, "factory": factory, "search_params": self._index.search_params}}
        write_generation(self.directory, config, self._index, self._tracks_with_ords(), self._shards, self._null)
        self._install(config, self._index, self._tracks, self._ords, self._shards, self._null)

    def _renew_reversed_nulls(self) -> None:
        """Replace the time-reversed null excerpts of a catalog built before NULL_FORMAT 2 by their tracks' own
        middle windows, read from the shards (once, at its first commit since)."""
        tracks = {self._ords[t]: info for t, info in self._tracks.items()}
        wanted = {source for source, was_reversed in zip(self._null.sources, self._null.reversed) if was_reversed and source in tracks}
        if not wanted:
            return
        log.info("renewing the null clips of %d tracks (this catalog was built before they were taken from its tracks)", len(wanted))
        rows: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {source: [] for source in wanted}
        for vectors, ids in self.stored_windows():
            ords, numbers = split_ids(ids)
            for source in wanted.intersection(ords.tolist()):
                mine = ords == source
                rows[source].append((vectors[mine], numbers[mine]))
        for source, parts in rows.items():
            vectors, numbers = np.concatenate([v for v, _ in parts]), np.concatenate([n for _, n in parts])
            order = np.argsort(numbers)
            self._null.renew(source, null_windows(vectors[order], numbers[order], tracks[source].seconds, self.grid))

    def _rebuilt(self, factory: str) -> VectorIndex:
        log.info("building a %s index over %d tracks", factory, len(self._tracks))
        search_params = None if factory != self._index.factory else self._index.search_params
        if not self._ords:
            return VectorIndex.empty(factory, self.encoder.dim, search_params)
        return VectorIndex.build(factory, self.encoder.dim, self.stored_windows, search_params)

    def stored_windows(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(embeddings, window ids) of the catalog's tracks, shard by shard from disk (removed tracks left out)."""
        live = np.fromiter(self._ords.values(), dtype=np.int64)
        for name in self._shards:
            vectors, ids = read_shard(self.directory, name)
            keep = np.isin(split_ids(ids)[0], live)
            yield vectors[keep], ids[keep]

    def _tracks_with_ords(self) -> dict[int, TrackInfo]:
        return {self._ords[t]: info for t, info in self._tracks.items()}


def check_new_track(track_id: str, digest: str | None, tracks: Mapping[str, TrackInfo], hashes: Mapping[str, str]) -> None:
    """Raise CatalogError if the id is one of `tracks`, or if audio of this content_hash is in `hashes` (hash -> id)."""
    if track_id in tracks:
        raise CatalogError(f"track id {track_id!r} is already in the catalog; remove it first or give another id")
    if digest in hashes:
        raise _Duplicate(hashes[digest])


class CatalogExists(CatalogError):
    """Creating a catalog where one is."""


def _check_no_catalog(directory: Path) -> None:
    if (directory / CONFIG_FILE).exists():
        raise CatalogExists(f"{directory} already holds a catalog; open it instead of creating one")


class _Duplicate(CatalogError):
    """The audio is already in the catalog as `track_id`."""

    def __init__(self, track_id: str):
        super().__init__(f"the same audio is already in the catalog as {track_id!r}")
        self.track_id = track_id


def read_settings(directory: Path, encoder_source: str | None = None, hop_seconds: float | None = None,
                  index_factory: str | None = None) -> tuple[Encoder, dict[str, Any]]:
    """The encoder (the one named, else the one recorded) and catalog.json of an existing catalog, checked
    against the settings given, without reading its generation."""
    config = read_config(directory)
    recorded = config["encoder"]["source"]
    remedy = (f"leave out --encoder to add to it with {recorded!r}; to index with {encoder_source!r}, build a new catalog in another "
              f"folder (`airtrace catalog add --catalog NEW-FOLDER --encoder {encoder_source} PATH...`, every track again) and point "
              f"`monitor` or the workers at it") if encoder_source else None
    try:
        encoder = _recorded_encoder(directory, config, load_encoder(encoder_source) if encoder_source else None, remedy)
    except EncoderError as exc:
        raise CatalogError(str(exc)) from exc
    if hop_seconds is not None and abs(hop_seconds - config["hop_seconds"]) > 1e-9:
        raise CatalogError(f"{directory} indexes at a hop of {config['hop_seconds']} s, not {hop_seconds} s; leave out --hop or use another catalog")
    requested = config["index"]["requested"]
    if index_factory is not None and index_factory != requested:
        raise CatalogError(f"{directory} uses index {requested!r}, not {index_factory!r}; leave out the option or use another catalog")
    return encoder, config


def _recorded_encoder(directory: Path, config: dict[str, Any], encoder: Encoder | None,
                      remedy: str | None = None) -> Encoder:
    """`encoder`, or without it the one the catalog records; an encoder with other weights is an error, ending with
    `remedy` (what the caller's user can do about it)."""
    recorded = config["encoder"]
    if encoder is None:
        source = recorded["source"]
        inside = directory / source
        try:
            encoder = load_encoder(inside if inside.is_dir() else source)
        except EncoderError as exc:
            raise CatalogError(f"cannot load the encoder {source!r} that built {directory}: {exc}") from exc
    found = encoder.fingerprint()
    if found != recorded["fingerprint"]:
        raise CatalogError(
            f"{directory} was built by encoder {recorded['source']!r} (weights {recorded['fingerprint']}), but the given "
            f"encoder's weights are {found}; {remedy or 'open it with the encoder that built it, or build a new catalog'}"
        )
    return encoder
