"""The play log on real SQLite and a real PostgreSQL: idempotent upserts under duplicates and reordering,
rejected plays, migrations against the declared schema, the queries and `airtrace plays`."""

from __future__ import annotations

import csv
import io
import json
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import fields as dataclass_fields
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner

from monitor.bench import servers

from monitor.cli import main
from monitor.events import PlayEvent, ProvisionalEvent, play_id, plays_in
from monitor.playlog import queries
from monitor.playlog.queries import TimeRange
from monitor.playlog.schema import metadata
from monitor.playlog.store import MalformedPlay, PlayLog, PlayLogError, head_revision

DAY = 1_795_000_000.0 - 1_795_000_000.0 % 86400  # a UTC midnight in 2026
TRACKS = {f"t{i}": {"title": f"Title {i}", "artist": f"Artist {i % 3}", "isrc": f"QZ0000000{i:03d}", "album": "Album"} for i in range(6)}


def heard_before(started: PlayEvent, seconds: float = 2.0) -> ProvisionalEvent:
    """The provisional event that announced `started`'s play `seconds` of stream earlier."""
    fields = {k: v for k, v in vars(started).items() if k in {f.name for f in dataclass_fields(ProvisionalEvent)}}
    return ProvisionalEvent(**{**fields, "decided_offset": started.decided_offset - seconds})


def synthetic_plays(count: int, streams: int = 3, seed: int = 0) -> list[PlayEvent]:
    """Started and ended events of `count` plays spread over streams and a day, in air order."""
    rng = random.Random(seed)
    events = []
    for n in range(count):
        stream = f"radio-{n % streams}"
        track = rng.choice(sorted(TRACKS))
        start = DAY + n * 600.0 + rng.uniform(0, 100)
        seconds = rng.uniform(30, 240)
        started = PlayEvent(play_id(stream, track, n), "started", stream, track, start, start - DAY, rng.uniform(0, 60), rng.uniform(0.95, 1.05),
                            rng.uniform(5, 20), rng.uniform(0.9, 1.0), start - DAY + 5, track=TRACKS[track])
        events += [started, replace(started, state="ended", ended_at=start + seconds, stream_end=started.stream_start + seconds,
                                    ref_end=started.ref_start + seconds * started.speed, confidence=min(1.0, started.confidence + 0.01),
                                    decided_offset=started.stream_start + seconds + 3)]
    return events


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "plays.sqlite") if request.param == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture
def playlog(location: str) -> Iterator[PlayLog]:
    log = PlayLog.open(location, migrate=True)
    yield log
    log.close()


def everything(log: PlayLog) -> list[dict]:
    return queries.list_plays(log, include_hidden=True)[1]


def test_the_migrations_build_the_declared_schema(playlog: PlayLog) -> None:
    with playlog.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []
    assert PlayLog.open(playlog.url.render_as_string(hide_password=False)).revision() == head_revision() == "0004"  # opens without migrating


def test_duplicated_and_reordered_events_leave_the_rows_of_one_clean_pass(playlog: PlayLog, tmp_path: Path) -> None:
    events = [e.to_json() for e in synthetic_plays(40)]
    clean = PlayLog.open(tmp_path / "clean.sqlite", migrate=True)
    clean.apply(events)
    expected = everything(clean)
    assert len(expected) == 40 and {row["state"] for row in expected} == {"ended"}

    rng = random.Random(1)
    delivered = events + rng.sample(events, 30)  # at-least-once: some twice
    rng.shuffle(delivered)  # and in any order: an ended before its started
    for begin in range(0, len(delivered), 7):  # batches, some holding both events of a play
        playlog.apply(delivered[begin:begin + 7])
    playlog.apply(events)  # a whole replay
    assert everything(playlog) == expected
    for row in expected:
        event_ids = {state: str(uuid.uuid5(uuid.UUID(row["play_id"]), state)) for state in ("started", "ended")}
        with playlog.connect() as connection:
            first, last = connection.exec_driver_sql(f"SELECT first_event_id, last_event_id FROM plays WHERE play_id = '{row['play_id']}'").one()
        assert (first, last) == (event_ids["started"], event_ids["ended"])


def test_an_ended_before_its_started_yields_one_complete_row(playlog: PlayLog) -> None:
    started, ended = synthetic_plays(1)
    playlog.apply([ended.to_json()])
    playlog.apply([started.to_json()])
    (row,) = everything(playlog)
    assert row["state"] == "ended" and row["duration"] == pytest.approx(ended.duration, abs=0.0005)
    assert row["confidence"] == pytest.approx(ended.confidence, abs=0.00005) and row["title"] == ended.track["title"]


def test_a_play_still_on_air_is_listed_and_completed_by_its_end(playlog: PlayLog) -> None:
    started, ended = synthetic_plays(1)
    playlog.apply([started.to_json()])
    (row,) = queries.list_plays(playlog)[1]
    assert row["state"] == "playing" and row["ended_at"] is None and row["duration"] is None
    playlog.apply([ended.to_json()])
    (row,) = queries.list_plays(playlog)[1]
    assert row["state"] == "ended" and row["ended_at"] is not None


def test_a_rejection_survives_replays_and_restore_brings_the_play_back(playlog: PlayLog) -> None:
    events = synthetic_plays(3)
    playlog.apply(e.to_json() for e in events)
    target = events[2].play_id
    playlog.reject(target, "wrong version of the song", "alice")
    playlog.apply(e.to_json() for e in reversed(events))
    rows = {row["play_id"]: row for row in everything(playlog)}
    assert (rows[target]["rejected"], rows[target]["rejected_by"], rows[target]["rejected_reason"]) == (True, "alice", "wrong version of the song")
    assert rows[target]["rejected_at"] is not None
    assert target not in {row["play_id"] for row in queries.list_plays(playlog)[1]}
    playlog.restore(target)
    assert target in {row["play_id"] for row in queries.list_plays(playlog)[1]}
    with pytest.raises(PlayLogError, match="no play nope"):
        playlog.reject("nope", "x", "y")


@pytest.mark.parametrize("change, complaint", [
    ({"state": "paused"}, "state 'paused'"),
    ({"play_id": "not-a-uuid"}, "play_id 'not-a-uuid' is not a UUID"),
    ({"started_at": "yesterday"}, "started_at 'yesterday' is not an ISO 8601"),
    ({"speed": "fast"}, "speed 'fast' is not a number"),
    ({"track": ["x"]}, "track is not an object"),
    ({"schema_version": 0}, "schema_version 0"),
    ({"stream_id": None}, "stream_id None"),
    ({"confidence": 5}, "confidence 5 is not between 0 and 1"),
    ({"speed": -1.0}, "speed -1.0 is not above 0"),
    ({"score": float("inf")}, "score inf is not a number"),
    ({"duration": -5.0}, "ends .* before it starts"),
    ({"ended_at": "2020-01-01T00:00:00Z"}, "ends .* before it starts"),
    ({"ended_at": "9999-12-31T00:00:00Z"}, "lasts longer than any play can"),  # `plays airtime` split it into 70 M hours
    ({"duration": 2e5}, "lasts longer than any play can"),
    ({"stream_id": "radio\t1"}, "printable text"),
    ({"track_id": "x" * 100_000}, "bytes long"),
])
def test_a_malformed_event_is_named_and_nothing_of_its_batch_is_written(playlog: PlayLog, change: dict, complaint: str) -> None:
    good, bad = (e.to_json() for e in synthetic_plays(1))
    with pytest.raises(MalformedPlay, match=complaint):
        playlog.apply([good, {**bad, **change}])
    with pytest.raises(MalformedPlay, match="has no 'confidence' field"):
        playlog.apply([{k: v for k, v in bad.items() if k != "confidence"}])
    assert everything(playlog) == []


def test_queries_filter_by_stream_track_time_and_confidence(playlog: PlayLog) -> None:
    events = synthetic_plays(30)
    playlog.apply(e.to_json() for e in events)
    ended = [e for e in events if e.state == "ended"]
    assert len(queries.list_plays(playlog, stream="radio-1")[1]) == sum(e.stream_id == "radio-1" for e in ended)
    assert len(queries.list_plays(playlog, track="t2")[1]) == sum(e.track_id == "t2" for e in ended)
    assert len(queries.list_plays(playlog, min_confidence=0.95)[1]) == sum(e.confidence >= 0.95 for e in ended)
    span = TimeRange.day(date.fromtimestamp(DAY))
    hour = replace(span, end=span.start + timedelta(hours=1))
    assert len(queries.list_plays(playlog, hour)[1]) == sum(e.started_at < DAY + 3600 for e in ended) == 6
    assert len(queries.list_plays(playlog, limit=4)[1]) == 4


def test_the_cli_lists_rejects_and_writes_reports_to_a_file(tmp_path: Path, location: str) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["plays", "migrate", "--playlog", location]).exit_code == 0
    events = synthetic_plays(6, streams=2)
    log = PlayLog.open(location)
    log.apply(e.to_json() for e in events)
    listed = runner.invoke(main, ["plays", "list", "--playlog", location, "--stream", "radio-0", "--format", "json"])
    assert listed.exit_code == 0, listed.output
    assert [row["play_id"] for row in json.loads(listed.output)] == [e.play_id for e in events[::4]]
    midnight_in_utc_plus_2 = f"{date.fromtimestamp(DAY).isoformat()}T02:00:00+02:00"
    for since, plays in ((json.loads(listed.output)[1]["started_at"], events[4::4]), (midnight_in_utc_plus_2, events[::4])):  # as lists write times
        later = runner.invoke(main, ["plays", "list", "--playlog", location, "--stream", "radio-0", "--from", since, "--format", "json"])
        assert later.exit_code == 0, later.output
        assert [row["play_id"] for row in json.loads(later.output)] == [e.play_id for e in plays]
    bad = runner.invoke(main, ["plays", "list", "--playlog", location, "--from", "24/11/2026"])
    assert bad.exit_code == 2 and "'24/11/2026' is not a time" in bad.output and "ISO 8601" in bad.output
    result = runner.invoke(main, ["plays", "reject", events[0].play_id, "--reason", "test", "--by", "me", "--playlog", location])
    assert result.exit_code == 0 and "rejected" in result.output
    day = date.fromtimestamp(DAY).isoformat()
    out = tmp_path / "report.csv"
    assert runner.invoke(main, ["plays", "report", "--playlog", location, "--day", day, "--station", "radio-0", "--out", str(out)]).exit_code == 0
    assert [row["play_id"] for row in csv.DictReader(io.StringIO(out.read_text()))] == [events[4].play_id, events[8].play_id]
    for command in (["report", "--day", day, "--station"], ["cuesheet", "--day", day, "--station"], ["totals", "--station"],
                    ["airtime", "--station"], ["list", "--stream"]):  # a misspelt station
        misspelt = runner.invoke(main, ["plays", *command, "radio-9", "--playlog", location])
        assert misspelt.exit_code == 1 and "no station 'radio-9' in the play log" in misspelt.output and "radio-0, radio-1" in misspelt.output
    assert runner.invoke(main, ["plays", "restore", events[0].play_id, "--playlog", location]).exit_code == 0
    missing = runner.invoke(main, ["plays", "reject", str(uuid.uuid4()), "--reason", "x", "--playlog", location])
    assert missing.exit_code == 1 and "airtrace plays list --all" in missing.output
    both = runner.invoke(main, ["plays", "report", "--playlog", location, "--day", day, "--from", day])
    assert both.exit_code == 2 and "either --day or --from/--to" in both.output
    for start, end in (("2026-12-05", "2026-12-01"), (day, day)):  # a reversed or empty range is a mistake, not "no plays"
        empty = runner.invoke(main, ["plays", "report", "--playlog", location, "--from", start, "--to", end])
        assert empty.exit_code == 2 and "is not before --to" in empty.output and "timestamp_utc" not in empty.output


def test_the_cli_says_what_to_do_without_a_database(tmp_path: Path, postgres) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["plays", "list", "--playlog", str(tmp_path / "none.sqlite")])
    assert result.exit_code == 1 and "no play log at" in result.output
    port = servers.free_port()
    result = runner.invoke(main, ["plays", "list", "--playlog", f"postgresql://airtrace:secret-pw@127.0.0.1:{port}/x"])
    assert result.exit_code == 1 and "cannot use the play log" in result.output and "secret-pw" not in result.output
    result = runner.invoke(main, ["plays", "list", "--playlog", "mysql://airtrace:secret-pw@127.0.0.1/x"])
    assert result.exit_code == 1 and "mysql:// is not supported" in result.output and "secret-pw" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # a message, not a traceback
    events_file = tmp_path / "plays.jsonl"  # given as the play log by mistake: named, and left as it was
    events_file.write_text('{"schema_version": 1}\n')
    for command in (["plays", "list"], ["plays", "migrate"]):
        result = runner.invoke(main, [*command, "--playlog", str(events_file)])
        assert result.exit_code == 1 and "is not a play log (file is not a database)" in result.output and "plays import" in result.output
        assert events_file.read_text() == '{"schema_version": 1}\n'
    fresh = postgres.create_database("unmigrated")
    result = runner.invoke(main, ["plays", "list", "--playlog", fresh])
    assert result.exit_code == 1 and "run `airtrace plays migrate" in result.output


# ----------------------------------------------------------------------------- the demo's broadcast


def test_every_report_on_the_demo_broadcast_in_both_stores(demo_run, postgres_url: str) -> None:
    """The demo writes its plays to plays.sqlite; the same events in PostgreSQL give the very same reports,
    and each report's columns and totals agree with the events themselves."""
    from monitor.demo.run import STATION, demo_report
    from monitor.events import iso_utc

    workdir, card, events = demo_run
    sqlite_log = PlayLog.open(workdir / "plays.sqlite")
    pg_log = PlayLog.open(postgres_url, migrate=True)
    pg_log.apply(e.to_json() for e in events)
    ended = [e for e in plays_in(events) if e.state == "ended"]
    assert len(ended) == 5 and card.recall == 1.0

    columns, rows = queries.report(sqlite_log, TimeRange(), STATION)
    assert columns == queries.REPORT_COLUMNS == ["timestamp_utc", "played_duration", "station", "title", "artist", "isrc", "album",
                                                 "ref_start", "ref_end", "speed", "score", "confidence", "track_id", "play_id"]
    assert [(r["timestamp_utc"], r["station"], r["track_id"], r["title"], r["artist"]) for r in rows] == [
        (iso_utc(e.started_at), STATION, e.track_id, e.track["title"], e.track["artist"]) for e in ended]
    for row, event in zip(rows, ended):
        for column, value in [("played_duration", event.duration), ("ref_start", event.ref_start), ("ref_end", event.ref_end),
                              ("speed", event.speed), ("score", event.score), ("confidence", event.confidence)]:
            assert row[column] == pytest.approx(value, abs=0.5 * 10 ** -queries.DECIMALS[column]), column
    assert list(csv.DictReader(io.StringIO(demo_report(workdir))))[0]["play_id"] == ended[0].play_id

    day = datetime_of(ended[0].started_at).date()
    on_day = [e for e in ended if datetime_of(e.started_at).date() == day]
    columns, cues = queries.cuesheet(sqlite_log, STATION, TimeRange.day(day))
    assert columns == ["cue", "start_utc", "end_utc", "duration", "title", "artist", "isrc", "album", "track_id"]
    assert [(c["cue"], c["track_id"], c["end_utc"]) for c in cues] == [(n, e.track_id, iso_utc(e.ended_at)) for n, e in enumerate(on_day, 1)]
    for cue, event in zip(cues, on_day):
        hours, minutes, seconds = map(int, cue["duration"].split(":"))
        assert abs(hours * 3600 + minutes * 60 + seconds - event.duration) <= 0.5

    columns, totals = queries.totals(sqlite_log, TimeRange())
    assert columns == ["station", "track_id", "title", "artist", "isrc", "plays", "seconds"]
    assert {t["track_id"]: t["plays"] for t in totals} == {e.track_id: 1 for e in ended}
    assert sum(t["seconds"] for t in totals) == pytest.approx(sum(e.duration for e in ended), abs=len(ended) * 0.0005)

    for query in (lambda log: queries.report(log, TimeRange(), STATION), lambda log: queries.cuesheet(log, STATION, TimeRange.day(day)),
                  lambda log: queries.totals(log, TimeRange()), lambda log: queries.list_plays(log, include_hidden=True)):
        assert query(pg_log) == query(sqlite_log)


def datetime_of(epoch: float):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc)


def test_airtrace_monitor_keeps_the_play_log_beside_the_events_by_default(service_catalog: Path, tmp_path: Path, data_home: Path) -> None:
    from conftest import MUSIC

    def monitor(*args: str) -> str:
        """`airtrace monitor` in its own process (each registers the process-wide metrics)."""
        command = [sys.executable, "-m", "monitor", "monitor", "--catalog", str(service_catalog), *args, str(MUSIC / "over-theme.opus")]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    events = tmp_path / "events.jsonl"
    assert f"play log in {tmp_path / 'events.sqlite'}" in monitor("--events", str(events))
    (row,) = queries.list_plays(PlayLog.open(tmp_path / "events.sqlite"))[1]
    assert (row["stream_id"], row["track_id"], row["state"]) == ("over-theme", "over-theme", "ended")
    assert row["play_id"] == [e for e in map(json.loads, events.read_text().splitlines()) if "play_id" in e][-1]["play_id"]
    assert "play log" not in monitor("--no-playlog")
    assert f"play log in {data_home / 'airtrace' / 'plays.sqlite'}" in monitor()


# ----------------------------------------------------------------------------- scale


def test_the_benchmark_refuses_sqlite_and_a_database_with_plays(tmp_path: Path, postgres_url: str) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["bench", "playlog", "--playlog", str(tmp_path / "plays.sqlite")])
    assert result.exit_code == 1 and "measures PostgreSQL" in result.output
    PlayLog.open(postgres_url, migrate=True).apply(e.to_json() for e in synthetic_plays(1))
    result = runner.invoke(main, ["bench", "playlog", "--playlog", postgres_url])
    assert result.exit_code == 1 and "already holds plays" in result.output


@pytest.mark.slow
def test_every_report_query_answers_within_a_second_at_scale(postgres_url: str) -> None:
    """A smaller `airtrace bench playlog` (the README has the full year of 100 stations)."""
    from monitor.playlog.bench import run_playlog_bench

    tables, figures = run_playlog_bench(postgres_url, stations=30, days=120, plays_per_day=274, upsert_plays=2000, repeats=3, progress=lambda _: None)
    inserts, latency = tables
    assert inserts.rows[0][1] == 30 * 120 * 274
    assert [row[4] for row in latency.rows] == ["met"] * len(latency.rows), latency.render()
    assert all(0 < figures["queries"][row[0]]["database_seconds"][0] <= figures["queries"][row[0]]["seconds"][0] for row in latency.rows)
    assert figures["upsert_plays_per_second"] > 0


def test_nul_and_nan_in_metadata_are_dropped_and_a_nul_in_an_id_is_refused(tmp_path: Path, location: str) -> None:
    """PostgreSQL holds neither a NUL character in text nor NaN in JSON, which metadata can carry (a radio
    server's, a DVB service's): once, one such event stopped the play log's consumer at its batch for good.
    Metadata keeps everything else, in both databases; an id holding a NUL is refused with the reason, and
    the rest is stored."""
    from sqlalchemy import select

    from monitor.playlog.schema import plays
    from monitor.playlog.store import import_lines

    started, ended, other, *_ = synthetic_plays(2)
    track = {**started.track, "title": "Over\x00 Theme", "note\x00": ["a\x00b"], "bpm": float("nan")}
    bad_id = replace(other, stream_id="radio\x00-1")
    log = PlayLog.open(location, migrate=True)
    stored, skipped = import_lines(log, [replace(e, track=track).to_line() for e in (started, ended, bad_id)])
    assert stored == {"play": 2} and [(n, "NUL" in reason) for n, reason in skipped] == [(3, True)]
    with log.connect() as connection:
        (row,) = connection.execute(select(plays.c.title, plays.c.track, plays.c.state)).all()
    assert row.title == "Over Theme" and row.track["note"] == ["ab"] and row.track["bpm"] is None and row.state == "ended"
    log.close()


def test_import_skips_a_line_that_is_not_utf8_and_goes_on(tmp_path: Path) -> None:
    """A line of bytes that are not UTF-8 (a damaged copy) once stopped the import with a traceback, leaving the
    rest of its file and every later file out: it is skipped with the reason, and everything else is stored."""
    events = synthetic_plays(3)
    lines = [e.to_line().encode() for e in events]
    damaged, intact = tmp_path / "damaged.jsonl", tmp_path / "intact.jsonl"
    damaged.write_bytes(b"\n".join([lines[0], b'{"title": "\xff"}', *lines[1:3]]) + b"\n")
    intact.write_bytes(b"\n".join(lines[3:]) + b"\n")
    location = str(tmp_path / "plays.sqlite")
    result = CliRunner().invoke(main, ["plays", "import", "--playlog", location, str(damaged), str(intact)])
    assert result.exit_code == 0, result.output
    assert f"skipped {damaged}:2: not UTF-8 text" in result.output and f"{intact}: 3 play events" in result.output
    clean = PlayLog.open(tmp_path / "clean.sqlite", migrate=True)
    clean.apply(e.to_json() for e in events)
    assert everything(PlayLog.open(location)) == everything(clean)


def test_import_adds_an_events_file_once_and_names_the_lines_it_skips(tmp_path: Path, location: str) -> None:
    events = synthetic_plays(5)
    lines = [e.to_line() for e in events]
    events_file = tmp_path / "plays.jsonl"
    events_file.write_text("\n".join(lines[:4] + ["{not json", '{"schema_version": 1}'] + lines[4:]) + "\n")
    runner = CliRunner()
    for _ in range(2):  # a second import changes nothing
        result = runner.invoke(main, ["plays", "import", "--playlog", location, str(events_file)])
        assert result.exit_code == 0, result.output
        assert f"{events_file}: 10 play events" in result.output
        assert f"skipped {events_file}:5:" in result.output and f"skipped {events_file}:6: play event without an event_id has no 'state'" in result.output
    clean = PlayLog.open(tmp_path / "clean.sqlite", migrate=True)
    clean.apply(e.to_json() for e in events)
    assert everything(PlayLog.open(location)) == everything(clean)
