"""Every SQL query of the play log dashboard (and the stream dashboard's airtime panel), run on PostgreSQL as Grafana runs it: template variables
interpolated and macros ($__timeFilter, $__timeGroupAlias, ...) expanded the way Grafana's PostgreSQL
data source expands them, as the read-only role that deploy/postgres/grafana-reader.sh creates. Each
panel must get the columns it shows, and the numbers must add up to the plays in the log."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from monitor.bench import servers
from monitor.playlog import queries
from monitor.playlog.queries import TimeRange
from monitor.events import plays_in
from monitor.playlog.store import PlayLog
from test_playlog import DAY, synthetic_plays
from test_playlog_unknowns import promoted_plays, synthetic_airtime, synthetic_unknowns

ROOT = Path(__file__).parents[1]
DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "playlog.json").read_text())
STREAM_DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "stream.json").read_text())
# radio-0's airing of the song at DAY + 3500 (it crosses an hour), promoted into the catalog, its play then rejected.
PROMOTED = synthetic_unknowns()[2]
# What each panel shows, in order: tables their columns, time series "time", "metric" (the series) and values.
PANEL_COLUMNS = {
    "Plays": ["time", "station", "title", "artist", "isrc", "track_id", "seconds", "confidence", "state", "play_id"],
    "Top tracks per station": ["station", "track_id", "title", "artist", "plays", "seconds"],
    "Plays per hour": ["time", "metric", "plays"],
    "Music share": ["time", "metric", "share"],
    "Recent rejected plays": ["time", "station", "started_at", "title", "artist", "track_id", "rejected_by", "rejected_reason", "play_id"],
}


def grafana_time(moment: datetime) -> str:
    """Go's time.RFC3339Nano of the UTC time, as Grafana's macros quote it (no trailing zero fraction)."""
    text = moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return f"'{text}Z'"


def interval_seconds(text: str) -> float:
    value = text.strip().strip("'\"")
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)", value).groups()
    return float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]


def expand(sql: str, start: datetime, end: datetime, variables: dict[str, list[str]]) -> str:
    """Grafana's front end interpolates template variables (a multi-value or All variable as quoted literals
    joined by commas), then its PostgreSQL back end expands the macros (pkg/tsdb/grafana-postgresql-datasource/macros.go)."""

    def variable(match: re.Match) -> str:
        name, form = match.group(1) or match.group(3), match.group(2)
        if form not in (None, "sqlstring"):
            raise AssertionError(f"format :{form} is not one this test interpolates; add it as Grafana does")
        return ",".join("'" + value.replace("'", "''") + "'" for value in variables[name])

    sql = re.sub(r"\$\{(?!__)(\w+)(?::(\w+))?\}|\$(?!__)(\w+)", variable, sql)

    def macro(match: re.Match) -> str:
        name, args = match.group(1), [arg.strip() for arg in match.group(2).split(",")] if match.group(2).strip() else []
        if name == "__time":
            return f'{args[0]} AS "time"'
        if name == "__timeEpoch":
            return f'extract(epoch from {args[0]}) as "time"'
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN {grafana_time(start)} AND {grafana_time(end)}"
        if name == "__timeFrom":
            return grafana_time(start)
        if name == "__timeTo":
            return grafana_time(end)
        if name in ("__timeGroup", "__timeGroupAlias"):
            seconds = f"{interval_seconds(args[1]):g}"
            group = f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"
            return group + (' AS "time"' if name == "__timeGroupAlias" else "")
        raise AssertionError(f"macro ${name} is not one this test expands; add it as Grafana expands it")

    return re.sub(r"\$(__\w+)\(([^)]*)\)", macro, sql)


@pytest.fixture(scope="module")
def grafana_db(postgres: servers.PostgresServer, demo_run) -> tuple[str, list, str]:
    """A play log with the demo's plays and synthetic ones (one rejected), an unknown stretch promoted into a play a user
    rejected, and a URL as Grafana (the role is the cluster's, so it is made once, for this module's database)."""
    _, _, demo_events = demo_run
    log = PlayLog.open(postgres.create_database("grafana_dashboards"), migrate=True)
    events = plays_in(demo_events) + synthetic_plays(40, streams=3)
    log.apply(e.to_json() for e in events + synthetic_unknowns() + synthetic_airtime() + promoted_plays(PROMOTED, "the-song"))
    log.reject(promoted_plays(PROMOTED, "the-song")[-1].play_id, "another song", "tester")
    ended = [e for e in events if e.state == "ended"]
    log.reject(ended[-1].play_id, "a jingle", "tester")
    database = make_url(log.url).database
    env = {**os.environ, "PGHOST": servers.HOST, "PGPORT": str(postgres.port), "POSTGRES_USER": "airtrace", "POSTGRES_DB": database,
           "GRAFANA_DB_PASSWORD": "grafana-test", "PATH": str(Path(servers.postgres_bin("psql")).parent) + ":" + os.environ["PATH"]}
    result = subprocess.run(["sh", str(ROOT / "deploy" / "postgres" / "grafana-reader.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return f"postgresql://grafana@{servers.HOST}:{postgres.port}/{database}", ended[:-1], ended[-1].play_id


def run(url: str, sql: str) -> tuple[list[str], list[tuple]]:
    with psycopg.connect(url) as connection:
        cursor = connection.execute(sql)
        return [column.name for column in cursor.description], cursor.fetchall()


def test_every_dashboard_query_runs_as_grafana_with_the_columns_its_panel_shows(grafana_db) -> None:
    url, shown, rejected_id = grafana_db
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        run(url, "DELETE FROM plays")  # Grafana reads, and only reads
    (variable,) = DASHBOARD["templating"]["list"]
    columns, rows = run(url, expand(variable["query"], datetime.now(timezone.utc), datetime.now(timezone.utc), {}))
    stations = [row[0] for row in rows]
    assert stations == sorted({e.stream_id for e in shown})
    start = min(datetime.fromtimestamp(e.started_at, timezone.utc) for e in shown).replace(minute=0, second=0, microsecond=0)
    end = max(datetime.now(timezone.utc), *(datetime.fromtimestamp(e.ended_at, timezone.utc) for e in shown)).replace(microsecond=0) + timedelta(hours=1)

    results = {}
    for panel in DASHBOARD["panels"]:
        (target,) = panel["targets"]
        columns, rows = run(url, expand(target["rawSql"], start, end, {"stream": stations}))
        assert columns == PANEL_COLUMNS[panel["title"]], panel["title"]
        assert rows, f"{panel['title']} shows nothing"
        if target["format"] == "time_series":
            assert columns[0] == "time" and "metric" in columns, panel["title"]
        for override in panel["fieldConfig"]["overrides"]:
            assert override["matcher"]["options"] in columns, f"{panel['title']}: an override for a column it does not have"
        results[panel["title"]] = [dict(zip(columns, row)) for row in rows]

    assert {row["play_id"] for row in results["Plays"]} == {e.play_id for e in shown}
    per_track = Counter((e.stream_id, e.track_id) for e in shown)
    for row in results["Top tracks per station"]:
        assert row["plays"] == per_track[row["station"], row["track_id"]]
    assert max(Counter(row["station"] for row in results["Top tracks per station"]).values()) <= 10
    assert sum(row["plays"] for row in results["Plays per hour"]) == len(shown)
    assert {row["metric"] for row in results["Plays per hour"]} == set(stations)
    # Air times travel with millisecond precision: each play's seconds on air may differ from its duration by 1 ms.
    assert float(sum(row["share"] for row in results["Music share"])) * 3600 == pytest.approx(sum(e.duration for e in shown), abs=0.001 * len(shown))
    assert all(0 <= row["share"] <= 1 for row in results["Music share"])
    reasons = {row["play_id"]: row["rejected_reason"] for row in results["Recent rejected plays"]}
    assert reasons == {rejected_id: "a jingle", promoted_plays(PROMOTED, "the-song")[-1].play_id: "another song"}


def test_the_panels_follow_the_station_and_the_time_range(grafana_db) -> None:
    url, shown, _ = grafana_db
    radio = [e for e in shown if e.stream_id == "radio-1"]
    start = datetime.fromtimestamp(radio[0].started_at, timezone.utc).replace(minute=0, second=0, microsecond=0)
    end = start + timedelta(hours=2)
    inside = [e for e in radio if start.timestamp() <= e.started_at <= end.timestamp()]
    sql = {panel["title"]: panel["targets"][0]["rawSql"] for panel in DASHBOARD["panels"]}
    _, rows = run(url, expand(sql["Plays"], start, end, {"stream": ["radio-1"]}))
    assert sorted(row[-1] for row in rows) == sorted(e.play_id for e in inside)
    _, rows = run(url, expand(sql["Plays per hour"], start, end, {"stream": ["radio-1"]}))
    assert sum(row[2] for row in rows) == len(inside) and {row[1] for row in rows} == {"radio-1"}
    _, rows = run(url, expand(sql["Music share"], start, end, {"stream": ["radio-1", "it's"]}))
    assert len(rows) == 2 and all(row[1] == "radio-1" for row in rows)  # one row per hour of the range


def test_the_airtime_panel_shows_the_airtime_report_of_its_stream(grafana_db) -> None:
    """The stream dashboard's one play-log panel: for its stream (a single-valued Prometheus variable), the
    same seconds per hour as `airtrace plays airtime`, over the whole hours the range touches."""
    url, _, _ = grafana_db
    (panel,) = [panel for panel in STREAM_DASHBOARD["panels"] if panel["title"] == "Airtime per hour"]
    start, end = datetime.fromtimestamp(DAY + 1800, timezone.utc), datetime.fromtimestamp(DAY + 3 * 3600 + 60, timezone.utc)
    log = PlayLog.open(url)  # as the read-only role
    columns_of = {"catalog music": "catalog_music", "unknown music": "unknown_music"}
    for station in ("radio-0", "radio-1"):
        columns, rows = run(url, expand(panel["targets"][0]["rawSql"], start, end, {"stream": [station]}))
        assert columns == ["time", "metric", "seconds"]
        shown = {(time.isoformat(timespec="milliseconds").replace("+00:00", "Z"), columns_of.get(metric, metric)): seconds
                 for time, metric, seconds in rows if seconds}
        report = {(row["hour_utc"], column): row[column] for row in queries.airtime_report(log, TimeRange(start, end), station)[1]
                  for column in queries.AIRTIME_COLUMNS[2:] if row[column]}
        assert shown.keys() == report.keys() and shown, station
        for key, seconds in report.items():
            assert shown[key] == pytest.approx(seconds, abs=0.001), key
    assert {metric for _, metric, _ in run(url, expand(panel["targets"][0]["rawSql"], start, end, {"stream": ["radio-0"]}))[1]} == {
        "catalog music", "unknown music", "music", "speech", "speech_over_music", "silence", "other"}
