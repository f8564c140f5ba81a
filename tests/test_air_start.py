"""Recordings (logger files, air checks, TV channels recorded off air) monitored after they aired: their plays carry
the time the music aired, from the file's name (--air-start-from) or its streams entry (air_start), and the same
recording monitored again is the same plays."""

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

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from catalog_fixtures import MUSIC
from monitor import metrics
from monitor.cli import main
from monitor.playlog.queries import list_plays
from monitor.playlog.store import PlayLog
from monitor.records import AudioWindow
from monitor.stages.ingest import load_sources, start_readers
from monitor.stages.mux import command_line_sources
from monitor.stages.sources import AirStartFromName, ConfigError, Recordings, sources_from_urls
from monitor.stages.windows import WindowGrid
from tv_fixtures import ffmpeg, television, without_audio

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
    """A live stream airs as it arrives, whether it is a plain stream, a track chosen with audio or a multiplex."""
    live = "http://127.0.0.1:9/live"
    streams = tmp_path / "streams.yaml"
    for entry in ({"id": "radio1", "url": live}, {"id": "radio1", "url": live, "audio": {"index": 0}}, {"mux": "tv", "url": live, "programs": [1, 2]}):
        streams.write_text(yaml.safe_dump([{**entry, "air_start": "2026-12-05T10:00:00Z"}]))
        code, output = monitor("--catalog", str(built_catalog), "--no-playlog", "--streams", str(streams))
        assert code == 2 and f"stream #1: air_start is for recorded files, and '{live}' is not a local file" in output, entry
    for args in ([live], ["--audio", "index=0", live], ["--programs", "all", live]):
        code, output = monitor("--catalog", str(built_catalog), "--no-playlog", "--air-start-from", NAME_FORMAT, *args)
        assert code == 2 and f"--air-start-from: {live} is not a local file; a live stream airs as it arrives" in output, args


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


def test_a_file_named_with_a_time_the_clocks_skipped_is_skipped_and_the_others_go_on(loggers: list[Path], tmp_path: Path,
                                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """02:30 the night Paris went to summer time never showed on its clocks: a file named so was read as 03:30, an hour
    off, without a word (--from/--to of the play log refused such a time already)."""
    skipped, after = tmp_path / "radio1-2026-03-29T02-30-00.wav", tmp_path / "radio1-2026-03-29T03-30-00.wav"
    for path in (skipped, after):
        shutil.copyfile(loggers[0], path)
    sources = sources_from_urls([str(skipped), str(after)], AirStartFromName.parse(NAME_FORMAT, "Europe/Paris"))
    assert [(source.id, source.air_start) for source in sources] == [(after.stem, datetime(2026, 3, 29, 1, 30, tzinfo=timezone.utc).timestamp())]
    assert (f"{skipped}: its name gives no air start (2026-03-29T02:30:00 is no time in Europe/Paris: its clocks skipped it, going from "
            "UTC+01:00 to UTC+02:00; rename the file with a time its clocks showed, or with its offset (+01:00 or +02:00) read by %z") in caplog.text


def test_a_file_named_with_a_time_the_clocks_showed_twice_aired_the_first_time_unless_its_name_has_the_offset(loggers: list[Path],
                                                                                                                tmp_path: Path) -> None:
    """02:30 the night Paris went back to winter time showed twice: the first (summer time, +02:00), as --from reads it;
    a logger that names both writes the offset, read by %z."""
    twice, second = tmp_path / "radio1-2026-10-25T02-30-00.wav", tmp_path / "radio1-2026-10-25T02-30-00+0100.wav"
    for path in (twice, second):
        shutil.copyfile(loggers[0], path)
    (first,) = sources_from_urls([str(twice)], AirStartFromName.parse(NAME_FORMAT, "Europe/Paris"))
    (with_offset,) = sources_from_urls([str(second)], AirStartFromName.parse(NAME_FORMAT + "%z", "Europe/Paris"))
    assert first.air_start == datetime(2026, 10, 25, 0, 30, tzinfo=timezone.utc).timestamp()
    assert with_offset.air_start == datetime(2026, 10, 25, 1, 30, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("command", ["monitor", "ingest"])
def test_an_air_start_zone_given_without_air_start_from_is_a_usage_error(built_catalog: Path, loggers: list[Path], command: str) -> None:
    """--air-start-zone reads the times of --air-start-from's file names: without it, it changed nothing, without a word."""
    catalog = ["--catalog", str(built_catalog), "--no-playlog"] if command == "monitor" else []
    result = CliRunner().invoke(main, [command, *catalog, "--air-start-zone", "Europe/Paris", str(loggers[0])])
    assert result.exit_code == 2, result.output
    assert "--air-start-zone is the time zone of the file names' times that --air-start-from reads, and no --air-start-from was given" in result.output


GRID = WindowGrid(sample_rate=8000, window=8000, hop=4000)


def test_a_recorded_channel_with_its_track_chosen_plays_when_it_aired_after_its_audio_pid_went_missing(built_catalog: Path, tmp_path: Path) -> None:
    """A TV channel recorded off air (a transport stream), its track chosen with --audio and its air start read from its
    name, was refused ("not with --audio"). 16 s of other music, then a catalog track, and the audio PID missing from 2 s
    to 14 s while the video went on: the play is placed 16 s after the air start, not where the audio resumed in the
    recording's audio (4 s), and the same recording monitored again adds no plays."""
    audio = tmp_path / "channel.wav"
    ffmpeg("-i", str(MUSIC / "gardien-go.opus"), "-i", str(MUSIC / "area1-game.opus"), "-filter_complex",
           "[0:a]atrim=0:16,asetpts=N/SR/TB[lead];[1:a]atrim=0:20,asetpts=N/SR/TB[track];[lead][track]concat=n=2:v=0:a=1", str(audio))
    recording = tmp_path / "radio1-2026-12-05T10-00-00.ts"
    recording.write_bytes(without_audio(television(tmp_path / "channel.ts", 36.0, audio=audio), 2.0, 14.0))
    playlog = tmp_path / "plays.sqlite"
    common = ["--catalog", str(built_catalog), "--playlog", str(playlog), "--air-start-from", NAME_FORMAT, "--air-start-zone", "Europe/Paris",
              "--audio", "disposition=main"]

    runs = []
    for events in (tmp_path / "plays.jsonl", tmp_path / "again.jsonl"):
        code, output = monitor(*common, "--events", str(events), str(recording))
        assert code == 0, output
        runs.append([e for e in map(json.loads, events.read_text().splitlines()) if e.get("state") == "started"])
        assert [(e["stream_id"], e["track_id"]) for e in runs[-1]] == [(recording.stem, "area1-game")]
        into_the_recording = datetime.fromisoformat(runs[-1][0]["started_at"]) - aired(recording.stem)
        assert abs(into_the_recording.total_seconds() - 16.0) <= HOP_SECONDS
    assert [(e["play_id"], e["started_at"]) for e in runs[1]] == [(e["play_id"], e["started_at"]) for e in runs[0]]
    assert [row["play_id"] for row in list_plays(PlayLog.open(playlog))[1]] == [runs[0][0]["play_id"]]


def read_every_window(sources: list) -> list[AudioWindow]:
    """The windows start_readers gives, numbered as embedded mode and `airtrace ingest` number them."""
    items: list = []
    for thread in start_readers(sources, GRID, items.append):
        thread.join()
    return sorted((item for item in items if isinstance(item, AudioWindow)), key=lambda w: (w.stream_id, w.seq))


@pytest.mark.parametrize("declared", ["mux entry", "--programs"])
def test_every_program_of_a_recorded_multiplex_airs_and_is_numbered_from_its_air_start(loggers: list[Path], tmp_path: Path, declared: str) -> None:
    """Two programs recorded off air in one transport stream, with the air start of a mux entry (refused: an unknown field)
    or of --air-start-from with --programs (which dropped it: the windows aired when they were read, numbered from 0). Both
    programs' windows air at the air start plus their offset and are numbered from it in milliseconds, so the same
    recording read again gives the same windows."""
    recording = tmp_path / "tv-2026-12-05T10-00-00.ts"
    ffmpeg(*(arg for path in loggers for arg in ("-i", str(path))), "-map", "0:a", "-map", "1:a", "-c:a", "mp2", "-ar", "48000",
           "-program", "program_num=1:st=0", "-program", "program_num=2:st=1", "-f", "mpegts", str(recording))
    air_start = datetime(2026, 12, 5, 10, tzinfo=PARIS_IN_DECEMBER).timestamp()
    streams = tmp_path / "streams.yaml"
    streams.write_text(f"- {{mux: tv, url: '{recording}', programs: [1, 2], air_start: '2026-12-05T10:00:00+01:00'}}\n")
    name = AirStartFromName.parse("name:tv-%Y-%m-%dT%H-%M-%S", "Europe/Paris")

    def declared_sources() -> list:
        if declared == "mux entry":
            return load_sources(streams)
        return command_line_sources(sources_from_urls([str(recording)], name), None, "all")

    windows = read_every_window(declared_sources())
    first = round(air_start * 1000)
    for program in (1, 2):
        own = [w for w in windows if w.stream_id == f"{declared_sources()[0].id}-{program}"]
        assert len(own) >= GRID.count(28 * GRID.sample_rate)  # the whole recording, less what the resampler held at its end
        assert [w.seq for w in own] == list(range(first, first + len(own))) and {w.run for w in own} == {first}
        assert [w.offset for w in own] == [i * GRID.hop_seconds for i in range(len(own))]
        assert [w.air_time for w in own] == pytest.approx([air_start + w.offset for w in own], abs=1e-6)
    again = read_every_window(declared_sources())
    assert [(w.stream_id, w.seq, w.offset, w.air_time) for w in again] == [(w.stream_id, w.seq, w.offset, w.air_time) for w in windows]


@pytest.mark.parametrize("came_on", [3.0, 8.0])
def test_a_program_that_came_on_air_during_a_recording_airs_from_there(loggers: list[Path], tmp_path: Path, came_on: float) -> None:
    """A recorded multiplex whose program 2 came on air 3 or 8 s into the recording: its first audio was placed at the
    air start itself, and all of its windows aired that much early (from 5 s on it was placed right). Its first audio
    airs where its own timestamps put it on the input's clock."""
    recording = tmp_path / "tv.ts"
    ffmpeg("-i", str(loggers[0]), "-itsoffset", str(came_on), "-t", "12", "-i", str(loggers[1]), "-map", "0:a", "-map", "1:a", "-c:a", "mp2", "-ar", "48000",
           "-program", "program_num=1:st=0", "-program", "program_num=2:st=1", "-f", "mpegts", str(recording))
    air_start = datetime(2026, 12, 5, 10, tzinfo=PARIS_IN_DECEMBER).timestamp()
    streams = tmp_path / "streams.yaml"
    streams.write_text(f"- {{mux: tv, url: '{recording}', air_start: '2026-12-05T10:00:00+01:00'}}\n")

    windows = read_every_window(load_sources(streams))
    for stream_id, on_air in (("tv-1", 0.0), ("tv-2", came_on)):
        own = [w for w in windows if w.stream_id == stream_id]
        assert not any(w.after_gap for w in own)
        # the input's clock hears a program's first packet within an MP2 frame (24 ms) of its first sample
        assert [w.offset for w in own] == pytest.approx([on_air + i * GRID.hop_seconds for i in range(len(own))], abs=0.025)
        assert [w.air_time for w in own] == pytest.approx([air_start + w.offset for w in own], abs=1e-6)


def test_an_air_start_in_the_future_is_refused(built_catalog: Path, loggers: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A recording aired before it is read: 2126 for 2026 (or file names read in a zone east of theirs) put its plays where
    no report of the day it aired finds them."""
    streams = tmp_path / "streams.yaml"
    streams.write_text(f"- id: radio1\n  url: {loggers[0]}\n  air_start: 2126-12-05T10:00:00+01:00\n")
    code, output = monitor("--catalog", str(built_catalog), "--no-playlog", "--streams", str(streams))
    assert code == 2 and "stream #1: air_start 2126-12-05T09:00:00Z is in the future" in output, output
    future = tmp_path / "radio1-2126-12-05T10-00-00.wav"
    shutil.copyfile(loggers[0], future)
    code, output = monitor("--catalog", str(built_catalog), "--no-playlog", "--air-start-from", NAME_FORMAT, str(future))
    assert code == 2 and "no stream left to monitor" in output
    assert f"{future}: its name gives no air start (air_start 2126-12-05T10:00:00Z is in the future" in caplog.text


def test_a_loggers_files_given_as_one_stream_are_one_station_and_a_song_across_the_hour_is_one_play(built_catalog: Path, loggers: list[Path],
                                                                                                     tmp_path: Path) -> None:
    """A logger's files cut area1-game 11 s into it (10:00:15), and the next hour's file comes after the logger was off.
    As streams of their own they were three stations, and the song across the cut was two plays, one in each file. With
    --stream they are one station read in the order they aired: one play across the cut, as long as the song, and the
    file after the gap a play of its own, after a gap."""
    folder = tmp_path / "loggers"
    folder.mkdir()
    first, second = folder / "radio1-2026-12-05T10-00-00.wav", folder / "radio1-2026-12-05T10-00-15.wav"
    ffmpeg("-i", str(loggers[0]), "-t", "15", str(first))
    ffmpeg("-ss", "15", "-i", str(loggers[0]), str(second))
    later = shutil.copy(loggers[1], folder / f"{loggers[1].name}")  # 11:00, over-theme from 6 s into it
    events = tmp_path / "plays.jsonl"
    code, output = monitor("--catalog", str(built_catalog), "--no-playlog", "--air-start-from", NAME_FORMAT, "--air-start-zone", "Europe/Paris",
                           "--stream", "radio1", "--events", str(events), str(later), str(second), str(first))  # in any order
    assert code == 0, output
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    plays = {line["play_id"]: line for line in lines if line.get("state") == "ended"}
    assert {line["stream_id"] for line in lines if "stream_id" in line} == {"radio1"}
    assert sorted(play["track_id"] for play in plays.values()) == ["area1-game", "over-theme"]
    (song,) = [play for play in plays.values() if play["track_id"] == "area1-game"]
    began = datetime.fromisoformat(song["started_at"]) - aired(first.stem)
    lasted = datetime.fromisoformat(song["ended_at"]) - datetime.fromisoformat(song["started_at"])
    assert abs(began.total_seconds() - 4.0) <= HOP_SECONDS and abs(lasted.total_seconds() - 25.0) <= 2 * HOP_SECONDS
    (theme,) = [play for play in plays.values() if play["track_id"] == "over-theme"]
    assert abs((datetime.fromisoformat(theme["started_at"]) - aired(Path(later).stem)).total_seconds() - 6.0) <= HOP_SECONDS


def test_a_recordings_windows_are_numbered_from_its_own_air_start_when_read_as_part_of_a_stream(loggers: list[Path]) -> None:
    """The same file gives the same window numbers (so the same play ids) monitored alone or as an hour of a station's
    recordings; the station's stream time goes on across its files, with a gap where the logger was off."""
    parts = sources_from_urls([str(path) for path in loggers], AirStartFromName.parse(NAME_FORMAT, "Europe/Paris"))
    alone = read_every_window(parts[1:])
    joined = read_every_window([Recordings.of("radio1", parts)])
    second = [w for w in joined if w.air_time >= parts[1].air_start]
    assert [(w.seq, w.air_time) for w in second] == [(w.seq, w.air_time) for w in alone]
    assert {w.run for w in joined} == {round(parts[0].air_start * 1000)} and [w.after_gap for w in joined].count(True) == 1 and second[0].after_gap
    assert np.all(np.diff([w.offset for w in joined]) > 0) and second[0].offset == pytest.approx(3600.0)


def test_entries_of_one_id_that_are_all_recordings_are_that_streams_recordings(loggers: list[Path], tmp_path: Path) -> None:
    """In a streams file, as with --stream: a station's logger files under its id (they were refused as an id twice)."""
    streams = tmp_path / "streams.yaml"
    hours = [{"id": "radio1", "url": str(path), "air_start": aired(path.stem).isoformat()} for path in reversed(loggers)]
    streams.write_text(yaml.safe_dump(hours + [{"id": "radio2", "url": str(loggers[0])}]))
    (station, other) = load_sources(streams)
    assert isinstance(station, Recordings) and [part.url for part in station.parts] == [str(path) for path in loggers] and other.id == "radio2"
    del hours[0]["air_start"]  # one of them is not a recording with its air start: an id twice, as before
    streams.write_text(yaml.safe_dump(hours))
    with pytest.raises(ConfigError, match="'radio1' appears twice.*unless every entry"):
        load_sources(streams)
