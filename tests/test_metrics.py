"""Metrics: the agreed names, served over HTTP, and play events reflected in them."""

from __future__ import annotations

import urllib.request
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from monitor.events import PlayEvent, ProvisionalEvent, WithdrawnEvent, play_id
from monitor.metrics import create, observe_events, serve

NAMES = {
    "airtrace_windows_ingested", "airtrace_stream_up", "airtrace_stream_reconnects", "airtrace_decode_errors",
    "airtrace_silence_seconds", "airtrace_embedding_batch_size", "airtrace_embedding_seconds", "airtrace_search_seconds",
    "airtrace_consumer_lag_messages", "airtrace_hits", "airtrace_plays_started", "airtrace_plays_ended",
    "airtrace_plays_provisional", "airtrace_plays_withdrawn",
    "airtrace_now_playing", "airtrace_last_play_timestamp_seconds", "airtrace_detection_latency_seconds", "airtrace_dead_letters",
    "airtrace_ingest_run_conflicts", "airtrace_ingest_run_switches", "airtrace_catalog_tracks", "airtrace_catalog_windows", "airtrace_index_bytes", "airtrace_catalog_outage", "airtrace_windows_unheard",
    "airtrace_heartbeat_timestamp_seconds",
}


def scrape(port: int) -> tuple[set[str], dict[str, dict[tuple, float]]]:
    """Family names, and sample name -> {sorted label items: value}, from the text served on `port`."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    families, values = set(), {}
    for family in text_string_to_metric_families(body):
        families.add(family.name)
        for sample in family.samples:
            values.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return families, values


def play(state: str, started_at: float = 1000.0) -> PlayEvent:
    end = {"ended_at": started_at + 60, "stream_end": 70.0, "ref_end": 60.0} if state == "ended" else {}
    return PlayEvent(play_id("radio", "t1", 20), state, "radio", "t1", started_at, 10.0, 0.0, 1.0, 5.0, 0.9, 13.0, **end)


def test_metrics_are_served_over_http_with_the_agreed_names() -> None:
    registry = CollectorRegistry()
    metrics = create(registry)
    metrics.windows_ingested.labels("radio").inc(3)
    metrics.embedding_batch_size.observe(64)
    metrics.consumer_lag.labels("windows").set(7)
    metrics.dead_letters.labels("malformed").inc()
    metrics.catalog_tracks.set(5)
    server, thread = serve(0, registry=registry)
    try:
        families, values = scrape(server.server_port)
    finally:
        server.shutdown()
        server.server_close()
    assert NAMES <= families
    assert values["airtrace_windows_ingested_total"][(("stream", "radio"),)] == 3
    assert values["airtrace_embedding_batch_size_bucket"][(("le", "64.0"),)] == 1
    assert values["airtrace_consumer_lag_messages"][(("topic", "windows"),)] == 7
    assert values["airtrace_catalog_tracks"][()] == 5
    assert any(name.startswith("process_cpu_seconds") for name in values)


def test_play_events_drive_counters_now_playing_and_latency() -> None:
    registry = CollectorRegistry()
    metrics = create(registry)
    observe_events(metrics, [play("started")], now=1004.5)
    get = registry.get_sample_value
    assert get("airtrace_now_playing", {"stream": "radio", "track_id": "t1"}) == 1
    assert get("airtrace_plays_started_total", {"stream": "radio"}) == 1
    per_track = {family.name for family in registry.collect() for sample in family.samples if "track_id" in sample.labels}
    assert per_track == {"airtrace_now_playing"}, "plays per track belong in the play log, not in a series per (stream, track)"
    assert get("airtrace_detection_latency_seconds_sum") == 4.5  # wall clock beat the stream-time delay (3 s)
    observe_events(metrics, [play("ended")], now=1070.0)
    assert get("airtrace_now_playing", {"stream": "radio", "track_id": "t1"}) is None  # removed, not zero
    assert get("airtrace_plays_ended_total", {"stream": "radio"}) == 1
    assert get("airtrace_last_play_timestamp_seconds", {"stream": "radio"}) == 1070.0
    observe_events(metrics, [play("started", started_at=5000.0)], now=1000.0)  # a file read faster than real time
    assert get("airtrace_detection_latency_seconds_sum") == 4.5 + 3.0


def test_now_playing_keeps_one_series_a_stream_when_another_process_ended_its_play() -> None:
    """A worker announced t1 on radio; a rebalance gave the stream to another worker, which ended the play; the stream
    came back and t2 started here. t1's series stayed at 1 for good: one more series for every play a rebalance
    cut, without end over months of a fleet's rebalances. The stream's next play takes its place."""
    registry = CollectorRegistry()
    metrics = create(registry)
    observe_events(metrics, [play("started")], now=1004.5)
    observe_events(metrics, [replace(play("started", started_at=2000.0), track_id="t2", play_id=play_id("radio", "t2", 2020))], now=2004.5)
    observe_events(metrics, [replace(play("started"), stream_id="tv")], now=1004.5)
    now_playing = {tuple(s.labels.values()) for family in registry.collect() if family.name == "airtrace_now_playing" for s in family.samples}
    assert now_playing == {("radio", "t2"), ("tv", "t1")}


def test_provisional_plays_are_counted_with_their_withdrawals_and_never_play() -> None:
    registry = CollectorRegistry()
    metrics = create(registry)
    heard = ProvisionalEvent(play_id("radio", "t2", 40), "radio", "t2", 1000.0, 20.0, 3.0, 1.0, 4.0, 0.999, 22.5)
    observe_events(metrics, [heard, WithdrawnEvent(**{**vars(heard), "decided_offset": 38.0})], now=1040.0)
    get = registry.get_sample_value
    assert get("airtrace_plays_provisional_total", {"stream": "radio"}) == get("airtrace_plays_withdrawn_total", {"stream": "radio"}) == 1
    assert get("airtrace_plays_started_total", {"stream": "radio"}) is None and get("airtrace_now_playing", {"stream": "radio", "track_id": "t2"}) is None


CATALOG_METRICS = {"airtrace_catalog_tracks", "airtrace_catalog_windows", "airtrace_index_bytes", "airtrace_catalog_outage", "airtrace_windows_unheard"}


def test_processes_without_a_catalog_serve_no_catalog_metrics(kafka_broker, postgres_url: str, tmp_path: Path) -> None:
    """`airtrace ingest` and `airtrace plays consume` hold no catalog: the zeros they served showed as processes
    with an empty catalog on the catalog dashboard's "Catalog per process" and "Catalog size over time"."""
    from catalog_fixtures import MUSIC

    from monitor.bench import servers
    from monitor.playlog.store import PlayLog

    PlayLog.open(postgres_url, migrate=True)
    kafka = ["--broker", f"{servers.HOST}:{kafka_broker.port}", "--topic-prefix", "no-catalog", "--partitions", "1"]
    commands = {"ingest": ["ingest", *kafka, "--realtime", str(MUSIC / "area1-game.opus")], "consume": ["plays", "consume", "--playlog", postgres_url, *kafka]}
    ports = {name: servers.free_port() for name in commands}
    processes = [servers.airtrace([*args, "--metrics-port", str(ports[name])], tmp_path / f"{name}.log") for name, args in commands.items()]
    try:
        for port, process in zip(ports.values(), processes):
            servers.wait_for_port(port, process, timeout=60)
        servers.wait_until(lambda: servers.metric(ports["ingest"], "airtrace_windows_ingested_total", stream="area1-game"), 60, "ingest publishes")
        for name, port in ports.items():
            families, _ = scrape(port)
            assert not families & CATALOG_METRICS, f"{name} serves {sorted(families & CATALOG_METRICS)}"
    finally:
        for process in processes:
            servers.stop(process)
