"""Where the play log lives and how events get into it: an idempotent upsert keyed by play_id.

A location is a SQLite file path or a PostgreSQL URL (postgresql://user:pass@host/db, run through psycopg 3).
An event's row is a function of the set of events seen for the play, not of their order or count: the
row holds the values of the latest state seen (playing < ended), `first_event_id` is the id
of the earliest state seen, and an event of the state already stored changes nothing. So a replayed,
duplicated or reordered stream of events (Kafka's at-least-once delivery) leaves the same rows as one
clean pass, and a user's rejection survives any replay.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, case, create_engine, event, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from monitor.events import from_iso
from monitor.playlog.schema import ROW_STATE, plays, state_rank

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# Columns an event sets; the rejection columns belong to users and no event touches them.
EVENT_COLUMNS = tuple(c.name for c in plays.columns if c.name not in ("play_id", "first_event_id") and not c.name.startswith("rejected"))


class PlayLogError(RuntimeError):
    """The play log cannot be used as asked; the message says what to do."""


class PlayLogUnavailable(PlayLogError):
    """The database cannot be reached (down, wrong address or credentials); retrying may help."""


class MalformedPlay(ValueError):
    """A play event the log cannot store (a missing or mistyped field, an unknown state)."""


def default_location() -> Path:
    """The SQLite file embedded mode writes when no events file or --playlog says otherwise."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "airtrace" / "plays.sqlite"


def beside(events_file: str | Path) -> Path:
    """The play log that goes with an events file: plays.jsonl -> plays.sqlite."""
    return Path(events_file).with_suffix(".sqlite")


def database_url(location: str | Path) -> str:
    """SQLAlchemy's URL for a location: PostgreSQL URLs get the psycopg 3 driver, anything else is a SQLite file."""
    text = str(location)
    for scheme in ("postgresql://", "postgres://"):
        if text.startswith(scheme):
            return "postgresql+psycopg://" + text[len(scheme):]
    if "://" in text:
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
        """Store play events given as their JSON objects (PlayEvent.to_json()); returns how many were given.
        Raises MalformedPlay, before writing anything, if one of them cannot be stored."""
        rows = [play_row(data) for data in events]
        self.write(rows)
        return len(rows)

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Upsert rows from `play_row` in one transaction (all or none)."""
        statement = _upsert(self.engine.dialect.name)
        with self.engine.begin() as connection:
            for round_ in _rounds(rows):
                connection.execute(statement, round_)

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


def import_lines(playlog: PlayLog, lines: Iterable[str], batch: int = 1000) -> tuple[int, list[tuple[int, str]]]:
    """Store the play events of JSON lines (an events file), a batch per transaction; returns how many were
    stored and (line number, reason) for each line that is not a play event, which is left out."""
    rows, skipped, stored = [], [], 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(play_row(json.loads(line)))
        except ValueError as exc:  # MalformedPlay and JSON errors
            skipped.append((number, str(exc)))
        if len(rows) == batch:
            playlog.write(rows)
            stored, rows = stored + len(rows), []
    playlog.write(rows)
    return stored + len(rows), skipped


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


def _upsert(dialect: str):
    """INSERT ... ON CONFLICT (play_id) DO UPDATE, taking the values of whichever state ranks higher."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(plays)
    new, old = statement.excluded, plays.c
    newer = state_rank(new.state) > state_rank(old.state)
    values = {name: _pick(newer, new[name], old[name]) for name in EVENT_COLUMNS}
    values["first_event_id"] = _pick(state_rank(new.state) < state_rank(old.state), new.first_event_id, old.first_event_id)
    return statement.on_conflict_do_update(index_elements=[plays.c.play_id], set_=values,
                                           where=state_rank(new.state) != state_rank(old.state))


def _pick(condition: Any, then: Any, otherwise: Any) -> Any:
    return case((condition, then), else_=otherwise)


def _rounds(rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The rows in rounds in which each play appears once: one statement may not upsert a row twice."""
    rounds: list[list[dict[str, Any]]] = []
    seen: list[set[str]] = []
    for row in rows:
        index = next((i for i, ids in enumerate(seen) if row["play_id"] not in ids), len(rounds))
        if index == len(rounds):
            rounds.append([])
            seen.append(set())
        rounds[index].append(row)
        seen[index].add(row["play_id"])
    return rounds


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
        event_id, play_id = _uuid(data, "event_id"), _uuid(data, "play_id")
        return {
            "play_id": play_id, "stream_id": _text(data, "stream_id"), "track_id": _text(data, "track_id"),
            **{key: None if track.get(key) is None else str(track[key]) for key in ("title", "artist", "isrc", "album")},
            "track": track,
            "started_at": _time(data, "started_at"), "ended_at": _time(data, "ended_at", optional=True),
            "duration": _number(data, "duration", optional=True),
            "stream_start": _number(data, "stream_start"), "stream_end": _number(data, "stream_end", optional=True),
            "ref_start": _number(data, "ref_start"), "ref_end": _number(data, "ref_end", optional=True),
            "speed": _number(data, "speed"), "score": _number(data, "score"), "confidence": _number(data, "confidence"),
            "state": ROW_STATE[data["state"]], "first_event_id": event_id, "last_event_id": event_id,
        }
    except KeyError as exc:
        raise MalformedPlay(f"play event {_name(data)} has no {exc.args[0]!r} field") from None
    except MalformedPlay as exc:
        raise MalformedPlay(f"play event {_name(data)}: {exc}") from None


def _name(data: Any) -> str:
    return str(data.get("event_id", "without an event_id")) if isinstance(data, Mapping) else "(not an object)"


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise MalformedPlay(f"{key} {value!r} is not a non-empty string")
    return value


def _uuid(data: Mapping[str, Any], key: str) -> str:
    value = _text(data, key)
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise MalformedPlay(f"{key} {value!r} is not a UUID") from None


def _number(data: Mapping[str, Any], key: str, optional: bool = False) -> float | None:
    value = data[key] if not optional else data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        raise MalformedPlay(f"{key} {value!r} is not a number")
    return float(value)


def _time(data: Mapping[str, Any], key: str, optional: bool = False) -> datetime | None:
    value = data[key] if not optional else data.get(key)
    if value is None and optional:
        return None
    try:
        return datetime.fromtimestamp(from_iso(value), timezone.utc)
    except (TypeError, ValueError, AttributeError):
        raise MalformedPlay(f"{key} {value!r} is not an ISO 8601 UTC time") from None
