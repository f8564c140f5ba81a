"""Unknown stretches and hourly airtime in the play log, on real SQLite and a real PostgreSQL: idempotent
rows under duplicates and any order, clusters completed whichever airing arrives first, unsupported kinds
skipped without losing the rest, the shared UnknownStore's contract, the cluster queries, `airtrace
unknowns` and `airtrace plays airtime`."""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from monitor.cli import main
from monitor.events import (PROMOTED_FROM, AirtimeEvent, PlayEvent, UnknownEvent, WithdrawnEvent, cluster_id, iso_utc, play_id, promoted_play_id,
                            unknown_id)
from monitor.playlog import queries, unknowns
from monitor.playlog.queries import TimeRange
from monitor.playlog.schema import CONTENT_CLASSES, airtime, cluster_excerpts, plays
from monitor.playlog.schema import unknowns as unknowns_table
from monitor.playlog.store import MalformedEvent, PlayLog, event_row
from monitor.playlog.unknown_store import SqlUnknownStore
from monitor.stages.unknown_store import KeptStretch, MemoryUnknownStore, UnknownStore
from test_playlog import DAY, everything, heard_before, location, playlog, synthetic_plays  # noqa: F401 (fixtures)

SONG = cluster_id(unknown_id("radio-0", 350))
JINGLE = cluster_id(unknown_id("radio-1", 200))


def stretch(stream: str, seq: int, start: float, seconds: float, first: tuple[str, int] | None = None, speed: float = 1.0) -> UnknownEvent:
    """An unknown stretch at DAY + start; `first` names the (stream, seq) of the earlier airing it repeats."""
    matched = None if first is None else unknown_id(*first)
    return UnknownEvent(unknown_id(stream, seq), stream, DAY + start, DAY + start + seconds, start, start + seconds, seconds * 0.9, start + seconds + 2,
                        cluster_id=None if matched is None else cluster_id(matched), matched_unknown_id=matched,
                        ref_start=None if matched is None else 1.5, speed=None if matched is None else speed,
                        score=None if matched is None else 12.0, stream={"name": stream.upper()})


def synthetic_unknowns() -> list[UnknownEvent]:
    """A 200 s song aired three times on two stations (its first airing crosses an hour), a 10 s jingle
    aired three times, and a stretch heard once, in air order."""
    return [
        stretch("radio-1", 200, 2000, 10.0),
        stretch("radio-1", 300, 3000, 10.5, first=("radio-1", 200)),
        stretch("radio-0", 350, 3500, 200.0),
        stretch("radio-2", 380, 3800, 45.0),
        stretch("radio-1", 400, 4000, 9.5, first=("radio-1", 200)),
        stretch("radio-1", 730, 7300, 190.0, first=("radio-0", 350), speed=1.05),
        stretch("radio-0", 1000, 10000, 201.0, first=("radio-0", 350)),
    ]


def synthetic_airtime() -> list[AirtimeEvent]:
    """radio-0's first three hours; its second hour in two parts (the stream restarted within it)."""
    seconds = [{"music": 2400.0, "speech": 1000.0, "speech_over_music": 100.0, "silence": 50.0, "other": 50.0},
               {"music": 1000.0, "speech": 500.0, "speech_over_music": 0.0, "silence": 0.0, "other": 0.0},
               {"music": 1500.0, "speech": 500.0, "speech_over_music": 50.0, "silence": 40.0, "other": 10.0},
               {"music": 3600.0, "speech": 0.0, "speech_over_music": 0.0, "silence": 0.0, "other": 0.0}]
    hours = [DAY, DAY + 3600, DAY + 3600, DAY + 7200]
    return [AirtimeEvent("radio-0", hour, seq, part, hour + 3700) for seq, (hour, part) in enumerate(zip(hours, seconds))]


def table(log: PlayLog, which) -> list[dict]:
    with log.connect() as connection:
        return [dict(row) for row in connection.execute(select(which).order_by(*which.primary_key.columns)).mappings()]


def test_the_content_classes_are_the_classifiers() -> None:
    from encoders.classes import CLASSES

    assert CONTENT_CLASSES == CLASSES


def test_unknown_and_airtime_events_in_any_order_leave_the_rows_of_one_clean_pass(playlog: PlayLog, tmp_path: Path) -> None:
    events = [e.to_json() for e in synthetic_unknowns() + synthetic_airtime() + synthetic_plays(4)]
    clean = PlayLog.open(tmp_path / "clean.sqlite", migrate=True)
    assert clean.apply(events) == len(events)
    expected = {which.name: table(clean, which) for which in (unknowns_table, airtime)}
    assert len(expected["unknowns"]) == 7 and len(expected["airtime"]) == 4
    clusters = {row["unknown_id"]: row["cluster_id"] for row in expected["unknowns"]}
    # The first airings got their cluster from the later ones that matched them.
    assert clusters[unknown_id("radio-0", 350)] == SONG and clusters[unknown_id("radio-1", 200)] == JINGLE
    assert clusters[unknown_id("radio-2", 380)] is None

    rng = random.Random(3)
    delivered = events + rng.sample(events, 8)
    rng.shuffle(delivered)
    for begin in range(0, len(delivered), 5):
        playlog.apply(delivered[begin:begin + 5])
    playlog.apply(list(reversed(events)))  # a whole replay, later airings first
    assert {which.name: table(playlog, which) for which in (unknowns_table, airtime)} == expected
    assert everything(playlog) == everything(clean)


def test_the_earlier_airing_joins_the_cluster_when_it_arrives_after_the_later_one(playlog: PlayLog) -> None:
    events = synthetic_unknowns()
    first, repeat = events[2], events[5]
    playlog.apply([repeat.to_json()])
    playlog.apply([first.to_json()])
    rows = {row["unknown_id"]: row for row in table(playlog, unknowns_table)}
    assert rows[first.unknown_id]["cluster_id"] == rows[repeat.unknown_id]["cluster_id"] == SONG
    assert rows[first.unknown_id]["stream"] == {"name": "RADIO-0"} and rows[repeat.unknown_id]["speed"] == pytest.approx(1.05)


def test_an_unknown_kind_or_version_is_skipped_and_the_rest_of_the_batch_stored(playlog: PlayLog) -> None:
    good = [e.to_json() for e in synthetic_unknowns()[:2] + synthetic_airtime()[:1] + synthetic_plays(1)]
    future = [{**good[0], "schema_version": 3}, {**good[2], "kind": "loudness"}, {"schema_version": 2, "event_id": "x"}]
    assert playlog.apply(future[:2] + good + future[2:]) == len(good)
    assert len(table(playlog, unknowns_table)) == 2 and len(table(playlog, airtime)) == 1 and len(everything(playlog)) == 1


@pytest.mark.parametrize("kind, change, complaint", [
    ("unknown", {"unknown_id": "nope"}, "unknown_id 'nope' is not a UUID"),
    ("unknown", {"stream_end": None}, "stream_end None is not a number"),
    ("unknown", {"cluster_id": 7}, "cluster_id 7 is not a non-empty string"),
    ("airtime", {"seconds": {"music": 10, "applause": 3}}, "is not an object of content classes"),
    ("airtime", {"first_seq": -1}, "first_seq -1 is not a window number"),
    ("airtime", {"hour": "noon"}, "hour 'noon' is not an ISO 8601"),
    # as for plays: they were stored, and reports added up negative seconds
    ("unknown", {"stream_end": 0.0}, "ends .* before it starts"),
    ("unknown", {"ended_at": "2020-01-01T00:00:00.000Z"}, "ends .* before it starts"),
    ("unknown", {"stream_id": "radio\t1"}, "printable text"),
    # `plays airtime` would split a garbled end into millions of hours, and left out hours a day after the start
    ("unknown", {"ended_at": "9999-12-31T00:00:00.000Z"}, "lasts longer than any unknown stretch can"),
    ("unknown", {"stream_end": 2e5}, "lasts longer than any unknown stretch can"),
    ("airtime", {"seconds": {"music": -3600.0}}, "negative number of seconds"),
    ("airtime", {"stream_id": "radio\t1"}, "printable text"),
])
def test_a_malformed_unknown_or_airtime_event_is_named_and_nothing_of_its_batch_written(playlog: PlayLog, kind: str, change: dict,
                                                                                        complaint: str) -> None:
    good = [e.to_json() for e in synthetic_unknowns()[:1] + synthetic_airtime()[:1]]
    bad = {**good[0 if kind == "unknown" else 1], **change}
    with pytest.raises(MalformedEvent, match=f"{kind} event .*{complaint}"):
        playlog.apply(good + [bad])
    assert table(playlog, unknowns_table) == table(playlog, airtime) == []


def test_play_events_of_any_version_are_still_plays() -> None:
    play = synthetic_plays(1)[0].to_json()
    assert event_row(play)[0] == event_row({**play, "schema_version": 2})[0] == "play"
    assert event_row(synthetic_airtime()[0].to_json())[0] == "airtime"


def test_import_stores_every_kind_once_and_names_the_lines_it_skips(tmp_path: Path, location: str) -> None:
    lines = [e.to_line() for e in synthetic_plays(2) + synthetic_unknowns() + synthetic_airtime()]
    events_file = tmp_path / "events.jsonl"
    unsupported = json.dumps({**json.loads(lines[5]), "schema_version": 3})
    events_file.write_text("\n".join(lines[:5] + [unsupported] + lines[5:]) + "\n")
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(main, ["plays", "import", "--playlog", location, str(events_file)])
        assert result.exit_code == 0, result.output
        assert f"{events_file}: 4 play events, 7 unknown stretches, 4 airtime events" in result.output
        assert f"skipped {events_file}:6: event {json.loads(lines[5])['event_id']} is of kind 'unknown' at schema_version 3" in result.output
    log = PlayLog.open(location)
    assert len(table(log, unknowns_table)) == 7 and len(table(log, airtime)) == 4


def test_provisional_and_withdrawn_plays_stay_out_of_the_log_without_complaint(tmp_path: Path, location: str) -> None:
    """The log holds plays once started: a provisional one enters it with its started event, a withdrawn one never."""
    started, ended = synthetic_plays(1)
    heard = heard_before(started)
    phantom = replace(heard, play_id=play_id(started.stream_id, "quoted", 999), track_id="quoted")
    events_file = tmp_path / "events.jsonl"
    lines = [heard, started, ended, phantom, WithdrawnEvent(**{**vars(phantom), "decided_offset": heard.decided_offset + 15.0})]
    events_file.write_text("".join(e.to_line() + "\n" for e in lines))
    result = CliRunner().invoke(main, ["plays", "import", "--playlog", location, str(events_file)])
    assert result.exit_code == 0 and "skipped" not in result.output, result.output
    assert [(row["play_id"], row["state"]) for row in table(PlayLog.open(location), plays)] == [(started.play_id, "ended")]


# ----------------------------------------------------------------------------- the UnknownStore's contract


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UnknownStore]:
    if request.param == "memory":
        yield MemoryUnknownStore()
        return
    where = str(tmp_path / "plays.sqlite") if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    log = PlayLog.open(where, migrate=True)
    yield log.unknown_store()
    log.close()


def kept(n: int, started_at: float, cluster: str | None = None, excerpt: bytes | None = None) -> KeptStretch:
    rng = np.random.default_rng(n)
    windows = 20 + n
    return KeptStretch(unknown_id("radio", n), "radio", started_at, windows * 0.5, np.arange(windows) * 0.5 + 0.125,
                       rng.standard_normal((windows, 8)).astype(np.float16), cluster, excerpt)


def same(found: KeptStretch, given: KeptStretch) -> None:
    assert (found.unknown_id, found.stream_id, found.cluster_id, found.excerpt) == (given.unknown_id, given.stream_id, given.cluster_id, None)
    assert found.started_at == pytest.approx(given.started_at, abs=1e-6) and found.duration == given.duration
    assert found.embeddings.dtype == np.float16 and np.array_equal(found.embeddings, given.embeddings)
    assert np.array_equal(found.offsets, given.offsets)


def test_the_store_keeps_stretches_once_and_lists_those_added_since(store: UnknownStore) -> None:
    stretches = [kept(n, DAY + 100 * n, excerpt=b"OggS" + bytes([n])) for n in range(5)]
    for one in stretches[:3]:
        store.keep(one)
    first = store.added_since(0, DAY - 1)
    assert [s.unknown_id for s in first] == [s.unknown_id for s in stretches[:3]]
    for found, given in zip(first, stretches):
        same(found, given)
    rows = [s.row for s in first]
    assert rows == sorted(rows) and len(set(rows)) == 3
    store.keep(stretches[1])  # a replay
    for one in stretches[3:]:
        store.keep(one)
    later = store.added_since(rows[-1], DAY - 1)
    assert [s.unknown_id for s in later] == [s.unknown_id for s in stretches[3:]] and later[0].row > rows[-1]
    assert [s.unknown_id for s in store.added_since(0, DAY + 150)] == [s.unknown_id for s in stretches[2:]]  # aired after, strictly


def test_the_store_joins_unclustered_stretches_and_expires_old_ones(store: UnknownStore) -> None:
    stretches = [kept(n, DAY + 100 * n) for n in range(4)]
    for one in stretches[:3]:
        store.keep(one)
    store.keep(replace(stretches[3], cluster_id="c-first"))
    store.join(stretches[0].unknown_id, "c-one")
    store.join(stretches[0].unknown_id, "c-two")  # it has a cluster already: nothing changes
    store.join(stretches[3].unknown_id, "c-two")
    store.join(unknown_id("radio", 99), "c-one")  # never kept: nothing to join
    ids = [s.unknown_id for s in stretches] + [unknown_id("radio", 99)]
    assert store.clusters_of(ids) == {stretches[0].unknown_id: "c-one", stretches[3].unknown_id: "c-first"}
    assert store.expire(DAY + 150) == 2
    assert [s.unknown_id for s in store.added_since(0, 0.0)] == [s.unknown_id for s in stretches[2:]]
    assert store.clusters_of(ids) == {stretches[3].unknown_id: "c-first"}
    assert store.expire(DAY + 150) == 0


def test_every_process_shares_the_store_and_a_cluster_keeps_its_excerpt_after_expiry(location: str) -> None:
    worker_a, worker_b = PlayLog.open(location, migrate=True), PlayLog.open(location)
    a, b = worker_a.unknown_store(), SqlUnknownStore(worker_b.engine)
    first, repeat = kept(1, DAY, excerpt=b"OggS first"), kept(2, DAY + 3600, excerpt=b"OggS repeat")
    a.keep(first)
    (seen,) = b.added_since(0, 0.0)
    b.keep(replace(repeat, cluster_id=SONG))  # b heard the repeat: its excerpt is the cluster's
    b.join(first.unknown_id, SONG)  # the first airing joins; the cluster keeps the excerpt it has
    assert [s.unknown_id for s in a.added_since(seen.row, 0.0)] == [repeat.unknown_id]
    assert table(worker_a, cluster_excerpts) == [{"cluster_id": SONG, "unknown_id": repeat.unknown_id, "excerpt": b"OggS repeat"}]
    a.keep(kept(3, DAY + 7200, cluster=JINGLE))  # no audio: no excerpt
    a.join(kept(4, 0).unknown_id, JINGLE)
    assert a.expire(DAY + 10000) == 3
    assert a.added_since(0, 0.0) == [] and table(worker_b, cluster_excerpts)[0]["excerpt"] == b"OggS repeat"
    assert len(table(worker_b, cluster_excerpts)) == 1


# ----------------------------------------------------------------------------- queries and the CLI


@pytest.fixture
def filled(playlog: PlayLog) -> PlayLog:
    playlog.apply(e.to_json() for e in synthetic_unknowns() + synthetic_airtime() + synthetic_plays(12))
    store = playlog.unknown_store()
    store.keep(kept(1, DAY + 3500, cluster=SONG, excerpt=b"OggS the song"))
    return playlog


def address(log: PlayLog) -> str:
    """What --playlog takes for this log."""
    return log.url.database if log.is_sqlite else log.url.render_as_string(hide_password=False)


def test_clusters_are_listed_with_their_kind_airings_and_excerpt(filled: PlayLog) -> None:
    columns, rows = unknowns.list_clusters(filled)
    assert columns == ["cluster_id", "kind", "plays", "first_seen", "last_seen", "streams", "typical_duration", "excerpt"]
    assert rows == [  # most aired first, then first aired first
        {"cluster_id": JINGLE, "kind": "jingle", "plays": 3, "first_seen": iso_utc(DAY + 2000), "last_seen": iso_utc(DAY + 4000), "streams": "radio-1",
         "typical_duration": 10.0, "excerpt": False},
        {"cluster_id": SONG, "kind": "song", "plays": 3, "first_seen": iso_utc(DAY + 3500), "last_seen": iso_utc(DAY + 10000), "streams": "radio-0,radio-1",
         "typical_duration": 200.0, "excerpt": True},
    ]
    choose = unknowns.ClusterFilter
    assert [r["cluster_id"] for r in unknowns.list_clusters(filled, choose(kind="jingle"))[1]] == [JINGLE]
    assert unknowns.list_clusters(filled, choose(stream="radio-0"))[1][0]["plays"] == 2
    assert unknowns.list_clusters(filled, choose(stream="radio-0", min_plays=3))[1] == []
    hour = datetime.fromtimestamp(DAY + 3600, timezone.utc)
    later = unknowns.list_clusters(filled, choose(span=TimeRange(hour)))[1]
    assert [(row["cluster_id"], row["plays"], row["first_seen"]) for row in later] == [(SONG, 2, iso_utc(DAY + 7300)), (JINGLE, 1, iso_utc(DAY + 4000))]
    stretches = unknowns.list_stretches(filled)[1]
    assert len(stretches) == 7 and sum(row["cluster_id"] is None for row in stretches) == 1
    assert stretches[1]["music_seconds"] == 9.45  # 10.5 s * 0.9, rounded as every figure is: not 9.450000000000001


def test_airtime_per_station_and_hour_clips_plays_and_stretches_to_the_hour(filled: PlayLog) -> None:
    columns, rows = queries.airtime_report(filled, TimeRange(), "radio-0")
    assert columns == ["station", "hour_utc", "catalog_music", "unknown_music", "music", "speech", "speech_over_music", "silence", "other"]
    by_hour = {row["hour_utc"]: row for row in rows}
    assert by_hour[iso_utc(DAY)]["unknown_music"] == 100.0 and by_hour[iso_utc(DAY + 3600)]["unknown_music"] == 100.0  # the song crosses the hour
    assert by_hour[iso_utc(DAY + 7200)]["unknown_music"] == 201.0
    assert by_hour[iso_utc(DAY + 3600)]["music"] == 2500.0 and by_hour[iso_utc(DAY + 3600)]["speech"] == 1000.0  # two parts of the hour add up
    plays = [e for e in synthetic_plays(12) if e.state == "ended" and e.stream_id == "radio-0"]
    assert sum(row["catalog_music"] for row in rows) == pytest.approx(sum(e.duration for e in plays), abs=0.001 * len(plays))
    for row in rows:
        assert row["catalog_music"] <= 3600 and row["unknown_music"] <= 3600
    one_hour = TimeRange(datetime.fromtimestamp(DAY + 3700, timezone.utc), datetime.fromtimestamp(DAY + 3800, timezone.utc))
    assert [row["hour_utc"] for row in queries.airtime_report(filled, one_hour)[1]] == [iso_utc(DAY + 3600)] * 3  # whole hours, every station


def test_the_cli_lists_shows_and_exports_clusters(filled: PlayLog, tmp_path: Path) -> None:
    where = address(filled)
    runner = CliRunner()
    listed = runner.invoke(main, ["unknowns", "list", "--playlog", where, "--kind", "song", "--format", "json"])
    assert listed.exit_code == 0, listed.output
    assert [row["cluster_id"] for row in json.loads(listed.output)] == [SONG]
    stretches = runner.invoke(main, ["unknowns", "list", "--playlog", where, "--stretches", "--stream", "radio-2"])
    assert [row["unknown_id"] for row in csv.DictReader(io.StringIO(stretches.output))] == [unknown_id("radio-2", 380)]
    assert runner.invoke(main, ["unknowns", "list", "--playlog", where, "--stretches", "--kind", "song"]).exit_code == 2
    for command in (["list"], ["list", "--stretches"], ["export", "--out", str(tmp_path / "misspelt")]):  # it read as a station without unknown music
        misspelt = runner.invoke(main, ["unknowns", *command, "--playlog", where, "--stream", "radio-9"])
        assert misspelt.exit_code == 1 and "no station 'radio-9' in the play log" in misspelt.output and "radio-0, radio-1, radio-2" in misspelt.output
    assert not (tmp_path / "misspelt").exists()

    shown = runner.invoke(main, ["unknowns", "show", SONG, "--playlog", where])
    assert shown.exit_code == 0, shown.output
    summary, table_text = shown.output.split("\n", 1)
    assert summary.startswith(f"cluster {SONG}: song, 3 airings on radio-0,radio-1") and summary.endswith("excerpt saved")
    airings = list(csv.DictReader(io.StringIO(table_text)))
    assert [(a["stream_id"], a["matched_unknown_id"]) for a in airings] == [
        ("radio-0", ""), ("radio-1", unknown_id("radio-0", 350)), ("radio-0", unknown_id("radio-0", 350))]
    assert airings[1]["speed"] == "1.05" and airings[1]["ended_at"]
    as_json = json.loads(runner.invoke(main, ["unknowns", "show", JINGLE, "--playlog", where, "--format", "json"]).output)
    assert as_json["cluster"]["kind"] == "jingle" and len(as_json["occurrences"]) == 3

    for bad, complaint in [("not-a-cluster", "'not-a-cluster' is not a cluster id"), (cluster_id("nothing"), f"no cluster {cluster_id('nothing')}")]:
        result = runner.invoke(main, ["unknowns", "show", bad, "--playlog", where])
        assert result.exit_code == 1 and complaint in result.output and "airtrace unknowns list" in result.output

    out = tmp_path / "export"
    result = runner.invoke(main, ["unknowns", "export", "--playlog", where, "--out", str(out)])
    assert result.exit_code == 0 and "2 tables and 1 excerpts" in result.output, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(["clusters.csv", "occurrences.csv", f"{SONG}.ogg"])
    assert (out / f"{SONG}.ogg").read_bytes() == b"OggS the song"
    assert len(list(csv.DictReader((out / "occurrences.csv").open()))) == 6
    (out / "clusters.csv").write_text("mine")
    refused = runner.invoke(main, ["unknowns", "export", "--playlog", where, "--out", str(out)])
    assert refused.exit_code == 1 and "--overwrite" in refused.output and (out / "clusters.csv").read_text() == "mine"
    assert runner.invoke(main, ["unknowns", "export", "--playlog", where, "--out", str(out), "--overwrite", "--format", "json"]).exit_code == 0
    assert (out / "clusters.csv").read_text() == "mine" and len(json.loads((out / "clusters.json").read_text())) == 2
    replaced = runner.invoke(main, ["unknowns", "export", "--playlog", where, "--out", str(out), "--overwrite"])
    assert replaced.exit_code == 0 and (out / "clusters.csv").read_text().startswith("cluster_id,kind")



def test_an_export_holds_the_airings_its_clusters_count(filled: PlayLog, tmp_path: Path) -> None:
    """occurrences has what clusters counts: airings on the stream and in the range asked, and none a promotion made a play
    (it listed every airing of each cluster, on any stream, at any time)."""
    with filled.engine.begin() as connection:  # the song's latest airing is a play now; its first was before the range
        connection.execute(unknowns_table.update().where(unknowns_table.c.unknown_id == unknown_id("radio-0", 1000))
                           .values(promoted_play_id=play_id("radio-0", "x", 1)))
    out = tmp_path / "export"
    hour = datetime.fromtimestamp(DAY + 3000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    result = CliRunner().invoke(main, ["unknowns", "export", "--playlog", address(filled), "--out", str(out), "--format", "json", "--from", hour])
    assert result.exit_code == 0, result.output
    clusters = {row["cluster_id"]: row["plays"] for row in json.loads((out / "clusters.json").read_text())}
    airings = [(row["cluster_id"], row["unknown_id"]) for row in json.loads((out / "occurrences.json").read_text())]
    assert clusters == {SONG: 2, JINGLE: 2}
    assert sorted(airings) == sorted([(SONG, unknown_id("radio-0", 350)), (SONG, unknown_id("radio-1", 730)),
                                      (JINGLE, unknown_id("radio-1", 300)), (JINGLE, unknown_id("radio-1", 400))])
    on_one = CliRunner().invoke(main, ["unknowns", "export", "--playlog", address(filled), "--out", str(tmp_path / "radio-0"), "--stream", "radio-0"])
    assert on_one.exit_code == 0, on_one.output
    assert [row["unknown_id"] for row in csv.DictReader((tmp_path / "radio-0" / "occurrences.csv").open())] == [unknown_id("radio-0", 350)]


def test_an_export_that_cannot_be_written_says_so_and_leaves_no_file_of_its_own(filled: PlayLog, tmp_path: Path) -> None:
    """It stopped with a traceback, the tables it had written left behind as if the export were whole."""
    (tmp_path / "a-file").write_text("mine")
    result = CliRunner().invoke(main, ["unknowns", "export", "--playlog", address(filled), "--out", str(tmp_path / "a-file" / "export")])
    assert result.exit_code == 1 and "cannot write the export into" in result.output and "--out" in result.output, result.output
    out = tmp_path / "export"
    (out / f"{SONG}.ogg").mkdir(parents=True)  # in the way of the excerpt, written after the tables
    (out / f"{SONG}.ogg" / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["unknowns", "export", "--playlog", address(filled), "--out", str(out), "--overwrite"])
    assert result.exit_code == 1 and "cannot write the export into" in result.output, result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [f"{SONG}.ogg", f"{SONG}.ogg/notes.txt"]
    assert (tmp_path / "a-file").read_text() == "mine"


def test_a_station_heard_only_in_unknown_music_or_airtime_is_known(playlog: PlayLog) -> None:
    playlog.apply([synthetic_airtime()[0].to_json(), stretch("radio-7", 1, 0, 30.0).to_json()])
    assert [queries.has_station(playlog, station) for station in ("radio-0", "radio-7", "radio-9")] == [True, True, False]
    assert queries.stations(playlog) == ["radio-0", "radio-7"]

def promoted_plays(stretch: UnknownEvent, track_id: str) -> list[PlayEvent]:
    """The started and ended events `unknowns promote` makes of `stretch` (as `promote --events` writes them)."""
    ended = PlayEvent(promoted_play_id(stretch.unknown_id, track_id), "ended", stretch.stream_id, track_id, stretch.started_at, stretch.stream_start,
                      0.0, 1.0, 12.0, 1.0, stretch.stream_end, ended_at=stretch.ended_at, stream_end=stretch.stream_end,
                      ref_end=stretch.stream_end - stretch.stream_start, track={PROMOTED_FROM: stretch.cluster_id})
    return [replace(ended, state="started", ended_at=None, stream_end=None, ref_end=None), ended]


def test_a_rejected_promoted_play_is_unknown_music_again(filled: PlayLog) -> None:
    """A promoted airing whose play a user rejects was left out of both catalog_music and unknown_music: its
    seconds aired as music nobody had identified, so they are unknown music again until the play is restored."""
    latest = synthetic_unknowns()[-1]  # the song's airing on radio-0 at DAY + 10000, 201 s, alone in its hour
    filled.apply(e.to_json() for e in promoted_plays(latest, "the-song"))
    hour = iso_utc(DAY + 7200)

    def music_of_the_hour() -> tuple[float, float]:
        row = {r["hour_utc"]: r for r in queries.airtime_report(filled, TimeRange(), "radio-0")[1]}[hour]
        return row["catalog_music"], row["unknown_music"]

    def still_listed() -> bool:
        return latest.unknown_id in [row["unknown_id"] for row in unknowns.list_stretches(filled, stream="radio-0")[1]]

    assert music_of_the_hour() == (201.0, 0.0) and not still_listed()  # promoted: catalog music, once
    play = promoted_play_id(latest.unknown_id, "the-song")
    rejected = CliRunner().invoke(main, ["plays", "reject", play, "--playlog", address(filled), "--reason", "another song", "--by", "tester"])
    assert rejected.exit_code == 0, rejected.output
    assert music_of_the_hour() == (0.0, 201.0) and still_listed()  # not a catalog play: unknown music, once (it was in neither)
    restored = CliRunner().invoke(main, ["plays", "restore", play, "--playlog", address(filled)])
    assert restored.exit_code == 0, restored.output
    assert music_of_the_hour() == (201.0, 0.0) and not still_listed()


def test_the_cli_writes_the_airtime_report(filled: PlayLog, tmp_path: Path) -> None:
    where = address(filled)
    day = datetime.fromtimestamp(DAY, timezone.utc).date().isoformat()
    out = tmp_path / "airtime.json"
    result = CliRunner().invoke(main, ["plays", "airtime", "--playlog", where, "--day", day, "--station", "radio-0", "--format", "json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == queries.airtime_report(filled, TimeRange.day(datetime.fromtimestamp(DAY, timezone.utc).date()), "radio-0")[1]


def test_a_reader_of_the_shared_store_misses_no_stretch_kept_concurrently(postgres_url: str) -> None:
    """Row numbers follow commit order, so polling `added_since(last row seen)` while four processes keep
    stretches at once sees every stretch exactly once (without the row lock, a row numbered before another
    but committed after it is skipped: this fails when an insert is slowed before its commit)."""
    from concurrent.futures import ThreadPoolExecutor

    log = PlayLog.open(postgres_url, migrate=True)
    writers = [PlayLog.open(postgres_url).unknown_store() for _ in range(4)]

    def keep_many(index: int) -> None:
        for n in range(25):
            writers[index].keep(kept(index * 100 + n, DAY + n))

    seen: list[str] = []
    reader, last = log.unknown_store(), 0
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(keep_many, i) for i in range(4)]
        while not all(future.done() for future in futures):
            for found in reader.added_since(last, 0.0):
                seen.append(found.unknown_id)
                last = found.row
        for future in futures:
            future.result()
    seen += [found.unknown_id for found in reader.added_since(last, 0.0)]
    assert sorted(seen) == sorted(unknown_id("radio", i * 100 + n) for i in range(4) for n in range(25))
