"""The play log's reports in a station's own time zone (`--zone`, AIRTRACE_ZONE), on a real SQLite play log
filled with play events: the local broadcast day (23 and 25 hours when Europe/Paris changes its clocks),
local --from/--to, times written with their offset, airtime per local hour in a zone half an hour off UTC,
and the UTC output left as it was without a zone."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from monitor.cli import main
from monitor.events import AirtimeEvent, PlayEvent, play_id
from monitor.playlog.queries import TimeRange
from monitor.playlog.store import PlayLog
from test_playlog import DAY, TRACKS
from test_playlog_unknowns import stretch

PARIS = ZoneInfo("Europe/Paris")
KOLKATA = ZoneInfo("Asia/Kolkata")
STATION = "radio1"


def at(local: str, zone: ZoneInfo = PARIS) -> float:
    """UTC epoch seconds of a wall-clock time in `zone` (its first occurrence where the clocks go back)."""
    return datetime.fromisoformat(local).replace(tzinfo=zone).timestamp()


def aired(start: float, seconds: float = 120.0, n: int = 0) -> list[PlayEvent]:
    """The started and ended events of a play of t1 on STATION from `start` (UTC epoch seconds)."""
    started = PlayEvent(play_id(STATION, "t1", int(start) + n), "started", STATION, "t1", start, start - DAY, 10.0, 1.0, 12.0, 0.95,
                        start - DAY + 5, track=TRACKS["t1"])
    return [started, replace(started, state="ended", ended_at=start + seconds, stream_end=started.stream_start + seconds,
                             ref_end=started.ref_start + seconds, decided_offset=started.stream_start + seconds + 3)]


def play_log(tmp_path: Path, starts: list[float], seconds: float = 120.0) -> str:
    location = str(tmp_path / "plays.sqlite")
    log = PlayLog.open(location, migrate=True)
    log.apply(event.to_json() for start in starts for event in aired(start, seconds))
    log.close()
    return location


def plays(location: str, *args: str, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(main, ["plays", *args, "--playlog", location], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_a_paris_cue_sheet_is_the_local_broadcast_day_in_local_times(tmp_path: Path) -> None:
    first, noon, next_day = at("2026-11-24T00:30:00.250"), at("2026-11-24T12:00:00"), at("2026-11-25T00:30:00")
    location = play_log(tmp_path, [first, noon, next_day])
    paris = csv_rows(plays(location, "cuesheet", "--station", STATION, "--day", "2026-11-24", "--zone", "Europe/Paris"))
    assert [(row["cue"], row["start"], row["end"]) for row in paris] == [
        ("1", "2026-11-24T00:30:00.250+01:00", "2026-11-24T00:32:00.250+01:00"),
        ("2", "2026-11-24T12:00:00.000+01:00", "2026-11-24T12:02:00.000+01:00"),
    ]
    utc = plays(location, "cuesheet", "--station", STATION, "--day", "2026-11-24")  # the UTC day: 01:00 to 01:00 in Paris
    assert utc.splitlines()[0] == "cue,start_utc,end_utc,duration,title,artist,isrc,album,track_id"
    assert [row["start_utc"] for row in csv_rows(utc)] == ["2026-11-24T11:00:00.000Z", "2026-11-24T23:30:00.000Z"]
    assert plays(location, "cuesheet", "--station", STATION, "--day", "2026-11-24", "--zone", "UTC") == utc  # UTC is the default, byte for byte
    in_env = plays(location, "cuesheet", "--station", STATION, "--day", "2026-11-24", "--format", "json", env={"AIRTRACE_ZONE": "Europe/Paris"})
    assert [cue["start"] for cue in json.loads(in_env)] == [row["start"] for row in paris]


@pytest.mark.parametrize("day, hours, first, last", [
    ("2026-03-29", 23, "2026-03-29T00:10:00.000+01:00", "2026-03-29T23:10:00.000+02:00"),  # 02:00 became 03:00
    ("2026-10-25", 25, "2026-10-25T00:10:00.000+02:00", "2026-10-25T23:10:00.000+01:00"),  # 03:00 became 02:00 again
])
def test_the_days_paris_changes_its_clocks_have_23_and_25_hours(tmp_path: Path, day: str, hours: int, first: str, last: str) -> None:
    the_day = date.fromisoformat(day)
    span = TimeRange.day(the_day, PARIS)
    assert span.end - span.start == timedelta(hours=hours)
    utc_start = datetime.combine(the_day - timedelta(days=1), datetime.min.time(), timezone.utc).timestamp()
    location = play_log(tmp_path, [utc_start + 3600 * n + 600 for n in range(72)])  # a play at ten past every hour, three days long
    report = csv_rows(plays(location, "report", "--station", STATION, "--day", day, "--zone", "Europe/Paris"))
    stamps = [row["timestamp"] for row in report]
    assert len(stamps) == hours and (stamps[0], stamps[-1]) == (first, last)
    assert len(set(stamps)) == hours  # the hour that comes twice in October is two hours, told apart by their offsets
    airtime = csv_rows(plays(location, "airtime", "--station", STATION, "--day", day, "--zone", "Europe/Paris"))
    assert [row["hour"] for row in airtime] == [stamp.replace(":10:00", ":00:00") for stamp in stamps]
    assert {row["catalog_music"] for row in airtime} == {"120.0"}


def test_from_and_to_without_an_offset_are_times_of_the_zone(tmp_path: Path) -> None:
    location = play_log(tmp_path, [at("2026-11-24T00:30:00"), at("2026-11-24T01:30:00")])
    local = plays(location, "list", "--zone", "Europe/Paris", "--from", "2026-11-24T00:00", "--to", "2026-11-24T01:00", "--format", "json")
    assert [row["started_at"] for row in json.loads(local)] == ["2026-11-24T00:30:00.000+01:00"]
    as_given = plays(location, "list", "--zone", "Europe/Paris", "--from", "2026-11-24T00:00Z", "--format", "json")  # an offset stays as given
    assert [row["started_at"] for row in json.loads(as_given)] == ["2026-11-24T01:30:00.000+01:00"]
    totals = csv_rows(plays(location, "totals", "--zone", "Europe/Paris", "--from", "2026-11-24", "--to", "2026-11-25"))
    assert [(row["track_id"], row["plays"]) for row in totals] == [("t1", "2")]
    assert csv_rows(plays(location, "totals", "--from", "2026-11-24", "--to", "2026-11-25"))[0]["plays"] == "1"  # the UTC day misses 00:30 local


def test_unknown_stretches_are_listed_in_the_zone(tmp_path: Path) -> None:
    location = str(tmp_path / "plays.sqlite")
    log = PlayLog.open(location, migrate=True)
    log.apply([stretch(STATION, 1, at("2026-11-24T00:30:00") - DAY, 40.0).to_json()])
    log.close()
    result = CliRunner().invoke(main, ["unknowns", "list", "--stretches", "--playlog", location, "--zone", "Europe/Paris", "--from", "2026-11-24"])
    assert result.exit_code == 0, result.output
    assert [(row["started_at"], row["ended_at"]) for row in csv_rows(result.output)] == [("2026-11-24T00:30:00.000+01:00", "2026-11-24T00:30:40.000+01:00")]


def test_a_cluster_is_shown_in_the_zone(tmp_path: Path) -> None:
    """`unknowns show` wrote UTC whatever --zone or AIRTRACE_ZONE said, beside `unknowns list` in the station's time."""
    location = str(tmp_path / "plays.sqlite")
    log = PlayLog.open(location, migrate=True)
    first = stretch(STATION, 1, at("2026-11-24T00:30:00") - DAY, 40.0)
    log.apply([first.to_json(), stretch(STATION, 9, at("2026-11-24T09:00:00") - DAY, 40.0, first=(STATION, 1)).to_json()])
    log.close()
    listed = CliRunner().invoke(main, ["unknowns", "list", "--playlog", location])
    (cluster,) = {row["cluster_id"] for row in csv_rows(listed.output)}
    result = CliRunner().invoke(main, ["unknowns", "show", cluster, "--playlog", location], env={"AIRTRACE_ZONE": "Europe/Paris"})
    assert result.exit_code == 0, result.output
    summary, table = result.output.split("\n", 1)
    assert "2026-11-24T00:30:00.000+01:00 to 2026-11-24T09:00:00.000+01:00" in summary
    assert [row["started_at"] for row in csv_rows(table)] == ["2026-11-24T00:30:00.000+01:00", "2026-11-24T09:00:00.000+01:00"]


def test_airtime_in_a_zone_half_an_hour_off_utc_splits_music_at_its_hours(tmp_path: Path) -> None:
    start = at("2026-11-24T10:15:00", KOLKATA)  # 04:45 UTC; ninety minutes, to 11:45 in Kolkata
    location = play_log(tmp_path, [start], seconds=5400.0)
    log = PlayLog.open(location)
    utc_hour = datetime.fromtimestamp(start, timezone.utc).replace(minute=0, second=0).timestamp()
    seconds = {"music": 3000.0, "speech": 600.0, "speech_over_music": 0.0, "silence": 0.0, "other": 0.0}
    log.apply([AirtimeEvent(STATION, utc_hour + 3600 * n, n, seconds, utc_hour + 3600 * n + 3700).to_json() for n in range(3)])
    log.close()
    kolkata = json.loads(plays(location, "airtime", "--station", STATION, "--day", "2026-11-24", "--zone", "Asia/Kolkata", "--format", "json"))
    assert [(row["hour"], row["catalog_music"]) for row in kolkata if row["catalog_music"]] == [
        ("2026-11-24T10:00:00.000+05:30", 2700.0), ("2026-11-24T11:00:00.000+05:30", 2700.0)]
    assert {row[name] for row in kolkata for name in seconds} == {None}  # kept per UTC hour: not to be had per half-shifted hour
    assert [row["hour"][11:16] for row in kolkata] == ["09:00", "10:00", "11:00", "12:00"]  # the hours UTC 04:00-07:00 touch
    utc = json.loads(plays(location, "airtime", "--station", STATION, "--day", "2026-11-24", "--format", "json"))
    assert [(row["hour_utc"], row["catalog_music"], row["music"]) for row in utc] == [
        ("2026-11-24T04:00:00.000Z", 900.0, 3000.0), ("2026-11-24T05:00:00.000Z", 3600.0, 3000.0), ("2026-11-24T06:00:00.000Z", 900.0, 3000.0)]
    paris = json.loads(plays(location, "airtime", "--station", STATION, "--day", "2026-11-24", "--zone", "Europe/Paris", "--format", "json"))
    assert [(row["hour"], row["catalog_music"], row["music"]) for row in paris] == [  # whole hours from UTC: the classes carry over
        ("2026-11-24T05:00:00.000+01:00", 900.0, 3000.0), ("2026-11-24T06:00:00.000+01:00", 3600.0, 3000.0),
        ("2026-11-24T07:00:00.000+01:00", 900.0, 3000.0)]


@pytest.mark.parametrize("command", [["plays", "cuesheet", "--station", STATION, "--day", "2026-11-24"], ["plays", "airtime"], ["unknowns", "list"]])
def test_an_unknown_zone_is_named_with_the_fix(tmp_path: Path, command: list[str]) -> None:
    location = play_log(tmp_path, [at("2026-11-24T00:30:00")])
    for option, env in ((["--zone", "Europe/Pari"], None), ([], {"AIRTRACE_ZONE": "Europe/Pari"})):
        result = CliRunner().invoke(main, [*command, "--playlog", location, *option], env=env)
        assert result.exit_code == 2 and result.exception is not None and isinstance(result.exception, SystemExit)
        assert "unknown time zone 'Europe/Pari': give an IANA name such as Europe/Paris" in result.output


def test_a_local_time_the_clocks_skipped_is_named_with_the_fix(tmp_path: Path) -> None:
    """02:30 on the night Paris goes to summer time never showed on its clocks: it was read as 03:30, an hour off what
    was asked, and --from 02:30 --to 03:01 was refused as '--from 03:30 is not before --to 03:01'."""
    santiago = ZoneInfo("America/Santiago")  # its clocks go from 00:00 to 01:00 on 2026-09-06
    location = play_log(tmp_path, [at("2026-03-29T01:50:00"), at("2026-03-29T03:10:00"), at("2026-09-06T01:30:00", santiago)])
    for option, skipped in (("--from", "2026-03-29T02:30"), ("--to", "2026-03-29T02:00")):
        result = CliRunner().invoke(main, ["plays", "list", "--playlog", location, "--zone", "Europe/Paris", option, skipped])
        assert result.exit_code == 2, result.output
        assert f"{option} {skipped}:00 is no time in Europe/Paris: its clocks skipped it, going from UTC+01:00 to UTC+02:00" in result.output
    listed = plays(location, "list", "--zone", "Europe/Paris", "--from", "2026-03-29T01:55", "--to", "2026-03-29T03:00", "--format", "json")
    assert json.loads(listed) == []  # 03:00 is the end of the gap: the play at 03:10 is after it
    with_offset = plays(location, "list", "--zone", "Europe/Paris", "--from", "2026-03-29T02:05+01:00", "--format", "json")  # 03:05 in summer time
    assert [row["started_at"] for row in json.loads(with_offset)][:1] == ["2026-03-29T03:10:00.000+02:00"]
    day = plays(location, "list", "--zone", "America/Santiago", "--from", "2026-09-06", "--to", "2026-09-07", "--format", "json")  # its start
    assert [row["started_at"] for row in json.loads(day)] == ["2026-09-06T01:30:00.000-03:00"]
