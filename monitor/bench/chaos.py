"""`airtrace bench chaos`: the distributed mode under faults, scored against the truth.

N live HTTP streams of synthetic broadcasts (monitor.bench.broadcast's programmes of the demo music, each
with exact truth) run at real-time pace through `airtrace ingest`, a Tansu broker (its topics on a local S3
server, so that a restart is a restart), two or more `airtrace worker`s and redis-server, while a seeded
schedule SIGKILLs a worker and starts it again, restarts redis-server and the broker, takes streams off air
and back, replays a partition of the windows topic from an earlier offset (the fleet is stopped, the
group's offset moved back, the fleet started again, as `kafka-consumer-groups --reset-offsets` does it), and
in runs long enough starves the workers of CPU (as cpulimit does it, with SIGSTOP and SIGCONT) until they
fall behind the streams for longer than the lag alert waits.
Prometheus scrapes every process with deploy/prometheus's rules loaded.

The play events on the plays topic are then compared with the truth: a true play that was on air whole
(the station logs what it sent) must be found exactly once: no lost play, no event id twice, no second play
for one airing. The same broadcasts monitored as files by the embedded mode, without faults, give the
boundary errors to compare with. The alerts that should fire (a stream down 5 min, a worker down 2 min,
lag growing 10 min) must fire, and none may still fire once the workers have caught up. Production code never imports this module.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import soundfile

from encoders import Sources, load_encoder
from monitor.bench import servers
from monitor.bench.broadcast import programme
from monitor.bench.queries import speech_clips
from monitor.bench.references import BenchError, Reference, read_references
from monitor.bench.report import Table, publish
from monitor.demo.broadcast import SAMPLE_RATE, Piece, TruePlay, compose, score_plays, truth_path
from monitor.events import PlayEvent, describe, plays_in, read_event

log = logging.getLogger(__name__)

DEMO_MUSIC = Path(__file__).resolve().parent.parent / "demo" / "music"
CATALOG_TRACKS = ("area1-game", "area2-game", "gardien-go", "over-theme")
HOLDOUT_TRACKS = ("termigator_reg-zbb",)  # area3-game stays out: it shares material with area2-game
PREFIX = "chaos"
GROUP = "chaos"
SESSION_TIMEOUT = 3.0
SCRAPE_SECONDS = 5.0  # Prometheus scrapes and evaluates its rules this often
MP3_KBPS = 64
HEARD_MARGIN = 0.5  # a play counts as on air whole when the station sent it, give or take this (MP3 frames)
PROCESS_DOWN_FOR, STREAM_DOWN_FOR, LAG_GROWING_FOR = 120.0, 300.0, 600.0  # `for:` of AirtraceProcessDown, ...StreamDown, ...ConsumerLagGrowing
LAG_BUILD_UP = 120.0  # how long starved workers take to fall the alert's 1000 messages behind 20 streams, with room
STARVED_SHARE = 0.05  # of each 0.2 s a starved worker may run: far less than 20 streams need (at 0.1 they kept
# up on this machine while both ran); they may miss scrapes for minutes, so AirtraceProcessDown may fire for them
ALERT_MARGIN = 30.0  # scrape and evaluation delays: a fault this much longer than `for:` must fire, this much shorter must not


# ----------------------------------------------------------------------------- the broadcasts


@dataclass
class Broadcast:
    stream_id: str
    mp3: bytes = field(repr=False)
    seconds: float
    truth: list[TruePlay]
    path: Path


def _pieces_for(catalog: Sequence[Reference], holdout: Sequence[Reference], seconds: float, seed: int) -> list[Piece]:
    """The shortest prefix of a seeded programme that lasts `seconds` (programmes of one seed share prefixes)."""
    pieces = programme(catalog, holdout, plays=int(seconds / 10) + 4, seed=seed)
    total, kept = 0.0, []
    for piece in pieces:
        length = (len(piece.audio) / SAMPLE_RATE - piece.ref_start) if piece.seconds is None else piece.seconds
        total += length - piece.overlap
        kept.append(piece)
        if piece.kind == "track" and total >= seconds * 1.07:  # a warp may play it up to 6 % faster
            return kept
    return kept


def make_broadcasts(streams: int, seconds: float, seed: int, workdir: Path) -> list[Broadcast]:
    """One broadcast per stream, each its own seed, as constant-bitrate MP3 (bytes map linearly to air time) with
    its truth beside it; a workdir that has them already reuses them."""
    refs = {r.track_id: r for r in read_references(DEMO_MUSIC)}
    catalog, holdout = [refs[t] for t in CATALOG_TRACKS], [refs[t] for t in HOLDOUT_TRACKS]
    speech: Sources | None = None  # espeak-ng's talk, made only when a broadcast is composed
    out = []
    for n in range(streams):
        stream_id, stream_seed = f"chaos-{n:02d}", seed * 1000 + n
        path = workdir / f"{stream_id}-seed{stream_seed}-{seconds:.0f}s.mp3"
        if not truth_path(path).is_file():  # composed before in this workdir: reused
            speech = speech or Sources(speech=speech_clips(SAMPLE_RATE))
            audio, truth = compose(_pieces_for(catalog, holdout, seconds, stream_seed), np.random.default_rng(stream_seed), speech)
            wav = workdir / f"{stream_id}.wav"
            soundfile.write(wav, audio, SAMPLE_RATE)
            subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav), "-ac", "1", "-ar", "22050",
                            "-c:a", "libmp3lame", "-b:a", f"{MP3_KBPS}k", str(path)], check=True)
            wav.unlink()
            truth_path(path).write_text(json.dumps({"seconds": len(audio) / SAMPLE_RATE, "plays": [asdict(t) for t in truth]}))
        saved = json.loads(truth_path(path).read_text())
        out.append(Broadcast(stream_id, path.read_bytes(), saved["seconds"], [TruePlay(**t) for t in saved["plays"]], path))
    return out


class Stations(servers.LoopbackHttpServer):
    """Live MP3 streams over HTTP, one path per broadcast: a broadcast goes on air at its first listener and
    plays once at real-time pace; `off_air` closes its connection and answers 503 until it is back. Each
    connection's span of the programme is logged, so the truth can be limited to what went out."""

    CHUNK_SECONDS = 0.1

    def __init__(self, broadcasts: Sequence[Broadcast]):
        self.broadcasts = {b.stream_id: b for b in broadcasts}
        self.on_air_since: dict[str, float] = {}
        self.off_until: dict[str, float] = {}
        self.sent: dict[str, list[tuple[float, float]]] = {b.stream_id: [] for b in broadcasts}
        self.lock = threading.Lock()
        stations = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                stations.serve(self)

        super().__init__(Handler)

    def url(self, stream_id: str) -> str:
        return f"http://{servers.HOST}:{self.port}/{stream_id}.mp3"

    def position(self, stream_id: str) -> float:
        """Programme seconds now on air (0 before the first listener)."""
        started = self.on_air_since.get(stream_id)
        return 0.0 if started is None else time.monotonic() - started

    def off_air(self, stream_id: str, seconds: float) -> None:
        self.off_until[stream_id] = time.monotonic() + seconds

    def _on_air(self, stream_id: str) -> bool:
        broadcast = self.broadcasts[stream_id]
        return time.monotonic() >= self.off_until.get(stream_id, 0.0) and self.position(stream_id) < broadcast.seconds

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        stream_id = handler.path.strip("/").removesuffix(".mp3")
        if stream_id not in self.broadcasts:
            handler.send_error(404)
            return
        with self.lock:
            first_listener = stream_id not in self.on_air_since
            self.on_air_since.setdefault(stream_id, time.monotonic())
        if not self._on_air(stream_id):
            handler.send_error(503, "off air")
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "audio/mpeg")
        handler.end_headers()
        self._play(stream_id, handler.wfile, from_start=first_listener)

    def _play(self, stream_id: str, out, from_start: bool) -> None:
        """Send the programme from where it is now on air; the listener that put it on air hears it from its
        first byte (the moments spent answering would otherwise cut into its first MP3 frame: the decoder, losing
        the LAME header, would keep the encoder's delay and put every window 1,105 samples, 25 ms, off the file's)."""
        broadcast = self.broadcasts[stream_id]
        byte_rate = len(broadcast.mp3) / broadcast.seconds
        first = 0.0 if from_start else self.position(stream_id)
        position = int(first * byte_rate)
        try:
            while self._on_air(stream_id) and not self.release.is_set():
                due = int(self.position(stream_id) * byte_rate) + int(byte_rate * self.CHUNK_SECONDS)
                if due > position:
                    out.write(broadcast.mp3[position:due])
                    out.flush()
                    position = due
                time.sleep(self.CHUNK_SECONDS / 2)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with self.lock:
                self.sent[stream_id].append((first, min(position / byte_rate, broadcast.seconds)))


# ----------------------------------------------------------------------------- the fleet and its faults


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the streams went on air
    kind: str  # kill-worker, restart-redis, restart-broker, pause-broker, off-air, replay, starve-workers
    target: str = ""  # the worker number or stream id
    seconds: float = 0.0  # how long a worker, the broker or a stream stays down

    def __str__(self) -> str:
        return f"{self.at:5.0f} s  {self.kind} {self.target}" + (f" for {self.seconds:.0f} s" if self.seconds else "")


def schedule(seconds: float, streams: Sequence[str], workers: int, rng: np.random.Generator, durable_broker: bool = True) -> list[Fault]:
    """A seeded fault schedule over a run of `seconds`: every kind of fault at least once. Runs of 10 min or
    more also keep a worker down past AirtraceProcessDown's 2 min and a stream past AirtraceStreamDown's 5 min;
    runs with room for it (about 15 min) starve the workers past AirtraceConsumerLagGrowing's 10 min.
    A broker that keeps its topics in memory is paused (SIGSTOP, 20 s) rather than restarted, which would wipe them."""
    pick = [str(s) for s in rng.permutation(list(streams))]
    def at(fraction: float) -> float:
        return round(seconds * (fraction + rng.uniform(-0.02, 0.02)), 1)
    long_run = seconds >= 600
    worker = str(int(rng.integers(workers)))
    faults = [
        Fault(at(0.12), "kill-worker", worker, PROCESS_DOWN_FOR + 2 * ALERT_MARGIN if long_run else seconds * 0.1),
        Fault(at(0.18), "off-air", pick[0], STREAM_DOWN_FOR + 2 * ALERT_MARGIN if long_run else seconds * 0.08),
        Fault(at(0.32), "restart-redis"),
        Fault(at(0.45), "restart-broker") if durable_broker else Fault(at(0.45), "pause-broker", "", 20.0),
        Fault(at(0.55), "off-air", pick[1 % len(pick)], 12.0),
        Fault(at(0.62), "replay", "windows"),
        Fault(at(0.75), "kill-worker", str((int(worker) + 1) % workers), 15.0),
    ]
    if long_run:
        faults += [Fault(at(0.38), "off-air", pick[2 % len(pick)], 20.0), Fault(at(0.85), "restart-redis"), Fault(at(0.9), "off-air", pick[3 % len(pick)], 8.0)]
    starved = LAG_BUILD_UP + LAG_GROWING_FOR + 2 * ALERT_MARGIN
    if seconds >= starved / 0.85:  # starved from about 8 % of the run, with time left to catch up before the end
        faults.append(Fault(at(0.1), "starve-workers", "", starved))
    return sorted(faults, key=lambda f: f.at)


class Starver:
    """Lets processes run only `share` of each `period`, stopping and continuing them as cpulimit does: the
    workers go on, too slowly for the streams (and, stopped most of the time, may miss heartbeats and
    scrapes). A process that `processes` starts listing meanwhile (a worker restarted) is starved too."""

    def __init__(self, processes: Callable[[], list[subprocess.Popen]], share: float = STARVED_SHARE, period: float = 0.2):
        self.processes, self.share, self.period = processes, share, period
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.done.clear()
        self.thread = threading.Thread(target=self._run, name="starve-workers", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread is not None:
            self.done.set()
            self.thread.join()
            self.thread = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Full speed meanwhile, if starving: an operator stops overloaded workers gracefully, which stopped
        processes cannot do (they would be killed, and the group would wait out their sessions)."""
        starving = self.thread is not None
        self.stop()
        try:
            yield
        finally:
            if starving:
                self.start()

    def _run(self) -> None:
        while not self.done.is_set():
            self._signal(signal.SIGCONT)
            time.sleep(self.share * self.period)
            self._signal(signal.SIGSTOP)
            self.done.wait((1 - self.share) * self.period)
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        for process in self.processes():
            try:
                process.send_signal(sig)
            except ProcessLookupError:  # killed by another fault meanwhile
                pass


class Fleet:
    """The processes of one run: local S3, Tansu, redis-server, the workers, the ingestor and Prometheus."""

    def __init__(self, workdir: Path, catalog: Path, streams_file: Path, workers: int, partitions: int, durable_broker: bool):
        self.workdir, self.catalog, self.streams_file, self.partitions = workdir, catalog, streams_file, partitions
        self.s3 = servers.local_s3(workdir) if durable_broker else None
        self.broker = servers.tansu(workdir, self.s3)
        self.redis = servers.redis_server(workdir)
        self.worker_ports = [servers.free_port() for _ in range(workers)]
        self.ingest_port = servers.free_port()
        self.workers: list[subprocess.Popen | None] = [None] * workers
        self.starve = Starver(lambda: [p for p in self.workers if p is not None and p.poll() is None])
        self.ingest: subprocess.Popen | None = None
        targets = [(f"{servers.HOST}:{self.ingest_port}", "ingest")] + [(f"{servers.HOST}:{p}", "worker") for p in self.worker_ports]
        self.prometheus = servers.Prometheus(workdir, targets, f"{SCRAPE_SECONDS:.0f}s")

    @property
    def kafka_args(self) -> list[str]:
        return ["--broker", f"{servers.HOST}:{self.broker.port}", "--topic-prefix", PREFIX, "--partitions", str(self.partitions)]

    def start_worker(self, n: int) -> None:
        args = ["worker", "--catalog", str(self.catalog), "--redis-url", f"redis://{servers.HOST}:{self.redis.port}/0", "--group", GROUP,
                "--session-timeout", str(SESSION_TIMEOUT), "--batch-wait", "0.2", "--metrics-port", str(self.worker_ports[n]), *self.kafka_args]
        self.workers[n] = servers.airtrace(args, self.workdir / f"worker{n}.log", cwd=self.workdir)

    def wait_for_workers(self, timeout: float = 180.0) -> None:
        for n, port in enumerate(self.worker_ports):
            servers.wait_until(lambda: self.workers[n].poll() is None and servers.metric(port, "airtrace_catalog_tracks"), timeout, f"worker {n} starts")

    def kill_worker(self, n: int) -> None:
        process = self.workers[n]
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()

    def start(self) -> None:
        self.start_workers()
        self.start_ingest()

    def start_workers(self) -> None:
        self.prometheus.start()
        for n in range(len(self.workers)):
            self.start_worker(n)
        self.wait_for_workers()

    def start_ingest(self) -> None:
        self.ingest = servers.airtrace(["ingest", "--streams", str(self.streams_file), "--metrics-port", str(self.ingest_port), *self.kafka_args],
                                       self.workdir / "ingest.log", cwd=self.workdir)

    def stop(self) -> None:
        self.starve.stop()
        for process in [self.ingest, *self.workers]:
            if process is not None:
                servers.stop(process)
        for server in (self.prometheus.server, self.redis, self.broker, self.s3):
            if server is not None:
                server.stop()

    def rewind(self, seconds_of_windows: float, timeout: float = 60.0) -> str:
        """Move the group's committed offset of the busiest windows partition back; the broker accepts it once
        the group is empty, so this retries until then."""
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import KafkaError

        async def move() -> str:
            consumer = AIOKafkaConsumer(bootstrap_servers=f"{servers.HOST}:{self.broker.port}", group_id=GROUP, enable_auto_commit=False)
            await consumer.start()
            try:
                parts = [TopicPartition(f"{PREFIX}.windows", p) for p in range(self.partitions)]
                consumer.assign(parts)
                committed = {tp: await consumer.committed(tp) or 0 for tp in parts}
                tp = max(parts, key=lambda t: committed[t])
                streams_per_partition = max(1, math.ceil(len(self.streams()) / self.partitions))
                target = max(0, committed[tp] - int(seconds_of_windows * 2 * streams_per_partition))  # 2 windows a second at a 0.5 s hop
                await consumer.commit({tp: target})
                return f"partition {tp.partition} from offset {committed[tp]} back to {target}"
            finally:
                await consumer.stop()

        deadline = time.monotonic() + timeout
        while True:
            try:
                return asyncio.run(move())
            except KafkaError as exc:
                if time.monotonic() > deadline:
                    raise BenchError(f"could not move the group's offset within {timeout:.0f} s: {exc}") from exc
                time.sleep(1.0)

    def streams(self) -> list[str]:
        import yaml

        return [entry["id"] for entry in yaml.safe_load(self.streams_file.read_text())]


def inject(fault: Fault, fleet: Fleet, stations: Stations) -> tuple[str, Callable[[], None] | None]:
    """Cause one fault: what happened, and what `drive` calls `fault.seconds` later to bring back what it took
    down (None: it comes back by itself, as a stream does, or at once)."""
    if fault.kind == "kill-worker":
        fleet.kill_worker(int(fault.target))
        return "SIGKILL", lambda: fleet.start_worker(int(fault.target))
    if fault.kind == "starve-workers":
        fleet.starve.start()
        return f"workers run {STARVED_SHARE:.0%} of the time (SIGSTOP/SIGCONT)", fleet.starve.stop
    if fault.kind == "pause-broker":
        fleet.broker.process.send_signal(signal.SIGSTOP)
        return "Tansu stopped with SIGSTOP, then SIGCONT", lambda: fleet.broker.process.send_signal(signal.SIGCONT)
    return _inject_at_once(fault, fleet, stations), None


def _inject_at_once(fault: Fault, fleet: Fleet, stations: Stations) -> str:
    if fault.kind == "restart-redis":
        fleet.redis.restart()
        return "redis-server stopped and started (append-only file kept)"
    if fault.kind == "restart-broker":
        fleet.broker.restart()
        return "Tansu stopped and started (topics on S3 kept)"
    if fault.kind == "off-air":
        stations.off_air(fault.target, fault.seconds)
        return "connection closed, 503 until back"
    if fault.kind == "replay":
        with fleet.starve.paused():
            for process in fleet.workers:  # stopped, they leave the group, which the offset reset needs
                servers.stop(process)
            moved = fleet.rewind(60.0)
            for n in range(len(fleet.workers)):
                fleet.start_worker(n)
        return f"workers stopped, {moved}, workers started again"
    raise ValueError(f"unknown fault {fault.kind}")


# ----------------------------------------------------------------------------- scoring


@dataclass
class StreamAudit:
    heard: int = 0  # true plays on air whole
    found_once: int = 0
    lost: int = 0  # on air whole, not reported
    lost_also_without_faults: int = 0  # of those, the fault-free run missed too
    second_plays: int = 0  # a further reported play of a true play already found
    false_plays: int = 0
    unended: int = 0  # started events with no ended event
    start_errors: list[float] = field(default_factory=list)
    end_errors: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # each lost, doubled, false or unended play, for the record


def heard_plays(truth: Sequence[TruePlay], sent: Sequence[tuple[float, float]]) -> tuple[list[TruePlay], list[TruePlay]]:
    """(plays the station sent whole, plays it cut by going off air or never sent)."""
    whole = [t for t in truth if any(a - HEARD_MARGIN <= t.stream_start and t.stream_end <= b + HEARD_MARGIN for a, b in sent)]
    return whole, [t for t in truth if t not in whole]


def _overlaps(play: TruePlay, event: PlayEvent) -> bool:
    return play.track_id == event.track_id and min(play.stream_end, event.stream_end or event.stream_start) > max(play.stream_start, event.stream_start)


def audit(truth: Sequence[TruePlay], sent: Sequence[tuple[float, float]], events: Sequence[PlayEvent], baseline: Sequence[PlayEvent]) -> StreamAudit:
    """Score one stream's events against the plays that went out whole; plays cut by an outage count for nothing."""
    heard, cut = heard_plays(truth, sent)
    result = StreamAudit(heard=len(heard))
    started = {e.play_id for e in events if e.state == "started"}
    ended = [e for e in events if e.state == "ended"]
    unended = started - {e.play_id for e in ended}
    result.unended = len(unended)
    result.problems += [f"unended: {e.track_id} from {e.stream_start:.1f} s" for e in events if e.play_id in unended and e.state == "started"]
    scored = [e for e in ended if not any(_overlaps(t, e) for t in cut)]
    card = score_plays(heard, scored)
    base = score_plays(heard, [e for e in baseline if e.state == "ended"])
    base_missed = {(p.truth.track_id, p.truth.stream_start) for p in base.pairings if p.truth and p.detected is None}
    for pairing in card.pairings:
        if pairing.truth is not None and pairing.detected is not None:
            result.found_once += 1
            result.start_errors.append(pairing.start_error)
            result.end_errors.append(pairing.end_error)
        elif pairing.truth is not None:
            result.lost += 1
            result.lost_also_without_faults += (pairing.truth.track_id, pairing.truth.stream_start) in base_missed
            result.problems.append(f"lost: {pairing.truth.track_id} {pairing.truth.stream_start:.1f}-{pairing.truth.stream_end:.1f} s")
        else:
            second = any(_overlaps(t, pairing.detected) for t in heard)
            result.second_plays += second
            result.false_plays += not second
            found = pairing.detected
            result.problems.append(f"{'second' if second else 'false'}: {found.track_id} {found.stream_start:.1f}-{found.stream_end:.1f} s")
    return result


def baseline_events(broadcasts: Sequence[Broadcast], catalog_dir: Path) -> list[PlayEvent]:
    """The same broadcasts as files through the embedded mode, without faults; kept beside the broadcasts and
    the catalog, which a later run in the same workdir reuses, so that it is computed once."""
    from monitor.catalog import Catalog
    from monitor.embedded import EmbeddedMonitor
    from monitor.options import MonitorOptions
    from monitor.stages.sources import StreamSource

    which = hashlib.sha256("\n".join(b.path.name for b in broadcasts).encode()).hexdigest()[:16]
    kept = catalog_dir.parent / f"baseline-{which}.jsonl"
    if kept.is_file():
        return plays_in(read_event(json.loads(line)) for line in kept.read_text().splitlines())
    catalog = Catalog.open(catalog_dir)
    events = plays_in(EmbeddedMonitor(catalog, [StreamSource(b.stream_id, str(b.path)) for b in broadcasts], MonitorOptions()).run())
    kept.write_text("".join(json.dumps(e.to_json()) + "\n" for e in events))
    return events


def build_catalog(workdir: Path, encoder: str, distractors: Sequence[str] = ()) -> Path:
    """The demo tracks the broadcasts play, and `distractors` (manifests or folders) only in the catalog,
    so that search works at a realistic catalog size; a workdir that has the catalog already reuses it."""
    from monitor.catalog import Catalog
    from monitor.stages.calibration import calibrate

    directory = workdir / "catalog"
    if (directory / "catalog.json").is_file():
        return directory
    catalog = Catalog.create(directory, load_encoder(encoder), encoder_source=encoder)
    extra = [r.path for source in distractors for r in read_references(source)]
    report = catalog.add([DEMO_MUSIC / f"{name}.opus" for name in CATALOG_TRACKS] + extra, progress=False)
    if report.skipped:
        raise BenchError(f"the catalog could not be built: {report.skipped}")
    calibrate(catalog)
    return directory


# ----------------------------------------------------------------------------- the run


@dataclass
class ChaosResult:
    streams: int
    stream_seconds: float
    faults: list[tuple[Fault, str]]
    audits: dict[str, StreamAudit]
    baseline_audits: dict[str, StreamAudit]
    duplicate_event_ids: int
    records: int
    alerts_fired: set[tuple[str, str]]
    alerts_expected: set[tuple[str, str]]
    alerts_not_expected: set[tuple[str, str]]
    alerts_at_end: set[tuple[str, str]]  # lag alerts still firing once the workers had caught up
    max_lag: float
    windows: float

    def total(self, name: str, baseline: bool = False) -> int:
        return sum(getattr(a, name) for a in (self.baseline_audits if baseline else self.audits).values())

    def median_error(self, name: str, baseline: bool = False) -> float | None:
        values = [abs(v) for a in (self.baseline_audits if baseline else self.audits).values() for v in getattr(a, name)]
        return float(np.median(values)) if values else None

    @property
    def lost_to_faults(self) -> int:
        return self.total("lost") - self.total("lost_also_without_faults")

    @property
    def second_plays_from_faults(self) -> int:
        """Second plays beyond those the fault-free run reports on the same stream (the matcher splits a few plays)."""
        return sum(max(0, a.second_plays - self.baseline_audits[s].second_plays) for s, a in self.audits.items())

    @property
    def alerts_ok(self) -> bool:
        return self.alerts_expected <= self.alerts_fired and not (self.alerts_fired & self.alerts_not_expected) and not self.alerts_at_end


def run_chaos(streams: int, minutes: float, workers: int, seed: int, partitions: int, encoder: str, workdir: Path,
              out: str | None, command: str, durable_broker: bool = True) -> ChaosResult:
    if streams < 2 or workers < 2:
        raise BenchError("the chaos run needs --streams 2 or more and --workers 2 or more")
    workdir.mkdir(parents=True, exist_ok=True)
    seconds = minutes * 60
    log.info("composing %d broadcasts of %.1f min", streams, minutes)
    broadcasts = make_broadcasts(streams, seconds, seed, workdir)
    catalog = build_catalog(workdir, encoder)
    faults = schedule(seconds, [b.stream_id for b in broadcasts], workers, np.random.default_rng(seed), durable_broker)
    streams_file = workdir / "streams.yaml"
    with Stations(broadcasts) as stations:
        streams_file.write_text("".join(f"- id: {b.stream_id}\n  url: {stations.url(b.stream_id)}\n" for b in broadcasts))
        fleet = Fleet(workdir, catalog, streams_file, workers, partitions, durable_broker)
        try:
            fleet.start()
            injected, on_air = drive(fleet, stations, faults, max(b.seconds for b in broadcasts))
            air_ended = time.time()
            servers.stop(fleet.ingest)  # the streams are over: ingest ends them on Kafka, which closes their open plays
            topic = f"{PREFIX}.plays"
            wait_for_quiet(fleet, topic)
            lag_alerts = lag_alerts_firing(fleet.prometheus)
            records = servers.read_topic(fleet.broker.port, topic)
            fired = alerts_fired(fleet.prometheus, time.time() - (time.monotonic() - on_air), air_ended)
            max_lag = _max_over_run(fleet.prometheus, "sum(airtrace_consumer_lag_messages)", time.monotonic() - on_air)
            windows = _max_over_run(fleet.prometheus, "sum(airtrace_windows_ingested_total)", time.monotonic() - on_air)
        finally:
            fleet.stop()
        sent = stations.sent
    events = plays_in(read_event(json.loads(r.value)) for r in records)
    ids = Counter(e.event_id for e in events)
    unique = list({e.event_id: e for e in events}.values())
    baseline = baseline_events(broadcasts, catalog)
    audits, base_audits = {}, {}
    for b in broadcasts:
        mine = [e for e in unique if e.stream_id == b.stream_id]
        base = [e for e in baseline if e.stream_id == b.stream_id]
        audits[b.stream_id] = audit(b.truth, sent[b.stream_id], mine, base)
        audits[b.stream_id].problems += [f"published {ids[e.event_id]} times: {describe(e)}" for e in mine if ids[e.event_id] > 1]
        base_audits[b.stream_id] = audit(b.truth, sent[b.stream_id], base, base)  # the same plays, so errors compare
    expected, not_expected = expected_alerts(injected, fleet)
    result = ChaosResult(streams, sum(b.seconds for b in broadcasts), injected, audits, base_audits, sum(c - 1 for c in ids.values()),
                         len(records), fired, expected, not_expected, lag_alerts, max_lag, windows)
    report(result, workers, seed, out, command)
    return result


def drive(fleet: Fleet, stations: Stations, faults: Sequence[Fault], air_seconds: float) -> tuple[list[tuple[Fault, str]], float]:
    """Wait for the streams to go on air, then inject each fault on time and restart what it took down."""
    servers.wait_until(lambda: stations.on_air_since, 120, "ingest tunes in")
    on_air = min(stations.on_air_since.values())
    pending = list(faults)
    comebacks: list[tuple[float, Fault, Callable[[], None]]] = []  # (monotonic time due, fault, what brings it back)
    injected = []
    while time.monotonic() - on_air < air_seconds + 5 or comebacks:
        now = time.monotonic() - on_air
        for comeback in [c for c in comebacks if c[0] <= time.monotonic()]:
            comebacks.remove(comeback)
            comeback[2]()
        while pending and pending[0].at <= now:
            fault = pending.pop(0)
            what, comeback = inject(fault, fleet, stations)
            log.warning("fault at %.0f s: %s: %s", now, fault, what)
            injected.append((fault, what))
            if comeback is not None:
                comebacks.append((time.monotonic() + fault.seconds, fault, comeback))
        down = {int(c[1].target) for c in comebacks if c[1].kind == "kill-worker"}
        for n, process in enumerate(fleet.workers):
            if process is not None and process.poll() is not None and n not in down:
                raise BenchError(f"worker {n} exited by itself with {process.returncode}; see {fleet.workdir / f'worker{n}.log'}")
        if fleet.ingest.poll() is not None:
            raise BenchError(f"ingest exited by itself with {fleet.ingest.returncode}; see {fleet.workdir / 'ingest.log'}")
        time.sleep(0.5)
    return injected, on_air


def wait_for_quiet(fleet: Fleet, topic: str, quiet: float = 20.0, timeout: float = 300.0) -> None:
    """Wait until the workers have caught up: no lag and no new play event for `quiet` seconds."""
    deadline, last, since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len(servers.read_topic(fleet.broker.port, topic, idle=0.3))
        lag = sum(servers.metric(p, "airtrace_consumer_lag_messages", topic=f"{PREFIX}.windows") or 0 for p in fleet.worker_ports)
        if count != last or lag > 0:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(2.0)
    log.warning("the workers did not settle within %.0f s; scoring what is on the plays topic", timeout)


def query_value(prometheus: servers.Prometheus, expr: str) -> float:
    """The single value of an instant query (0 when it returns nothing)."""
    result = prometheus.query(expr)
    return float(result[0]["value"][1]) if result else 0.0


def _max_over_run(prometheus: servers.Prometheus, expr: str, seconds: float) -> float:
    return query_value(prometheus, f"max_over_time(({expr})[{int(seconds) + 60}s:5s])")


def alerts_fired(prometheus: servers.Prometheus, since_epoch: float, until_epoch: float) -> set[tuple[str, str]]:
    """(alert, its stream, instance or topic) of every alert that fired while the streams were on air (after
    that the harness stops ingest and the stations, which would rightly alert too)."""
    seconds = int(until_epoch - since_epoch) + 60
    fired = set()
    for series in prometheus.query(f'max_over_time(ALERTS{{alertstate="firing"}}[{seconds}s] @ {until_epoch:.3f})'):
        labels = series["metric"]
        fired.add((labels["alertname"], labels.get("stream") or labels.get("instance") or labels.get("topic") or ""))
    return fired


def lag_alerts_firing(prometheus: servers.Prometheus) -> set[tuple[str, str]]:
    """Lag alerts firing now, once the workers have caught up: after two rule evaluations there must be none."""
    time.sleep(2 * SCRAPE_SECONDS)
    return {("AirtraceConsumerLagGrowing", s["metric"].get("topic", "")) for s in prometheus.query('ALERTS{alertname="AirtraceConsumerLagGrowing", alertstate="firing"}')}


def overlap(a: Fault, b: Fault) -> bool:
    return a.at < b.at + b.seconds and b.at < a.at + a.seconds


def expected_alerts(injected: Sequence[tuple[Fault, str]], fleet: Fleet) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(alerts that must have fired, alerts that must not have) for the faults injected; between the two, either."""
    must, must_not = set(), set()
    starved = [fault for fault, _ in injected if fault.kind == "starve-workers"]
    for fault, _ in injected:
        if fault.kind == "kill-worker":
            key = ("AirtraceProcessDown", f"{servers.HOST}:{fleet.worker_ports[int(fault.target)]}")
            short = fault.seconds <= PROCESS_DOWN_FOR - ALERT_MARGIN and not any(overlap(fault, s) for s in starved)  # a starved worker may miss scrapes
            (must if fault.seconds >= PROCESS_DOWN_FOR + ALERT_MARGIN else must_not if short else set()).add(key)
        if fault.kind == "off-air":
            key = ("AirtraceStreamDown", fault.target)
            (must if fault.seconds >= STREAM_DOWN_FOR + ALERT_MARGIN else must_not if fault.seconds <= STREAM_DOWN_FOR - ALERT_MARGIN else set()).add(key)
    lag = {("AirtraceConsumerLagGrowing", f"{PREFIX}.{t}") for t in ("windows", "hits")}
    if not starved:
        must_not |= lag
    elif max(fault.seconds for fault in starved) >= LAG_BUILD_UP + LAG_GROWING_FOR + ALERT_MARGIN:
        must.add(("AirtraceConsumerLagGrowing", f"{PREFIX}.windows"))  # the hits topic may or may not: its rate falls with the windows'
    return must, must_not - must


def report(result: ChaosResult, workers: int, seed: int, out: str | None, command: str) -> None:
    heard = result.total("heard")
    table = Table("Plays under faults (distributed mode)", ["measure", "with faults", "without faults (embedded, files)"], settings={
        "load": f"{result.streams} live HTTP streams, {result.stream_seconds / 60:.0f} stream-minutes, {workers} workers, "
                f"{result.windows:.0f} windows ingested, seed {seed}",
        "faults": "; ".join(f"{f} ({what})" for f, what in result.faults)})
    table.add("true plays on air whole", heard, result.total("heard", True))
    table.add("found exactly once", result.total("found_once"), result.total("found_once", True))
    table.add("lost (of which also missed without faults)", f"{result.total('lost')} ({result.total('lost_also_without_faults')})", result.total("lost", True))
    table.add("event ids published twice", result.duplicate_event_ids, "")
    table.add("second plays for one airing", result.total("second_plays"), result.total("second_plays", True))
    table.add("started without ended", result.total("unended"), result.total("unended", True))
    table.add("false plays", result.total("false_plays"), result.total("false_plays", True))
    for name in ("start_errors", "end_errors"):
        chaos, base = result.median_error(name), result.median_error(name, True)
        table.add(f"median |{name[:-7]} error| (s)", None if chaos is None else round(chaos, 2), None if base is None else round(base, 2))
    table.add("max consumer lag (messages)", result.max_lag, "")
    table.add("alerts fired", ", ".join(sorted(f"{a} {t}" for a, t in result.alerts_fired)) or "none", "")
    table.add("alerts that had to fire / must not", ", ".join(sorted(f"{a} {t}" for a, t in result.alerts_expected)) or "none",
              "met" if result.alerts_ok else "MISSED")
    table.add("lag alerts still firing once caught up", ", ".join(sorted(t for _, t in result.alerts_at_end)) or "none", "")
    problems = {stream: a.problems for stream, a in result.audits.items() if a.problems}
    for stream, found in problems.items():
        print(f"{stream}: " + "; ".join(found))
    publish([table], out, command, {"faults": [str(f) for f, _ in result.faults], "play_records": result.records, "problems": problems,
                                    "alerts_fired": sorted(map(list, result.alerts_fired))})
