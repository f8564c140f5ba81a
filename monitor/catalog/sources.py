"""What `catalog add` is given: audio files, folders of them, and manifest.csv files, as tracks to add."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TextIO

from encoders import AUDIO_SUFFIXES, audio_files

MAX_FIELD = 2**31 - 1  # csv.field_size_limit takes a C long, 32 bits on some platforms


@dataclass
class AddReport:
    added: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, track_id already holding that audio)

    def summary(self) -> str:
        return f"added {len(self.added)}, skipped {len(self.skipped)}, duplicates {len(self.duplicates)}"


class Source(NamedTuple):
    """One track to add: its id, its audio file and its metadata (from a manifest)."""

    track_id: str
    path: Path
    metadata: dict[str, str]


def expand_sources(sources: Sequence[str | Path], report: AddReport) -> list[Source]:
    """The tracks the given paths name, in order; paths that name none are reported in `skipped`."""
    return [item for source in sources for item in _expand(Path(source), report)]


def _expand(source: Path, report: AddReport) -> list[Source]:
    """The tracks a path names: a file, the audio files under a folder, or the rows of a manifest.csv."""
    if source.is_dir():
        files = audio_files(source)
        if not files:
            report.skipped.append((str(source), f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in this folder"))
        return [Source(p.relative_to(source).with_suffix("").as_posix(), p, {}) for p in files]
    if source.suffix.lower() == ".csv" and source.is_file():
        return _manifest(source, report)
    if source.is_file():
        return [Source(source.stem, source, {})]
    report.skipped.append((str(source), "no such file or folder"))
    return []


def _manifest(path: Path, report: AddReport) -> list[Source]:
    """Rows of track_id, path (relative to the manifest) and any metadata columns (title, artist, isrc, ...)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets start CSV files with a byte-order mark
            rows = _rows(f, path.stat().st_size)
    except UnicodeDecodeError as exc:  # a spreadsheet's plain "CSV" export is in the system's code page
        report.skipped.append((str(path), f"the manifest is not UTF-8 text ({exc.reason} at byte {exc.start + 1}); "
                                          "save it as UTF-8 (a spreadsheet's \"CSV UTF-8\" export) and add it again"))
        return []
    except (OSError, csv.Error) as exc:
        report.skipped.append((str(path), f"cannot read the manifest: {exc}"))
        return []
    if not rows or "path" not in rows[0]:
        report.skipped.append((str(path), "a manifest needs a header with a `path` column (and track_id, title, artist, ...)"))
        return []
    items = []
    for line, row in enumerate(rows, start=2):
        if not row.get("path"):
            report.skipped.append((f"{path}:{line}", "empty path"))
            continue
        audio = path.parent / row["path"]
        if not audio.exists():
            report.skipped.append((f"{path}:{line}", f"no file {audio}: a manifest's paths are relative to the manifest's folder "
                                                     f"({path.parent}); write them from there, or absolute"))
            continue
        if "track_id" in row and not row["track_id"]:
            report.skipped.append((f"{path}:{line}", "empty track_id; give one, or leave out the track_id column to name tracks after their files"))
            continue
        track_id = row["track_id"] if "track_id" in row else Path(row["path"]).with_suffix("").as_posix()
        metadata = {k: v for k, v in row.items() if k not in ("track_id", "path") and k and v}
        items.append(Source(track_id, audio, metadata))
    return items


def _rows(f: TextIO, size: int) -> list[dict[str, str]]:
    """The rows of a manifest, whatever the size of a cell (a long description or lyrics is legal CSV; csv refuses
    fields over 128 KB by default, which skipped the whole manifest): no cell is larger than the file."""
    previous = csv.field_size_limit(max(csv.field_size_limit(), min(size, MAX_FIELD)))
    try:
        return list(csv.DictReader(f))
    finally:
        csv.field_size_limit(previous)
