"""The UnknownStore in the play log's database (SQLite or PostgreSQL): the kept unknown stretches that
embedded mode and every worker share, so a repeat is found whichever process hears each airing.

Rows are numbered in the order they commit, so that a process that reads the rows above the last it saw
(`added_since`) misses none: PostgreSQL hands out row numbers under a transaction-scoped lock that is held
until the insert commits, and SQLite writes one transaction at a time anyway. Embeddings are float16
(as kept), offsets float64. A stretch that is kept in or joins a cluster saves its excerpt as the
cluster's (the first one saved stays), so `expire` may drop the stretches and the cluster still has audio.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

import numpy as np
from sqlalchemy import Connection, Engine, and_, delete, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from monitor.playlog.schema import cluster_excerpts, kept_unknowns
from monitor.stages.unknown_store import KeptStretch

ROW_LOCK = 0x61697274  # the advisory lock that orders rows in PostgreSQL ("airt")
IDS_PER_QUERY = 500  # bound parameters per IN list


class SqlUnknownStore:
    """An UnknownStore over a play log's engine (PlayLog.unknown_store() makes one for its database)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._postgresql = engine.dialect.name == "postgresql"

    def keep(self, stretch: KeptStretch) -> None:
        """Keep a stretch; keeping one already kept (a replay) changes nothing."""
        embeddings = np.ascontiguousarray(stretch.embeddings, dtype=np.float16)
        row = {"unknown_id": stretch.unknown_id, "stream_id": stretch.stream_id, "started_at": _utc(stretch.started_at),
               "duration": float(stretch.duration), "offsets": np.ascontiguousarray(stretch.offsets, dtype=np.float64).tobytes(),
               "embeddings": embeddings.tobytes(), "dimensions": embeddings.shape[1] if embeddings.ndim == 2 else 0,
               "cluster_id": stretch.cluster_id, "excerpt": stretch.excerpt}
        with self.engine.begin() as connection:
            if self._postgresql:
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ROW_LOCK})
            insert = (postgresql.insert if self._postgresql else sqlite.insert)(kept_unknowns)
            kept = connection.execute(insert.on_conflict_do_nothing(index_elements=[kept_unknowns.c.unknown_id]), row).rowcount
            if kept and stretch.cluster_id is not None:
                _save_excerpt(connection, stretch.unknown_id)

    def added_since(self, row: int, aired_after: float) -> list[KeptStretch]:
        """Stretches above `row` that started on air after `aired_after`, in row order, without excerpts."""
        columns = [c for c in kept_unknowns.c if c.name != "excerpt"]
        query = (select(*columns).where(and_(kept_unknowns.c.row > row, kept_unknowns.c.started_at > _utc(aired_after)))
                 .order_by(kept_unknowns.c.row))
        with self.engine.connect() as connection:
            return [_stretch(found) for found in connection.execute(query).mappings()]

    def join(self, unknown_id: str, cluster_id: str) -> None:
        """Put a kept stretch that has no cluster yet into `cluster_id`."""
        with self.engine.begin() as connection:
            joined = connection.execute(update(kept_unknowns).where(and_(kept_unknowns.c.unknown_id == unknown_id, kept_unknowns.c.cluster_id.is_(None)))
                                        .values(cluster_id=cluster_id)).rowcount
            if joined:
                _save_excerpt(connection, unknown_id)

    def clusters_of(self, unknown_ids: Iterable[str]) -> dict[str, str]:
        """The cluster of each of these stretches that has one."""
        ids, found = list(dict.fromkeys(unknown_ids)), {}
        with self.engine.connect() as connection:
            for begin in range(0, len(ids), IDS_PER_QUERY):
                query = select(kept_unknowns.c.unknown_id, kept_unknowns.c.cluster_id).where(
                    kept_unknowns.c.unknown_id.in_(ids[begin:begin + IDS_PER_QUERY]) & kept_unknowns.c.cluster_id.is_not(None))
                found.update(dict(connection.execute(query).all()))
        return found

    def expire(self, aired_before: float) -> int:
        """Forget the stretches aired before (their clusters keep their saved excerpts); returns how many."""
        with self.engine.begin() as connection:
            return connection.execute(delete(kept_unknowns).where(kept_unknowns.c.started_at < _utc(aired_before))).rowcount


def _save_excerpt(connection: Connection, unknown_id: str) -> None:
    """The stretch's excerpt becomes its cluster's, unless the cluster has one or the stretch has none."""
    source = select(kept_unknowns.c.cluster_id, kept_unknowns.c.unknown_id, kept_unknowns.c.excerpt).where(and_(
        kept_unknowns.c.unknown_id == unknown_id, kept_unknowns.c.cluster_id.is_not(None), kept_unknowns.c.excerpt.is_not(None),
        ~select(cluster_excerpts.c.cluster_id).where(cluster_excerpts.c.cluster_id == kept_unknowns.c.cluster_id).exists()))
    connection.execute(cluster_excerpts.insert().from_select(["cluster_id", "unknown_id", "excerpt"], source))


def _stretch(row) -> KeptStretch:
    embeddings = np.frombuffer(row["embeddings"], dtype=np.float16)
    return KeptStretch(row["unknown_id"], row["stream_id"], row["started_at"].timestamp(), row["duration"],
                       np.frombuffer(row["offsets"], dtype=np.float64).copy(),
                       embeddings.reshape(-1, row["dimensions"]).copy() if row["dimensions"] else embeddings.reshape(0, 0).copy(),
                       row["cluster_id"], None, row["row"])


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)
