"""A catalog's files and their one commit point: the generation store.

    catalog.json   format version, encoder (where to load it + weights fingerprint), hop, index, generation
    gen-000007/    the current generation: index.faiss, tracks.sqlite, null.npz
    shards/        immutable float16 embeddings with their window ids, to rebuild or retrain the index
    catalog.lock   held by the one writer at a time

Every write builds a complete new generation directory and then replaces catalog.json, the one commit
point: a crash at any moment leaves the previous generation whole, and readers see one or the other.
Only this module writes in a catalog's directory, and it removes only names it writes itself.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from monitor.catalog.index import VectorIndex

FORMAT_VERSION = 1
CONFIG_FILE = "catalog.json"
# Every name a catalog writes in its directory; cleaning up touches these and nothing else.
GENERATION_NAME = re.compile(r"gen-\d{6}")
GENERATION_TMP_NAME = re.compile(r"\.gen-\d{6}-\w+")
SHARD_NAME = re.compile(r"\.?\d{6}-[0-9a-f]{8}\.npz(\.tmp)?")
CREATE_LEFTOVERS = {"catalog.lock", f".{CONFIG_FILE}.tmp"}  # what a create interrupted before its commit leaves
PARTS_DIR = "parts"  # a parallel build's staging area (catalog.parts): may precede the catalog its merge creates


class CatalogError(Exception):
    """A catalog that cannot be opened, written or searched; the message says what to do."""


@dataclass(frozen=True)
class TrackInfo:
    track_id: str
    seconds: float
    windows: int  # indexed windows (silent ones are not indexed)
    content_hash: str
    metadata: dict[str, str]


class Saves(Protocol):
    """What a generation stores beside its index and tracks (the null clips)."""

    def save(self, path: Path) -> None: ...


def gen_dir(directory: Path, generation: int) -> Path:
    return directory / f"gen-{generation:06d}"


def config_signature(directory: Path) -> tuple[int, int, int]:
    try:
        st = os.stat(directory / CONFIG_FILE)
    except FileNotFoundError:
        raise CatalogError(f"{directory}/{CONFIG_FILE} has gone; the catalog was deleted") from None
    return st.st_ino, st.st_mtime_ns, st.st_size


def check_new_catalog_folder(directory: Path) -> None:
    """A new catalog goes into a missing or empty folder. Anything else is the user's (never overwritten or
    cleaned up), or a catalog whose catalog.json was lost (never silently reset to an empty one)."""
    if directory.exists() and not directory.is_dir():
        raise CatalogError(f"{directory} is a file, not a catalog folder; give a new or empty folder")
    if not directory.is_dir():
        return
    names = sorted(p.name for p in directory.iterdir()
                   if p.name not in CREATE_LEFTOVERS | {PARTS_DIR} and not GENERATION_TMP_NAME.fullmatch(p.name))
    remains = [n for n in names if GENERATION_NAME.fullmatch(n)] + [n for n in names if n == "shards" and any((directory / n).glob("*.npz"))]
    if remains:
        raise CatalogError(
            f"{directory} holds catalog data ({', '.join(remains[-3:])}) but no {CONFIG_FILE}, the file that says which generation is "
            f"current and which encoder built it; nothing was changed. Restore {CONFIG_FILE} from the backup or copy the catalog "
            f"came from, or move the folder aside and build a new catalog with `airtrace catalog add`")
    if names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise CatalogError(f"{directory} is not empty and is not a catalog (it holds {shown}); give a new or empty folder for a new catalog")


def committed_tracks(directory: Path) -> dict[str, TrackInfo]:
    """The current generation's tracks, read without its index: what a parallel build's parts skip."""
    return read_tracks(gen_dir(directory, read_config(directory)["generation"]) / "tracks.sqlite")[0]


# The fields of catalog.json a reader relies on, and the types they must have.
CONFIG_FIELDS: dict[str, tuple[type, ...]] = {"encoder": (dict,), "hop_seconds": (int, float), "index": (dict,), "generation": (int,)}
ENCODER_FIELDS: dict[str, tuple[type, ...]] = {"source": (str,), "fingerprint": (str,)}
INDEX_FIELDS: dict[str, tuple[type, ...]] = {"requested": (str,), "factory": (str,)}


def check_fields(path: Path, where: str, values: dict[str, Any], fields: dict[str, tuple[type, ...]]) -> None:
    for name, types in fields.items():
        value = values.get(name)
        if not isinstance(value, types) or isinstance(value, bool):
            raise CatalogError(
                f"{path}: {where}{name!r} is {'missing' if name not in values else f'{value!r}, not {types[0].__name__}'}; the catalog's "
                f"metadata is damaged: restore {CONFIG_FILE} from a backup, or build the catalog again with `airtrace catalog add`")


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        check_new_catalog_folder(directory)  # a folder of catalog data or of other files is named as such
        raise CatalogError(f"no catalog at {directory} ({CONFIG_FILE} missing); create one with `airtrace catalog add --catalog {directory} PATH...`")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path} is not valid JSON ({exc}); the catalog is corrupt") from exc
    version = config.get("format_version") if isinstance(config, dict) else None
    if version != FORMAT_VERSION:
        raise CatalogError(f"{path}: catalog format {version!r} is not {FORMAT_VERSION}, which this airtrace reads; rebuild the catalog or use a matching airtrace")
    check_fields(path, "", config, CONFIG_FIELDS)
    check_fields(path, "encoder.", config["encoder"], ENCODER_FIELDS)
    check_fields(path, "index.", config["index"], INDEX_FIELDS)
    return config


@contextmanager
def writer_lock(directory: Path) -> Iterator[Any]:
    with open(directory / "catalog.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield lock
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_shard(directory: Path, generation: int, vectors: np.ndarray, ids: np.ndarray) -> str:
    shards = directory / "shards"
    shards.mkdir(exist_ok=True)
    name = f"{generation:06d}-{os.urandom(4).hex()}.npz"
    tmp = shards / f".{name}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, vectors=vectors.astype(np.float16), ids=ids.astype(np.int64))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, shards / name)
    return name


def remove_shards(directory: Path, names: set[str]) -> None:
    """Remove shards no generation lists (those of a transaction that failed)."""
    for name in names:
        (directory / "shards" / name).unlink(missing_ok=True)


def read_shard(directory: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    path = directory / "shards" / name
    try:
        with np.load(path) as data:
            return data["vectors"].astype(np.float32), data["ids"]
    except (OSError, ValueError, KeyError) as exc:
        raise CatalogError(f"shard {path} cannot be read ({exc}); the catalog cannot be rebuilt without it") from exc


def write_tracks(path: Path, tracks: dict[int, TrackInfo], shards: list[str]) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE tracks (ord INTEGER PRIMARY KEY, track_id TEXT UNIQUE NOT NULL, seconds REAL NOT NULL,"
            " windows INTEGER NOT NULL, content_hash TEXT NOT NULL, metadata TEXT NOT NULL);"
            "CREATE TABLE shards (name TEXT PRIMARY KEY);"
        )
        db.executemany(
            "INSERT INTO tracks VALUES (?, ?, ?, ?, ?, ?)",
            [(o, t.track_id, t.seconds, t.windows, t.content_hash, json.dumps(t.metadata)) for o, t in tracks.items()],
        )
        db.executemany("INSERT INTO shards VALUES (?)", [(s,) for s in shards])
    db.close()


def read_tracks(path: Path) -> tuple[dict[str, TrackInfo], dict[str, int], list[str]]:
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT ord, track_id, seconds, windows, content_hash, metadata FROM tracks").fetchall()
            shards = [name for (name,) in db.execute("SELECT name FROM shards ORDER BY name")]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise CatalogError(f"{path} cannot be read ({exc}); the catalog is corrupt, rebuild it") from exc
    tracks = {tid: TrackInfo(tid, seconds, windows, digest, json.loads(meta)) for _, tid, seconds, windows, digest, meta in rows}
    return tracks, {tid: o for o, tid, *_ in rows}, shards


def write_generation(directory: Path, config: dict[str, Any], index: VectorIndex, tracks: dict[int, TrackInfo],
                      shards: list[str], null: Saves) -> None:
    """Write gen-NNNNNN completely, then point catalog.json at it (the commit), then drop stale files."""
    generation = config["generation"]
    target = gen_dir(directory, generation)
    tmp = Path(tempfile.mkdtemp(prefix=f".gen-{generation:06d}-", dir=directory))
    try:
        index.save(tmp / "index.faiss")
        write_tracks(tmp / "tracks.sqlite", tracks, shards)
        null.save(tmp / "null.npz")
        for path in tmp.iterdir():
            fsync(path)
        if target.exists():  # left by a crash after the rename but before the commit: never current
            shutil.rmtree(target)
        os.replace(tmp, target)
        config_tmp = directory / f".{CONFIG_FILE}.tmp"
        config_tmp.write_text(json.dumps(config, indent=2))
        fsync(config_tmp)
        os.replace(config_tmp, directory / CONFIG_FILE)
    except (OSError, RuntimeError, sqlite3.Error) as exc:  # a full disk (faiss reports it as a RuntimeError), a read-only folder
        for debris in (tmp, target):  # never current: catalog.json was not replaced
            shutil.rmtree(debris, ignore_errors=True)
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise CatalogError(f"cannot write generation {generation} of {directory} ({reason}); the catalog is as its last commit left it: "
                           f"free some space (or make the folder writable) and run the command again") from exc
    fsync(directory)
    remove_stale(directory, generation, set(shards))


def remove_stale(directory: Path, current: int, shards: set[str]) -> None:
    """Keep the current and the previous generation (a reader may still be loading it); drop the rest."""
    keep = {gen_dir(directory, current).name, gen_dir(directory, current - 1).name}
    for path in directory.iterdir():
        ours = GENERATION_NAME.fullmatch(path.name) or GENERATION_TMP_NAME.fullmatch(path.name)
        if ours and path.is_dir() and path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)
    for path in (directory / "shards").glob("*"):
        if SHARD_NAME.fullmatch(path.name) and path.name not in shards:
            path.unlink(missing_ok=True)
