"""Unknown stretches and hourly airtime: the airing tracker over labelled windows and play events (pure),
and repeats of unknown content found across streams with the shipped encoder and classifier (real audio)."""

from __future__ import annotations

import io
import json
import shutil
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from catalog_fixtures import MUSIC
from encoders import load_audio, load_encoder, resample
from monitor.catalog import Catalog, CatalogError
from monitor.cli import main
from monitor.events import AirtimeEvent, PlayEvent, UnknownEvent, cluster_id, play_id
from monitor.playlog.queries import TimeRange, airtime_report, list_plays
from monitor.playlog.schema import cluster_excerpts
from monitor.playlog.schema import unknowns as unknowns_table
from monitor.playlog.store import PlayLog, PlayLogError
from monitor.playlog.unknowns import list_clusters, list_stretches
from monitor.promote import promote
from monitor.records import AudioWindow, EndOfStream, WindowHits
from monitor.options import UnknownConfig
from monitor.stages.airing import AiringTracker
from monitor.stages.play_state import Airing, StreamState
from monitor.stages.state import MemoryStateStore
from monitor.stages.tracking import LiveCatalog, TrackingStep
from monitor.stages.unknown_store import MemoryUnknownStore
from monitor.stages.windows import WindowGrid, hop_start_in_window

HOP, WINDOW = 0.5, 1.0
AIR = 1_795_001_200.0  # an hour's start plus 1600 s: with streams starting at AIR, hours turn at offset 2000 s
CONFIG = UnknownConfig()


def labelled(plan: list[tuple[str, float]], start: float = 0.0, first_seq: int = 0) -> list[WindowHits]:
    """Windows every hop, labelled by a plan of (content class, seconds)."""
    hits, t, seq = [], start, first_seq
    for label, seconds in plan:
        for _ in range(round(seconds / HOP)):
            hits.append(WindowHits("radio", seq, t, AIR + t, (), False, label))
            t, seq = t + HOP, seq + 1
    return hits


def track(hits: list[WindowHits], plays: dict[int, list[PlayEvent]] | None = None, provisional: dict[int, float] | None = None,
          config: UnknownConfig = CONFIG) -> tuple[Airing, list]:
    """Run the airing tracker over `hits`, with the play events each seq caused, then close the stream."""
    tracker, airing, events = AiringTracker(config, WINDOW, HOP), Airing(), []
    for h in hits:
        airing, found = tracker.update("radio", airing, h, (plays or {}).get(h.seq, []), (provisional or {}).get(h.seq))
        events += found
    airing, found = tracker.close("radio", airing, [], None, hits[-1].offset + WINDOW)
    return airing, events + found


def unknowns(events: list) -> list[UnknownEvent]:
    return [e for e in events if isinstance(e, UnknownEvent)]


def play(state: str, start: float, end: float | None = None) -> PlayEvent:
    return PlayEvent(play_id("radio", "t1", 0), state, "radio", "t1", AIR + start, start, 0.0, 1.0, 10.0, 1.0, start + 6.0,
                     None if end is None else AIR + end, end, None if end is None else end - start)


def test_music_no_play_covers_is_one_unknown_stretch_with_talk_holes_inside() -> None:
    events = unknowns(track(labelled([("speech", 10), ("music", 40), ("speech", 4), ("speech_over_music", 30), ("speech", 20)]))[1])
    assert len(events) == 1
    stretch = events[0]
    centre = hop_start_in_window(WINDOW, HOP)
    assert stretch.stream_start == pytest.approx(10 + centre) and stretch.stream_end == pytest.approx(84 + centre)
    assert stretch.music_seconds == pytest.approx(70.0) and stretch.started_at == pytest.approx(AIR + stretch.stream_start)
    assert stretch.decided_offset > stretch.stream_end + CONFIG.gap_seconds  # decided once the talk outlasted the gap


def test_short_music_and_long_talk_breaks_are_no_stretch() -> None:
    assert unknowns(track(labelled([("music", 15), ("speech", 30), ("music", 19), ("silence", 10)]))[1]) == []
    split = unknowns(track(labelled([("music", 25), ("speech", 6), ("music", 25), ("speech", 10)]))[1])
    assert len(split) == 2 and split[0].unknown_id != split[1].unknown_id


def test_catalog_plays_cut_unknown_stretches_at_their_boundaries() -> None:
    hits = labelled([("music", 200), ("speech", 10)])
    # a play of 60-150 s: started decided at 66 s (back-dated to 60 s), ended decided at 165 s (after the dropout)
    events = unknowns(track(hits, plays={132: [play("started", 60.0)], 330: [play("ended", 60.0, 150.0)]})[1])
    assert [(e.stream_start, e.stream_end) for e in events] == [(pytest.approx(0.25), 60.0), (150.0, pytest.approx(200.25))]


def test_a_provisional_play_counts_as_catalog_music() -> None:
    hits = labelled([("music", 60), ("speech", 10)])
    provisional = {h.seq: 45.0 for h in hits if h.offset >= 47}  # a play found at 47 s, dated back to 45 s, not yet out
    (stretch,) = unknowns(track(hits, provisional=provisional)[1])
    assert stretch.stream_end == 45.0


def test_a_gap_in_the_stream_ends_the_stretch() -> None:
    hits = labelled([("music", 30)]) + [WindowHits("radio", 60 + i, 40.0 + i * HOP, AIR + 40 + i * HOP, (), i == 0, "music") for i in range(60)]
    events = unknowns(track(hits)[1])
    assert [(round(e.stream_start, 2), round(e.stream_end, 2)) for e in events] == [(0.25, 30.25), (40.25, 70.25)]


def test_hours_of_music_no_play_covers_are_decided_in_parts_as_they_go() -> None:
    """A programme of music the catalog lacks is reported part by part: it was one stretch decided when the music
    stopped (never, on a station that plays such music day and night), its airtime unreported until then, and only its
    last `buffer_seconds` of windows held to search for repeats."""
    events = unknowns(track(labelled([("music", 1500), ("speech", 10)]))[1])
    centre, part = hop_start_in_window(WINDOW, HOP), CONFIG.part_seconds
    assert [(e.stream_start, e.stream_end) for e in events] == [
        (pytest.approx(centre), pytest.approx(centre + part)), (pytest.approx(centre + part), pytest.approx(centre + 2 * part)),
        (pytest.approx(centre + 2 * part), pytest.approx(1500 + centre))]
    assert len({e.unknown_id for e in events}) == 3 and [e.music_seconds for e in events[:2]] == [part, part]
    assert all(e.decided_offset <= e.stream_end + WINDOW for e in events[:2])  # as each part fills, not at the music's end
    assert part < CONFIG.buffer_seconds  # so a part's windows are all held when it is searched


def test_parts_start_after_a_play_and_never_inside_a_provisional_one() -> None:
    hits = labelled([("music", 1500), ("speech", 10)])
    events = unknowns(track(hits, plays={206: [play("started", 100.0)], 830: [play("ended", 100.0, 400.0)]})[1])
    assert [(e.stream_start, e.stream_end) for e in events] == [(pytest.approx(0.25), 100.0), (400.0, pytest.approx(1000.25)),
                                                                 (pytest.approx(1000.25), pytest.approx(1500.25))]
    provisional = {h.seq: 580.0 for h in hits if 590 <= h.offset < 700}  # found at 590 s, withdrawn at 700 s
    events = unknowns(track(hits, provisional=provisional)[1])
    assert [(e.stream_start, e.stream_end) for e in events][0] == (pytest.approx(0.25), pytest.approx(700.25))


def test_airtime_counts_each_hour_once_and_the_part_at_the_end() -> None:
    hits = labelled([("music", 1500), ("speech", 600), ("silence", 100)], start=100.0)  # hours turn at offset 2000 s
    events = [e for e in track(hits)[1] if isinstance(e, AirtimeEvent)]
    assert [e.hour for e in events] == [AIR - 1600 + 0.0, AIR + 2000.0]
    assert events[0].seconds == {"music": 1500.0, "speech": 400.0} and events[1].seconds == {"speech": 200.0, "silence": 100.0}
    assert events[0].first_seq == 0 and events[1].first_seq == 3800


def test_without_a_classifier_nothing_is_decided() -> None:
    hits = [WindowHits("radio", i, i * HOP, AIR + i * HOP, ()) for i in range(200)]
    assert track(hits)[1] == []


def test_the_airing_round_trips_with_the_stream_state() -> None:
    airing, _ = track(labelled([("music", 30)]))
    tracker = AiringTracker(CONFIG, WINDOW, HOP)
    for h in labelled([("music", 30), ("speech", 3)]):
        airing, _ = tracker.update("radio", airing, h, [], None)
    state = StreamState("radio", last_seq=65, airing=airing)
    assert StreamState.from_json(state.to_json()) == state
    saved_by_the_last_release = {k: v for k, v in json.loads(state.to_json()).items() if k != "airing"} | {"v": 2}
    assert StreamState.from_json(json.dumps(saved_by_the_last_release)).airing == Airing()


# ---- repeats across streams, with the shipped encoder and classifier --------------------------------


def windows_of(stream_id: str, audio: np.ndarray, grid: WindowGrid, start_seq: int = 0, air: float = AIR) -> list[AudioWindow]:
    cut = grid.cut(audio)
    return [AudioWindow(stream_id, start_seq + i, float(grid.start(i)), air + float(grid.start(i)), w) for i, w in enumerate(cut)]


def monitor(step: TrackingStep, catalog: LiveCatalog, windows: list[AudioWindow], batch: int = 64) -> list:
    """Feed windows through search and the tracking step as a runner does, then end their streams."""
    events = []
    for begin in range(0, len(windows), batch):
        hits = catalog.search(windows[begin : begin + batch])
        states, caused = step.advance(hits)
        fresh = step.unpublished(caused).events
        step.commit(states, fresh)
        events += fresh
    ends = [EndOfStream(s, max(w.seq for w in windows if w.stream_id == s) + 1) for s in {w.stream_id for w in windows}]
    states, caused = step.advance(ends)
    step.commit(states, step.unpublished(caused).events)
    return events + caused


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, service_encoder_source: str) -> LiveCatalog:
    """A catalog of two demo tracks with the shipped encoder. The demo music is one game's, and some of its
    tracks quote each other (area3 plays as area1, gardien-go as over-theme): termigator_reg-zbb and
    area2-game do not, so they are the non-catalog music here."""
    directory = tmp_path_factory.mktemp("unknowns") / "catalog"
    catalog = Catalog.create(directory, load_encoder(service_encoder_source), encoder_source=service_encoder_source)
    catalog.add([MUSIC / f"{name}.opus" for name in ("over-theme", "area1-game")], progress=False)
    return LiveCatalog(Catalog.open(directory))


def test_non_catalog_music_aired_twice_forms_one_cluster_across_streams(live: LiveCatalog) -> None:
    grid = WindowGrid.for_encoder(live.catalog.encoder)
    rate = grid.sample_rate
    song, other = load_audio(MUSIC / "termigator_reg-zbb.opus", rate), load_audio(MUSIC / "area2-game.opus", rate)
    faster = resample(song, round(rate * 1.05), rate)  # the second station plays it 5 % fast
    store = MemoryUnknownStore()
    step = TrackingStep(live, MemoryStateStore(), unknowns=store)
    first = unknowns(monitor(step, live, windows_of("radio-1", song, grid)))
    unrelated = unknowns(monitor(step, live, windows_of("radio-3", other, grid, air=AIR + 100)))
    again = unknowns(monitor(step, live, windows_of("radio-2", faster, grid, air=AIR + 3600)))
    assert len(first) == len(unrelated) == len(again) == 1
    assert first[0].cluster_id is None and unrelated[0].cluster_id is None  # nothing kept matched them
    repeat = again[0]
    assert repeat.matched_unknown_id == first[0].unknown_id and repeat.cluster_id == cluster_id(first[0].unknown_id)
    assert repeat.speed == pytest.approx(1.05, abs=0.02)
    assert store.clusters_of([first[0].unknown_id, unrelated[0].unknown_id]) == {first[0].unknown_id: repeat.cluster_id}
    kept = {s.unknown_id: s for s in store.added_since(0, 0.0)}
    assert set(kept) == {first[0].unknown_id, unrelated[0].unknown_id, repeat.unknown_id}
    assert load_audio_bytes(store._kept[repeat.unknown_id].excerpt, rate).size >= 0.9 * rate * repeat.duration


def load_audio_bytes(data: bytes | None, rate: int) -> np.ndarray:
    assert data is not None
    return load_audio(io.BytesIO(data), rate)


def test_catalog_music_is_a_play_not_an_unknown_stretch(live: LiveCatalog) -> None:
    grid = WindowGrid.for_encoder(live.catalog.encoder)
    audio = load_audio(MUSIC / "area1-game.opus", grid.sample_rate)
    events = monitor(TrackingStep(live, MemoryStateStore()), live, windows_of("radio-1", audio, grid))
    assert [e.state for e in events if isinstance(e, PlayEvent)] == ["started", "ended"]
    assert unknowns(events) == []
    assert sum(sum(e.seconds.values()) for e in events if isinstance(e, AirtimeEvent)) == pytest.approx(len(grid.cut(audio)) * grid.hop_seconds)


def test_a_stream_handed_to_another_worker_leaves_none_of_its_audio_held_here(live: LiveCatalog) -> None:
    """What a process holds of a stream while its unknown music may go on (windows' embeddings and audio) goes when
    the stream goes to another worker, as it goes when the stream ends; its saved state stays for the next owner."""
    grid = WindowGrid.for_encoder(live.catalog.encoder)
    song = load_audio(MUSIC / "termigator_reg-zbb.opus", grid.sample_rate)[: 30 * grid.sample_rate]
    store = MemoryStateStore()
    step = TrackingStep(live, store, unknowns=MemoryUnknownStore())
    for stream in ("radio-1", "radio-2"):
        states, caused = step.advance(live.search(windows_of(stream, song, grid)))
        step.commit(states, step.unpublished(caused).events)
    held = step.unknowns
    assert all(len(held.heard[s]) > 0 and len(held.audio[s]) > 0 for s in ("radio-1", "radio-2"))  # no stream ended
    step.forget(["radio-1"])
    assert set(held.heard) == set(held.audio) == {"radio-2"}
    assert store.load(["radio-1"])["radio-1"].last_seq == len(grid.cut(song)) - 1


def test_a_repeat_after_the_retention_window_is_new_content(live: LiveCatalog) -> None:
    grid = WindowGrid.for_encoder(live.catalog.encoder)
    song = load_audio(MUSIC / "termigator_reg-zbb.opus", grid.sample_rate)
    store = MemoryUnknownStore()
    step = TrackingStep(live, MemoryStateStore(), unknowns=store, unknown_config=UnknownConfig(retention_days=7.0))
    (first,) = unknowns(monitor(step, live, windows_of("radio-1", song, grid)))
    (late,) = unknowns(monitor(step, live, windows_of("radio-2", song, grid, air=AIR + 8 * 86400)))
    assert late.cluster_id is None and late.matched_unknown_id is None
    assert [s.unknown_id for s in store.added_since(0, 0.0)] == [late.unknown_id]  # the first one expired


# ---- promoting a cluster into the catalog ----------------------------------------------------------


@pytest.fixture
def aired_twice(live: LiveCatalog, tmp_path: Path) -> tuple[PlayLog, Path, list[UnknownEvent]]:
    """A play log where the same non-catalog song aired on two stations (the second 5 % fast), kept in the
    play log's database as embedded mode keeps it, and a catalog of our own to promote it into."""
    catalog_dir = Path(shutil.copytree(live.catalog.directory, tmp_path / "catalog"))
    log = PlayLog.open(tmp_path / "plays.sqlite", migrate=True)
    mine = LiveCatalog(Catalog.open(catalog_dir))
    grid = WindowGrid.for_encoder(mine.catalog.encoder)
    song = load_audio(MUSIC / "termigator_reg-zbb.opus", grid.sample_rate)
    step = TrackingStep(mine, MemoryStateStore(), unknowns=log.unknown_store())
    events = monitor(step, mine, windows_of("radio-1", song, grid))
    events += monitor(step, mine, windows_of("radio-2", resample(song, round(grid.sample_rate * 1.05), grid.sample_rate), grid, air=AIR + 3600))
    log.apply(e.to_json() for e in events)
    return log, catalog_dir, unknowns(events)


def test_a_promoted_cluster_becomes_a_track_and_its_airings_plays(aired_twice, tmp_path: Path) -> None:
    log, catalog_dir, (first, repeat) = aired_twice
    cluster = repeat.cluster_id
    catalog = Catalog.open(catalog_dir)
    assert [row["cluster_id"] for row in list_clusters(log)[1]] == [cluster]
    done = promote(log, catalog, cluster, "termigator", {"title": "Termigator"})
    assert list_clusters(log)[1] == [] and list_stretches(log)[1] == []  # its airings are plays now, not unknown music
    assert done.added and catalog.track("termigator").metadata == {"title": "Termigator", "promoted_from_cluster": cluster}
    _, rows = list_plays(log)
    assert sorted((r["stream_id"], r["track_id"], r["state"]) for r in rows) == [("radio-1", "termigator", "ended"), ("radio-2", "termigator", "ended")]
    played = {r["stream_id"]: r for r in rows}
    # placed on the recording (one airing's excerpt) through the match: the second station played it 5 % faster
    assert played["radio-2"]["speed"] / played["radio-1"]["speed"] == pytest.approx(1.05, abs=0.02)
    assert played["radio-2"]["duration"] == pytest.approx(repeat.duration)
    _, hours = airtime_report(log, TimeRange())
    assert sum(h["unknown_music"] for h in hours) == 0.0  # counted once, as catalog music now
    assert sum(h["catalog_music"] for h in hours) == pytest.approx(first.duration + repeat.duration)

    assert done.new_airings == 2 and done.promoted_before == 0
    again = promote(log, Catalog.open(catalog_dir), cluster, "termigator", {"title": "Termigator"})
    assert not again.added and [e.event_id for e in again.plays] == [e.event_id for e in done.plays]
    assert again.new_airings == 0 and again.promoted_before == 2  # promoting twice said it had made 2 airings plays
    assert len(list_plays(log)[1]) == 2

    # the next airing is a catalog play of the promoted track
    live = LiveCatalog(Catalog.open(catalog_dir))
    grid = WindowGrid.for_encoder(live.catalog.encoder)
    later = monitor(TrackingStep(live, MemoryStateStore()), live, windows_of("radio-3", load_audio(MUSIC / "termigator_reg-zbb.opus", grid.sample_rate), grid))
    assert [(e.state, e.track_id) for e in later if isinstance(e, PlayEvent)] == [("started", "termigator"), ("ended", "termigator")]




@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
@pytest.mark.parametrize("plays_first", [False, True])
def test_a_play_log_rebuilt_from_the_events_keeps_the_promotion(aired_twice, tmp_path: Path, request: pytest.FixtureRequest, database: str,
                                                                plays_first: bool) -> None:
    """The stretches' events and the promoted plays' (`promote --events`) imported into a new play log, in either
    order, count the airings once, as catalog music: they counted twice, the cluster listed as unknown music again."""
    log, catalog_dir, stretches = aired_twice
    done = promote(log, Catalog.open(catalog_dir), stretches[1].cluster_id, "termigator", {})
    rebuilt = PlayLog.open(tmp_path / "rebuilt.sqlite" if database == "sqlite" else request.getfixturevalue("postgres_url"), migrate=True)
    for events in ([done.plays, stretches] if plays_first else [stretches, done.plays]):
        rebuilt.apply(e.to_json() for e in events)
    assert list_clusters(rebuilt)[1] == [] and list_stretches(rebuilt)[1] == []
    _, hours = airtime_report(rebuilt, TimeRange())
    assert sum(h["unknown_music"] for h in hours) == 0.0
    assert sum(h["catalog_music"] for h in hours) == pytest.approx(sum(s.duration for s in stretches))

def test_a_cluster_promoted_already_is_not_promoted_again_as_another_track(aired_twice) -> None:
    """A second promotion under another track id (a typo corrected, with a better recording) added the music to
    the catalog twice and made each airing two plays, counted twice in every report."""
    log, catalog_dir, (_, repeat) = aired_twice
    promote(log, Catalog.open(catalog_dir), repeat.cluster_id, "termigator", {})
    catalog, played = Catalog.open(catalog_dir).stats(), list_plays(log)[1]
    with pytest.raises(PlayLogError, match="promoted already, as track 'termigator'.*twice"):
        promote(log, Catalog.open(catalog_dir), repeat.cluster_id, "termigator-2", {}, MUSIC / "termigator_reg-zbb.opus")
    assert Catalog.open(catalog_dir).stats() == catalog and list_plays(log)[1] == played


def test_an_airing_that_cannot_be_a_play_stops_the_promotion_before_anything_changes(aired_twice) -> None:
    """The first airing as a stretch of two days (a non-stop station's, whose repeat was one song in it): its play
    is malformed, which was found after the catalog had the track, with a traceback."""
    log, catalog_dir, (first, repeat) = aired_twice
    two_days = 2 * 86400.0
    with log.engine.begin() as connection:
        connection.execute(unknowns_table.update().where(unknowns_table.c.unknown_id == first.unknown_id)
                           .values(stream_end=first.stream_start + two_days, ended_at=datetime.fromtimestamp(first.started_at + two_days, timezone.utc)))
    before = Catalog.open(catalog_dir).stats()
    with pytest.raises(PlayLogError, match=f"cannot make a play of airing {first.unknown_id}.*longer than any play"):
        promote(log, Catalog.open(catalog_dir), repeat.cluster_id, "termigator", {})
    assert Catalog.open(catalog_dir).stats() == before and list_plays(log)[1] == []

def test_promoting_again_appends_to_the_events_file_only_the_airings_heard_since(aired_twice, tmp_path: Path) -> None:
    """`promote --events` run again (an airing heard since) appended every airing's play events again: the
    events file, which is a monitor's plays.jsonl as often as not, counted each earlier play twice."""
    log, catalog_dir, (first, repeat) = aired_twice
    events = tmp_path / "plays.jsonl"
    args = ["unknowns", "promote", repeat.cluster_id, "--playlog", str(tmp_path / "plays.sqlite"), "--catalog", str(catalog_dir),
            "--track-id", "termigator", "--events", str(events)]
    assert CliRunner().invoke(main, args).exit_code == 0
    later = replace(repeat, unknown_id=str(uuid.uuid4()), stream_id="radio-3", started_at=repeat.started_at + 3600, ended_at=repeat.ended_at + 3600)
    log.apply([later.to_json()])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "1 more airing(s)" in result.output and "(2 were already)" in result.output, result.output
    written = [json.loads(line) for line in events.read_text().splitlines()]
    assert len(written) == len({(e["play_id"], e["state"]) for e in written}) == 6  # started and ended of each of 3 airings, once
    assert sorted(e["stream_id"] for e in written[4:]) == ["radio-3", "radio-3"]


def test_a_bad_promotion_changes_nothing(aired_twice, tmp_path: Path) -> None:
    log, catalog_dir, (_, repeat) = aired_twice
    before = Catalog.open(catalog_dir).stats()
    with pytest.raises(PlayLogError, match="no cluster .* `airtrace unknowns list`"):
        promote(log, Catalog.open(catalog_dir), str(uuid.uuid4()), "x", {})
    with pytest.raises(PlayLogError, match="not a cluster id"):
        promote(log, Catalog.open(catalog_dir), "cluster-7", "x", {})
    with pytest.raises(CatalogError, match="already in the catalog"):
        promote(log, Catalog.open(catalog_dir), repeat.cluster_id, "over-theme", {})
    with log.engine.begin() as connection:  # as when the worker that decided the repeat had just taken its stream over
        connection.execute(cluster_excerpts.delete())
    with pytest.raises(PlayLogError, match="no saved audio.*--audio FILE"):
        promote(log, Catalog.open(catalog_dir), repeat.cluster_id, "x", {})
    result = CliRunner().invoke(main, ["unknowns", "promote", repeat.cluster_id, "--playlog", str(tmp_path / "plays.sqlite"),
                                       "--catalog", str(catalog_dir), "--track-id", "x", "--audio", str(tmp_path / "plays.sqlite")])
    assert result.exit_code == 1 and "cannot read the audio" in result.output
    assert Catalog.open(catalog_dir).stats() == before and list_plays(log)[1] == []
    # an events file in a folder that does not exist: a traceback after the catalog and the play log had changed
    result = CliRunner().invoke(main, ["unknowns", "promote", repeat.cluster_id, "--playlog", str(tmp_path / "plays.sqlite"), "--catalog",
                                       str(catalog_dir), "--track-id", "termigator", "--audio", str(MUSIC / "termigator_reg-zbb.opus"),
                                       "--events", str(tmp_path / "no" / "plays.jsonl")])
    assert result.exit_code == 2 and "--events" in result.output and "give a file in an existing folder" in result.output, result.output
    assert Catalog.open(catalog_dir).stats() == before and list_plays(log)[1] == []
    result = CliRunner().invoke(main, ["unknowns", "promote", repeat.cluster_id, "--playlog", str(tmp_path / "plays.sqlite"), "--catalog",
                                       str(catalog_dir), "--track-id", "termigator", "--audio", str(MUSIC / "termigator_reg-zbb.opus")])
    assert result.exit_code == 0, result.output
    assert "added termigator to the catalog; 2 more airing(s)" in result.output and len(list_plays(log)[1]) == 2
    result = CliRunner().invoke(main, ["unknowns", "promote", repeat.cluster_id, "--playlog", str(tmp_path / "plays.sqlite"), "--catalog",
                                       str(catalog_dir), "--track-id", "termigator", "--audio", str(MUSIC / "termigator_reg-zbb.opus")])
    assert result.exit_code == 0 and "already in the catalog; 0 more airing(s)" in result.output and "(2 were already)" in result.output
