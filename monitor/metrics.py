"""Prometheus metrics: every name dashboards and alerts use, built in one place and served by every process.

`create(registry)` builds them all as one `Metrics` tuple (the layout of Faust's sensors/prometheus.py),
so a process creates its metrics once and hands the tuple to the stages it runs; tests pass a fresh
`CollectorRegistry` and read the values back. `serve(port)` exposes a registry over HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

if TYPE_CHECKING:
    from monitor.events import Event

# Embedding batches, in windows: one stream's single window up to a full cross-stream batch.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Per-batch embedding and search time, in seconds.
STAGE_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Air time of a play's start to its started event, in seconds (the target is p95 <= 10 s).
LATENCY_SECONDS_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 60.0)


class Metrics(NamedTuple):
    windows_ingested: Counter
    stream_up: Gauge
    stream_reconnects: Counter
    decode_errors: Counter
    silence_seconds: Counter
    content_seconds: Counter
    stream_info: Gauge
    embedding_batch_size: Histogram
    embedding_seconds: Histogram
    search_seconds: Histogram
    consumer_lag: Gauge
    hits: Counter
    plays_started: Counter
    plays_ended: Counter
    plays_provisional: Counter
    plays_withdrawn: Counter
    music_seconds: Counter
    unknown_stretches: Counter
    now_playing: Gauge
    last_play_timestamp: Gauge
    detection_latency: Histogram
    dead_letters: Counter
    ingest_run_conflicts: Counter
    ingest_run_switches: Counter
    catalog_tracks: Gauge
    catalog_windows: Gauge
    index_bytes: Gauge
    catalog_outage: Gauge
    windows_unheard: Counter
    heartbeat: Gauge


def create(registry: CollectorRegistry = REGISTRY, holds_catalog: bool = True) -> Metrics:
    """Register every airtrace metric in `registry` (plus process_* CPU and memory for a fresh registry).

    Counters are per stream, never per track: a series per (stream, track) grows with every track ever
    played (100 stations x 20,000 tracks is 2 M series); which track played is the play log's (monitor.playlog).
    Only now-playing is per track, and its series goes when the play ends, or else (another process ended it, after
    a rebalance) when this one starts the stream's next play: a process serves one series a stream at most.
    Without `holds_catalog` (ingest, the play log writer) the catalog's metrics are not served: their zeros would
    read as an emptied catalog beside the workers' on the catalog dashboard."""
    if registry is not REGISTRY:  # the default registry already carries the process and platform collectors
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    catalogs = registry if holds_catalog else None  # an unregistered metric still counts, unserved
    stream = ["stream"]
    return Metrics(
        windows_ingested=Counter("airtrace_windows_ingested", "Audio windows cut from a stream.", stream, registry=registry),
        stream_up=Gauge("airtrace_stream_up", "1 while a stream is connected and delivering audio, else 0.", stream, registry=registry),
        stream_reconnects=Counter("airtrace_stream_reconnects", "Times a stream was reopened after failing, dropping or stalling.", stream, registry=registry),
        decode_errors=Counter("airtrace_decode_errors", "Failures to open or decode a stream.", stream, registry=registry),
        silence_seconds=Counter("airtrace_silence_seconds", "Seconds of dead air (silence) on a stream.", stream, registry=registry),
        content_seconds=Counter("airtrace_content_seconds", "Seconds of a stream by what they hold (music, speech, speech_over_music, silence, other), "
                                "one hop per window as the content classifier labels it.", ["stream", "content"], registry=registry),
        stream_info=Gauge("airtrace_stream_info", "1 per stream: the program and audio track it monitors (service name and provider from the transport stream's tables).",
                          ["stream", "program", "service_name", "service_provider", "language"], registry=registry),
        embedding_batch_size=Histogram("airtrace_embedding_batch_size", "Windows per embedding batch.", buckets=BATCH_SIZE_BUCKETS, registry=registry),
        embedding_seconds=Histogram("airtrace_embedding_seconds", "Time to embed one batch.", buckets=STAGE_SECONDS_BUCKETS, registry=registry),
        search_seconds=Histogram("airtrace_search_seconds", "Time to search the catalog for one batch.", buckets=STAGE_SECONDS_BUCKETS, registry=registry),
        consumer_lag=Gauge("airtrace_consumer_lag_messages", "Messages a consumer is behind the end of its topic.", ["topic"], registry=registry),
        hits=Counter("airtrace_hits", "Windows searched in the catalog (one hit record each).", stream, registry=registry),
        plays_started=Counter("airtrace_plays_started", "Play events in state started.", stream, registry=registry),
        plays_ended=Counter("airtrace_plays_ended", "Play events in state ended.", stream, registry=registry),
        plays_provisional=Counter("airtrace_plays_provisional", "Plays heard before they were sure (provisional events).", stream, registry=registry),
        plays_withdrawn=Counter("airtrace_plays_withdrawn", "Provisional plays withdrawn: never started (their share of provisional ones: "
                                "how often a first notice was wrong).", stream, registry=registry),
        music_seconds=Counter("airtrace_music_seconds", "Seconds of music on a stream by source: catalog (plays) or unknown (stretches no catalog "
                              "play covered); counted when a play ends or a stretch is decided.", ["stream", "source"], registry=registry),
        unknown_stretches=Counter("airtrace_unknown_stretches", "Unknown stretches decided, by whether they repeat content kept from an earlier airing.",
                                  ["stream", "repeat"], registry=registry),
        now_playing=Gauge("airtrace_now_playing", "1 while a track plays on a stream; the series is removed when it ends.", ["stream", "track_id"], registry=registry),
        last_play_timestamp=Gauge("airtrace_last_play_timestamp_seconds", "Unix time of the last play event on a stream.", stream, registry=registry),
        detection_latency=Histogram("airtrace_detection_latency_seconds", "Air time of a play's start to its started event.", buckets=LATENCY_SECONDS_BUCKETS, registry=registry),
        dead_letters=Counter("airtrace_dead_letters", "Messages that could not be processed and were set aside.", ["reason"], registry=registry),
        ingest_run_conflicts=Counter("airtrace_ingest_run_conflicts", "Windows of a stream set aside because another ingest run publishes the stream "
                                     "too and is tracked: two ingest processes read one stream id.", stream, registry=registry),
        ingest_run_switches=Counter("airtrace_ingest_run_switches", "Times a stream's tracking moved to another ingest run of it (the one tracked ended "
                                    "or fell silent) or went on past a window numbered ahead of its run.", stream, registry=registry),
        catalog_tracks=Gauge("airtrace_catalog_tracks", "Tracks in the loaded catalog.", registry=catalogs),
        catalog_windows=Gauge("airtrace_catalog_windows", "Reference windows in the loaded catalog.", registry=catalogs),
        index_bytes=Gauge("airtrace_index_bytes", "Size of the loaded catalog index.", registry=catalogs),
        catalog_outage=Gauge("airtrace_catalog_outage", "1 while the loaded catalog cannot be searched and windows go unheard, else 0.", registry=catalogs),
        windows_unheard=Counter("airtrace_windows_unheard", "Windows not searched because the catalog could not be: no play ends or opens on them.", registry=catalogs),
        heartbeat=Gauge("airtrace_heartbeat_timestamp_seconds", "Unix time at which a loop of this process (an agent, the embedded loop) last showed it is not stuck.",
                        ["loop"], registry=registry),
    )


def observe_events(metrics: Metrics, events: Iterable["Event"], now: float | None = None) -> None:
    """Count events and keep now-playing current; every process that emits events calls this.

    Detection latency is the larger of the stream-time delay (how much audio after the play's start the
    decision needed) and the wall-clock delay since the start went on air: the first is what a file read
    faster than real time shows, the second adds ingest and processing delay on a live stream.
    """
    now = time.time() if now is None else now
    for event in events:
        if event.kind == "unknown":
            metrics.music_seconds.labels(event.stream_id, "unknown").inc(event.duration)
            metrics.unknown_stretches.labels(event.stream_id, "yes" if event.cluster_id else "no").inc()
        if event.kind == "provisional":
            metrics.plays_provisional.labels(event.stream_id).inc()
        if event.kind == "withdrawn":
            metrics.plays_withdrawn.labels(event.stream_id).inc()
        if event.kind != "play":
            continue
        labels = (event.stream_id, event.track_id)
        if event.state == "started":
            metrics.plays_started.labels(event.stream_id).inc()
            metrics.now_playing.remove_by_labels({"stream": event.stream_id})  # a play of its whose end another process emitted
            metrics.now_playing.labels(*labels).set(1)
            metrics.detection_latency.observe(max(event.decided_offset - event.stream_start, now - event.started_at))
        else:
            metrics.plays_ended.labels(event.stream_id).inc()
            metrics.music_seconds.labels(event.stream_id, "catalog").inc(event.duration or 0.0)
            try:
                metrics.now_playing.remove(*labels)
            except KeyError:  # a play whose started event another process emitted
                pass
        metrics.last_play_timestamp.labels(event.stream_id).set(now)


def serve(port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY):
    """Serve `registry` at http://host:port/metrics in a daemon thread; returns (server, thread) to shut down."""
    return start_http_server(port, addr=host, registry=registry)
