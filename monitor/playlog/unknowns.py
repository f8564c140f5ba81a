"""Unknown stretches and the clusters of repeated ones, as the play log lists, shows and exports them.

A cluster is the unknown stretches that share a cluster_id: the same piece of music, not in the catalog,
aired more than once. Its kind follows its typical (median) airing: a song from SONG_SECONDS up, a jingle
(ads, idents) below. Lists and reports count the occurrences in the asked range and on the asked stream;
the rows are plain values ready for `write_rows`, as in monitor.playlog.queries.
"""

from __future__ import annotations

import io
import statistics
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, select

from monitor.playlog.queries import Rows, TimeRange, fetch_rows, iso_time, write_rows
from monitor.playlog.schema import SONG_SECONDS, cluster_excerpts, still_unknown, unknowns
from monitor.playlog.store import PlayLog, PlayLogError

KINDS = ("jingle", "song")
CLUSTER_COLUMNS = ["cluster_id", "kind", "plays", "first_seen", "last_seen", "streams", "typical_duration", "excerpt"]
STRETCH_COLUMNS = ["unknown_id", "stream_id", "started_at", "ended_at", "duration", "music_seconds", "cluster_id", "matched_unknown_id",
                   "ref_start", "speed", "score"]
OCCURRENCE_COLUMNS = ["cluster_id", "unknown_id", "stream_id", "started_at", "ended_at", "duration", "speed", "ref_start", "matched_unknown_id",
                      "score"]


def cluster_kind(typical_duration: float) -> str:
    return "song" if typical_duration >= SONG_SECONDS else "jingle"


@dataclass(frozen=True)
class ClusterFilter:
    """Which clusters to list: occurrences in `span` on `stream` count; then kind and plays select."""

    span: TimeRange = TimeRange()
    stream: str | None = None
    kind: str | None = None
    min_plays: int = 1

    def airings(self) -> ColumnElement[bool]:
        """The airings that count: the clustered stretches of `unknown_music`."""
        return unknowns.c.cluster_id.is_not(None) & unknown_music(self.span, self.stream)


def unknown_music(span: TimeRange, stream: str | None) -> ColumnElement[bool]:
    """Stretches in the range and on the stream that are still unknown music: those promoted into the catalog
    are plays now, unless a user rejected the play (`unknowns show` has them all)."""
    condition = still_unknown() & span.where(unknowns.c.started_at)
    return condition if stream is None else condition & (unknowns.c.stream_id == stream)


def list_clusters(log: PlayLog, chosen: ClusterFilter = ClusterFilter()) -> Rows:
    """Clusters, most played first: plays, first and last airing, streams, typical duration, whether an excerpt is
    saved, over the airings `chosen` counts."""
    rows = [row for row in _summaries(log, chosen.airings(), chosen.span.zone) if row["plays"] >= chosen.min_plays and chosen.kind in (None, row["kind"])]
    return CLUSTER_COLUMNS, sorted(rows, key=lambda row: (-row["plays"], row["first_seen"], row["cluster_id"]))


def _summaries(log: PlayLog, condition: ColumnElement[bool], zone: tzinfo | None = None) -> list[dict[str, Any]]:
    """One summary per cluster of the stretches that meet `condition`, times in `zone` (the median is taken here:
    SQLite has none)."""
    query = select(unknowns.c.cluster_id, unknowns.c.stream_id, unknowns.c.started_at, unknowns.c.duration).where(condition)
    airings: dict[str, list[Any]] = {}
    with log.connect() as connection:
        for row in connection.execute(query.order_by(unknowns.c.cluster_id, unknowns.c.started_at)):
            airings.setdefault(row.cluster_id, []).append(row)
        saved = set(connection.execute(select(cluster_excerpts.c.cluster_id)).scalars())  # one small row per cluster
    summaries = []
    for cluster, found in airings.items():
        typical = statistics.median(row.duration for row in found)
        summaries.append({"cluster_id": cluster, "kind": cluster_kind(typical), "plays": len(found), "first_seen": iso_time(found[0].started_at, zone),
                          "last_seen": iso_time(found[-1].started_at, zone), "streams": ",".join(sorted({row.stream_id for row in found})),
                          "typical_duration": round(typical, 3), "excerpt": cluster in saved})
    return summaries


def list_stretches(log: PlayLog, span: TimeRange = TimeRange(), stream: str | None = None) -> Rows:
    """Every stretch of unknown music, clustered or not, oldest first."""
    query = (select(*(unknowns.c[name] for name in STRETCH_COLUMNS)).where(unknown_music(span, stream))
             .order_by(unknowns.c.started_at, unknowns.c.unknown_id))
    return STRETCH_COLUMNS, fetch_rows(log, query, span.zone)


def occurrences(log: PlayLog, condition: ColumnElement[bool], zone: tzinfo | None = None) -> Rows:
    """The airings that meet `condition`, by cluster and air time, times in `zone`."""
    query = (select(*(unknowns.c[name] for name in OCCURRENCE_COLUMNS)).where(condition)
             .order_by(unknowns.c.cluster_id, unknowns.c.started_at, unknowns.c.unknown_id))
    return OCCURRENCE_COLUMNS, fetch_rows(log, query, zone)


def show_cluster(log: PlayLog, cluster_id: str, zone: tzinfo | None = None) -> tuple[dict[str, Any], Rows]:
    """A cluster's summary over all its airings, and each airing, times in `zone`."""
    cluster = parse_cluster_id(cluster_id)
    summaries = _summaries(log, unknowns.c.cluster_id == cluster, zone)
    if not summaries:
        raise PlayLogError(f"no cluster {cluster} in the play log at {log.where}; `airtrace unknowns list` shows the cluster ids")
    return summaries[0], occurrences(log, unknowns.c.cluster_id == cluster, zone)


def parse_cluster_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise PlayLogError(f"{text!r} is not a cluster id (a UUID such as 0f9e...-...); `airtrace unknowns list` shows the cluster ids") from None


def export(log: PlayLog, directory: Path, fmt: str, chosen: ClusterFilter = ClusterFilter(), overwrite: bool = False) -> list[Path]:
    """Write clusters.{fmt}, occurrences.{fmt} and each saved excerpt as CLUSTER_ID.ogg into `directory`;
    returns the files written. Refuses, before writing anything, to replace a file unless `overwrite`."""
    columns, clusters = list_clusters(log, chosen)
    ids = [row["cluster_id"] for row in clusters]
    with log.connect() as connection:
        excerpts = dict(connection.execute(select(cluster_excerpts.c.cluster_id, cluster_excerpts.c.excerpt)
                                           .where(cluster_excerpts.c.cluster_id.in_(ids))).all()) if ids else {}
    tables = {directory / f"clusters.{fmt}": (columns, clusters),
              directory / f"occurrences.{fmt}": occurrences(log, chosen.airings() & unknowns.c.cluster_id.in_(ids), chosen.span.zone)}
    files = {path: _table_text(*table, fmt).encode() for path, table in tables.items()}
    files |= {directory / f"{cluster}.ogg": excerpts[cluster] for cluster in ids if cluster in excerpts}
    existing = [str(path) for path in files if path.exists()]
    if existing and not overwrite:
        raise PlayLogError(f"{len(existing)} file(s) already exist, e.g. {existing[0]}; export into another directory, or give --overwrite to replace them")
    _write_whole(directory, files)
    return list(files)


def _table_text(columns: Sequence[str], rows: Sequence[dict[str, Any]], fmt: str) -> str:
    out = io.StringIO(newline="")
    write_rows(columns, rows, fmt, out)
    return out.getvalue()


def _write_whole(directory: Path, files: dict[Path, bytes]) -> None:
    """Write the files, or, when that fails or is interrupted, none of those not there before: a half export
    reads as a whole one, and its files would stand in the way of the next try."""
    created: list[Path] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for path, data in files.items():
            if not path.exists():
                created.append(path)
            path.write_bytes(data)
        created = []
    except OSError as exc:
        raise PlayLogError(f"cannot write the export into {directory}: {exc.strerror or exc} ({exc.filename}); "
                           "give --out a directory you can write to, with room for it") from None
    finally:
        for path in created:
            path.unlink(missing_ok=True)
