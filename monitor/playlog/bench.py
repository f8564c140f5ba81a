"""`airtrace bench playlog`: the play log at scale on PostgreSQL, a year of plays of 100 stations.

Synthetic plays (tracks drawn from a catalog of 20,000 with a Zipf-like popularity, durations of
30 s to 5 min, 274 a day per station: about 10 M rows for 100 stations and 365 days) are bulk-loaded
with COPY into the migrated table, indexes in place, as a backfill would be; the idempotent upsert that
embedded mode and `airtrace plays consume` use is timed on its own, with started and ended events.
Then each report query of `airtrace plays` runs on the full table, a few times on different stations,
tracks and days: the database's time (the goal: under a second each) and the whole call's, which adds
turning every row into output values in Python (tens of microseconds a row on this machine).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
from sqlalchemy import event

from monitor.bench.report import Table
from monitor.playlog import queries
from monitor.playlog.queries import TimeRange
from monitor.playlog.schema import plays
from monitor.playlog.store import PlayLog, PlayLogError

YEAR_START = datetime(2025, 1, 1, tzinfo=timezone.utc)
CATALOG_TRACKS = 20_000
GOAL_SECONDS = 1.0
COPY_COLUMNS = [c.name for c in plays.columns if not c.name.startswith("rejected")]


def synthetic_days(stations: int, days: int, plays_per_day: int, seed: int = 0) -> Iterator[tuple[int, str]]:
    """One day of every station's plays at a time: (rows, COPY text in COPY_COLUMNS order)."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, CATALOG_TRACKS + 1) ** 0.9
    popularity /= popularity.sum()
    meta = [(f"Title {t}", f"Artist {t % 3000}", f"QZ{t:010d}") for t in range(CATALOG_TRACKS)]
    meta_text = [f"{title}\t{artist}\t{isrc}\t\\N\t" + json.dumps({"title": title, "artist": artist, "isrc": isrc}) for title, artist, isrc in meta]
    midnight0 = np.datetime64(YEAR_START.replace(tzinfo=None), "us")
    for day in range(days):
        count = stations * plays_per_day
        # Each station's plays spread over its day; rows in air order across stations, as a consumer writes them.
        station, offset = np.repeat(np.arange(stations), plays_per_day), rng.uniform(0, 86400 - 300, count)
        order = np.argsort(offset, kind="stable")
        station, offset = station[order], offset[order]
        duration = rng.uniform(30, 300, count)
        track = rng.choice(CATALOG_TRACKS, count, p=popularity)
        ref_start, speed = rng.uniform(0, 30, count), rng.normal(1.0, 0.01, count)
        score, confidence = rng.uniform(5, 80, count), rng.uniform(0.9, 1.0, count)
        starts = midnight0 + np.timedelta64(day, "D") + (offset * 1e6).astype("timedelta64[us]")
        started = np.datetime_as_string(starts, unit="us")
        ended = np.datetime_as_string(starts + (duration * 1e6).astype("timedelta64[us]"), unit="us")
        ids = rng.integers(0, 2**63, (count, 2), dtype=np.int64).tolist()
        stream_start = day * 86400 + offset
        columns = zip(ids, station.tolist(), track.tolist(), started.tolist(), ended.tolist(), duration.tolist(), stream_start.tolist(),
                      (stream_start + duration).tolist(), ref_start.tolist(), (ref_start + duration * speed).tolist(), speed.tolist(),
                      score.tolist(), confidence.tolist())
        lines = []
        for (high, low), sta, trk, start, end, dur, s_start, s_end, r_start, r_end, spd, scr, conf in columns:
            play = str(uuid.UUID(int=(high << 64) | low))
            lines.append(f"{play}\tstation-{sta:03d}\ttrack-{trk:05d}\t{meta_text[trk]}\t{start}+00\t{end}+00\t{dur!r}\t{s_start!r}\t"
                         f"{s_end!r}\t{r_start!r}\t{r_end!r}\t{spd!r}\t{scr!r}\t{conf!r}\tended\t{play}\t{play}\n")
        yield count, "".join(lines)


def bulk_load(playlog: PlayLog, stations: int, days: int, plays_per_day: int, progress: Callable[[str], None]) -> tuple[int, float]:
    """COPY the synthetic year into the plays table, a day per transaction; returns (rows, seconds)."""
    raw = playlog.engine.raw_connection()
    loaded, began = 0, time.perf_counter()
    try:
        for day, (count, text) in enumerate(synthetic_days(stations, days, plays_per_day)):
            with raw.cursor() as cursor, cursor.copy(f"COPY plays ({', '.join(COPY_COLUMNS)}) FROM STDIN") as copy:
                copy.write(text)
            raw.commit()
            loaded += count
            if day % 30 == 29:
                progress(f"{loaded:,} rows, {loaded / (time.perf_counter() - began):,.0f} rows/s")
    finally:
        raw.close()
    return loaded, time.perf_counter() - began


def upsert_rate(playlog: PlayLog, plays_count: int, batch: int = 500) -> float:
    """Plays per second through the idempotent upsert, each as its started then its ended event."""
    rng = np.random.default_rng(1)
    events = []
    for n in range(plays_count):
        play = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        started = (YEAR_START + timedelta(days=400, seconds=n * 5)).isoformat().replace("+00:00", "Z")
        ended = (YEAR_START + timedelta(days=400, seconds=n * 5 + 180)).isoformat().replace("+00:00", "Z")
        base = {"schema_version": 1, "play_id": play, "stream_id": f"station-{n % 100:03d}", "track_id": f"track-{n % 20000:05d}",
                "track": {"title": "Title", "artist": "Artist"}, "started_at": started, "stream_start": n * 5.0, "ref_start": 0.0,
                "speed": 1.0, "score": 50.0, "confidence": 0.99, "decided_offset": n * 5.0 + 4}
        events.append({**base, "state": "started", "event_id": str(uuid.uuid5(uuid.UUID(play), "started")), "ended_at": None,
                       "stream_end": None, "ref_end": None, "duration": None})
        events.append({**base, "state": "ended", "event_id": str(uuid.uuid5(uuid.UUID(play), "ended")), "ended_at": ended,
                       "stream_end": n * 5.0 + 180, "ref_end": 180.0, "duration": 180.0})
    began = time.perf_counter()
    for start in range(0, len(events), batch):
        playlog.apply(events[start:start + batch])
    return plays_count / (time.perf_counter() - began)


def report_queries(stations: int, days: int) -> dict[str, Callable[[PlayLog, int], tuple]]:
    """Each report as `airtrace plays` runs it; run n picks another station, track and day."""
    def day(n: int) -> TimeRange:
        return TimeRange.day((YEAR_START + timedelta(days=(37 * n + 11) % days)).date())

    def month(n: int) -> TimeRange:
        start = YEAR_START + timedelta(days=(29 * n) % max(1, days - 30))
        return TimeRange(start, start + timedelta(days=min(30, days)))

    def station(n: int) -> str:
        return f"station-{(7 * n + 3) % stations:03d}"

    year = TimeRange(YEAR_START, YEAR_START + timedelta(days=days))
    return {
        "report: one station, one day": lambda log, n: queries.report(log, day(n), station(n)),
        "report: all stations, one day": lambda log, n: queries.report(log, day(n)),
        "cuesheet: one station, one day": lambda log, n: queries.cuesheet(log, station(n), day(n)),
        "list: one station, one day, confidence >= 0.95": lambda log, n: queries.list_plays(log, day(n), stream=station(n), min_confidence=0.95),
        "list: one track, one month": lambda log, n: queries.list_plays(log, month(n), track=f"track-{(n * 131) % 2000:05d}"),
        "totals: one station, one month": lambda log, n: queries.totals(log, month(n), station(n)),
        "totals: one station, the year": lambda log, n: queries.totals(log, year, station(n)),
        "totals: all stations, one day": lambda log, n: queries.totals(log, day(n)),
    }


class DatabaseClock:
    """Adds up the time of each statement on the engine: psycopg's execute returns once the server has
    answered and every row is in the client, so this is the database's share of a query."""

    def __init__(self, playlog: PlayLog):
        self.seconds = 0.0
        event.listen(playlog.engine, "before_cursor_execute", self._before)
        event.listen(playlog.engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, *_: Any) -> None:
        conn.info["statement_began"] = time.perf_counter()

    def _after(self, conn: Any, *_: Any) -> None:
        self.seconds += time.perf_counter() - conn.info.pop("statement_began")


def run_playlog_bench(location: str, stations: int = 100, days: int = 365, plays_per_day: int = 274, upsert_plays: int = 20_000,
                      repeats: int = 5, progress: Callable[[str], None] = print) -> tuple[list[Table], dict]:
    """Load, time and tabulate; the play log must be an empty PostgreSQL database (it is migrated here)."""
    playlog = PlayLog.open(location, migrate=True)
    if playlog.is_sqlite:
        raise PlayLogError("the play log benchmark measures PostgreSQL: give --playlog postgresql://...")
    with playlog.connect() as connection:
        if connection.exec_driver_sql("SELECT count(*) FROM plays").scalar():
            raise PlayLogError(f"the play log at {playlog.where} already holds plays; give the benchmark an empty database")
    rows, seconds = bulk_load(playlog, stations, days, plays_per_day, progress)
    progress(f"loaded {rows:,} rows in {seconds:.0f} s; vacuum and analyze")
    with playlog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE plays")
        size = connection.exec_driver_sql("SELECT pg_total_relation_size('plays')").scalar()
    rate = upsert_rate(playlog, upsert_plays)
    inserts = Table("Play log inserts (PostgreSQL)", ["path", "rows", "seconds", "rows/s"],
                    settings={"stations": stations, "days": days, "plays per station and day": plays_per_day,
                              "table with indexes": f"{size / 2**30:.2f} GiB"})
    inserts.add("bulk COPY (synthetic year)", rows, seconds, rows / seconds)
    inserts.add("idempotent upsert, started + ended events", upsert_plays, upsert_plays / rate, rate)
    latency = Table("Report query latency on the full table",
                    ["query", "rows returned (median)", "database median s", "database max s", f"database < {GOAL_SECONDS:.0f} s",
                     "with output median s", "with output max s"],
                    settings={"rows in the table": rows + upsert_plays, "runs per query": repeats,
                              "database": "the SQL statement until its rows are in the client (psycopg)",
                              "with output": "the whole query function, rows converted to output values"})
    figures: dict[str, dict] = {}
    database = DatabaseClock(playlog)
    for name, query in report_queries(stations, days).items():
        timings, in_database, sizes = [], [], []
        for n in range(repeats):
            database.seconds, began = 0.0, time.perf_counter()
            _, result = query(playlog, n)
            timings.append(time.perf_counter() - began)
            in_database.append(database.seconds)
            sizes.append(len(result))
        latency.add(name, int(np.median(sizes)), float(np.median(in_database)), max(in_database),
                    "met" if max(in_database) < GOAL_SECONDS else "MISSED", float(np.median(timings)), max(timings))
        figures[name] = {"seconds": timings, "database_seconds": in_database, "rows": sizes}
    playlog.close()
    return [inserts, latency], {"bulk_rows_per_second": rows / seconds, "upsert_plays_per_second": rate, "queries": figures}
