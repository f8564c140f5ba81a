"""Embedded mode end to end on the shipped demo music: files in, play events and metrics out."""

from __future__ import annotations

import json
import queue
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import faiss
import jsonschema
import numpy as np
import pytest
import soundfile
import torch
from sqlalchemy.exc import OperationalError
from prometheus_client import CollectorRegistry, generate_latest

from encoders import Encoder, load_audio, synthesize_speech
from catalog_fixtures import random_encoder
from monitor import metrics as metrics_module
from monitor.catalog import Catalog
from monitor.constants import DEFAULT_K, SILENCE_DBFS
from monitor.demo.broadcast import TruePlay, score_plays
from monitor import embedded
from monitor.embedded import EmbeddedMonitor
from monitor.options import MonitorOptions, UnknownConfig
from monitor.events import AirtimeEvent, PlayEvent, ProvisionalEvent, kinds_schema, plays_in, schema
from monitor.health import problems
from monitor.playlog.queries import list_plays
from monitor.playlog.store import PlayLog
from monitor.stages.ingest import read_windows
from monitor.stages.sources import StreamSource
from monitor.stages.play_state import PlayConfig
from monitor.stages.search import hits_for
from monitor.records import AudioWindow, EndOfStream
from monitor.stages.state import MemoryStateStore
from monitor.stages.tracking import LiveCatalog, TrackingStep
from monitor.stages.windows import WindowGrid

MUSIC = Path(__file__).parents[1] / "monitor" / "demo" / "music"
RATE = 8000


@pytest.fixture(scope="module")
def music() -> dict[str, np.ndarray]:
    return {name: load_audio(MUSIC / f"{name}.opus", RATE) for name in ("area1-game", "gardien-go", "termigator_reg-zbb")}


@pytest.fixture(scope="module")
def encoder(music: dict[str, np.ndarray]) -> Encoder:
    """Random weights, batch-norm statistics measured on the music every quarter window. A window then gives
    the same embedding as the very same samples in the catalog and a clearly different one elsewhere, so
    the broadcast below is cut from catalog audio on the catalog's grid: there is no distortion for a random
    encoder to survive."""
    return random_encoder(tracks=tuple(music), hop_seconds=0.25)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder, music: dict[str, np.ndarray]) -> Catalog:
    catalog = Catalog.create(tmp_path_factory.mktemp("catalog") / "demo", encoder)
    with catalog.transaction():
        catalog.add_audio("area1-game", music["area1-game"], {"title": "Area 1"})
        catalog.add_audio("gardien-go", music["gardien-go"], {"title": "Gardien"})
    return catalog


@pytest.fixture(scope="module")
def broadcast(tmp_path_factory: pytest.TempPathFactory, music: dict[str, np.ndarray]) -> tuple[Path, list[TruePlay]]:
    """Talk, a whole catalog track, 20 s of music not in the catalog, a catalog track cut in at 10 s, talk."""
    def seconds(s: float) -> int:
        return int(s * RATE)

    talk = synthesize_speech("You are listening to airtrace radio, and here is the music.", RATE)[: seconds(3.0)]
    parts = [
        np.pad(talk, (0, seconds(3.0) - len(talk))),
        music["area1-game"][: seconds(50.0)],
        music["termigator_reg-zbb"][seconds(5.0) : seconds(25.0)],
        music["gardien-go"][seconds(10.0) : seconds(40.0)],
        talk[: seconds(2.0)],
    ]
    truth = [TruePlay("area1-game", 3.0, 53.0, 0.0, 50.0, 1.0), TruePlay("gardien-go", 73.0, 103.0, 10.0, 40.0, 1.0)]
    path = tmp_path_factory.mktemp("broadcast") / "radio.wav"
    soundfile.write(path, np.concatenate(parts), RATE, subtype="FLOAT")
    return path, truth


def test_plays_of_two_streams_are_found_bounded_and_written(catalog: Catalog, broadcast, tmp_path: Path) -> None:
    path, truth = broadcast
    registry = CollectorRegistry()
    metrics = metrics_module.create(registry)
    events_file = tmp_path / "plays.jsonl"
    printed = []
    sources = [StreamSource("radio-a", str(path)), StreamSource("radio-b", str(path))]
    events = EmbeddedMonitor(catalog, sources, MonitorOptions(batch_size=32), metrics, printed.append, events_file).run()

    assert printed == events
    for stream in ("radio-a", "radio-b"):
        mine = [e for e in events if e.stream_id == stream]
        plays = plays_in(mine)
        assert [(e.state, e.track_id) for e in plays] == [
            ("started", "area1-game"), ("ended", "area1-game"), ("started", "gardien-go"), ("ended", "gardien-go")]
        started = [e for e in plays if e.state == "started"]
        heard = [e for e in mine if isinstance(e, ProvisionalEvent)]  # each play heard first, nothing withdrawn
        assert [(e.kind, e.play_id) for e in heard] == [("provisional", e.play_id) for e in started]
        assert all(h.decided_offset < s.decided_offset for h, s in zip(heard, started))
        card = score_plays(truth, mine)
        assert card.precision == card.recall == 1.0
        assert max(abs(p.start_error) for p in card.pairings) <= 0.5
        assert max(abs(p.end_error) for p in card.pairings) <= 0.5
        assert max(p.latency for p in card.pairings) <= PlayConfig().min_play_seconds + 1.5  # reported once it cannot be a phantom
        assert plays[1].track == {"title": "Area 1"}
        assert plays[3].ref_start == pytest.approx(10.0, abs=0.5)
    assert len({e.play_id for e in events}) == 4  # the same music on two streams is two plays each

    lines = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert [line["event_id"] for line in lines] == [e.event_id for e in events]
    validator, notices = jsonschema.Draft202012Validator(schema()), jsonschema.Draft202012Validator(kinds_schema())
    for line in lines:
        (notices if line.get("kind") else validator).validate(line)

    get = registry.get_sample_value
    windows = get("airtrace_windows_ingested_total", {"stream": "radio-a"})
    assert windows == int((105.0 - 1.0) / 0.5) + 1
    assert get("airtrace_hits_total", {"stream": "radio-b"}) == windows
    assert get("airtrace_plays_started_total", {"stream": "radio-a"}) == get("airtrace_plays_ended_total", {"stream": "radio-a"}) == 2
    assert get("airtrace_now_playing", {"stream": "radio-a", "track_id": "gardien-go"}) is None
    assert get("airtrace_catalog_tracks") == 2
    assert get("airtrace_embedding_batch_size_count") >= 2 * windows / 32


def test_an_events_file_cut_off_mid_line_keeps_that_line_and_loses_no_event(catalog: Catalog, broadcast, tmp_path: Path) -> None:
    """A run stopped while writing leaves half a line; glued to it, the next run's first event was lost to
    `plays import`."""
    events_file = tmp_path / "plays.jsonl"
    events_file.write_text('{"schema_version": 1, "play_id": "cut-')
    events = EmbeddedMonitor(catalog, [StreamSource("radio", str(broadcast[0]))], events_file=events_file).run()
    first, *rest = events_file.read_text().splitlines()
    assert first == '{"schema_version": 1, "play_id": "cut-'
    assert [json.loads(line)["event_id"] for line in rest] == [e.event_id for e in events] and len(events) >= 4


def test_events_a_full_disk_or_an_absent_database_refused_still_reach_the_play_log(catalog: Catalog, broadcast, tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The events file on a full disk: every event printed and logged, each one it lost counted (the run then
    fails). The database away for its first two writes (a restart, a failover): the events it refused are kept
    and written once it is back."""
    playlog = PlayLog.open(tmp_path / "plays.sqlite", migrate=True)
    store, refusals = playlog.apply, [2]

    def database_restarting(events):
        if refusals[0]:
            refusals[0] -= 1
            raise OperationalError("INSERT", {}, ConnectionRefusedError("the database is restarting"))
        return store(events)

    monkeypatch.setattr(playlog, "apply", database_restarting)
    monitor = EmbeddedMonitor(catalog, [StreamSource("radio", str(broadcast[0]))], events_file="/dev/full", playlog=playlog)
    events = monitor.run()
    plays = [e for e in plays_in(events) if e.state == "ended"]
    assert len(plays) == 2 and monitor.unwritten == len(events) and not monitor.waiting
    logged = {row["play_id"]: row for row in list_plays(playlog)[1]}
    assert {p.play_id for p in plays} == set(logged) and all(row["ended_at"] is not None for row in logged.values())


def test_logger_files_of_one_stream_keep_every_play_and_a_file_monitored_again_adds_none(catalog: Catalog, broadcast,
                                                                                         tmp_path: Path) -> None:
    """Daily logger files under one stream id: every run numbered its windows from 0, so a play starting at the
    window where an earlier file's play of the same track had started got that play's id, and the play log kept
    only the first (here: the second day's plays were lost). A file's windows are numbered from its modification
    time, so another day's file is other plays and the same file again is the same plays."""
    import os
    import shutil

    playlog = PlayLog.open(tmp_path / "plays.sqlite", migrate=True)
    days = [tmp_path / f"day{day}.mp3" for day in (1, 2)]
    for day, path in enumerate(days, start=1):
        shutil.copy(broadcast[0], path)
        os.utime(path, (1_796_000_000 + day * 86_400, 1_796_000_000 + day * 86_400))
    runs = [plays_in(EmbeddedMonitor(catalog, [StreamSource("radio", str(path))], playlog=playlog).run()) for path in (*days, days[0])]
    ended = [{e.play_id for e in run if e.state == "ended"} for run in runs]
    assert len(ended[0]) == len(ended[1]) == 2 and not ended[0] & ended[1] and ended[2] == ended[0]
    assert {row["play_id"] for row in list_plays(playlog)[1]} == ended[0] | ended[1]


def test_a_catalog_that_cannot_be_searched_neither_ends_nor_opens_plays(encoder: Encoder, music, broadcast, tmp_path: Path) -> None:
    """The tracking step of both modes with the catalog emptied for 20 s inside a play (longer than the
    dropout that would end it, had its windows been heard as finding nothing): the same plays as without."""
    path, truth = broadcast
    catalog = Catalog.create(tmp_path / "catalog", encoder)
    with catalog.transaction():
        catalog.add_audio("area1-game", music["area1-game"])
        catalog.add_audio("gardien-go", music["gardien-go"])
    registry = CollectorRegistry()
    live = LiveCatalog(catalog, metrics_module.create(registry))
    step = TrackingStep(live, MemoryStateStore())
    windows = list(read_windows(StreamSource("radio", str(path)), WindowGrid.for_encoder(encoder)))
    events: list[PlayEvent] = []

    def run(batch: list[AudioWindow | EndOfStream]) -> None:
        for start in range(0, len(batch), 16):
            part = batch[start : start + 16]
            hits = live.search([w for w in part if isinstance(w, AudioWindow)]) or []
            states, caused = step.advance([*hits, *(end for end in part if isinstance(end, EndOfStream))])
            step.commit(states, caused)
            events.extend(caused)

    outage = [w for w in windows if 20.0 <= w.offset < 40.0]
    run([w for w in windows if w.offset < 20.0])
    catalog.remove("area1-game")
    catalog.remove("gardien-go")
    run(outage)
    assert [e.state for e in plays_in(events)] == ["started"]
    assert registry.get_sample_value("airtrace_catalog_outage") == 1
    assert registry.get_sample_value("airtrace_windows_unheard_total") == len(outage)
    assert any("catalog cannot be searched" in p for p in problems(generate_latest(registry).decode(), now=0.0))
    with catalog.transaction():
        catalog.add_audio("area1-game", music["area1-game"])
        catalog.add_audio("gardien-go", music["gardien-go"])
    run([w for w in windows if w.offset >= 40.0] + [EndOfStream("radio", windows[-1].seq + 1)])
    assert registry.get_sample_value("airtrace_catalog_outage") == 0
    assert [(e.state, e.track_id) for e in plays_in(events)] == [
        ("started", "area1-game"), ("ended", "area1-game"), ("started", "gardien-go"), ("ended", "gardien-go")]
    card = score_plays(truth, events)
    assert card.precision == card.recall == 1.0
    assert max(abs(p.start_error) for p in card.pairings) <= 0.5 and max(abs(p.end_error) for p in card.pairings) <= 0.5


def test_the_demo_finds_every_play_with_the_shipped_model(demo_run) -> None:
    """The README's first command: the shipped encoder, the demo catalog and broadcast, from the repo alone."""
    tmp_path, card, events = demo_run
    assert card.precision == card.recall == 1.0  # every catalog play, and none during talk or the non-catalog music
    assert card.median_abs("start_error") <= 0.5 and card.median_abs("end_error") <= 0.5
    assert card.p95("latency") <= 15.0
    assert len((tmp_path / "plays.jsonl").read_text().splitlines()) == len(events) and len(plays_in(events)) == 10
    # the 30 s of music the catalog lacks (talked into and out of) is the one unknown stretch, beside no true play
    (stretch,) = [e for e in events if e.kind == "unknown"]
    assert 20.0 <= stretch.duration <= 30.0 + UnknownConfig().gap_seconds
    assert all(min(stretch.stream_end, p.truth.stream_end) - max(stretch.stream_start, p.truth.stream_start) <= 1.0 for p in card.pairings)
    assert any(e.kind == "airtime" for e in events)


def test_the_demo_never_takes_a_folder_of_the_users(tmp_path: Path) -> None:
    """The demo rebuilds its catalog and plays file, so it works only in a folder it made or an empty one."""
    from monitor.catalog import CatalogError
    from monitor.demo.run import claim_workdir

    mine = tmp_path / "mine"
    (mine / "catalog").mkdir(parents=True)
    (mine / "catalog" / "notes.txt").write_text("keep me")
    (mine / "plays.jsonl").write_text("keep me too")
    with pytest.raises(CatalogError, match="not made by `airtrace demo`.*--workdir"):
        claim_workdir(mine)
    assert (mine / "catalog" / "notes.txt").read_text() == "keep me" and (mine / "plays.jsonl").read_text() == "keep me too"
    claim_workdir(tmp_path / "new")
    (tmp_path / "new" / "plays.jsonl").write_text("the demo's")
    claim_workdir(tmp_path / "new")  # the demo's own folder is reused


SPEECH = Path(__file__).parent / "data" / "speech-june.opus"  # a held-out recorded voice (tests/data/LICENSE.md)


def test_each_second_of_a_stream_is_counted_by_what_it_holds(service_catalog: Path) -> None:
    """With the shipped encoder the content classifier rides on its pass: a music stream's seconds count
    mostly as music, a talk stream's as speech, each window one hop."""
    registry = CollectorRegistry()
    sources = [StreamSource("music", str(MUSIC / "gardien-go.opus")), StreamSource("talk", str(SPEECH))]
    EmbeddedMonitor(Catalog.open(service_catalog), sources, MonitorOptions(), metrics_module.create(registry)).run()

    def seconds(stream: str) -> dict[str, float]:
        return {content: registry.get_sample_value("airtrace_content_seconds_total", {"stream": stream, "content": content}) or 0.0
                for content in ("music", "speech", "speech_over_music", "silence", "other")}

    hop = 0.5
    for stream in ("music", "talk"):
        windows = registry.get_sample_value("airtrace_windows_ingested_total", {"stream": stream})
        assert sum(seconds(stream).values()) == pytest.approx(windows * hop)
    music, talk = seconds("music"), seconds("talk")
    assert music["music"] >= 0.8 * sum(music.values()), music
    assert max(talk, key=talk.get) == "speech", talk


def test_a_stream_window_quieter_than_silence_is_searched_for_nothing(encoder: Encoder, catalog: Catalog,
                                                                      music: dict[str, np.ndarray]) -> None:
    """Windows are standardised before they are embedded, so a faint hiss (dead air on a weak carrier) or music
    24 dB under the silence level is as near the catalog as the music itself: catalogs and `identify` drop
    such windows, and a stream must too, or 10 minutes of hiss at -84 dBFS became nine plays."""
    cut = catalog.grid.cut(music["area1-game"][: 10 * RATE])  # on the catalog's grid, so a random encoder finds it
    level = np.sqrt(np.mean(np.square(cut), axis=1))
    quiet = cut * (10 ** (SILENCE_DBFS / 20) / 16 / level)[:, None]  # each window 24 dB under the silence level
    windows = [AudioWindow("s", i, i * 0.5, i * 0.5, samples) for i, samples in enumerate([*cut, *quiet])]
    found = hits_for(windows, encoder, catalog, DEFAULT_K)
    heard, hushed = found[: len(cut)], found[len(cut) :]
    assert all(h.neighbours and h.neighbours[0].track_id == "area1-game" for h in heard)
    assert all(h.neighbours == () and h.background == 0.0 for h in hushed)


def test_an_encoder_the_classifier_was_not_trained_on_tracks_without_content_classes(catalog: Catalog) -> None:
    assert LiveCatalog(catalog).content is None


def test_the_matcher_is_calibrated_for_the_neighbours_a_window_is_searched_for(encoder: Encoder, music: dict[str, np.ndarray],
                                                                                 tmp_path: Path) -> None:
    """A worker's --neighbours searches more hits a window: the chance scores they give are what the null
    must hold, or a confidence would mean more false matches than it says; so after a reload too."""
    catalog = Catalog.create(tmp_path / "catalog", encoder)
    with catalog.transaction():
        catalog.add_audio("area1-game", music["area1-game"], {})
    assert LiveCatalog(catalog).info.calibration.k == DEFAULT_K
    wider = LiveCatalog(catalog, k=2 * DEFAULT_K)
    assert wider.info.calibration.k == 2 * DEFAULT_K
    elsewhere = Catalog.open(tmp_path / "catalog")  # another process adds a track
    with elsewhere.transaction():
        elsewhere.add_audio("gardien-go", music["gardien-go"], {})
    assert wider.reload() and wider.info.calibration.k == 2 * DEFAULT_K


def test_the_main_loop_wakes_once_a_batch_and_never_waits_on_a_backlog(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch waits max_wait for the windows that arrive meanwhile (one wake, not one a window); a full batch
    already waiting (the loop is behind) is taken at once."""
    slept: list[float] = []
    monkeypatch.setattr(embedded, "time", SimpleNamespace(sleep=slept.append, monotonic=lambda: 0.0))
    loop = SimpleNamespace(options=MonitorOptions(batch_size=4, max_wait=0.25))
    inbox: queue.Queue = queue.Queue()
    for seq in range(6):
        inbox.put(EndOfStream("s", seq))
    assert [item.seq for item in EmbeddedMonitor._next_batch(loop, inbox)] == [0, 1, 2, 3]
    assert slept == []
    assert [item.seq for item in EmbeddedMonitor._next_batch(loop, inbox)] == [4, 5]
    assert slept == [0.25]


def test_the_monitor_embeds_and_searches_on_its_own_threads(catalog: Catalog, music: dict[str, np.ndarray], tmp_path: Path) -> None:
    """torch and FAISS would use every core, spinning between a live stream's small batches: the monitor
    holds them to `threads` (one by default)."""
    path = tmp_path / "clip.wav"
    soundfile.write(path, music["area1-game"][: 3 * RATE], RATE)
    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    try:
        EmbeddedMonitor(catalog, [StreamSource("clip", str(path))], MonitorOptions()).run()
        assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (1, 1)
    finally:
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])


def test_the_monitor_notices_plays_at_the_confidence_it_is_given_on_the_catalogs_grid(catalog: Catalog, tmp_path: Path) -> None:
    """`--notice-confidence` reaches the play tracker; a play config's window and hop give way to the catalog's."""
    from click.testing import CliRunner

    from monitor.cli import main

    config = PlayConfig(notice_confidence=0.995, window_seconds=2.0, hop_seconds=1.0)
    tracker = EmbeddedMonitor(catalog, [StreamSource("s", str(tmp_path / "none.wav"))], MonitorOptions(plays=config)).step.tracker
    assert tracker.config == replace(config, window_seconds=catalog.grid.window_seconds, hop_seconds=catalog.grid.hop_seconds)
    result = CliRunner().invoke(main, ["monitor", "--catalog", str(catalog.directory), "--notice-confidence", "1.5", "x.wav"])
    assert result.exit_code == 2 and "--notice-confidence" in result.output


def test_a_monitor_run_for_months_keeps_none_of_its_events(catalog: Catalog, tmp_path: Path) -> None:
    """`airtrace monitor` kept every event it emitted in memory until it stopped, growing with air time without end
    (an hour's airtime event a stream, every play's, every unknown stretch's): without `keep_events` they go to the
    callback, the events file and the play log, and only their count stays."""
    printed, events_file = [], tmp_path / "events.jsonl"
    monitor = EmbeddedMonitor(catalog, [StreamSource("radio", str(tmp_path / "none.wav"))], on_event=printed.append,
                              events_file=events_file, keep_events=False)
    hours = [AirtimeEvent("radio", 3600.0 * hour, 7200 * hour, {"music": 3600.0}, 3601.0 * hour) for hour in range(24)]
    out = embedded.EventsFile(events_file)
    for hour in hours:
        monitor._emit([hour], out)
    out.close()
    assert monitor.events == [] and monitor.emitted == len(printed) == len(events_file.read_text().splitlines()) == 24
