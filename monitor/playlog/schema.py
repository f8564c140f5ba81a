"""The play log's tables: `plays` (one row per play, keyed by play_id, with the catalog metadata copied in),
`unknowns` and `airtime` (one row per event of those kinds), and `kept_unknowns` / `cluster_excerpts`
(the UnknownStore: embeddings of recent unknown stretches, and the excerpt each repeated piece keeps).

The table is declared once here (SQLAlchemy Core) and used by the queries; the migrations under
migrations/versions create and change it in the database, and a test checks that the two agree.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, Column, DateTime, Float, Index, Integer, LargeBinary, MetaData, String, Table,
                        TypeDecorator, case, exists, false)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import ColumnElement

metadata = MetaData()
TOTALS_INCLUDE = ("track_id", "title", "artist", "isrc", "duration", "state", "rejected")

# A play event's state and the row state it leaves; a later state never gives way to an earlier one, so
# events may arrive in any order and any number of times.
ROW_STATE = {"started": "playing", "ended": "ended"}
STATE_RANK = {"playing": 1, "ended": 2}


class UTCDateTime(TypeDecorator):
    """Timestamps in UTC: `timestamptz` in PostgreSQL (what Grafana reads), naive UTC text in SQLite;
    always timezone-aware UTC in Python."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is timezone.utc:
            return value
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


plays = Table(
    "plays",
    metadata,
    Column("play_id", String(36), primary_key=True),
    Column("stream_id", String, nullable=False),
    Column("track_id", String, nullable=False),
    Column("title", String),
    Column("artist", String),
    Column("isrc", String),
    Column("album", String),
    Column("track", JSON, nullable=False),  # all of the catalog's metadata for the track
    Column("started_at", UTCDateTime, nullable=False),  # air time of the play's start
    Column("ended_at", UTCDateTime),
    Column("duration", Float),  # seconds on air
    Column("stream_start", Float, nullable=False),
    Column("stream_end", Float),
    Column("ref_start", Float, nullable=False),  # position in the track heard at the start
    Column("ref_end", Float),
    Column("speed", Float, nullable=False),
    Column("score", Float, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("state", String(9), nullable=False),  # playing or ended
    Column("first_event_id", String(36), nullable=False),  # the earliest state's event seen
    Column("last_event_id", String(36), nullable=False),  # the event whose values the row holds
    Column("rejected", Boolean, nullable=False, server_default=false()),
    Column("rejected_by", String),
    Column("rejected_reason", String),
    Column("rejected_at", UTCDateTime),
    # Every report reads a time range of one station, of one track, or of all stations. A station's
    # range also carries what its totals add up, so PostgreSQL answers them from the index alone.
    Index("ix_plays_stream_started", "stream_id", "started_at", postgresql_include=list(TOTALS_INCLUDE)),
    Index("ix_plays_track_started", "track_id", "started_at"),
    Index("ix_plays_started", "started_at"),
    Index("ix_plays_rejected_at", "rejected_at"),
)


# Content classes of airtime events (encoders.CLASSES, which a test checks; the play log does not load the encoders).
CONTENT_CLASSES = ("music", "speech", "speech_over_music", "silence", "other")
# A repeated piece whose typical (median) airing lasts this long or longer is a song; shorter ones are
# jingles (ads, idents, station sounders: 5-60 s).
SONG_SECONDS = 60.0

unknowns = Table(
    "unknowns",
    metadata,
    Column("unknown_id", String(36), primary_key=True),
    Column("event_id", String(36), nullable=False),
    Column("stream_id", String, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime, nullable=False),
    Column("duration", Float, nullable=False),
    Column("stream_start", Float, nullable=False),
    Column("stream_end", Float, nullable=False),
    Column("music_seconds", Float, nullable=False),
    Column("decided_offset", Float, nullable=False),
    Column("cluster_id", String(36)),  # set by the event, or by a later stretch that matched this one
    Column("matched_unknown_id", String(36)),
    Column("ref_start", Float),
    Column("speed", Float),
    Column("score", Float),
    Column("stream", JSON, nullable=False),
    Column("promoted_play_id", String(36)),  # the play it became when its cluster was promoted into the catalog
    Index("ix_unknowns_stream_started", "stream_id", "started_at"),
    Index("ix_unknowns_started", "started_at"),
    Index("ix_unknowns_cluster_started", "cluster_id", "started_at"),
    Index("ix_unknowns_matched", "matched_unknown_id"),
)

airtime = Table(
    "airtime",
    metadata,
    Column("event_id", String(36), primary_key=True),
    Column("stream_id", String, nullable=False),
    Column("hour", UTCDateTime, nullable=False),  # the UTC hour's start
    Column("first_seq", BigInteger, nullable=False),
    *(Column(name, Float, nullable=False) for name in CONTENT_CLASSES),  # seconds of each class in the hour, from first_seq on
    Column("decided_offset", Float, nullable=False),
    Column("stream", JSON, nullable=False),
    Index("ix_airtime_stream_hour", "stream_id", "hour"),
    Index("ix_airtime_hour", "hour"),
)

# The UnknownStore's stretches: `row` orders arrivals (a process reads the rows above the last it saw).
kept_unknowns = Table(
    "kept_unknowns",
    metadata,
    Column("row", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("unknown_id", String(36), nullable=False, unique=True),
    Column("stream_id", String, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("duration", Float, nullable=False),
    Column("offsets", LargeBinary, nullable=False),  # float64, seconds from the stretch's start
    Column("embeddings", LargeBinary, nullable=False),  # float16, windows x dimensions
    Column("dimensions", Integer, nullable=False),
    Column("cluster_id", String(36)),
    Column("excerpt", LargeBinary),  # Ogg/Opus audio
    Index("ix_kept_unknowns_started", "started_at"),
)

# One excerpt per cluster, saved when a stretch with audio is kept in or joins the cluster: it outlives the
# retention window that drops the stretches themselves.
cluster_excerpts = Table(
    "cluster_excerpts",
    metadata,
    Column("cluster_id", String(36), primary_key=True),
    Column("unknown_id", String(36), nullable=False),  # the stretch the audio is of
    Column("excerpt", LargeBinary, nullable=False),
)


def state_rank(state: ColumnElement[Any]) -> ColumnElement[int]:
    """The rank of a row state in SQL, for the upsert's comparison of the stored and the arriving state."""
    return case(STATE_RANK, value=state, else_=0)


def visible() -> ColumnElement[bool]:
    """Plays that lists and reports show: those no user has rejected."""
    return plays.c.rejected == false()


def still_unknown() -> ColumnElement[bool]:
    """Unknown stretches that are still unknown music: those not promoted into the catalog, and those whose
    promoted play a user has rejected (it is no catalog music then, and the audio still aired)."""
    rejected = exists().where((plays.c.play_id == unknowns.c.promoted_play_id) & ~visible())
    return unknowns.c.promoted_play_id.is_(None) | rejected
