"""The play log's queries: one set, in SQLAlchemy Core, for SQLite and PostgreSQL alike.

Each returns (columns, rows) with rows as dicts of plain values (times as ISO 8601 strings), ready
for `write_rows` as CSV or JSON. Time ranges are half-open [start, end) on the play's air start. A range
has a zone, which its days and hours are of and the reports write their times in: UTC by default (times
as 2026-11-24T23:31:03.250Z, in the *_utc columns), or a station's own zone, whose broadcast day its cue
sheets follow (times with their offset, 2026-11-25T00:31:03.250+01:00, in columns named without _utc).
Rejected plays are left out unless asked for. The unknown stretches and their clusters have their
queries in monitor.playlog.unknowns.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import IO, Any

from sqlalchemy import ColumnElement, exists, func, select, true

from monitor.playlog.schema import CONTENT_CLASSES, UTCDateTime, airtime, plays, still_unknown, unknowns, visible
from monitor.playlog.store import LONGEST_AIRING, PlayLog

Rows = tuple[list[str], list[dict[str, Any]]]

LIST_COLUMNS = ["play_id", "stream_id", "track_id", "title", "artist", "isrc", "album", "started_at", "ended_at", "duration",
                "ref_start", "ref_end", "speed", "score", "confidence", "state", "rejected", "rejected_by", "rejected_reason", "rejected_at"]
# The fields of the commercial monitors' play logs, per station and day.
REPORT_COLUMNS = ["timestamp_utc", "played_duration", "station", "title", "artist", "isrc", "album", "ref_start", "ref_end",
                  "speed", "score", "confidence", "track_id", "play_id"]
CUESHEET_COLUMNS = ["cue", "start_utc", "end_utc", "duration", "title", "artist", "isrc", "album", "track_id"]
TOTALS_COLUMNS = ["station", "track_id", "title", "artist", "isrc", "plays", "seconds"]
AIRTIME_COLUMNS = ["station", "hour_utc", "catalog_music", "unknown_music", *CONTENT_CLASSES]
# Decimals kept in output: milliseconds for times, what the matcher resolves for the rest.
DECIMALS = {"duration": 3, "played_duration": 3, "seconds": 3, "music_seconds": 3, "ref_start": 3, "ref_end": 3, "speed": 4, "score": 3,
            "confidence": 4}
ONE_HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class TimeRange:
    """[start, end) in UTC; None leaves that side open. `zone` is the clock whose hours the range's reports
    count and whose times they write: None for UTC."""

    start: datetime | None = None
    end: datetime | None = None
    zone: tzinfo | None = None

    @classmethod
    def day(cls, day: date, zone: tzinfo | None = None) -> "TimeRange":
        """The day from midnight to midnight in `zone`: 23 or 25 hours on a day the clocks change."""
        following = day + timedelta(days=1)
        start, end = (datetime(when.year, when.month, when.day, tzinfo=zone or timezone.utc) for when in (day, following))
        return cls(start.astimezone(timezone.utc), end.astimezone(timezone.utc), zone)

    def where(self, column: ColumnElement[datetime] = plays.c.started_at) -> ColumnElement[bool]:
        condition: ColumnElement[bool] = true()
        if self.start is not None:
            condition &= column >= self.start
        if self.end is not None:
            condition &= column < self.end
        return condition

    def whole_hours(self) -> "TimeRange":
        """The range widened to whole hours of its zone."""
        start = None if self.start is None else _hour_of(self.start, self.zone)
        end = None if self.end is None else _next_hour(_hour_of(self.end - timedelta(microseconds=1), self.zone), self.zone)
        return TimeRange(start, end, self.zone)

    def column(self, name: str) -> str:
        """A time column's name: `start_utc` holds UTC times, `start` those of the range's zone."""
        return name if self.zone is None else name.removesuffix("_utc")

    def columns(self, names: Sequence[str]) -> list[str]:
        return [self.column(name) for name in names]


def stations(log: PlayLog) -> list[str]:
    """Every station (stream id) the play log has heard: of a play, an hour of airtime or an unknown stretch."""
    query = select(plays.c.stream_id).union(select(airtime.c.stream_id), select(unknowns.c.stream_id))
    with log.connect() as connection:
        return sorted(connection.execute(query).scalars())


def has_station(log: PlayLog, station: str) -> bool:
    """Whether the play log heard `station`: an index lookup in each table, where `stations` reads every row."""
    query = select(exists().where(plays.c.stream_id == station) | exists().where(airtime.c.stream_id == station)
                   | exists().where(unknowns.c.stream_id == station))
    with log.connect() as connection:
        return bool(connection.execute(query).scalar())


def list_plays(log: PlayLog, span: TimeRange = TimeRange(), stream: str | None = None, track: str | None = None,
               min_confidence: float | None = None, include_hidden: bool = False, limit: int | None = None) -> Rows:
    """Plays by stream, track, time range and confidence, oldest first."""
    condition = span.where()
    if stream is not None:
        condition &= plays.c.stream_id == stream
    if track is not None:
        condition &= plays.c.track_id == track
    if min_confidence is not None:
        condition &= plays.c.confidence >= min_confidence
    if not include_hidden:
        condition &= visible()
    query = select(*(plays.c[name] for name in LIST_COLUMNS)).where(condition).order_by(plays.c.started_at, plays.c.play_id).limit(limit)
    return LIST_COLUMNS, fetch_rows(log, query, span.zone)


def report(log: PlayLog, span: TimeRange, station: str | None = None) -> Rows:
    """The play log report: every play of a station (or all) in the range, in the commercial monitors' fields."""
    condition = span.where() & visible()
    if station is not None:
        condition &= plays.c.stream_id == station
    query = select(
        plays.c.started_at.label(span.column("timestamp_utc")), plays.c.duration.label("played_duration"), plays.c.stream_id.label("station"),
        plays.c.title, plays.c.artist, plays.c.isrc, plays.c.album, plays.c.ref_start, plays.c.ref_end, plays.c.speed,
        plays.c.score, plays.c.confidence, plays.c.track_id, plays.c.play_id,
    ).where(condition).order_by(plays.c.stream_id, plays.c.started_at, plays.c.play_id)
    return span.columns(REPORT_COLUMNS), fetch_rows(log, query, span.zone)


def cuesheet(log: PlayLog, station: str, span: TimeRange) -> Rows:
    """A station's cue sheet: numbered cues with start, end and duration (HH:MM:SS) of each piece of music."""
    query = select(plays.c.started_at.label(span.column("start_utc")), plays.c.ended_at.label(span.column("end_utc")), plays.c.duration, plays.c.title,
                   plays.c.artist, plays.c.isrc, plays.c.album, plays.c.track_id
                   ).where(span.where() & visible() & (plays.c.stream_id == station)).order_by(plays.c.started_at, plays.c.play_id)
    rows = fetch_rows(log, query, span.zone)
    for cue, row in enumerate(rows, 1):
        row["cue"] = cue
        row["duration"] = None if row["duration"] is None else _clock(row["duration"])
    return span.columns(CUESHEET_COLUMNS), rows


def totals(log: PlayLog, span: TimeRange, station: str | None = None) -> Rows:
    """Airplay per track per station in the range: plays and seconds on air, most played first."""
    condition = span.where() & visible()
    if station is not None:
        condition &= plays.c.stream_id == station
    count = func.count().label("plays")
    query = select(
        plays.c.stream_id.label("station"), plays.c.track_id, func.max(plays.c.title).label("title"),
        func.max(plays.c.artist).label("artist"), func.max(plays.c.isrc).label("isrc"), count,
        func.coalesce(func.sum(plays.c.duration), 0.0).label("seconds"),
    ).where(condition).group_by(plays.c.stream_id, plays.c.track_id).order_by(plays.c.stream_id, count.desc(), plays.c.track_id)
    return TOTALS_COLUMNS, fetch_rows(log, query)


def airtime_report(log: PlayLog, span: TimeRange, station: str | None = None) -> Rows:
    """Per station and hour of the range's zone: seconds of catalog music (visible, ended plays), of unknown music
    (unknown stretches still unknown: a rejected promoted play's seconds are counted here, once), each clipped to the hour, and of each content class (the airtime events' parts added up).
    The range is taken in whole hours; hours without any of them have no row. The content classes are kept per
    UTC hour, so an hour of a zone a fraction of an hour from UTC (Asia/Kolkata, +05:30) has them empty (None):
    how a UTC hour's seconds fell on either side of the half hour is not kept."""
    span = span.whole_hours()
    seconds: dict[tuple[str, datetime], dict[str, Any]] = defaultdict(lambda: dict.fromkeys(AIRTIME_COLUMNS[2:], 0.0))
    aired = [("catalog_music", plays, visible() & plays.c.ended_at.is_not(None)), ("unknown_music", unknowns, still_unknown())]
    with log.connect() as connection:
        for column, table, condition in aired:
            if station is not None:
                condition &= table.c.stream_id == station
            if span.start is not None:
                condition &= (table.c.started_at > span.start - LONGEST_AIRING) & (table.c.ended_at > span.start)
            if span.end is not None:
                condition &= table.c.started_at < span.end
            for stream_id, start, end in connection.execute(select(table.c.stream_id, table.c.started_at, table.c.ended_at).where(condition)):
                for hour, part in _split_by_hour(max(start, span.start or start), min(end, span.end or end), span.zone):
                    seconds[stream_id, hour][column] += part
        condition = span.where(airtime.c.hour)
        if station is not None:
            condition &= airtime.c.stream_id == station
        query = select(airtime.c.stream_id, airtime.c.hour, *(func.sum(airtime.c[name]) for name in CONTENT_CLASSES)).where(condition)
        for stream_id, utc_hour, *classes in connection.execute(query.group_by(airtime.c.stream_id, airtime.c.hour)):
            for hour, figures in _classes_by_hour(utc_hour, classes, span):
                seconds[stream_id, hour].update(zip(CONTENT_CLASSES, figures))
    rows = [{"station": stream_id, span.column("hour_utc"): iso_time(hour, span.zone),
             **{name: None if value is None else round(value, 3) for name, value in figures.items()}}
            for (stream_id, hour), figures in sorted(seconds.items())]
    return span.columns(AIRTIME_COLUMNS), rows


def _classes_by_hour(utc_hour: datetime, classes: list[float], span: TimeRange) -> Iterator[tuple[datetime, list[float | None]]]:
    """The hours of the range's zone that a UTC hour's content classes fall in, and their seconds there: all of
    them where the UTC hour is an hour of the zone, else unknown (None) in each hour of the zone it touches."""
    end = utc_hour + ONE_HOUR
    hours = [hour for hour, _ in _split_by_hour(max(utc_hour, span.start or utc_hour), min(end, span.end or end), span.zone)]
    whole = hours == [utc_hour] and _next_hour(utc_hour, span.zone) == end
    for hour in hours:
        yield hour, list(classes) if whole else [None] * len(classes)


def _hour_of(moment: datetime, zone: tzinfo | None = None) -> datetime:
    """The start (in UTC) of the hour of `zone` that holds `moment`."""
    if zone is None:
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.astimezone(zone).replace(minute=0, second=0, microsecond=0).astimezone(timezone.utc)


def _next_hour(hour: datetime, zone: tzinfo | None = None) -> datetime:
    """The start of the hour after the one starting at `hour`: an hour later, but for a zone whose clocks change by
    half an hour (Australia/Lord_Howe), where the floor of an hour later may be the same hour."""
    following = _hour_of(hour + ONE_HOUR, zone)
    return following if following > hour else hour + ONE_HOUR


def _split_by_hour(start: datetime, end: datetime, zone: tzinfo | None = None) -> Iterator[tuple[datetime, float]]:
    """(hour of `zone`, as its UTC start; seconds of [start, end) within it) for each hour the span touches."""
    hour = _hour_of(start, zone)
    while hour < end:
        following = _next_hour(hour, zone)
        yield hour, (min(end, following) - max(start, hour)).total_seconds()
        hour = following


def fetch_rows(log: PlayLog, query: Any, zone: tzinfo | None = None) -> list[dict[str, Any]]:
    """Rows as dicts of plain values, times in `zone` (UTC if None); the conversions are chosen once per column
    (reports run to 10^4-10^5 rows)."""
    with log.connect() as connection:
        result = connection.execute(query)
        keys, rows = list(result.keys()), result.all()
    converters = [_plain(column.name, column.type, zone) for column in query.selected_columns]
    if not any(converters):
        return [dict(zip(keys, row)) for row in rows]
    return [dict(zip(keys, [value if convert is None or value is None else convert(value) for convert, value in zip(converters, row)]))
            for row in rows]


def _plain(name: str, kind: Any, zone: tzinfo | None) -> Callable[[Any], Any] | None:
    """How a column's values become plain output values: times as ISO 8601 strings in `zone`, figures rounded."""
    if isinstance(kind, UTCDateTime):
        return iso_time if zone is None else lambda value: iso_time(value, zone)
    if name in DECIMALS:
        digits = DECIMALS[name]
        return lambda value: round(value, digits)
    return None


def iso_time(value: datetime, zone: tzinfo | None = None) -> str:
    """2026-11-24T23:31:03.250Z, as in play events (values are UTC already: UTCDateTime); in `zone` with its
    offset, 2026-11-25T00:31:03.250+01:00."""
    if zone is None:
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value.astimezone(zone).isoformat(timespec="milliseconds")


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def write_rows(columns: Sequence[str], rows: Sequence[dict[str, Any]], fmt: str, out: IO[str]) -> None:
    """CSV with a header row, or one JSON array of objects."""
    if fmt == "json":
        json.dump([{name: row.get(name) for name in columns} for row in rows], out, indent=1, ensure_ascii=False)
        out.write("\n")
        return
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
