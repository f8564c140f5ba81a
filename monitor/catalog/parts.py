"""Parallel catalog builds, apart from catalog.py so that its generation store keeps one commit point.

A build of PATHS is cut into N parts by position in the expanded source list (position % N), so every
process or pod given the same PATHS computes the same slices. `write_part` embeds one slice into the
catalog folder's staging area and writes no generation:

    parts/<build>/part-0002-of-0008/   entries.json (written last: a folder without it is incomplete),
                                        vectors.f16, numbers.i64 (raw rows, in entry order)

A part records what it was embedded from beyond its build (each file's size and modification time, the
encoder's config and the catalog's tracks, which decide what it skips); `write_part` given the same inputs
again reuses a finished part instead of embedding it again (a `--jobs` rerun after Ctrl-C, a retried pod).

`merge_parts` then feeds every part's tracks, in source order, to Catalog.add_items under the writer
lock and commits them as one generation: the same ids, duplicates, ordinals and null clips as one
`catalog add` of PATHS. <build> is a hash of the source list and N, so parts of another build never mix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from encoders import DEFAULT_ENCODER, AudioError, Encoder, EncoderError, load_audio, load_encoder
from monitor.catalog.catalog import Catalog, EmbeddedAudio, check_hop, check_new_track, content_hash, read_settings
from monitor.catalog.sources import AddReport, Source, expand_sources
from monitor.catalog.store import CONFIG_FILE, PARTS_DIR, CatalogError, TrackInfo, committed_tracks
from monitor.constants import DEFAULT_HOP_SECONDS
from monitor.records import check_id
from monitor.stages.search import embed_audible
from monitor.stages.windows import WindowGrid

log = logging.getLogger(__name__)

PART_FORMAT = 2  # 2: no null.f16 (a track's null windows are taken from its own)
PART_NAME = re.compile(r"\.?part-\d{4}-of-\d{4}(-\w+)?")  # a part, or one a crash left half written
ENTRIES_FILE = "entries.json"
ARRAYS = {"vectors.f16": np.float16, "numbers.i64": np.int64}
_HALF_WRITTEN: set[Path] = set()  # the part this process is writing: a `--jobs` process stopped by SIGTERM removes it


def parse_part(text: str) -> tuple[int, int]:
    """'I/N' (0 <= I < N) as (I, N)."""
    try:
        part, parts = (int(x) for x in text.split("/"))
    except ValueError:
        raise CatalogError(f"part {text!r} is not I/N (for example 0/8: the first of 8 parts)") from None
    if not 0 <= part < parts:
        raise CatalogError(f"part {text!r}: I must be 0 to N-1 (parts are numbered from 0, like a Kubernetes Indexed Job's pods)")
    return part, parts


@dataclass(frozen=True)
class PartPlan:
    """The N slices of one build: which sources each part embeds and where it stages them."""

    directory: Path
    sources: list[Source]
    parts: int

    @property
    def folder(self) -> Path:
        listing = json.dumps([[s.track_id, str(s.path), s.metadata] for s in self.sources] + [self.parts])
        return self.directory / PARTS_DIR / hashlib.sha256(listing.encode()).hexdigest()[:16]

    def part_dir(self, part: int) -> Path:
        return self.folder / f"part-{part:04d}-of-{self.parts:04d}"

    def positions(self, part: int) -> range:
        return range(part, len(self.sources), self.parts)


@dataclass
class PartReport(AddReport):
    reused: bool = False  # a finished part of the same inputs was found: nothing was embedded again


def write_part(directory: str | Path, paths: Sequence[str | Path], part: int, parts: int, encoder_source: str | None = None,
               hop_seconds: float | None = None, progress: bool = True) -> PartReport:
    """Embed part `part` of `parts` of the tracks `paths` name into the catalog folder's staging area, unless
    a finished part of the same inputs is there already.

    Tracks whose id the catalog already holds are skipped and audio it holds is not embedded, as `add`
    does; whether a track is added is decided by `merge_parts`. Reading errors are in the report."""
    directory = Path(directory)
    report = PartReport()
    plan = PartPlan(directory, expand_sources(paths, report), parts)
    held, encoder, grid = _embedder(directory, encoder_source, hop_seconds)
    inputs = _inputs(plan, part, held, encoder)  # before embedding: a file changed meanwhile makes the part stale
    entries = _finished_entries(plan, part, encoder, grid, inputs)
    report.reused = entries is not None
    if entries is None:
        entries = _embed_part(plan, part, held, encoder, grid, inputs, report, progress)
    else:
        report.skipped += [(entry["path"], entry["skipped"]) for entry in entries if "skipped" in entry]
    report.added = [e["track_id"] for e in entries if e.get("windows")]
    return report


def _inputs(plan: PartPlan, part: int, held: dict[str, TrackInfo], encoder: Encoder) -> dict[str, Any]:
    """What a part's entries depend on beyond its build: its files (size, modification time), the encoder's
    config and the catalog's tracks (their ids and audio are skipped)."""
    files = []
    for position in plan.positions(part):
        try:
            status = plan.sources[position].path.stat()
            files.append([status.st_size, status.st_mtime_ns])
        except OSError:
            files.append(None)
    tracks = json.dumps(sorted((track_id, track.content_hash) for track_id, track in held.items()))
    return {"files": files, "encoder": encoder.config.to_json(), "catalog": hashlib.sha256(tracks.encode()).hexdigest()}


def _finished_entries(plan: PartPlan, part: int, encoder: Encoder, grid: WindowGrid, inputs: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The entries of a finished part written from exactly `inputs`, or None (missing, damaged, foreign or stale)."""
    try:
        info = _part_info(plan, part, encoder.fingerprint(), grid.hop_seconds, encoder.dim)
    except CatalogError:
        return None
    return info["entries"] if info is not None and info.get("inputs") == json.loads(json.dumps(inputs)) else None  # as stored: tuples are lists


def _embed_part(plan: PartPlan, part: int, held: dict[str, TrackInfo], encoder: Encoder, grid: WindowGrid, inputs: dict[str, Any],
                report: AddReport, progress: bool) -> list[dict[str, Any]]:
    """Embed the part into a temporary folder and move it in place; a part stopped half-way leaves nothing."""
    target = plan.part_dir(part)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    _HALF_WRITTEN.add(tmp)
    try:
        entries = _write_part_files(plan, part, tmp, held, encoder, grid, inputs, report, progress)
        if target.is_dir():  # an earlier attempt at the same part (a retried pod) from other inputs: ours, replaced whole
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as exc:  # a full disk: the half-written part would hold the space a retry needs
        raise CatalogError(f"cannot write part {part}/{plan.parts} in {target.parent} ({exc}); nothing of it was kept: free some space "
                           f"(or make the folder writable) and run the part again") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # also on Ctrl-C; gone already once moved in place
        _HALF_WRITTEN.discard(tmp)
    return entries


def _write_part_files(plan: PartPlan, part: int, tmp: Path, held: dict[str, TrackInfo], encoder: Encoder, grid: WindowGrid,
                      inputs: dict[str, Any], report: AddReport, progress: bool) -> list[dict[str, Any]]:
    """Embed the part's slice into `tmp`: the embeddings, then entries.json (last: it marks the part complete)."""
    held_hashes = {track.content_hash: track_id for track_id, track in held.items()}
    entries: list[dict[str, Any]] = []
    embedded: set[str] = set()
    files = {name: open(tmp / name, "wb") for name in ARRAYS}
    try:
        for position in tqdm(plan.positions(part), desc=f"part {part}/{plan.parts}", unit="file", disable=not progress, position=part):
            entry = _embed_entry(plan.sources[position], held, held_hashes, encoder, grid, embedded, files)
            if "skipped" in entry:
                report.skipped.append((entry["path"], entry["skipped"]))
            entries.append({"position": position, **entry})
    finally:
        for f in files.values():
            f.close()
    info = {"format": PART_FORMAT, "build": plan.folder.name, "part": part, "parts": plan.parts, "encoder_fingerprint": encoder.fingerprint(),
            "hop_seconds": grid.hop_seconds, "dim": encoder.dim, "inputs": inputs, "entries": entries}
    (tmp / ENTRIES_FILE).write_text(json.dumps(info))
    for path in tmp.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    return entries


def _embedder(directory: Path, encoder_source: str | None, hop_seconds: float | None) -> tuple[dict[str, TrackInfo], Encoder, WindowGrid]:
    """The tracks of the catalog, its encoder and grid (its index is not loaded: a part does not need
    a worker's memory); with no catalog yet, the encoder and grid the merge will create it with."""
    if (directory / CONFIG_FILE).exists():
        encoder, config = read_settings(directory, encoder_source, hop_seconds)
        return committed_tracks(directory), encoder, WindowGrid.for_encoder(encoder, config["hop_seconds"])
    try:
        encoder = load_encoder(encoder_source or DEFAULT_ENCODER)
    except EncoderError as exc:
        raise CatalogError(str(exc)) from exc
    hop = DEFAULT_HOP_SECONDS if hop_seconds is None else hop_seconds
    check_hop(encoder, hop)
    return {}, encoder, WindowGrid.for_encoder(encoder, hop)


def _embed_entry(source: Source, held: dict[str, TrackInfo], held_hashes: dict[str, str], encoder: Encoder, grid: WindowGrid,
                 embedded: set[str], files: dict[str, BinaryIO]) -> dict[str, Any]:
    """One track's entry; its embeddings are appended to `files`. Audio the catalog or this part already
    holds is not embedded ("windows": None): the merge reports it as a duplicate, or embeds it itself if
    the track it copies was not added after all."""
    entry: dict[str, Any] = {"path": str(source.path), "track_id": source.track_id, "metadata": source.metadata}
    try:
        check_id(source.track_id, "track id")
        check_new_track(source.track_id, None, held, held_hashes)
        audio = load_audio(source.path, encoder.sample_rate)
    except (ValueError, CatalogError, AudioError) as exc:
        return {**entry, "skipped": str(exc)}
    digest = content_hash(audio)
    entry.update(digest=digest, seconds=len(audio) / encoder.sample_rate, windows=None)
    if digest in held_hashes or digest in embedded:
        return entry
    embedded.add(digest)
    vectors, numbers = embed_audible(encoder, grid, audio)
    for name, array in zip(ARRAYS, (vectors, numbers)):
        files[name].write(np.ascontiguousarray(array, dtype=ARRAYS[name]).tobytes())
    return {**entry, "windows": len(numbers)}


class PartEntry(NamedTuple):
    position: int  # in the build's source list
    source: Source
    embedded: EmbeddedAudio | None  # None: the part could not read it
    skipped: str | None  # why the part could not read it


def merge_parts(directory: str | Path, paths: Sequence[str | Path], parts: int, encoder_source: str | None = None,
                hop_seconds: float | None = None, index_factory: str | None = None, progress: bool = True,
                report: AddReport | None = None) -> tuple[Catalog, AddReport]:
    """Commit the `parts` parts of `paths` as one new generation of the catalog at `directory` (created with the
    settings given if missing), then remove them from the staging area.

    A missing, incomplete or foreign part is an error that names it, before anything is committed, and before a
    missing catalog is created: one created with settings the parts were not written with (the default encoder,
    where the parts were given another) would refuse the merge that names the right ones."""
    directory = Path(directory)
    report = AddReport() if report is None else report
    plan = PartPlan(directory, expand_sources(paths, report), parts)
    _, encoder, grid = _embedder(directory, encoder_source, hop_seconds)
    loaded = [_read_part(plan, part, encoder.fingerprint(), grid.hop_seconds, encoder.dim) for part in range(parts)]
    missing = [plan.part_dir(part).name for part, entries in enumerate(loaded) if entries is None]
    if missing:
        raise CatalogError(
            f"{len(missing)} of the {parts} parts of this build are missing or incomplete in {plan.folder} "
            f"({', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}); run `airtrace catalog add --part I/{parts}` with the "
            f"same paths for each (or rerun the failed indexes of the Indexed Job), then merge again. Nothing was committed")
    entries = sorted((entry for part in loaded for entry in part or []), key=lambda entry: entry.position)

    def items() -> Iterator[tuple[Source, EmbeddedAudio]]:
        for entry in entries:
            if entry.embedded is None:  # reported in source order, as `add` reports an unreadable file
                report.skipped.append((str(entry.source.path), str(entry.skipped)))
            else:
                yield entry.source, entry.embedded

    catalog = Catalog.open_or_create(directory, encoder_source, hop_seconds, index_factory)
    catalog.add_items(items(), len(entries), report, progress, one_generation=True)
    for path in plan.folder.iterdir():
        if PART_NAME.fullmatch(path.name) and path.is_dir():
            shutil.rmtree(path)
    _remove_if_empty(plan.folder)
    return catalog, report


def _remove_if_empty(build: Path) -> None:
    """Remove a build's folder of parts and the staging area, where nothing is left in them (other builds' parts stay)."""
    for folder in (build, build.parent):
        try:
            folder.rmdir()
        except OSError:
            pass


def _read_part(plan: PartPlan, part: int, fingerprint: str, hop_seconds: float, dim: int) -> list[PartEntry] | None:
    """The entries of one part with their embeddings (read-only memory maps), or None if it is missing."""
    info = _part_info(plan, part, fingerprint, hop_seconds, dim)
    if info is None:
        return None
    folder = plan.part_dir(part)
    arrays = {name: np.memmap(folder / name, dtype=dtype, mode="r") if (folder / name).stat().st_size else np.zeros(0, dtype)
              for name, dtype in ARRAYS.items()}
    return list(_entries(info["entries"], arrays, dim, plan))


def _part_info(plan: PartPlan, part: int, fingerprint: str, hop_seconds: float, dim: int) -> dict[str, Any] | None:
    """A finished part's entries.json, checked against this build and its embedding files; None if it is missing."""
    folder = plan.part_dir(part)
    if not (folder / ENTRIES_FILE).is_file():
        return None
    try:
        info = json.loads((folder / ENTRIES_FILE).read_text())
        positions = [entry["position"] for entry in info["entries"]]
        rows = {name: (folder / name).stat().st_size // np.dtype(dtype).itemsize for name, dtype in ARRAYS.items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CatalogError(f"{folder} cannot be read ({exc}); write it again with `airtrace catalog add --part {part}/{plan.parts}`") from exc
    expected = {"format": PART_FORMAT, "build": plan.folder.name, "part": part, "parts": plan.parts, "encoder_fingerprint": fingerprint,
                "hop_seconds": hop_seconds, "dim": dim}
    wrong = [f"{key} {info.get(key)!r}, not {value!r}" for key, value in expected.items() if info.get(key) != value]
    if not wrong and positions != list(plan.positions(part)):
        wrong.append("its tracks are not this build's slice")
    if not wrong:
        windows = sum(entry.get("windows") or 0 for entry in info["entries"])
        if (rows["vectors.f16"], rows["numbers.i64"]) != (windows * dim, windows):
            wrong.append("its embedding files are truncated")
    if wrong:
        raise CatalogError(f"{folder} does not belong to this build or is damaged ({'; '.join(wrong)}); write it again with "
                           f"`airtrace catalog add --part {part}/{plan.parts}` and the same paths and options, or give the merge the "
                           f"--encoder and --hop the parts were given, then merge again. Nothing was committed")
    return info


def _entries(entries: list[dict[str, Any]], arrays: dict[str, np.ndarray], dim: int, plan: PartPlan) -> Iterator[PartEntry]:
    vectors, numbers = arrays["vectors.f16"].reshape(-1, dim), arrays["numbers.i64"]
    at = 0
    for entry in entries:
        source = plan.sources[entry["position"]]
        if "skipped" in entry:
            yield PartEntry(entry["position"], source, None, entry["skipped"])
            continue
        n = entry["windows"] or 0
        embedded = None if entry["windows"] is None else (vectors[at : at + n], numbers[at : at + n])
        yield PartEntry(entry["position"], source, EmbeddedAudio(entry["digest"], entry["seconds"], *(embedded or (None, None))), None)
        at += n


def build_in_parallel(directory: str | Path, paths: Sequence[str | Path], jobs: int, encoder_source: str | None = None,
                      hop_seconds: float | None = None, index_factory: str | None = None, progress: bool = True,
                      report: AddReport | None = None) -> tuple[Catalog, AddReport]:
    """`catalog add --jobs N`: N processes on this machine write the N parts, then `merge_parts` commits them.

    A KeyboardInterrupt (Ctrl-C, or a signal the caller turns into one) stops the parts at once: each removes
    its half-written files; finished parts stay, for a rerun to reuse."""
    catalog = Catalog.open_or_create(directory, encoder_source, hop_seconds, index_factory)  # created once, before the parts
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_start_worker, initargs=(jobs,)) as pool:
        futures = [pool.submit(write_part, directory, paths, part, jobs, encoder_source, hop_seconds, progress) for part in range(jobs)]
        try:
            outcomes = [_outcome(future) for future in futures]
        except KeyboardInterrupt:
            _stop_workers(pool)
            _remove_if_empty(PartPlan(catalog.directory, expand_sources(paths, AddReport()), jobs).folder)
            raise
    failed = {part: outcome for part, outcome in enumerate(outcomes) if isinstance(outcome, BaseException)}
    if failed:
        raise CatalogError("; ".join(f"part {part}/{jobs} failed: {exc}" for part, exc in failed.items()) + ". Nothing was committed")
    reused = sum(outcome.reused for outcome in outcomes if isinstance(outcome, PartReport))
    if reused:
        log.info("%d of the %d parts were finished by an earlier run from the same files, encoder and catalog; not embedded again", reused, jobs)
    return merge_parts(catalog.directory, paths, jobs, encoder_source, hop_seconds, index_factory, progress, report)


def _outcome(future: Future[PartReport]) -> PartReport | BaseException:
    """A part's report, or what stopped it (reported with its number); a KeyboardInterrupt while waiting is this
    process's own and goes on up."""
    failure = future.exception()
    return failure or future.result()


def _start_worker(jobs: int) -> None:
    """A part's process: stopped by its parent alone, and with its share of the cores.

    It ignores SIGINT (a terminal's Ctrl-C reaches every process of the group: the parent decides for all) and
    exits on SIGTERM, removing its half-written part. Each of `jobs` processes embeds with its share of torch's
    threads (OMP_NUM_THREADS, else the cores), not all of them: oversubscribed threads spin and are slower."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    tqdm.set_lock(threading.RLock())  # not its default, a named semaphore in each process that an exit on SIGTERM would leak
    torch.set_num_threads(max(1, torch.get_num_threads() // jobs))


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    """Remove the half-written part and exit now. Not by raising: PyAV's compiled code drops an exception raised
    while it decodes, and the part went on."""
    for folder in list(_HALF_WRITTEN):
        shutil.rmtree(folder, ignore_errors=True)
    os._exit(128 + signum)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Python 3.14's ProcessPoolExecutor.terminate_workers(), for 3.11: cancel what has not started and SIGTERM the
    processes, then wait until they have removed their half-written parts."""
    processes = list(pool._processes.values())  # noqa: SLF001 - what terminate_workers() reads
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join()
