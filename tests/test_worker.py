"""`airtrace worker` against a real Kafka broker and Redis: plays, dead letters, a Redis restart mid-play,
catalog reload without a restart, and clear errors for bad settings."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import redis
from click.testing import CliRunner

from monitor.bench import servers
from encoders import load_audio
from monitor.catalog import Catalog
from monitor.cli import main
from monitor.demo.broadcast import SAMPLE_RATE, Piece, TruePlay, compose, write_broadcast
from monitor.events import Event, PlayEvent, cluster_id, plays_in, read_event
from monitor.stages.ingest import read_windows
from monitor.stages.sources import StreamSource
from monitor.fleet.kafka_records import MAX_MESSAGE_BYTES, encode_end, encode_window, stream_headers
from monitor.stages.calibration import calibrate
from monitor.fleet.publish import run_start_marked
from monitor.records import AudioWindow, EndOfStream, WindowHits
from monitor.fleet.redis_state import RedisSettings, RedisStateStore
from monitor.stages.state import MemoryStateStore
from monitor.stages.tracking import LiveCatalog, TrackingStep
from monitor.stages.windows import WindowGrid

MUSIC = Path(__file__).parents[1] / "monitor" / "demo" / "music"
PARTITIONS = 4
LATE_TRACK = "over-theme"  # added to the worker's catalog while it runs
DROPPED = re.compile(r"went to another worker; what this one held of them is dropped: (.*)")


class Service:
    """One worker process with its own Redis, topics (under `prefix`) and catalog copy: each test has a fresh one."""

    def __init__(self, broker: servers.ServerProcess, redis: servers.ServerProcess, catalog: Path, workdir: Path, prefix: str):
        self.broker, self.redis, self.catalog_dir, self.workdir, self.prefix = broker, redis, catalog, workdir, prefix
        self.log = workdir / "worker.log"
        self.start_worker()
        catalog_handle = Catalog.open(catalog)
        self.encoder = catalog_handle.encoder
        self.grid = WindowGrid.for_encoder(self.encoder)

    def start_worker(self, *extra: str) -> None:
        self.metrics_port = servers.free_port()
        self.process = servers.airtrace(
            ["worker", "--catalog", str(self.catalog_dir), "--broker", f"127.0.0.1:{self.broker.port}", "--redis-url",
             f"redis://127.0.0.1:{self.redis.port}/0", "--topic-prefix", self.prefix, "--group", self.prefix, "--partitions", str(PARTITIONS),
             "--session-timeout", "3", "--reload-seconds", "1", "--batch-wait", "0.2", "--metrics-port", str(self.metrics_port), *extra],
            self.log,
        )

    def topic(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    def send(self, topic: str, messages: list[tuple[bytes, bytes]] | list[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> None:
        """Publish (key, value) or (key, value, headers) messages."""
        from aiokafka import AIOKafkaProducer

        async def produce() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{self.broker.port}", max_request_size=2 * MAX_MESSAGE_BYTES)
            await producer.start()
            try:
                for key, value, *headers in messages:
                    await producer.send(self.topic(topic), value, key=key, headers=headers[0] if headers else None)
            finally:
                await producer.stop()

        asyncio.run(produce())

    def send_windows(self, windows: list[AudioWindow | EndOfStream], end: bool = True) -> None:
        """Publish windows (and ends) as `airtrace ingest` does, with the EndOfStream after the last unless `end` is False."""
        if end:
            windows = [*windows, EndOfStream(windows[-1].stream_id, windows[-1].seq + 1, windows[-1].run)]
        self.send("windows", [(w.stream_id.encode(), encode_end(w) if isinstance(w, EndOfStream) else encode_window(w, self.grid.sample_rate),
                               stream_headers(None, w.run)) for w in windows])

    def lag(self, topic: str) -> float | None:
        return servers.metric(self.metrics_port, "airtrace_consumer_lag_messages", topic=self.topic(topic))

    def events(self, stream_id: str) -> list[Event]:
        return [read_event(json.loads(r.value)) for r in servers.read_topic(self.broker.port, self.topic("plays")) if r.key == stream_id.encode()]

    def plays(self, stream_id: str) -> list[PlayEvent]:
        return plays_in(self.events(stream_id))

    def wait_for_plays(self, stream_id: str, count: int, timeout: float = 90.0, kind: str = "play") -> list[Event]:
        def enough() -> list[Event] | None:
            assert self.process.poll() is None, f"the worker died; see {self.log}"
            events = [e for e in self.events(stream_id) if e.kind == kind]
            return events if len(events) >= count else None

        return servers.wait_until(enough, timeout, f"{count} {kind} events on {stream_id}")  # type: ignore[return-value]


@pytest.fixture
def service(kafka_broker: servers.ServerProcess, service_catalog: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Service]:
    """A fresh worker, Redis, catalog copy (without LATE_TRACK) and topics per test: no state carries from one to the next."""
    catalog = tmp_path / "catalog"
    shutil.copytree(service_catalog, catalog)
    Catalog.open(catalog).remove(LATE_TRACK)
    redis = servers.redis_server(tmp_path)
    service = Service(kafka_broker, redis, catalog, tmp_path, f"worker-{request.node.name.removeprefix('test_')[:40]}")
    yield service
    servers.stop(service.process)
    redis.stop()


def broadcast(workdir: Path, name: str, track: str, seconds: float, ref_start: float = 5.0) -> tuple[Path, TruePlay]:
    """Talk, one catalog track, then 12 s of talk. (Non-catalog music after a play is the e2e test's.)"""
    from encoders import synthesize_speech

    talk = synthesize_speech("You are listening to the airtrace test station.", SAMPLE_RATE)
    music = load_audio(MUSIC / f"{track}.opus", SAMPLE_RATE)
    outro = synthesize_speech("That was the track. Stay with us for the news and the weather after the break.", SAMPLE_RATE, "en-us")
    pieces = [Piece("talk", "hello", talk), Piece("track", track, music, ref_start=ref_start, seconds=seconds), Piece("talk", "outro", outro, seconds=12.0)]
    audio, truth = compose(pieces, np.random.default_rng(0))
    return write_broadcast(workdir / f"{name}.mp3", audio, truth), truth[0]


def windows_of(path: Path, stream_id: str, grid: WindowGrid) -> list[AudioWindow]:
    """The windows `airtrace ingest` would publish for this file, as one ingest run."""
    seq_base = int(time.time() * 1000)
    return [run_start_marked(replace(w, seq=seq_base + w.seq, run=seq_base)) for w in read_windows(StreamSource(stream_id, str(path)), grid)]


def assert_one_play(events: list[PlayEvent], truth: TruePlay) -> None:
    assert [e.state for e in events] == ["started", "ended"], events
    assert len({e.play_id for e in events}) == 1 and events[0].track_id == truth.track_id
    ended = events[1]
    assert abs(ended.stream_start - truth.stream_start) <= 1.0, (ended, truth)
    assert abs(ended.stream_end - truth.stream_end) <= 1.0, (ended, truth)


def test_bad_messages_become_dead_letters_and_the_worker_goes_on(service: Service) -> None:
    path, truth = broadcast(service.workdir, "dead-letters", "area1-game", 20.0)
    good = windows_of(path, "dead-letters", service.grid)
    wrong_rate = AudioWindow("x", 1, 0.0, 0.0, np.zeros(service.encoder.window_samples, np.float32))
    future = bytearray(encode_window(good[0], service.grid.sample_rate))
    future[3] = 99
    service.send("windows", [(b"x", b"not a window"), (b"x", b"ATW" + bytes(MAX_MESSAGE_BYTES)), (b"x", encode_window(wrong_rate, 16000)), (b"x", bytes(future))])
    service.send("hits", [(b"x", b'{"v": 1, "stream": "x"}')])
    service.send_windows(good)
    assert_one_play(service.wait_for_plays("dead-letters", 2), truth)
    heard = [e for e in service.events("dead-letters") if e.kind in ("provisional", "withdrawn")]
    assert [(e.kind, e.play_id) for e in heard] == [("provisional", service.plays("dead-letters")[0].play_id)]  # heard first, as embedded

    letters = servers.read_topic(service.broker.port, service.topic("dead-letters"))
    reasons = sorted(dict(letter.headers)["reason"].decode() for letter in letters)
    assert reasons == ["encoder_mismatch", "malformed", "malformed", "oversized", "unsupported_version"]
    oversized = next(letter for letter in letters if dict(letter.headers)["reason"] == b"oversized")
    assert int(dict(oversized.headers)["size"]) == MAX_MESSAGE_BYTES + 3 and len(oversized.value) < MAX_MESSAGE_BYTES
    assert servers.metric(service.metrics_port, "airtrace_dead_letters_total", reason="malformed") == 2
    assert servers.metric(service.metrics_port, "airtrace_plays_started_total", stream="dead-letters") == 1
    servers.wait_until(lambda: service.lag("windows") == 0, 15, "the worker reports it has caught up with the windows")
    assert service.process.poll() is None


def test_redis_restarted_mid_play_loses_no_play(service: Service) -> None:
    path, truth = broadcast(service.workdir, "redis-restart", "gardien-go", 30.0)
    windows = windows_of(path, "redis-restart", service.grid)
    middle = next(i for i, w in enumerate(windows) if w.offset >= truth.stream_start + 12.0)
    service.send_windows(windows[:middle], end=False)
    service.wait_for_plays("redis-restart", 1)
    service.redis.stop()
    service.send_windows(windows[middle:])
    servers.wait_until(lambda: (service.lag("hits") or 0) > 0, 20, "hits wait, unhandled, while Redis is down")
    service.redis.start()
    events = service.wait_for_plays("redis-restart", 2)
    time.sleep(2.0)  # nothing more may follow
    assert_one_play(service.plays("redis-restart"), truth)
    assert events[0].event_id == service.plays("redis-restart")[0].event_id
    servers.wait_until(lambda: service.lag("hits") == 0, 15, "the worker catches up")


def test_tracks_added_to_the_catalog_are_found_without_a_restart_and_a_stream_end_ends_the_play(service: Service) -> None:
    path, truth = broadcast(service.workdir, "late-track", LATE_TRACK, 20.0)
    catalog = Catalog.open(service.catalog_dir)
    catalog.add([MUSIC / f"{LATE_TRACK}.opus"], progress=False)
    calibrate(catalog)
    servers.wait_until(lambda: servers.metric(service.metrics_port, "airtrace_catalog_tracks") == 4, 30, "the worker reloads the catalog")
    windows = [w for w in windows_of(path, "late-track", service.grid) if w.offset + service.grid.window_seconds <= truth.stream_end]
    service.send_windows(windows)  # the stream ends with the track: only its EndOfStream can end the play
    assert_one_play(service.wait_for_plays("late-track", 2), truth)


def test_stream_metadata_from_ingest_reaches_the_play_events(service: Service) -> None:
    """`airtrace ingest` (publish_windows) with an audio selection: each window carries the stream's
    metadata in a Kafka header, the worker hands it on with the hits, and its play events carry it."""
    from monitor.fleet.broker import KafkaSettings, Topics
    from monitor.stages.mux import AudioSelection, MuxSource
    from monitor.fleet.publish import publish_windows

    path, truth = broadcast(service.workdir, "tv-metadata", "area1-game", 20.0)
    source = MuxSource.single(StreamSource("tv-metadata", str(path), metadata={"country": "FR"}), AudioSelection(disposition="main"))
    asyncio.run(publish_windows([source], service.grid, KafkaSettings(f"127.0.0.1:{service.broker.port}"), Topics.with_prefix(service.prefix, PARTITIONS)))
    events = service.wait_for_plays("tv-metadata", 2)
    assert_one_play(events, truth)
    assert [e.stream for e in events] == [{"country": "FR", "audio_stream": 0}] * 2


def test_workers_find_repeated_unknown_music_through_the_shared_play_log(service: Service) -> None:
    """Non-catalog music heard by one worker, then again (5 % fast) by another after the first stopped: the
    second finds the first through the play log's database they share, its embeddings having come over Kafka."""
    from encoders import resample

    playlog = service.workdir / "shared.sqlite"
    assert CliRunner().invoke(main, ["plays", "migrate", "--playlog", str(playlog)]).exit_code == 0
    catalog = Catalog.open(service.catalog_dir)
    catalog.remove("gardien-go")  # termigator_reg-zbb quotes it
    # and, 5 % fast, compact3 hears 25 s of it as area2-game at confidence 0.995 in a catalog this small, whose
    # hits are weighed raw (README, "Known and not yet handled"); nothing else here
    catalog.remove("area2-game")
    servers.stop(service.process)
    song = load_audio(MUSIC / "termigator_reg-zbb.opus", SAMPLE_RATE)
    for stream_id, audio in (("fleet-1", song), ("fleet-2", resample(song, round(SAMPLE_RATE * 1.05), SAMPLE_RATE))):
        service.start_worker("--playlog", str(playlog))
        path = write_broadcast(service.workdir / f"{stream_id}.mp3", audio, [])
        service.send_windows(windows_of(path, stream_id, service.grid))
        service.wait_for_plays(stream_id, 1, kind="unknown")
        servers.stop(service.process)
    (first,), (repeat,) = ([e for e in service.events(s) if e.kind == "unknown"] for s in ("fleet-1", "fleet-2"))
    assert first.cluster_id is None and first.duration >= 40.0 and service.plays("fleet-1") == []
    assert repeat.matched_unknown_id == first.unknown_id and repeat.cluster_id == cluster_id(first.unknown_id)
    assert repeat.speed == pytest.approx(1.05, abs=0.02)
    # the repeat's audio, embedded by the worker that tracked it, is the cluster's excerpt: it is promoted as is
    events = service.workdir / "events.jsonl"
    events.write_text("".join(e.to_line() + "\n" for s in ("fleet-1", "fleet-2") for e in service.events(s)))
    assert CliRunner().invoke(main, ["plays", "import", "--playlog", str(playlog), str(events)]).exit_code == 0  # as `plays consume` does
    promoted = CliRunner().invoke(main, ["unknowns", "promote", repeat.cluster_id, "--playlog", str(playlog), "--catalog",
                                         str(service.catalog_dir), "--track-id", "termigator"])
    assert promoted.exit_code == 0 and "added termigator to the catalog; 2 more airing(s)" in promoted.output, promoted.output


def track_in_batches(step: TrackingStep, items: list[WindowHits | EndOfStream], size: int = 8) -> list[Event]:
    """The events of `items` handed to the step a few at a time, as a worker's track agent takes them, each batch committed."""
    events: list[Event] = []
    for begin in range(0, len(items), size):
        states, caused = step.advance(items[begin : begin + size])
        step.commit(states, caused)
        events += caused
    return events


def second_run(windows: list[AudioWindow], started_after: float) -> list[AudioWindow]:
    """The windows a second ingest run of the same stream cuts, started `started_after` seconds into the first:
    the same air, numbered from its own start, its stream offsets counted from its connection."""
    start = next(i for i, w in enumerate(windows) if w.offset >= started_after)
    base = windows[0].run + round(started_after * 1000)
    origin = windows[start].offset
    return [replace(w, seq=base + i, run=base, offset=w.offset - origin, after_gap=i == 0) for i, w in enumerate(windows[start:])]


def test_a_second_ingest_run_of_a_stream_is_followed_and_reported_and_leaves_it_heard(service: Service) -> None:
    """A second ingest run publishes the stream for 25 s while a track plays, then stops, and the first goes on: the
    worker follows the run started later from its first window (a restarted ingest loses no audio waiting for the old
    run to fall silent), sets the first's windows aside meanwhile and says so in its log and metrics, and follows the
    first again after the second's end. Each run has its own clock, so each stretch is a play of its own. Before,
    once the second stopped, every window of the first read as a replay: the stream was deaf, without a word."""
    path, truth = broadcast(service.workdir, "twice", "gardien-go", 60.0)
    first = windows_of(path, "twice", service.grid)
    second = second_run(first, truth.stream_start + 10.0)[:50]  # 25 s, then it stops
    overlap = len(first) - len(second_run(first, truth.stream_start + 10.0))
    interleaved = first[:overlap] + [w for pair in zip(first[overlap:], second) for w in pair]
    service.send_windows([*interleaved, EndOfStream("twice", second[-1].seq + 1, second[-1].run), *first[overlap + len(second):]])
    plays = [e for e in service.wait_for_plays("twice", 6) if e.state == "ended"]
    assert [e.track_id for e in plays] == ["gardien-go"] * 3, plays
    assert abs(plays[0].stream_end - first[overlap].offset) <= 1.0  # the first run until the second's first window
    assert abs(plays[1].stream_end - (second[-1].offset + service.grid.window_seconds)) <= 1.0  # the second, in its clock
    assert abs(plays[2].stream_end - truth.stream_end) <= 1.0  # the first again, heard to the end
    assert servers.metric(service.metrics_port, "airtrace_ingest_run_conflicts_total", stream="twice") >= len(second) // 2
    log = service.log.read_text()
    assert log.count("stream twice is published by two ingest runs") == 1, log
    assert f"ingest run {first[0].run}" in log and f"ingest run {second[0].run}" in log


def test_a_window_numbered_far_ahead_leaves_the_stream_heard(service: Service) -> None:
    """A garbled window numbered ahead of its run: more than an hour ahead of its air time it is a dead letter; less
    (here 20 minutes' worth of milliseconds), the windows after it, on air later, still count. Before, every later
    window read as a replay, and the play never ended."""
    path, truth = broadcast(service.workdir, "ahead", "gardien-go", 40.0)
    windows = windows_of(path, "ahead", service.grid)
    middle = next(i for i, w in enumerate(windows) if w.offset >= truth.stream_start + 15.0)
    garbled = [replace(windows[middle], seq=windows[middle].seq + lead) for lead in (2**40, 1_200_000)]
    service.send_windows([*windows[:middle], *garbled], end=False)
    service.wait_for_plays("ahead", 1)
    servers.wait_until(lambda: service.lag("windows") == 0 and service.lag("hits") == 0, 30, "the worker has tracked the garbled windows")
    service.send_windows(windows[middle + 1:])
    assert_one_play(service.wait_for_plays("ahead", 2), truth)
    assert servers.metric(service.metrics_port, "airtrace_dead_letters_total", reason="malformed") == 1
    assert servers.metric(service.metrics_port, "airtrace_ingest_run_switches_total", stream="ahead") == 1


def test_a_stream_whose_tracked_ingest_run_was_killed_is_tracked_on_in_the_other_run(service_catalog: Path, tmp_path: Path) -> None:
    """The tracking step both modes share: a second ingest run joins the stream (followed from its first window) and
    is killed 15 s later (no end) while the first goes on: once the second has been silent for `switch_run_seconds`,
    the first is tracked again, the rest of the track a play of its own (no play spans runs). Replaying both runs'
    hits changes nothing."""
    from prometheus_client import CollectorRegistry

    from monitor.metrics import create

    catalog = Catalog.open(service_catalog)
    grid = WindowGrid.for_encoder(catalog.encoder)
    path, truth = broadcast(tmp_path, "killed", "gardien-go", 60.0)
    first = windows_of(path, "killed", grid)
    second = second_run(first, truth.stream_start + 10.0)[:30]  # 15 s, then its ingest is killed
    overlap = next(i for i, w in enumerate(first) if w.air_time == second[0].air_time)
    windows = first[:overlap] + [w for pair in zip(first[overlap:], second) for w in pair] + first[overlap + len(second):]
    live = LiveCatalog(catalog)
    hits = [*live.search(windows), EndOfStream("killed", first[-1].seq + 1, first[-1].run)]
    metrics = create(CollectorRegistry())
    store = MemoryStateStore()
    step = TrackingStep(live, store, metrics=metrics)
    plays = [e for e in plays_in(track_in_batches(step, hits)) if e.state == "ended"]

    assert [e.track_id for e in plays] == ["gardien-go"] * 3, plays
    assert abs(plays[0].stream_end - first[overlap].offset) <= 1.0  # the first run until the second's first window
    assert abs(plays[1].stream_end - (second[-1].offset + grid.window_seconds)) <= 1.0  # the second, in its clock, to its last window
    switched_at = second[-1].air_time + step.tracker.config.switch_run_seconds  # the second run silent that long
    assert plays[2].started_at >= switched_at and abs(plays[2].stream_end - truth.stream_end) <= 1.0
    assert metrics.ingest_run_conflicts.labels("killed")._value.get() == sum(second[0].air_time < w.air_time < switched_at for w in first)  # first[overlap] came before second[0]: taken
    assert metrics.ingest_run_switches.labels("killed")._value.get() == 1
    assert step.advance(hits) == (store.load(["killed"]), [])


def test_a_stream_whose_tracked_ingest_run_ends_is_tracked_on_in_an_earlier_run_that_goes_on(
        service_catalog: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The run tracked ends while another, started earlier (numbered lower), goes on publishing: the stream is tracked
    on in that run, the rest of the track a play of its own. Before, the other run's windows all read as replays of the
    ended one's, and the stream went deaf. While both published, the other's windows were set aside and said so once."""
    from prometheus_client import CollectorRegistry

    from monitor.metrics import create

    catalog = Catalog.open(service_catalog)
    path, truth = broadcast(tmp_path, "handed-on", "gardien-go", 60.0)
    early = windows_of(path, "handed-on", WindowGrid.for_encoder(catalog.encoder))
    late = [replace(w, seq=w.seq + 60_000, run=w.run + 60_000) for w in early]  # started a minute later, its windows came first
    joined, ended = (next(i for i, w in enumerate(early) if w.offset >= truth.stream_start + t) for t in (10.0, 20.0))
    windows = [*late[:joined], *(w for pair in zip(late[joined:ended], early[joined:ended]) for w in pair), *early[ended:]]
    live = LiveCatalog(catalog)
    hits = live.search(windows)
    hits.insert(2 * ended - joined, EndOfStream("handed-on", late[ended - 1].seq + 1, late[0].run))
    metrics = create(CollectorRegistry())
    step = TrackingStep(live, MemoryStateStore(), metrics=metrics)
    plays = plays_in(track_in_batches(step, [*hits, EndOfStream("handed-on", early[-1].seq + 1, early[0].run)]))

    assert [(e.state, e.track_id) for e in plays] == [("started", "gardien-go"), ("ended", "gardien-go")] * 2, plays
    assert abs(plays[1].stream_end - early[ended].offset) <= 1.0 and abs(plays[3].stream_end - truth.stream_end) <= 1.0
    assert metrics.ingest_run_conflicts.labels("handed-on")._value.get() == ended - joined
    assert metrics.ingest_run_switches.labels("handed-on")._value.get() == 0  # the run tracked ended: no switch
    (reported,) = [r.getMessage() for r in caplog.records if "published by two ingest runs" in r.getMessage()]
    assert f"ingest run {late[0].run} " in reported.split("whose windows are tracked")[0] and f"ingest run {early[0].run} " in reported


def test_a_replay_publishes_no_event_twice(service_catalog: Path, tmp_path: Path) -> None:
    """A worker publishes the first half's events and dies before saving its state; the next one replays
    the whole stream; a third replays again after the state was saved."""
    catalog = Catalog.open(service_catalog)
    grid = WindowGrid.for_encoder(catalog.encoder)
    path, truth = broadcast(tmp_path, "replay", "gardien-go", 20.0)
    windows = windows_of(path, "replay", grid)
    live = LiveCatalog(catalog)
    hits = [*live.search(windows), EndOfStream("replay", windows[-1].seq + 1)]
    store = MemoryStateStore()
    stage = TrackingStep(live, store)

    _, caused = stage.advance(hits[: len(hits) // 2])
    first = stage.unpublished(caused).events
    store.mark_published(e.event_id for e in first)
    states, caused = stage.advance(hits)
    second = stage.unpublished(caused).events
    stage.commit(states, second)
    assert [e.state for e in plays_in(first)] == ["started"] and [e.state for e in plays_in(second)] == ["ended"], (first, second)
    assert_one_play(plays_in([*first, *second]), truth)
    assert len({e.event_id for e in [*first, *second]}) == len(first) + len(second)  # airtime too is published once
    assert stage.advance(hits[len(hits) // 2 :]) == (store.load(["replay"]), [])


def two_workers_on_one_stream(service_catalog: Path, tmp_path: Path, redis_server: servers.ServerProcess, stream: str,
                              claim_seconds: float = 30.0) -> tuple[list[WindowHits | EndOfStream], tuple[TrackingStep, TrackingStep]]:
    """The hits of a 20 s play of gardien-go on `stream`, and the tracking steps of two workers sharing one Redis."""
    catalog = Catalog.open(service_catalog)
    path, _ = broadcast(tmp_path, stream, "gardien-go", 20.0)
    live = LiveCatalog(catalog)
    windows = windows_of(path, stream, WindowGrid.for_encoder(catalog.encoder))
    hits = [*live.search(windows), EndOfStream(stream, windows[-1].seq + 1)]
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    first, second = (TrackingStep(live, RedisStateStore(RedisSettings(url), claim_seconds=claim_seconds)) for _ in range(2))
    return hits, (first, second)


def test_a_worker_that_lost_a_stream_mid_batch_and_its_heir_publish_each_event_once(
        service_catalog: Path, tmp_path: Path, redis_server: servers.ServerProcess) -> None:
    """Two workers derive the same events at once (a rebalance gave the stream to the second while the first
    was publishing): the second waits until the first published and committed them, and publishes none; when
    the first fails to publish, the second publishes them all."""
    hits, (losing, heir) = two_workers_on_one_stream(service_catalog, tmp_path, redis_server, "handover")

    def heir_publishes(caused: list[Event]) -> tuple[threading.Thread, list[Event]]:
        found: list[Event] = []
        thread = threading.Thread(target=lambda: found.extend(heir.unpublished(caused).events))
        thread.start()
        return thread, found

    states, caused = losing.advance(hits[: len(hits) // 2])
    claimed = losing.unpublished(caused).events
    assert [e.state for e in plays_in(claimed)] == ["started"]
    thread, found = heir_publishes(heir.advance(hits[: len(hits) // 2])[1])
    losing.commit(states, claimed)
    thread.join()
    assert found == []

    states, caused = losing.advance(hits)
    claimed = losing.unpublished(caused).events
    assert [e.state for e in plays_in(claimed)] == ["ended"]
    thread, found = heir_publishes(heir.advance(hits)[1])
    losing.release(claimed)
    thread.join()
    assert found == claimed


def test_a_worker_whose_claims_lapsed_while_it_held_them_sends_none_that_its_heir_took_over(
        service_catalog: Path, tmp_path: Path, redis_server: servers.ServerProcess) -> None:
    """A worker claimed a play's started event and then held it past its claim (starved, paused, or reading the
    plays topic back); the stream's new owner took the lapsed claim over and published it. Renewing its claims
    just before sending, the first worker finds it has none, and leaves the stream's state to the heir. A
    claim that lapsed with no one taking it over is still its own."""
    hits, (paused, heir) = two_workers_on_one_stream(service_catalog, tmp_path, redis_server, "paused", claim_seconds=0.5)

    states, caused = paused.advance(hits[: len(hits) // 2])
    claimed = paused.unpublished(caused).events
    assert [e.state for e in plays_in(claimed)] == ["started"] and set(states) == {"paused"}
    heir_states, heir_caused = heir.advance(hits[: len(hits) // 2])
    taken = heir.unpublished(heir_caused)  # waits until the paused worker's claim lapses
    assert taken.events == claimed and set(taken.maybe_out) == {e.event_id for e in claimed}
    heir.commit(heir_states, taken.events)
    assert paused.renew(states, claimed) == ({}, [])

    states, caused = paused.advance(hits)
    claimed = paused.unpublished(caused).events
    assert [e.state for e in plays_in(claimed)] == ["ended"]
    time.sleep(0.6)  # its claim lapses, and no one takes it over
    assert paused.renew(states, claimed) == (states, claimed)


def test_a_send_that_fails_part_way_marks_what_went_out_and_leaves_the_rest_to_whoever_redoes_it(
        service_catalog: Path, tmp_path: Path, redis_server: servers.ServerProcess, kafka_broker: servers.ServerProcess) -> None:
    """The broker took a stream's first events and the producer refused the last (too large): the events sent
    are marked published and the other's claim given up, so the worker that redoes the step sends that one
    alone. Giving every claim up, as a failed send once did, had the redo send the first ones again."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import MessageSizeTooLargeError

    from monitor.fleet.broker import KafkaSettings, Topics, ensure_topics
    from monitor.fleet.worker import send_in_order

    hits, (failing, heir) = two_workers_on_one_stream(service_catalog, tmp_path, redis_server, "part-way")
    kafka, topic, limit = KafkaSettings(f"127.0.0.1:{kafka_broker.port}"), "part-way.plays", 4000
    caused = failing.advance(hits)[1]
    *fitting, last = failing.unpublished(caused).events
    claimed = [*fitting, replace(last, stream={"note": "x" * limit})]  # stream metadata as ingest's headers bring it
    assert fitting and all(len(e.to_line()) < limit / 2 for e in fitting)

    async def send_claimed() -> tuple[list[Event], BaseException | None]:
        await ensure_topics(kafka, [topic], Topics(partitions=2))
        producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", max_request_size=limit)
        await producer.start()
        try:
            return await send_in_order(lambda e: producer.send(topic, e.to_line().encode(), key=e.stream_id.encode()), claimed)
        finally:
            await producer.stop()

    unsent, error = asyncio.run(send_claimed())
    assert isinstance(error, MessageSizeTooLargeError) and unsent == claimed[-1:]
    failing.release(unsent, fitting)
    assert sorted(json.loads(r.value)["event_id"] for r in servers.read_topic(kafka_broker.port, topic)) == sorted(e.event_id for e in fitting)
    assert [e.event_id for e in heir.unpublished(heir.advance(hits)[1]).events] == [last.event_id]


def test_an_event_whose_delivery_fails_after_the_others_went_out_is_the_one_not_sent(tmp_path: Path) -> None:
    """The broker took a stream's first events, then went away while the last was on its way: that delivery
    fails once the producer's request timeout passes, and that event alone comes back as not sent."""
    import uuid

    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    from monitor.fleet.broker import KafkaSettings, Topics, ensure_topics
    from monitor.fleet.worker import send_in_order

    broker = servers.tansu(tmp_path)
    kafka, topic = KafkaSettings(f"127.0.0.1:{broker.port}"), "gone.plays"
    plays = [PlayEvent(str(uuid.uuid4()), "started", "gone", f"track-{n}", 1.8e9 + n, n, 0.0, 1.0, 5.0, 0.999, n + 6.0) for n in range(3)]

    async def send_while_the_broker_goes() -> tuple[list[Event], BaseException | None]:
        await ensure_topics(kafka, [topic], Topics(partitions=2))
        producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", request_timeout_ms=1000)
        await producer.start()

        async def send(event: Event) -> asyncio.Future:
            if event is plays[-1]:
                await producer.flush()  # the broker took the others
                broker.stop()
            return await producer.send(topic, event.to_line().encode(), key=event.stream_id.encode())

        try:
            return await send_in_order(send, plays)
        finally:
            await producer.stop()

    try:
        unsent, error = asyncio.run(send_while_the_broker_goes())
    finally:
        broker.stop()
    assert unsent == plays[-1:] and isinstance(error, KafkaError)


def test_bad_settings_get_clear_errors(tmp_path: Path, service_catalog: Path) -> None:
    runner = CliRunner()
    config = tmp_path / "streams.yaml"
    config.write_text("- id: radio1\n  urll: http://example.invalid/live.mp3\n")
    result = runner.invoke(main, ["ingest", "--streams", str(config)])
    assert result.exit_code == 2 and "'urll'" in result.output and "Traceback" not in result.output

    result = runner.invoke(main, ["ingest", "http://example.invalid/live.mp3", "--broker", f"127.0.0.1:{servers.free_port()}"])
    assert result.exit_code == 1 and "cannot reach Kafka" in result.output and "Traceback" not in result.output

    result = runner.invoke(main, ["worker", "--catalog", str(service_catalog), "--sasl-mechanism", "PLAIN", "--sasl-username", "u"])
    assert result.exit_code == 2 and "password" in result.output

    result = runner.invoke(main, ["worker", "--catalog", str(service_catalog), "--redis-url", "http://cache:6379"])
    assert result.exit_code == 2 and "redis://" in result.output

    result = runner.invoke(main, ["worker", "--catalog", str(service_catalog)], env={"AIRTRACE_REDIS_URL": f"redis://:hunter2@127.0.0.1:{servers.free_port()}/0"})
    assert result.exit_code == 1 and "cannot use Redis" in result.output and "hunter2" not in result.output


def test_a_worker_that_takes_partitions_over_counts_lag_from_the_groups_commits(
    kafka_broker: servers.ServerProcess, redis_server: servers.ServerProcess, service_catalog: Path, tmp_path: Path
) -> None:
    """Found by `airtrace bench chaos`: a worker counted the partitions it had just been assigned from offset 0
    until it committed them itself, so every restart and rebalance showed the whole topic as consumer lag."""
    prefix, windows = "lag-test", 120
    grid = WindowGrid.for_encoder(Catalog.open(service_catalog).encoder)

    def start_worker(name: str) -> tuple[subprocess.Popen, int]:
        return start_group_worker(name, prefix, kafka_broker, redis_server, service_catalog, tmp_path)

    def lag(port: int) -> float | None:
        return servers.metric(port, "airtrace_consumer_lag_messages", topic=f"{prefix}.windows")

    first, port = start_worker("first")
    try:
        servers.wait_until(lambda: servers.metric(port, "airtrace_heartbeat_timestamp_seconds"), 120, "the first worker runs its agents")
        produce(kafka_broker.port, f"{prefix}.windows", silent_windows(grid, range(windows)))
        servers.wait_until(lambda: servers.metric(port, "airtrace_hits_total", stream="quiet") == windows and lag(port) == 0, 120,
                           "the first worker handles and commits every window")
    finally:
        servers.stop(first)
    second, port = start_worker("second")
    try:
        servers.wait_until(lambda: servers.metric(port, "airtrace_heartbeat_timestamp_seconds"), 120, "the second worker runs its agents")
        produce(kafka_broker.port, f"{prefix}.windows", silent_windows(grid, range(windows, windows + 10)))  # the stream goes on
        servers.wait_until(lambda: lag(port) is not None, 120, "the second worker reports lag")  # once a fetch told it where the topic ends
        seen = [lag(port) for _ in range(20) if time.sleep(0.25) is None]
    finally:
        servers.stop(second)
    assert max(v for v in seen if v is not None) <= 10, f"the lag of a topic committed but for 10 windows read {seen}"


@pytest.mark.slow
def test_a_worker_that_hands_streams_to_a_new_peer_drops_what_it_held_of_them(
    kafka_broker: servers.ServerProcess, redis_server: servers.ServerProcess, service_catalog: Path, tmp_path: Path
) -> None:
    """Through a real rebalance: the first worker names, among the streams it handled, exactly those the second took."""
    prefix, streams = "handover-test", [f"radio-{n}" for n in range(6)]
    grid = WindowGrid.for_encoder(Catalog.open(service_catalog).encoder)

    def start_worker(name: str) -> tuple[subprocess.Popen, int]:
        return start_group_worker(name, prefix, kafka_broker, redis_server, service_catalog, tmp_path)

    def handled(port: int) -> set[str]:
        return {s for s in streams if servers.metric(port, "airtrace_hits_total", stream=s) == 20}

    first, first_port = start_worker("first")
    second = None
    try:
        servers.wait_until(lambda: servers.metric(first_port, "airtrace_heartbeat_timestamp_seconds"), 120, "the first worker runs its agents")
        produce(kafka_broker.port, f"{prefix}.windows", [m for s in streams for m in silent_windows(grid, range(20), s)])
        servers.wait_until(lambda: handled(first_port) == set(streams), 120, "the first worker handles every stream")
        second, second_port = start_worker("second")
        log = tmp_path / "first.log"
        servers.wait_until(lambda: DROPPED.search(log.read_text()), 120, "the first worker drops the streams it lost")
        dropped = set(DROPPED.search(log.read_text()).group(1).strip().split(", "))
        produce(kafka_broker.port, f"{prefix}.windows", [m for s in streams for m in silent_windows(grid, range(20, 40), s)])
        servers.wait_until(lambda: handled(second_port) == dropped, 120, f"the second worker handles the streams the first dropped ({sorted(dropped)})")
    finally:
        for process in (first, second):
            if process is not None:
                servers.stop(process)
    assert 0 < len(dropped) < len(streams)


def start_group_worker(name: str, prefix: str, broker: servers.ServerProcess, redis: servers.ServerProcess, catalog: Path,
                       workdir: Path) -> tuple[subprocess.Popen, int]:
    """A worker of group `prefix` (topics of 2 partitions under `prefix`), logging to NAME.log; with its metrics port."""
    port = servers.free_port()
    args = ["worker", "--catalog", str(catalog), "--redis-url", f"redis://127.0.0.1:{redis.port}/0", "--session-timeout", "3",
            "--batch-wait", "0.2", "--metrics-port", str(port), "--broker", f"127.0.0.1:{broker.port}", "--topic-prefix", prefix,
            "--partitions", "2", "--group", prefix]
    return servers.airtrace(args, workdir / f"{name}.log", cwd=workdir), port


def silent_windows(grid: WindowGrid, seqs: range, stream: str = "quiet") -> list[tuple[bytes, bytes]]:
    silence = np.zeros(grid.window, np.float32)
    return [(stream.encode(), encode_window(AudioWindow(stream, n, n * grid.hop_seconds, 1.8e9 + n, silence, n == 0), grid.sample_rate))
            for n in seqs]


def produce(port: int, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{port}", max_request_size=2 * MAX_MESSAGE_BYTES)
        await producer.start()
        try:
            for key, value in messages:
                await producer.send(topic, value, key=key)
        finally:
            await producer.stop()

    asyncio.run(send())


def test_events_already_out_reads_each_partition_back_to_the_claim(kafka_broker: servers.ServerProcess) -> None:
    """A dead worker's events among more records than one step back reads, on several partitions: those it
    sent are found, one it never sent is not; a broker that never answers finds none (they are all sent)."""
    from aiokafka import AIOKafkaProducer

    from monitor.fleet.already_out import READ_BACK_RECORDS, events_already_out
    from monitor.fleet.broker import KafkaSettings, Topics, ensure_topics

    kafka, topic = KafkaSettings(f"127.0.0.1:{kafka_broker.port}"), "already-out.plays"
    claimed_at = time.time()

    async def dead_worker_sends() -> None:
        await ensure_topics(kafka, [topic], Topics(partitions=3))
        producer = AIOKafkaProducer(**kafka.client_kwargs())
        await producer.start()
        try:
            lines = [("sent-first", 0), *((f"other-{n}", 0) for n in range(READ_BACK_RECORDS + 10)), ("sent-last", 2)]
            for event_id, partition in lines:
                await producer.send(topic, json.dumps({"event_id": event_id}).encode(), partition=partition)
            await producer.send(topic, b"not an event", partition=1)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(dead_worker_sends())
    maybe_out = dict.fromkeys(["sent-first", "sent-last", "never-sent"], claimed_at)
    assert asyncio.run(events_already_out(kafka, topic, maybe_out)) == {"sent-first", "sent-last"}
    with servers.SilentServer() as silent:
        assert asyncio.run(events_already_out(KafkaSettings(f"127.0.0.1:{silent.port}"), topic, maybe_out, timeout=1.0)) == set()

    async def broker_back_after_two_seconds() -> set[str]:
        """The broker refuses connections while it restarts (claims lapse after faults): the look waits for it."""
        port = servers.free_port()

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            finally:
                writer.close()

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", kafka_broker.port)
            await asyncio.gather(pipe(reader, broker_writer), pipe(broker_reader, writer), return_exceptions=True)

        async def back_later() -> asyncio.Server:
            await asyncio.sleep(2.0)
            return await asyncio.start_server(relay, "127.0.0.1", port)

        coming = asyncio.ensure_future(back_later())
        found = await events_already_out(KafkaSettings(f"127.0.0.1:{port}"), topic, maybe_out, timeout=60.0)
        (await coming).close()
        return found

    assert asyncio.run(broker_back_after_two_seconds()) == {"sent-first", "sent-last"}


def test_a_worker_sends_again_none_of_the_events_a_dead_worker_sent_before_marking_them(service: Service) -> None:
    """A worker was SIGKILLed after the broker took the play's started event and before it marked it
    published, and before it sent the ended event: both claims lapsed in Redis. The next worker on the
    stream derives both again; it finds the started event on the plays topic and sends only the ended one."""
    path, truth = broadcast(service.workdir, "killed-sending", "gardien-go", 20.0)
    windows = windows_of(path, "killed-sending", service.grid)
    catalog = LiveCatalog(Catalog.open(service.catalog_dir))
    _, events = TrackingStep(catalog, MemoryStateStore()).advance(
        [*catalog.search(windows), EndOfStream("killed-sending", windows[-1].seq + 1)])
    started, ended = plays_in(events)
    claim = f"claim:dead-worker {int((time.time() - 60) * 1000)}"  # a minute ago: lapsed
    client = redis.Redis(port=service.redis.port)
    for event in (started, ended):
        client.set(f"airtrace:emitted:{event.event_id}", claim)
    from monitor.fleet.broker import KafkaSettings, Topics, ensure_topics

    asyncio.run(ensure_topics(KafkaSettings(f"127.0.0.1:{service.broker.port}"), [service.topic("plays")], Topics(partitions=PARTITIONS)))
    service.send("plays", [(b"killed-sending", started.to_line().encode())])

    service.send_windows(windows)
    plays = service.wait_for_plays("killed-sending", 2)
    time.sleep(2.0)  # nothing more may follow
    assert [e.event_id for e in service.plays("killed-sending")] == [started.event_id, ended.event_id]
    assert_one_play(plays, truth)
    assert "1 event(s) of a worker that died publishing are on" in service.log.read_text()


def test_recordings_ingested_with_their_air_start_play_when_they_aired_and_again_add_no_plays(service: Service) -> None:
    """`airtrace ingest` of logger recordings with their air start: their windows are numbered (and their run named) from
    it, so the plays carry the time the music aired, a recording ingested again is a replay to the worker (no play twice),
    and the next hour of the stream is a play of its own. An earlier hour ingested after them is passed over, with a
    warning that says how to ingest it."""
    from monitor.fleet.broker import KafkaSettings, Topics
    from monitor.fleet.publish import publish_windows

    path, truth = broadcast(service.workdir, "logger", "area1-game", 20.0)
    nine, ten, eleven = (datetime(2026, 12, 5, hour, tzinfo=timezone.utc).timestamp() for hour in (9, 10, 11))
    for air_start in (ten, ten, eleven, nine):  # nine last: an earlier hour after a later one is passed over, and said
        asyncio.run(publish_windows([StreamSource("logger", str(path), air_start=air_start)], service.grid,
                                    KafkaSettings(f"127.0.0.1:{service.broker.port}"), Topics.with_prefix(service.prefix, PARTITIONS)))
    events = service.wait_for_plays("logger", 4)
    assert_one_play(events[:2], truth)
    assert_one_play(events[2:], truth)
    for play, air_start in zip(events[::2], (ten, eleven)):
        assert abs(play.started_at - (air_start + truth.stream_start)) <= 1.0
    servers.wait_until(lambda: service.lag("hits") == 0 and f"ingest run {round(nine * 1000)}" in service.log.read_text(), 15,
                       "the worker has handled every window")
    assert len(service.plays("logger")) == 4
    assert "aired before it: its windows are taken as replays" in service.log.read_text()


def test_the_streams_of_partitions_handed_to_another_worker_are_the_ones_forgotten() -> None:
    """A worker that lost streams in a rebalance kept their unknown-music buffers (about 10 MB a stream) until it was
    restarted; the streams it keeps, and those of a batch under way when the partitions went, are told apart."""
    from faust.types import TP, Message

    from monitor.fleet.worker import StreamPartitions

    def message(topic: str, partition: int, stream: str) -> Message:
        return Message(topic, partition, 0, 0.0, 0, None, stream.encode(), b"", None)

    streams = StreamPartitions("p.hits")
    streams.note([message("p.windows", 0, "radio-a"), message("p.windows", 1, "radio-b"), message("p.hits", 2, "radio-c")])
    assert streams.lost() == []  # nothing is lost before the first assignment
    streams.assigned({TP("p.windows", 0), TP("p.hits", 0), TP("p.windows", 2), TP("p.hits", 2)})
    assert streams.lost() == ["radio-b"] and streams.lost() == []
    streams.note([message("p.hits", 1, "radio-b")])  # hits of a batch under way when partition 1 went
    assert streams.lost() == ["radio-b"]
    streams.assigned({TP("p.hits", 1)})
    assert streams.lost() == ["radio-a", "radio-c"]
