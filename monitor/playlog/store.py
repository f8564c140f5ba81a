"""Where the play log lives and how events get into it: an idempotent upsert keyed by play_id.

A location is a SQLite file path or a PostgreSQL URL (postgresql://user:pass@host/db, run through psycopg 3).
An event's row is a function of the set of events seen for the play, not of their order or count: the
row holds the values of the latest state seen (playing < ended), `first_event_id` is the id
of the earliest state seen, and an event of the state already stored changes nothing. So a replayed,
duplicated or reordered stream of events (Kafka's at-least-once delivery) leaves the same rows as one
clean pass, and a user's rejection survives any replay.

Beside plays the log stores the kinds of schema version 2: an `unknown` event is one row per stretch
(a duplicate changes nothing but a cluster the row lacked), and when it names the earlier stretch it
repeats, that row joins its cluster too, whichever of the two arrives first; an `airtime` event is one
row, written once. A stretch and the play `airtrace unknowns promote` made of it are linked again whichever
of the two an import brings first. An event of a kind or version this code does not know is skipped and
reported (UnsupportedEvent), never stored half-understood, and the rest of its batch is stored.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, and_, bindparam, case, create_engine, event, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError, DBAPIError, OperationalError

from monitor.events import KINDS_SCHEMA_VERSION, PROMOTED_FROM, SCHEMA_VERSION, from_iso, promoted_play_id
from monitor.playlog.schema import CONTENT_CLASSES, ROW_STATE, airtime, plays, state_rank, unknowns
from monitor.records import check_id

if TYPE_CHECKING:
    from monitor.playlog.unknown_store import SqlUnknownStore

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# Columns an event sets; the rejection columns belong to users and no event touches them.
EVENT_COLUMNS = tuple(c.name for c in plays.columns if c.name not in ("play_id", "first_event_id") and not c.name.startswith("rejected"))


class PlayLogError(RuntimeError):
    """The play log cannot be used as asked; the message says what to do."""


class PlayLogUnavailable(PlayLogError):
    """The database cannot be reached (down, wrong address or credentials); retrying may help."""


class MalformedEvent(ValueError):
    """An event the log cannot store (a missing or mistyped field)."""


class MalformedPlay(MalformedEvent):
    """A play event the log cannot store (a missing or mistyped field, an unknown state)."""


class UnsupportedEvent(ValueError):
    """An event of a kind or schema version this version of airtrace does not know: skipped, not stored."""


# What `event_row` tells apart; a row is written to the table of its kind.
KINDS = ("play", "unknown", "airtime")
# Kinds the log does not keep: a provisional play enters it with its started event, so a withdrawn one never did.
NOT_KEPT = ("provisional", "withdrawn")
EventRow = tuple[str, dict[str, Any]]


def default_location() -> Path:
    """The SQLite file embedded mode writes when no events file or --playlog says otherwise."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "airtrace" / "plays.sqlite"


def beside(events_file: str | Path) -> Path:
    """The play log that goes with an events file: plays.jsonl -> plays.sqlite."""
    return Path(events_file).with_suffix(".sqlite")


def database_url(location: str | Path) -> str:
    """SQLAlchemy's URL for a location: PostgreSQL URLs get the psycopg 3 driver, a path is a SQLite file, and any
    other database is an error (only SQLite and PostgreSQL are migrated and tested; the message never shows the
    URL, which may hold a password)."""
    text = str(location)
    for scheme in ("postgresql://", "postgres://"):
        if text.startswith(scheme):
            return "postgresql+psycopg://" + text[len(scheme):]
    if "://" in text:
        if not text.startswith(("sqlite://", "postgresql+psycopg://")):
            raise PlayLogError(f"a play log in {text.split('://')[0]}:// is not supported: give --playlog a SQLite file or a "
                               "postgresql://user:password@host/db URL")
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


class PlayLog:
    """One play log database; `open` checks that it is reachable and migrated before anything is written."""

    def __init__(self, location: str | Path):
        self.url = make_url(database_url(location))
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(self.url)
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            # Sessions in UTC: times come back in UTC already, with nothing to convert per row.
            self.engine = create_engine(self.url, pool_pre_ping=True, connect_args={"connect_timeout": 5, "options": "-c timezone=UTC"})

    @property
    def where(self) -> str:
        """The location with any password hidden, for messages."""
        return self.url.database if self.is_sqlite else self.url.render_as_string(hide_password=True)

    @classmethod
    def open(cls, location: str | Path, migrate: bool = False) -> "PlayLog":
        """A reachable play log at the newest schema: migrated here when `migrate`, else it must be already."""
        if not migrate and "://" not in str(location) and not Path(location).expanduser().is_file():
            raise PlayLogError(f"no play log at {location}: nothing has been recorded there; give --playlog the file airtrace monitor writes")
        playlog = cls(location)
        try:
            if migrate:
                playlog.migrate()
            elif (current := playlog.revision()) != head_revision():
                raise PlayLogError(f"the play log at {playlog.where} is at schema revision {current or 'none'}, not {head_revision()}; "
                                   f"run `airtrace plays migrate --playlog ...` first")
        except OperationalError as exc:
            playlog.close()
            raise playlog.unavailable(exc) from exc
        except DatabaseError as exc:  # SQLite: "file is not a database" (an events file given as the play log)
            playlog.close()
            raise PlayLogError(f"{playlog.where} is not a play log ({str(exc.orig).strip()}); give --playlog the SQLite file airtrace "
                               f"monitor writes (plays.sqlite) or a postgresql:// URL; an events file is added with `airtrace plays import`") from exc
        return playlog

    def unavailable(self, exc: DBAPIError) -> PlayLogUnavailable:
        return PlayLogUnavailable(f"cannot use the play log at {self.where}: {str(exc.orig).strip()}; "
                                  f"check --playlog (AIRTRACE_PLAYLOG), its credentials, and that the database runs")

    def close(self) -> None:
        self.engine.dispose()

    def revision(self) -> str | None:
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def migrate(self) -> str:
        """Apply the migrations this version of airtrace has not yet applied; returns the revision now in place."""
        with self.engine.begin() as connection:
            command.upgrade(_alembic_config(connection), "head")
        return head_revision()

    def apply(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Store events given as their JSON objects (PlayEvent.to_json(), UnknownEvent.to_json(), ...); returns
        how many were stored. An event of a kind or version this code does not know is logged and skipped;
        MalformedEvent (MalformedPlay for a play) is raised, before writing anything, if one cannot be stored."""
        rows = []
        for data in events:
            try:
                row = event_row(data)
            except UnsupportedEvent as exc:
                log.warning("not stored in the play log: %s", exc)
                continue
            if row is not None:
                rows.append(row)
        self.write(rows)
        return len(rows)

    def write(self, rows: Sequence[EventRow]) -> None:
        """Write rows from `event_row` in one transaction (all or none)."""
        by_kind: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
        for kind, row in rows:
            by_kind[kind].append(row)
        dialect = self.engine.dialect.name
        with self.engine.begin() as connection:
            for round_ in _rounds(by_kind["play"]):
                connection.execute(_upsert(dialect), round_)
            if by_kind["unknown"]:
                for round_ in _rounds(by_kind["unknown"], key="unknown_id"):
                    connection.execute(_unknowns_upsert(dialect), round_)
                _join_matched(connection, by_kind["unknown"])
            _link_promoted(connection, by_kind["play"], by_kind["unknown"])
            if by_kind["airtime"]:
                connection.execute(_insert(dialect, airtime).on_conflict_do_nothing(index_elements=[airtime.c.event_id]), by_kind["airtime"])

    def reject(self, play_id: str, reason: str, by: str) -> None:
        """Mark a play wrong: lists and reports leave it out until it is restored."""
        self._set_rejection(play_id, rejected=True, rejected_reason=reason, rejected_by=by, rejected_at=datetime.now(timezone.utc))

    def restore(self, play_id: str) -> None:
        self._set_rejection(play_id, rejected=False, rejected_reason=None, rejected_by=None, rejected_at=None)

    def _set_rejection(self, play_id: str, **values: Any) -> None:
        with self.engine.begin() as connection:
            if connection.execute(update(plays).where(plays.c.play_id == play_id).values(**values)).rowcount == 0:
                raise PlayLogError(f"no play {play_id} in the play log at {self.where}; `airtrace plays list --all` shows the play ids")

    def connect(self) -> Connection:
        return self.engine.connect()

    def unknown_store(self) -> "SqlUnknownStore":
        """The kept unknown stretches in this play log's database, shared by every process that tracks streams."""
        from monitor.playlog.unknown_store import SqlUnknownStore

        return SqlUnknownStore(self.engine)


def import_lines(playlog: PlayLog, lines: Iterable[str | bytes], batch: int = 1000) -> tuple[Counter[str], list[tuple[int, str]]]:
    """Store the events of JSON lines (an events file, as text or as bytes), a batch per transaction; returns how
    many of each kind were stored and (line number, reason) for each line left out: not UTF-8, not an event,
    malformed, or of a kind or version this code does not know."""
    rows: list[EventRow] = []
    skipped: list[tuple[int, str]] = []
    stored: Counter[str] = Counter()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = event_row(json.loads(line))
        except UnicodeDecodeError as exc:
            skipped.append((number, f"not UTF-8 text ({exc.reason} at byte {exc.start + 1} of the line)"))
            continue
        except ValueError as exc:  # MalformedEvent, UnsupportedEvent and JSON errors
            skipped.append((number, str(exc)))
            continue
        except RecursionError:
            skipped.append((number, "nested deeper than any event is"))
            continue
        if row is not None:
            rows.append(row)
        if len(rows) == batch:
            playlog.write(rows)
            stored.update(kind for kind, _ in rows)
            rows = []
    playlog.write(rows)
    stored.update(kind for kind, _ in rows)
    return stored, skipped


def head_revision() -> str:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets `airtrace plays` read while a monitor writes; the busy timeout waits out the other's write."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _insert(dialect: str, table: Any) -> Any:
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def _upsert(dialect: str):
    """INSERT ... ON CONFLICT (play_id) DO UPDATE, taking the values of whichever state ranks higher."""
    statement = _insert(dialect, plays)
    new, old = statement.excluded, plays.c
    newer = state_rank(new.state) > state_rank(old.state)
    values = {name: _pick(newer, new[name], old[name]) for name in EVENT_COLUMNS}
    values["first_event_id"] = _pick(state_rank(new.state) < state_rank(old.state), new.first_event_id, old.first_event_id)
    return statement.on_conflict_do_update(index_elements=[plays.c.play_id], set_=values,
                                           where=state_rank(new.state) != state_rank(old.state))


def _unknowns_upsert(dialect: str):
    """A stretch's row is written once; a duplicate only gives it a cluster it lacks (the smaller id if two
    disagree, so the order of arrival does not matter)."""
    statement = _insert(dialect, unknowns)
    new, old = statement.excluded.cluster_id, unknowns.c.cluster_id
    merged = case((old.is_(None), new), (new.is_(None), old), (new < old, new), else_=old)
    return statement.on_conflict_do_update(index_elements=[unknowns.c.unknown_id], set_={"cluster_id": merged},
                                           where=new.is_not(None) & (old.is_(None) | (new < old)))


def _join_matched(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """A stretch that repeats an earlier one puts the earlier one into its cluster too, if it has none:
    for the rows just written that name an earlier stretch, and for those that an already stored later one named."""
    earlier = [{"target": row["matched_unknown_id"], "cluster": row["cluster_id"]} for row in rows
               if row["matched_unknown_id"] is not None and row["cluster_id"] is not None]
    if earlier:
        connection.execute(update(unknowns).where(and_(unknowns.c.unknown_id == bindparam("target"), unknowns.c.cluster_id.is_(None)))
                           .values(cluster_id=bindparam("cluster")), earlier)
    later = unknowns.alias("later")
    from_later = (select(func.min(later.c.cluster_id)).where(and_(later.c.matched_unknown_id == unknowns.c.unknown_id, later.c.cluster_id.is_not(None)))
                  .scalar_subquery())
    unclustered = [{"target": row["unknown_id"]} for row in rows if row["cluster_id"] is None]
    if unclustered:
        connection.execute(update(unknowns).where(and_(unknowns.c.unknown_id == bindparam("target"), unknowns.c.cluster_id.is_(None)))
                           .values(cluster_id=func.coalesce(from_later, unknowns.c.cluster_id)), unclustered)


def _link_promoted(connection: Connection, play_rows: Sequence[dict[str, Any]], unknown_rows: Sequence[dict[str, Any]]) -> None:
    """A stretch names the play `unknowns promote` made of it, as the promotion had it named, whichever of the two
    an import brings first: that play's id is promoted_play_id(stretch, track), on the stretch's stream at its start."""
    links = []
    for row in play_rows:
        if PROMOTED_FROM in row["track"]:
            stretches = connection.execute(select(unknowns.c.unknown_id).where(_starting_with(unknowns, row))).scalars()
            links += [{"target": stretch, "play": row["play_id"]} for stretch in stretches
                      if promoted_play_id(stretch, row["track_id"]) == row["play_id"]]
    for row in unknown_rows:
        played = connection.execute(select(plays.c.play_id, plays.c.track_id).where(_starting_with(plays, row)))
        links += [{"target": row["unknown_id"], "play": play} for play, track in played if promoted_play_id(row["unknown_id"], track) == play]
    if links:
        connection.execute(update(unknowns).where(and_(unknowns.c.unknown_id == bindparam("target"), unknowns.c.promoted_play_id.is_(None)))
                           .values(promoted_play_id=bindparam("play")), links)


def _starting_with(table: Any, row: Mapping[str, Any]) -> Any:
    """The rows of `table` on the stream of `row` that start when it does (events give times to the millisecond)."""
    start = row["started_at"]
    return (table.c.stream_id == row["stream_id"]) & table.c.started_at.between(start - ROUNDING, start + ROUNDING)


def _pick(condition: Any, then: Any, otherwise: Any) -> Any:
    return case((condition, then), else_=otherwise)


def _rounds(rows: Sequence[dict[str, Any]], key: str = "play_id") -> list[list[dict[str, Any]]]:
    """The rows in rounds in which each key appears once: one statement may not upsert a row twice."""
    rounds: list[list[dict[str, Any]]] = []
    seen: list[set[str]] = []
    for row in rows:
        index = next((i for i, ids in enumerate(seen) if row[key] not in ids), len(rounds))
        if index == len(rounds):
            rounds.append([])
            seen.append(set())
        rounds[index].append(row)
        seen[index].add(row[key])
    return rounds


def event_row(data: Any) -> EventRow | None:
    """(kind, row) for an event's JSON object: plays of any schema version (version 1, or a `state` and no
    `kind`), and the kinds of version 2; None for a kind the log does not keep (NOT_KEPT). UnsupportedEvent
    for a kind or version this code does not know, MalformedEvent (MalformedPlay) for one it knows with a
    field that is wrong."""
    if not isinstance(data, Mapping):
        raise MalformedEvent(f"an event is a JSON object, not {type(data).__name__}")
    version, kind = data.get("schema_version"), data.get("kind")
    if version == SCHEMA_VERSION or (kind is None and ("state" in data or not _is_count(version) or version < SCHEMA_VERSION)):
        return "play", play_row(data)
    if kind in KIND_ROWS and version == KINDS_SCHEMA_VERSION:
        return kind, KIND_ROWS[kind](data)
    if kind in NOT_KEPT and version == KINDS_SCHEMA_VERSION:
        return None
    raise UnsupportedEvent(f"event {_name(data)} is of kind {kind!r} at schema_version {version!r}, which this version of airtrace "
                           f"does not store (plays, and unknown and airtime at version {KINDS_SCHEMA_VERSION}); upgrade airtrace and import it again")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def unknown_row(data: Mapping[str, Any]) -> dict[str, Any]:
    """The row of an `unknown` event (UnknownEvent.to_json()); MalformedEvent names the field that is wrong."""
    try:
        stream_start, stream_end = _number(data, "stream_start"), _number(data, "stream_end")
        started_at, ended_at = _time(data, "started_at"), _time(data, "ended_at")
        if stream_end < stream_start or ended_at < started_at - ROUNDING:
            raise MalformedEvent(f"it ends ({data['ended_at']}, stream second {stream_end}) before it starts ({data['started_at']}, {stream_start})")
        if ended_at - started_at > LONGEST_AIRING or stream_end - stream_start > LONGEST_AIRING.total_seconds():
            raise MalformedEvent(f"it lasts longer than any unknown stretch can ({data['ended_at']}, stream second {stream_end} from "
                                 f"{data['started_at']}, {stream_start}; airtrace decides a long one in parts of minutes)")
        return {
            "unknown_id": _uuid(data, "unknown_id"), "event_id": _uuid(data, "event_id"), "stream_id": _id(data, "stream_id"),
            "started_at": started_at, "ended_at": ended_at, "duration": stream_end - stream_start,
            "stream_start": stream_start, "stream_end": stream_end, "music_seconds": _number(data, "music_seconds"),
            "decided_offset": _number(data, "decided_offset"),
            "cluster_id": _uuid(data, "cluster_id", optional=True), "matched_unknown_id": _uuid(data, "matched_unknown_id", optional=True),
            **{key: _number(data, key, optional=True) for key in ("ref_start", "speed", "score")},
            "stream": _object(data, "stream"),
        }
    except KeyError as exc:
        raise MalformedEvent(f"unknown event {_name(data)} has no {exc.args[0]!r} field") from None
    except MalformedEvent as exc:
        raise MalformedEvent(f"unknown event {_name(data)}: {exc}") from None


def airtime_row(data: Mapping[str, Any]) -> dict[str, Any]:
    """The row of an `airtime` event (AirtimeEvent.to_json()): a class it leaves out aired 0 s."""
    try:
        seconds = data["seconds"]
        if not isinstance(seconds, Mapping) or set(seconds) - set(CONTENT_CLASSES):
            raise MalformedEvent(f"seconds {seconds!r} is not an object of content classes ({', '.join(CONTENT_CLASSES)})")
        if any((_number(seconds, name, optional=True) or 0.0) < 0.0 for name in CONTENT_CLASSES):
            raise MalformedEvent(f"seconds {seconds!r} holds a negative number of seconds")
        first_seq = data["first_seq"]
        if not _is_count(first_seq) or first_seq < 0:
            raise MalformedEvent(f"first_seq {first_seq!r} is not a window number")
        return {
            "event_id": _uuid(data, "event_id"), "stream_id": _id(data, "stream_id"), "hour": _time(data, "hour"), "first_seq": first_seq,
            **{name: _number(seconds, name, optional=True) or 0.0 for name in CONTENT_CLASSES},
            "decided_offset": _number(data, "decided_offset"), "stream": _object(data, "stream"),
        }
    except KeyError as exc:
        raise MalformedEvent(f"airtime event {_name(data)} has no {exc.args[0]!r} field") from None
    except MalformedEvent as exc:
        raise MalformedEvent(f"airtime event {_name(data)}: {exc}") from None


KIND_ROWS = {"unknown": unknown_row, "airtime": airtime_row}


def play_row(data: Mapping[str, Any]) -> dict[str, Any]:
    """The row a play event's JSON object stands for; MalformedPlay names the field that is wrong.

    Any schema version is read for the fields the log keeps, so a newer producer's events (with fields
    added) are stored by this version too; a state it does not know is malformed."""
    try:
        if not isinstance(data, Mapping):
            raise MalformedPlay(f"a play event is a JSON object, not {type(data).__name__}")
        version = data["schema_version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise MalformedPlay(f"schema_version {version!r} is not a positive integer")
        if data["state"] not in ROW_STATE:
            raise MalformedPlay(f"state {data['state']!r} is not one of {', '.join(ROW_STATE)}")
        track = data["track"]
        if not isinstance(track, dict):
            raise MalformedPlay("track is not an object")
        track = _storable(track)
        event_id, play_id = _uuid(data, "event_id"), _uuid(data, "play_id")
        if not 0.0 <= _number(data, "confidence") <= 1.0:
            raise MalformedPlay(f"confidence {data['confidence']!r} is not between 0 and 1")
        if not _number(data, "speed") > 0.0:
            raise MalformedPlay(f"speed {data['speed']!r} is not above 0")
        started_at, ended_at, duration = _time(data, "started_at"), _time(data, "ended_at", optional=True), _number(data, "duration", optional=True)
        if ended_at is not None and ended_at < started_at - ROUNDING or duration is not None and duration < -ROUNDING.total_seconds():
            raise MalformedPlay(f"it ends ({data.get('ended_at')}, {duration} s) before it starts ({data['started_at']})")
        if ended_at is not None and ended_at - started_at > LONGEST_AIRING or duration is not None and duration > LONGEST_AIRING.total_seconds():
            raise MalformedPlay(f"it lasts longer than any play can ({data.get('ended_at')}, {duration} s from {data['started_at']}; "
                                f"no track lasts {LONGEST_AIRING.total_seconds() / 3600:.0f} h)")
        return {
            "play_id": play_id, "stream_id": _id(data, "stream_id"), "track_id": _id(data, "track_id"),
            **{key: None if track.get(key) is None else str(track[key]) for key in ("title", "artist", "isrc", "album")},
            "track": track,
            "started_at": started_at, "ended_at": ended_at,
            "duration": duration,
            "stream_start": _number(data, "stream_start"), "stream_end": _number(data, "stream_end", optional=True),
            "ref_start": _number(data, "ref_start"), "ref_end": _number(data, "ref_end", optional=True),
            "speed": _number(data, "speed"), "score": _number(data, "score"), "confidence": _number(data, "confidence"),
            "state": ROW_STATE[data["state"]], "first_event_id": event_id, "last_event_id": event_id,
        }
    except KeyError as exc:
        raise MalformedPlay(f"play event {_name(data)} has no {exc.args[0]!r} field") from None
    except MalformedEvent as exc:
        raise MalformedPlay(f"play event {_name(data)}: {exc}") from None


def _name(data: Any) -> str:
    return str(data.get("event_id", "without an event_id")) if isinstance(data, Mapping) else "(not an object)"


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"{key} {value!r} is not a non-empty string")
    if "\x00" in value:
        raise MalformedEvent(f"{key} {value!r} holds a NUL character, which no id or state may hold")
    return value


ROUNDING = timedelta(milliseconds=1)  # events write times to the millisecond
# No play lasts longer (no track does; the log refuses a play that claims to, whose garbled end in the year 9999
# reports split into millions of hours), nor an unknown stretch (decided in parts, UnknownConfig.part_seconds): what
# lets a range's overlapping airings be found by their start (indexed).
LONGEST_AIRING = timedelta(days=1)


def _id(data: Mapping[str, Any], key: str) -> str:
    """A track or stream id by the one rule every id follows (monitor.records.check_id)."""
    try:
        return check_id(_text(data, key), key.replace("_", " "))
    except ValueError as exc:
        raise MalformedEvent(str(exc)) from None


def _storable(value: Any) -> Any:
    """Metadata as every play log database can hold it: NUL characters taken out of its strings (keys included),
    which PostgreSQL's text cannot hold, and numbers that are not finite (NaN, which a JSON parser lets through)
    as null, which JSON has no other way to say. Both carry nothing in metadata (a radio server's, a DVB
    service's, a spreadsheet's), and either once stopped `plays consume` at its batch for good."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable(item) for item in value]
    return value


def _uuid(data: Mapping[str, Any], key: str, optional: bool = False) -> str | None:
    if optional and data.get(key) is None:
        return None
    value = _text(data, key)
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise MalformedEvent(f"{key} {value!r} is not a UUID") from None


def _object(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = {} if data.get(key) is None else data[key]
    if not isinstance(value, dict):
        raise MalformedEvent(f"{key} is not an object")
    return _storable(value)


def _number(data: Mapping[str, Any], key: str, optional: bool = False) -> float | None:
    value = data[key] if not optional else data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise MalformedEvent(f"{key} {value!r} is not a number")
    return float(value)


def _time(data: Mapping[str, Any], key: str, optional: bool = False) -> datetime | None:
    value = data[key] if not optional else data.get(key)
    if value is None and optional:
        return None
    try:
        return datetime.fromtimestamp(from_iso(value), timezone.utc)
    except (TypeError, ValueError, AttributeError):
        raise MalformedEvent(f"{key} {value!r} is not an ISO 8601 UTC time") from None
