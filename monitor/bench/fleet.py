"""`airtrace bench fleet`: how many streams one worker core carries through Kafka, measured.

N live HTTP streams of synthetic broadcasts (the chaos run's stations, without faults) run at real-time
pace through `airtrace ingest`, a Tansu broker and 1, 2, 4 ... `airtrace worker`s with redis-server. Per
fleet size it reports stream-seconds per worker CPU-second (streams per worker core) and how much of that
CPU the workers spend with no stream at all (measured before ingest starts: few streams per worker leave
it unamortised), ingest CPU per stream, the delay from air time to the play event on the plays topic, and
consumer lag over the run; and it checks that the plays are those the embedded mode reports on the same
broadcasts as files. CPU time is read from each process once the streams are on air and at the end
(start-up does not count), so other load on the machine slows the run but does not count.
Production code never imports this module.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from monitor.bench import servers
from monitor.bench.chaos import (PREFIX, Broadcast, Fleet, Stations, audit, baseline_events, build_catalog, make_broadcasts, query_value,
                                 wait_for_quiet)
from monitor.bench.references import BenchError
from monitor.bench.report import Table, publish, verdict
from monitor.events import PlayEvent, plays_in, read_event
from monitor.catalog import Catalog
from monitor.stages.windows import WindowGrid

log = logging.getLogger(__name__)

TARGET_STREAMS_PER_CORE = 200.0
IDLE_SECONDS = 20.0  # how long the workers' cost without streams is measured before ingest starts


@dataclass
class FleetRun:
    """One fleet size's figures."""

    workers: int
    stream_seconds: float
    worker_cpu: float
    worker_idle_cpu: float  # of which the workers would have spent with no stream at all (polling, heartbeats, metrics)
    ingest_cpu: float
    detection_delays: list[float]  # air time of a play's start -> its started event on the plays topic
    pipeline_delays: list[float]  # air time of the window that decided it -> the event on the topic
    max_lag: float
    mean_lag: float
    plays: int
    same_as_embedded: int  # plays the embedded mode reports too (stream, track, boundaries)
    differences: list[str]  # the others, and the embedded mode's plays the fleet did not report
    boundary_drift: float  # the largest start or end difference between a play and its embedded twin (s)
    found: int  # true plays found exactly once
    heard: int  # true plays on air whole

    @property
    def streams_per_core(self) -> float:
        return self.stream_seconds / self.worker_cpu if self.worker_cpu else float("nan")

    @property
    def marginal_streams_per_core(self) -> float:
        """Streams per core that the streams themselves cost: what a worker adds per stream once it is busy."""
        busy = self.worker_cpu - self.worker_idle_cpu
        return self.stream_seconds / busy if busy > 0 else float("nan")

    @property
    def ingest_core_per_stream(self) -> float:
        return self.ingest_cpu / self.stream_seconds if self.stream_seconds else float("nan")


def idle_rate(workers: Sequence, seconds: float) -> float:
    """CPU seconds per second that the workers spend with no stream at all, measured over `seconds`."""
    before = sum(cpu_seconds(p.pid) for p in workers)
    time.sleep(seconds)
    return (sum(cpu_seconds(p.pid) for p in workers) - before) / seconds


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a running process and its threads."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def delays(records: Sequence) -> tuple[list[float], list[float]]:
    """(air start -> event, deciding window's air time -> event) of every started event, from the record's
    broker timestamp; the deciding window's audio ends one window after its start."""
    detection, pipeline = [], []
    for record in records:
        event = read_event(json.loads(record.value))
        if not isinstance(event, PlayEvent) or event.state != "started":
            continue
        published = record.timestamp / 1000
        detection.append(published - event.started_at)
        decided_air = event.started_at + (event.decided_offset - event.stream_start)
        pipeline.append(published - decided_air)
    return detection, pipeline


def compare_plays(events: Sequence[PlayEvent], baseline: Sequence[PlayEvent], tolerance: float) -> tuple[int, list[str], float]:
    """(ended plays of `events` that the baseline reports on the same stream and track with boundaries within
    `tolerance` s, a line for each play either side reports otherwise, the largest boundary difference of the
    plays paired). Ids differ between the modes: a live stream numbers its windows from its own start, a file from 0."""
    def key(e: PlayEvent) -> str:
        return f"{e.stream_id} {e.track_id} {e.stream_start:.2f}-{e.stream_end:.2f} s"

    def same(a: PlayEvent, b: PlayEvent) -> bool:
        return (a.stream_id, a.track_id) == (b.stream_id, b.track_id) and abs(a.stream_start - b.stream_start) <= tolerance \
            and abs((a.stream_end or 0.0) - (b.stream_end or 0.0)) <= tolerance

    unmatched = [e for e in baseline if e.state == "ended"]
    matched, differences, drift = 0, [], 0.0
    for e in (e for e in events if e.state == "ended"):
        twin = next((b for b in unmatched if same(e, b)), None)
        if twin is None:
            differences.append(f"fleet only: {key(e)}")
        else:
            unmatched.remove(twin)
            matched += 1
            drift = max(drift, abs(e.stream_start - twin.stream_start), abs((e.stream_end or 0.0) - (twin.stream_end or 0.0)))
    return matched, differences + [f"embedded only: {key(e)}" for e in unmatched], drift


def run_fleet_size(workers: int, broadcasts: Sequence[Broadcast], catalog: Path, workdir: Path, partitions: int,
                   baseline: Sequence[PlayEvent]) -> FleetRun:
    """One run of all broadcasts through a fleet of `workers`; CPU is read from each process before it stops."""
    run_dir = workdir / f"workers-{workers}"
    run_dir.mkdir(parents=True, exist_ok=True)
    streams_file = run_dir / "streams.yaml"
    with Stations(broadcasts) as stations:
        streams_file.write_text("".join(f"- id: {b.stream_id}\n  url: {stations.url(b.stream_id)}\n" for b in broadcasts))
        fleet = Fleet(run_dir, catalog, streams_file, workers, partitions, durable_broker=False)
        try:
            fleet.start_workers()
            idle_cpu = idle_rate(fleet.workers, IDLE_SECONDS)
            fleet.start_ingest()
            servers.wait_until(lambda: stations.on_air_since, 120, "ingest tunes in")
            on_air = min(stations.on_air_since.values())
            started = {p.pid: cpu_seconds(p.pid) for p in [fleet.ingest, *fleet.workers]}  # start-up (imports, model) is not per stream
            air = max(b.seconds for b in broadcasts)
            while time.monotonic() - on_air < air + 5:
                _check_alive(fleet)
                time.sleep(1.0)
            ingest_cpu = cpu_seconds(fleet.ingest.pid) - started[fleet.ingest.pid]
            servers.stop(fleet.ingest)  # ends the streams on Kafka, which closes their open plays
            topic = f"{PREFIX}.plays"
            wait_for_quiet(fleet, topic)
            worker_cpu = sum(cpu_seconds(p.pid) - started[p.pid] for p in fleet.workers)
            worker_seconds = time.monotonic() - on_air
            records = servers.read_topic(fleet.broker.port, topic)
            since = int(time.monotonic() - on_air) + 60
            lag = f"sum(airtrace_consumer_lag_messages{{topic='{PREFIX}.windows'}})"
            max_lag = query_value(fleet.prometheus, f"max_over_time(({lag})[{since}s:5s])")
            mean_lag = query_value(fleet.prometheus, f"avg_over_time(({lag})[{since}s:5s])")
            windows = query_value(fleet.prometheus, f"max_over_time(sum(airtrace_windows_ingested_total)[{since}s:5s])")
        finally:
            fleet.stop()
        sent = stations.sent
    events = plays_in({e.event_id: e for e in (read_event(json.loads(r.value)) for r in records)}.values())
    detection, pipeline = delays(records)
    audits = [audit(b.truth, sent[b.stream_id], [e for e in events if e.stream_id == b.stream_id],
                    [e for e in baseline if e.stream_id == b.stream_id]) for b in broadcasts]
    hop = WindowGrid.for_encoder(Catalog.open(catalog).encoder).hop_seconds  # the streams' hop, the encoder's
    return FleetRun(workers, windows * hop, worker_cpu, idle_cpu * worker_seconds, ingest_cpu, detection, pipeline, max_lag, mean_lag,
                    sum(e.state == "ended" for e in events), *compare_plays(events, baseline, hop),
                    sum(a.found_once for a in audits), sum(a.heard for a in audits))


def _check_alive(fleet: Fleet) -> None:
    for n, process in enumerate(fleet.workers):
        if process is not None and process.poll() is not None:
            raise BenchError(f"worker {n} exited with {process.returncode}; see {fleet.workdir / f'worker{n}.log'}")
    if fleet.ingest.poll() is not None:
        raise BenchError(f"ingest exited with {fleet.ingest.returncode}; see {fleet.workdir / 'ingest.log'}")


def run_fleet(streams: int, minutes: float, worker_counts: Sequence[int], seed: int, partitions: int, encoder: str,
              distractors: Sequence[str], workdir: Path, out: str | None, command: str) -> list[FleetRun]:
    if streams < 1 or not worker_counts or min(worker_counts) < 1:
        raise BenchError("the fleet run needs --streams 1 or more and --workers 1 or more")
    if max(worker_counts) > partitions:
        raise BenchError(f"--partitions {partitions} leaves workers idle: a topic's partition count limits its consumers; "
                         f"use --partitions {max(worker_counts)} or more")
    workdir.mkdir(parents=True, exist_ok=True)
    broadcasts = make_broadcasts(streams, minutes * 60, seed, workdir)
    catalog = build_catalog(workdir, encoder, distractors)
    baseline = baseline_events(broadcasts, catalog)
    runs = [run_fleet_size(n, broadcasts, catalog, workdir, partitions, baseline) for n in worker_counts]
    report(runs, streams, minutes, seed, out, command)
    return runs


def _quantiles(values: Sequence[float]) -> str:
    return f"{np.median(values):.1f} / {np.percentile(values, 95):.1f}" if values else "-"


def report(runs: Sequence[FleetRun], streams: int, minutes: float, seed: int, out: str | None, command: str) -> None:
    table = Table("Streams per worker core (distributed mode)", ["measure", *(f"{r.workers} worker{'s' * (r.workers > 1)}" for r in runs), "target"],
                  settings={"load": f"{streams} live HTTP streams of {minutes:g} min at real-time pace, seed {seed}",
                            "cpu": "process CPU time of the workers (all threads) and of ingest, read at the end of each run"})
    rows = [
        ("stream seconds monitored", [round(r.stream_seconds) for r in runs], ""),
        ("worker CPU seconds", [round(r.worker_cpu, 1) for r in runs], ""),
        ("streams per worker core", [verdict(r.streams_per_core, TARGET_STREAMS_PER_CORE, digits=0) for r in runs], f">= {TARGET_STREAMS_PER_CORE:.0f}"),
        ("  of which idle workers (% of the worker CPU)", [round(100 * r.worker_idle_cpu / r.worker_cpu, 1) for r in runs], ""),
        ("  streams per core without the idle cost", [round(r.marginal_streams_per_core) for r in runs], ""),
        ("ingest CPU per stream (% of a core)", [round(100 * r.ingest_core_per_stream, 2) for r in runs], ""),
        ("air start -> started event, median / p95 (s)", [_quantiles(r.detection_delays) for r in runs], ""),
        ("deciding window on air -> event, median / p95 (s)", [_quantiles(r.pipeline_delays) for r in runs], ""),
        ("consumer lag, mean / max (messages)", [f"{r.mean_lag:.0f} / {r.max_lag:.0f}" for r in runs], ""),
        ("true plays found once / on air whole", [f"{r.found} / {r.heard}" for r in runs], ""),
        ("plays as in embedded mode (stream, track, boundaries)", [f"{r.same_as_embedded} / {r.plays}" for r in runs], "all"),
        ("  their largest boundary difference (s)", [f"{r.boundary_drift:.3f}" for r in runs], ""),
    ]
    for name, values, target in rows:
        table.add(name, *values, target)
    publish([table], out, command, {"runs": [{"workers": r.workers, "streams_per_core": r.streams_per_core, "marginal_streams_per_core": r.marginal_streams_per_core,
                                              "detection_delays": r.detection_delays, "pipeline_delays": r.pipeline_delays,
                                              "differences": r.differences, "boundary_drift": r.boundary_drift} for r in runs]})
