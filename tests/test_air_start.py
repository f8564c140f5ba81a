"""Recordings (logger files, air checks) monitored after they aired: their plays carry the time the music aired,
from the file's name (--air-start-from) or its streams entry (air_start), and the same recording monitored again
is the same plays."""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from catalog_fixtures import MUSIC
from monitor import metrics
from monitor.cli import main
from monitor.playlog.queries import list_plays
from monitor.playlog.store import PlayLog

HOP_SECONDS = 0.5  # a play starts within a window's hop of its first audio

# Two hours of one station's logger: non-catalog music, then a catalog track from `offset` s into the file
LOGGERS = {"radio1-2026-12-05T10-00-00": ("area1-game", 4.0), "radio1-2026-12-05T11-00-00": ("over-theme", 6.0)}
NAME_FORMAT = "name:radio1-%Y-%m-%dT%H-%M-%S"


@pytest.fixture(scope="module")
def loggers(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("loggers")
    paths = []
    for name, (track, offset) in LOGGERS.items():
        path = folder / f"{name}.wav"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(MUSIC / "gardien-go.opus"), "-i", str(MUSIC / f"{track}.opus"), "-filter_complex",
                        f"[0:a]atrim=0:{offset},asetpts=N/SR/TB[lead];[1:a]atrim=0:25,asetpts=N/SR/TB[track];[lead][track]concat=n=2:v=0:a=1",
                        "-ac", "1", "-ar", "16000", str(path)], check=True)
        paths.append(path)
    return paths


PARIS_IN_DECEMBER = timezone(timedelta(hours=1))


def aired(name: str) -> datetime:
    """When a logger file named in Paris time began."""
    return datetime.strptime(name, NAME_FORMAT.removeprefix("name:")).replace(tzinfo=PARIS_IN_DECEMBER)


def monitor(*args: str) -> tuple[int, str]:
    """`airtrace monitor` in this process, its metrics in a registry of their own (as in a process of its own)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics, "create", functools.partial(metrics.create, CollectorRegistry()))
        result = CliRunner().invoke(main, ["monitor", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_logger_files_named_by_time_play_when_they_aired_and_again_add_no_plays(built_catalog: Path, loggers: list[Path], tmp_path: Path) -> None:
    playlog, events = tmp_path / "plays.sqlite", tmp_path / "plays.jsonl"
    common = ["--catalog", str(built_catalog), "--playlog", str(playlog), "--air-start-from", NAME_FORMAT, "--air-start-zone", "Europe/Paris"]
    code, output = monitor(*common, "--events", str(events), *map(str, loggers))
    assert code == 0, output
    started = {line["stream_id"]: line for line in map(json.loads, events.read_text().splitlines()) if line.get("state") == "started"}
    assert set(started) == set(LOGGERS)
    for name, (track, offset) in LOGGERS.items():
        assert started[name]["track_id"] == track
        into_the_file = datetime.fromisoformat(started[name]["started_at"]) - aired(name)
        assert abs(into_the_file.total_seconds() - offset) <= HOP_SECONDS

    report = CliRunner().invoke(main, ["plays", "report", "--playlog", str(playlog), "--day", "2026-12-05"])
    assert report.exit_code == 0, report.output
    assert sorted(row["play_id"] for row in csv.DictReader(io.StringIO(report.output))) == sorted(e["play_id"] for e in started.values())

    logged = {row["play_id"]: (row["started_at"], row["ended_at"]) for row in list_plays(PlayLog.open(playlog))[1]}
    code, output = monitor(*common, "--events", str(tmp_path / "again.jsonl"), *map(str, loggers))
    assert code == 0, output
    again = [json.loads(line) for line in (tmp_path / "again.jsonl").read_text().splitlines()]
    assert {e["play_id"]: e["started_at"] for e in again if e.get("state") == "started"} == {e["play_id"]: e["started_at"] for e in started.values()}
    assert {row["play_id"]: (row["started_at"], row["ended_at"]) for row in list_plays(PlayLog.open(playlog))[1]} == logged


def test_an_air_start_in_the_streams_file_numbers_two_hours_of_one_stream_apart(built_catalog: Path, loggers: list[Path], tmp_path: Path) -> None:
    """Two hours of one stream id that aired the same track at the same point, their files with one modification time
    (restored from an archive): numbered from that time, both hours' plays had one id and the play log kept one."""
    playlog = tmp_path / "plays.sqlite"
    hours = [tmp_path / f"radio1-2026-12-05T{hour}-00-00.wav" for hour in (10, 11)]
    ids = []
    for path in hours:
        shutil.copyfile(loggers[0], path)
        os.utime(path, (1_796_000_000, 1_796_000_000))
        streams = tmp_path / "streams.yaml"
        streams.write_text(f"- id: radio1\n  url: {path}\n  air_start: {aired(path.stem).isoformat()}\n")
        events = tmp_path / f"{path.stem}.jsonl"
        code, output = monitor("--catalog", str(built_catalog), "--playlog", str(playlog), "--streams", str(streams), "--events", str(events))
        assert code == 0, output
        started = [e for e in map(json.loads, events.read_text().splitlines()) if e.get("state") == "started"]
        into_the_file = datetime.fromisoformat(started[0]["started_at"]) - aired(path.stem)
        assert len(started) == 1 and abs(into_the_file.total_seconds() - LOGGERS[loggers[0].stem][1]) <= HOP_SECONDS
        ids.append(started[0]["play_id"])
    assert len(set(ids)) == 2 and sorted(row["play_id"] for row in list_plays(PlayLog.open(playlog))[1]) == sorted(ids)


@pytest.mark.parametrize("air_start, says", [
    ("'2026-12-05 10:00'", "air_start '2026-12-05 10:00' is not a time with its UTC offset"),  # which zone?
    ("2026-12-05T10:00:00", "air_start '2026-12-05 10:00:00' is not a time with its UTC offset"),  # YAML read it as a naive datetime
    ("10 o'clock", "air_start '10 o'clock' is not a time with its UTC offset"),
])
def test_an_air_start_without_a_time_zone_or_not_a_time_is_named_with_its_fix(built_catalog: Path, loggers: list[Path], tmp_path: Path,
                                                                               air_start: str, says: str) -> None:
    streams = tmp_path / "streams.yaml"
    streams.write_text(f"- id: radio1\n  url: {loggers[0]}\n  air_start: {air_start}\n")
    code, output = monitor("--catalog", str(built_catalog), "--no-playlog", "--streams", str(streams))
    assert code == 2 and f"stream #1: {says}" in output and "e.g. air_start: 2026-12-05T10:00:00+01:00" in output


def test_an_air_start_where_it_cannot_hold_is_refused(built_catalog: Path, loggers: list[Path], tmp_path: Path) -> None:
    """A live stream airs as it arrives; a track chosen with audio is read as a multiplex, which takes no air start yet."""
    streams = tmp_path / "streams.yaml"
    for entry, says in (({"url": "http://127.0.0.1:9/live"}, "air_start is for recorded files, and 'http://127.0.0.1:9/live' is not a local file"),
                        ({"url": str(loggers[0]), "audio": {"index": 0}}, "air_start is not taken with audio (a track's choice) yet")):
        streams.write_text(yaml.safe_dump([{"id": "radio1", **entry, "air_start": "2026-12-05T10:00:00Z"}]))
        code, output = monitor("--catalog", str(built_catalog), "--no-playlog", "--streams", str(streams))
        assert code == 2 and f"stream #1: {says}" in output
    for args, says in ((["http://127.0.0.1:9/live"], "--air-start-from: http://127.0.0.1:9/live is not a local file; a live stream airs as it arrives"),
                       (["--audio", "index=0", str(loggers[0])], "--air-start-from: a recording's air start is taken for a whole file, not with --audio")):
        code, output = monitor("--catalog", str(built_catalog), "--no-playlog", "--air-start-from", NAME_FORMAT, *args)
        assert code == 2 and says in output


@pytest.mark.parametrize("spec, says", [
    ("radio1-%Y", "give name:FORMAT"),
    ("name:%Y-%m-%dT%Q", "'Q' is a bad directive"),
    ("name:radio1-%Y-%m-%d", "the format must hold the date and the hour"),
])
def test_a_bad_name_format_is_named_before_any_file_is_read(built_catalog: Path, loggers: list[Path], spec: str, says: str) -> None:
    code, output = monitor("--catalog", str(built_catalog), "--no-playlog", "--air-start-from", spec, str(loggers[0]))
    assert code == 2 and f"--air-start-from {spec!r}: " in output and says in output


def test_a_file_whose_name_does_not_match_is_skipped_and_the_others_go_on(built_catalog: Path, loggers: list[Path], tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    stray = tmp_path / "morning-show.wav"
    stray.write_bytes(loggers[0].read_bytes())
    events = tmp_path / "plays.jsonl"
    code, output = monitor("--catalog", str(built_catalog), "--no-playlog", "--events", str(events), "--air-start-from", NAME_FORMAT, str(stray), str(loggers[1]))
    assert code == 0, output
    assert f"{stray}: its name gives no air start (time data 'morning-show' does not match format" in caplog.text
    assert {e["stream_id"] for e in map(json.loads, events.read_text().splitlines())} == {loggers[1].stem}
    code, output = monitor("--catalog", str(built_catalog), "--no-playlog", "--air-start-from", NAME_FORMAT, str(stray))
    assert code == 2 and "no stream left to monitor" in output
