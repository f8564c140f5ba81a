"""Ingest: any input FFmpeg reads (files, Icecast/Shoutcast over HTTP(S), HLS, RTMP, RTSP, UDP, SRT) cut
into the encoder's windows, stamped with stream id, seq, stream offset and UTC air time.

Contracts other processes rely on:
- `read_windows(source, grid, options, metrics, stop)` yields `AudioWindow`s of one stream in order.
  `seq` counts windows since ingest began and is never reused, across reconnects too. `offset` is stream
  time in seconds; it never goes back, and after a gap it jumps ahead by the wall-clock time lost.
- A live source (anything but a local file) is read forever: when it fails to open, drops (ends) or
  stalls (no data for `read_timeout` s) it is reopened after an exponential backoff with jitter, and the
  first window after the break carries `after_gap=True`, so no play spans it. A local file is read once
  (as fast as it decodes, or at real-time pace with `realtime=True`).
- Dead air (windows below `silence_dbfs` for `dead_air_seconds` or more) is counted in
  airtrace_silence_seconds_total and logged; its windows still flow (they simply match nothing).
- `start_readers` runs each stream in its own daemon thread, so one stream's failure or stall never
  holds up another; windows and a final `StreamEnded` go to a sink callable (usually a queue's put).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import av
import numpy as np
import yaml

from encoders import AudioError, decode_chunks
from monitor.metrics import Metrics
from monitor.records import AudioWindow
from monitor.windows import StreamWindower, WindowGrid

if TYPE_CHECKING:
    from monitor.mux import MuxSource

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A streams config that cannot be used; the message names the file, the entry and the field."""


@dataclass(frozen=True)
class StreamSource:
    """One stream to monitor. `options` are FFmpeg input options (e.g. {"rtsp_transport": "tcp"})."""

    id: str
    url: str
    name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)

    @property
    def is_file(self) -> bool:
        """A local file is read once to its end; everything else is a live stream, reopened forever."""
        scheme = urlparse(self.url).scheme
        return scheme == "file" or len(scheme) <= 1  # no scheme, or a Windows drive letter


SOURCE_FIELDS = ("id", "url", "name", "metadata", "options")


def load_sources(path: str | Path) -> list[StreamSource | MuxSource]:
    """Streams from a YAML file: a list of {id, url, name?, metadata?, options?, audio?} (or {streams: [...]}),
    and multiplexes {mux, url, programs?, audio?, metadata?, options?} (see monitor.mux)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read streams config: {exc}") from exc
    if isinstance(raw, dict) and set(raw) == {"streams"}:
        raw = raw["streams"]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{path}: expected a non-empty list of streams, each with id and url")
    sources = [_entry(entry, f"{path}: stream #{i + 1}") for i, entry in enumerate(raw)]
    _check_unique(sources, str(path))
    return sources


def _entry(entry: Any, where: str) -> StreamSource | MuxSource:
    """A plain stream here; a multiplex (`mux`) or a stream with an `audio` selection in monitor.mux."""
    if isinstance(entry, dict) and ("mux" in entry or "audio" in entry):
        from monitor.mux import source_from_entry

        return source_from_entry(entry, where)
    return _source_from_entry(entry, where)


def _source_from_entry(entry: Any, where: str) -> StreamSource:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping with id and url, got {entry!r}")
    unknown = sorted(set(entry) - set(SOURCE_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field {', '.join(map(repr, unknown))}; the fields are {', '.join(SOURCE_FIELDS)}")
    for name in ("id", "url"):
        if not isinstance(entry.get(name), str) or not entry[name].strip():
            raise ConfigError(f"{where}: field {name!r} is missing or not a string")
    for name in ("metadata", "options"):
        if not isinstance(entry.get(name, {}), dict):
            raise ConfigError(f"{where}: field {name!r} must be a mapping")
    options = {str(k): str(v) for k, v in entry.get("options", {}).items()}
    return StreamSource(entry["id"], entry["url"], entry.get("name"), dict(entry.get("metadata", {})), options)


def sources_from_urls(urls: Sequence[str]) -> list[StreamSource]:
    """Streams named on the command line; each id is the file or path name, made unique with a suffix."""
    sources: list[StreamSource] = []
    taken: set[str] = set()
    for url in urls:
        parsed = urlparse(url)
        base = Path(parsed.path).stem or parsed.netloc or "stream"
        stream_id, n = base, 2
        while stream_id in taken:
            stream_id, n = f"{base}-{n}", n + 1
        taken.add(stream_id)
        sources.append(StreamSource(stream_id, url))
    return sources


def _check_unique(sources: Sequence[StreamSource], where: str) -> None:
    seen: set[str] = set()
    for source in sources:
        if source.id in seen:
            raise ConfigError(f"{where}: stream id {source.id!r} appears twice; ids must be unique")
        seen.add(source.id)


@dataclass(frozen=True)
class IngestOptions:
    realtime: bool = False  # pace local files at real time (live streams pace themselves)
    open_timeout: float = 10.0  # seconds to connect
    read_timeout: float = 10.0  # a stream with no data for this long has stalled and is reopened
    backoff_initial: float = 1.0  # first retry delay, doubled per failed attempt
    backoff_max: float = 60.0
    silence_dbfs: float = -55.0  # a window quieter than this (RMS, dB full scale) is silent
    dead_air_seconds: float = 5.0  # silence this long is dead air: counted and logged


class Backoff:
    """Exponential backoff with equal jitter: delay_n = d/2 + U(0, d/2) with d = min(max, initial * 2^n)."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None):
        self.initial, self.maximum, self.attempt = initial, maximum, 0
        self.rng = rng or random.Random()

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * 2**self.attempt)
        self.attempt += 1
        return delay / 2 + self.rng.uniform(0, delay / 2)

    def reset(self) -> None:
        self.attempt = 0


class DeadAir:
    """Counts and logs runs of silent windows that last at least `min_seconds`."""

    def __init__(self, stream_id: str, options: IngestOptions, hop_seconds: float, metrics: Metrics | None):
        self.stream_id, self.options, self.hop, self.metrics = stream_id, options, hop_seconds, metrics
        self.run = 0.0  # seconds of the current silent run

    def observe(self, window: np.ndarray, offset: float) -> None:
        rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64))))
        if 20 * np.log10(max(rms, 1e-10)) >= self.options.silence_dbfs:
            self.end(offset)
            return
        self.run += self.hop
        minimum = self.options.dead_air_seconds
        if self.run >= minimum:
            added = self.run if self.run - self.hop < minimum else self.hop  # the whole run once it qualifies
            if self.metrics:
                self.metrics.silence_seconds.labels(self.stream_id).inc(added)
            if added > self.hop:
                log.warning("dead air on %s since stream offset %.1f s", self.stream_id, offset - self.run + self.hop)

    def end(self, offset: float) -> None:
        if self.run >= self.options.dead_air_seconds:
            log.info("dead air on %s ended at stream offset %.1f s after %.1f s", self.stream_id, offset, self.run)
        self.run = 0.0


class StreamClock:
    """Maps a connection's samples to stream offsets and UTC air times.

    A file read as fast as it decodes airs from the moment it was opened. A live (or paced) source is
    anchored at the earliest moment consistent with when its samples arrived: sample s cannot have been
    on air later than it reached us, so the anchor is the running minimum of (arrival - s / rate).
    After a reconnect, the stream offset resumes at the wall-clock time elapsed since the stream began
    (never less than the audio already delivered), so gaps show in offsets as they did on air.
    """

    def __init__(self, sample_rate: int, live: bool):
        self.rate, self.live = sample_rate, live
        self.first_anchor: float | None = None
        self.end_offset = 0.0  # stream offset just after the last delivered sample
        self.base = 0.0  # stream offset of this connection's sample 0
        self.anchor = 0.0  # UTC epoch of this connection's sample 0
        self.received = 0  # samples this connection delivered

    def connect(self) -> None:
        self.received = -1  # the first chunk sets base and anchor

    def chunk(self, n_samples: int, now: float) -> None:
        if self.received < 0:
            self.received = 0
            self.anchor = now - (n_samples / self.rate if self.live else 0.0)
            if self.first_anchor is None:
                self.first_anchor = self.anchor
            self.base = max(self.end_offset, self.anchor - self.first_anchor)
        self.received += n_samples
        if self.live:
            self.anchor = min(self.anchor, now - self.received / self.rate)
        self.end_offset = self.base + self.received / self.rate

    def offset(self, seconds_in_connection: float) -> float:
        return self.base + seconds_in_connection

    def air_time(self, seconds_in_connection: float) -> float:
        return self.anchor + seconds_in_connection


def _paced(chunks: Iterator[np.ndarray], sample_rate: int, lead_seconds: float = 0.2) -> Iterator[np.ndarray]:
    """Release chunks no faster than real time (a file played as if it were on air)."""
    start, sent = time.monotonic(), 0
    for chunk in chunks:
        ahead = start + sent / sample_rate - lead_seconds - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        sent += len(chunk)
        yield chunk


def read_windows(
    source: StreamSource,
    grid: WindowGrid,
    options: IngestOptions = IngestOptions(),
    metrics: Metrics | None = None,
    stop: threading.Event | None = None,
) -> Iterator[AudioWindow]:
    """Windows of one stream, in order; see the module docstring for the guarantees."""
    stop = stop or threading.Event()
    live = not source.is_file
    clock = StreamClock(grid.sample_rate, live=live or options.realtime)
    backoff = Backoff(options.backoff_initial, options.backoff_max)
    dead_air = DeadAir(source.id, options, grid.hop_seconds, metrics)
    seq, after_gap = 0, False
    while not stop.is_set():
        windower = StreamWindower(grid)
        clock.connect()
        chunks = decode_chunks(source.url, grid.sample_rate, source.options, timeout=(options.open_timeout, options.read_timeout))
        if options.realtime and not live:
            chunks = _paced(chunks, grid.sample_rate)
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                if clock.received < 0 and metrics:  # first audio of this connection
                    metrics.stream_up.labels(source.id).set(1)
                clock.chunk(len(chunk), time.time())
                for index, samples in windower.push(chunk):
                    start = grid.start(index)
                    window = AudioWindow(source.id, seq, clock.offset(start), clock.air_time(start), samples, after_gap)
                    dead_air.observe(samples, window.offset)
                    if metrics:
                        metrics.windows_ingested.labels(source.id).inc()
                    yield window
                    seq, after_gap = seq + 1, False
                    backoff.reset()
            if not live:
                log.info("stream %s: end of %s", source.id, source.url)
                return
            log.warning("stream %s dropped (end of data); reopening", source.id)
        except (AudioError, av.FFmpegError, OSError, ValueError) as exc:  # ValueError: format changed mid-stream
            if metrics:
                metrics.decode_errors.labels(source.id).inc()
            if not live:
                log.error("stream %s: %s; skipping this file", source.id, exc)
                return
            log.warning("stream %s: %s", source.id, exc)
        finally:
            chunks.close()
            if metrics:
                metrics.stream_up.labels(source.id).set(0)
        after_gap = after_gap or seq > 0
        dead_air.end(clock.end_offset)
        delay = backoff.next_delay()
        log.info("stream %s: reconnecting in %.1f s", source.id, delay)
        if stop.wait(delay):
            return
        if metrics:
            metrics.stream_reconnects.labels(source.id).inc()


@dataclass(frozen=True)
class StreamEnded:
    """Sent to the sink after a stream's last window (a file's end, or a stop)."""

    stream_id: str


def start_readers(
    sources: Sequence[StreamSource | MuxSource],
    grid: WindowGrid,
    sink: Callable[[AudioWindow | StreamEnded], None],
    options: IngestOptions = IngestOptions(),
    metrics: Metrics | None = None,
    stop: threading.Event | None = None,
) -> list[threading.Thread]:
    """One daemon thread per stream (or multiplex, see monitor.mux) feeding `sink`; a stream that raises is
    logged and ends alone. Its last item is StreamEnded(source.id)."""
    from monitor.mux import MuxSource, read_mux

    stop = stop or threading.Event()

    def run(source: StreamSource | MuxSource) -> None:
        read = read_mux if isinstance(source, MuxSource) else read_windows
        try:
            for window in read(source, grid, options, metrics, stop):
                sink(window)
        except Exception:  # a bug in one stream must not take the others down
            log.exception("stream %s stopped on an unexpected error", source.id)
        finally:
            sink(StreamEnded(source.id))

    threads = [threading.Thread(target=run, args=(s,), name=f"ingest-{s.id}", daemon=True) for s in sources]
    for thread in threads:
        thread.start()
    return threads
