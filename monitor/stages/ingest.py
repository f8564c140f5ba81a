"""Ingest: any input FFmpeg reads (files, Icecast/Shoutcast over HTTP(S), HLS, RTMP, RTSP, UDP, SRT) cut
into the encoder's windows, stamped with stream id, seq, stream offset and UTC air time.

Contracts other processes rely on:
- `read_windows(source, grid, options, metrics, stop)` yields `AudioWindow`s of one stream in order.
  `seq` counts windows since ingest began and is never reused, across reconnects too. `offset` is stream
  time in seconds; it never goes back, and after a gap it jumps ahead by the wall-clock time lost.
- A live source (anything but a local file) is read forever: when it fails to open, drops (ends) or
  stalls (no data for `read_timeout` s) it is reopened after an exponential backoff with jitter, and the
  first window after the break carries `after_gap=True`, so no play spans it. A reconnection that starts
  by repeating audio already delivered (a short drop, and a server that sends its recent seconds to a new
  listener, as Icecast's burst-on-connect does) lost nothing: the repeat is dropped and the stream goes
  on without a gap (`Resumption`). A local file is read once (as fast as it decodes, or at real-time pace
  with `realtime=True`), and so is a file served over HTTP, which says so when it opens (`declares_its_end`).
- Dead air (windows below `silence_dbfs` for `dead_air_seconds` or more) is counted in
  airtrace_silence_seconds_total and logged; its windows still flow (they simply match nothing).
- `start_readers` runs each stream in its own daemon thread, so one stream's failure or stall never
  holds up another; windows and a final `EndOfStream` go to a sink callable (usually a queue's put).
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import av
import numpy as np
import yaml

from encoders import AudioError, decode_chunks
from monitor.constants import SILENCE_RMS, Backoff
from monitor.metrics import Metrics
from monitor.options import IngestOptions
from monitor.records import AudioWindow, EndOfStream, check_id
from monitor.stages.windows import StreamWindower, WindowGrid

if TYPE_CHECKING:
    from monitor.stages.mux import MuxSource

log = logging.getLogger(__name__)


# A reconnected live stream's audio is compared with the last RESUME_KEEP_SECONDS delivered (longer than an
# Icecast burst, 64 KiB: 4 s at 128 kb/s), from RESUME_SETTLE_SECONDS on, over RESUME_MATCH_SECONDS; a
# normalised cross-correlation of RESUME_MIN_CORRELATION or more is a repeat (other music scores far less).
RESUME_KEEP_SECONDS = 20.0
RESUME_SETTLE_SECONDS = 0.25
RESUME_MATCH_SECONDS = 1.0
RESUME_MIN_CORRELATION = 0.9


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

    def __post_init__(self) -> None:
        check_id(self.id, "stream id")

    @property
    def is_file(self) -> bool:
        """A local file is read once to its end; everything else is a live stream, reopened forever."""
        scheme = urlparse(self.url).scheme
        return scheme == "file" or len(scheme) <= 1  # no scheme, or a Windows drive letter


SOURCE_FIELDS = ("id", "url", "name", "metadata", "options")


def load_sources(path: str | Path) -> list[StreamSource | MuxSource]:
    """Streams from a YAML file: a list of {id, url, name?, metadata?, options?, audio?} (or {streams: [...]}),
    and multiplexes {mux, url, programs?, audio?, metadata?, options?} (see monitor.stages.mux)."""
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
    """A plain stream here; a multiplex (`mux`) or a stream with an `audio` selection in monitor.stages.mux."""
    if isinstance(entry, dict) and ("mux" in entry or "audio" in entry):
        from monitor.stages.mux import source_from_entry

        return source_from_entry(entry, where)
    return _source_from_entry(entry, where)


def _source_from_entry(entry: Any, where: str) -> StreamSource:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping with id and url, got {entry!r}")
    unknown = sorted(set(entry) - set(SOURCE_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field {', '.join(map(repr, unknown))}; the fields are {', '.join(SOURCE_FIELDS)}")
    for name in ("id", "url"):  # what makes a good id is StreamSource's to say
        if not isinstance(entry.get(name), str) or (name == "url" and not entry[name].strip()):
            raise ConfigError(f"{where}: field {name!r} is missing or not a string")
    for name in ("metadata", "options"):
        if not isinstance(entry.get(name, {}), dict):
            raise ConfigError(f"{where}: field {name!r} must be a mapping")
    options = {str(k): str(v) for k, v in entry.get("options", {}).items()}
    unknown = unknown_ffmpeg_options(options)
    if unknown:
        raise ConfigError(f"{where}: FFmpeg knows no input option {', '.join(map(repr, unknown))} and would ignore it; see the "
                          "protocol and format options in https://ffmpeg.org/ffmpeg-protocols.html and ffmpeg-formats.html")
    try:
        return StreamSource(entry["id"], entry["url"], entry.get("name"), dict(entry.get("metadata", {})), options)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def unknown_ffmpeg_options(names: Iterable[str]) -> list[str]:
    """Those of `names` that no part of FFmpeg's input side (format context, demuxers, protocols) knows.
    FFmpeg ignores such options without a word, so a typo would silently change nothing. Asks the FFmpeg
    that PyAV loaded, as the ffmpeg tool does: av_opt_find over the format context's class and its children."""
    found = _ffmpeg_option_finder()
    return [name for name in names if found is not None and not found(name)]


@functools.cache
def _ffmpeg_option_finder() -> Callable[[str], bool] | None:
    """None where the loaded libavformat cannot be located (not Linux): options then go unchecked."""
    try:
        maps = Path("/proc/self/maps").read_text().split("\n")
        paths = {lib: next(line.split()[-1] for line in maps if f"/lib{lib}" in line and ".so" in line) for lib in ("avformat", "avutil")}
    except (OSError, StopIteration):
        return None
    avformat, avutil = ctypes.CDLL(paths["avformat"]), ctypes.CDLL(paths["avutil"])
    avformat.avformat_get_class.restype = ctypes.c_void_p
    avutil.av_opt_find.restype = ctypes.c_void_p
    avutil.av_opt_find.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    format_class = ctypes.c_void_p(avformat.avformat_get_class())
    search_children_of_fake_object = 1 | 2  # AV_OPT_SEARCH_CHILDREN | AV_OPT_SEARCH_FAKE_OBJ
    return lambda name: bool(avutil.av_opt_find(ctypes.byref(format_class), name.encode(), None, 0, search_children_of_fake_object))


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
        try:
            sources.append(StreamSource(stream_id, url))
        except ValueError as exc:
            raise ConfigError(f"{url}: {exc}; put the stream in a --streams file with an id of its own") from None
    return sources


def _check_unique(sources: Sequence[StreamSource], where: str) -> None:
    seen: set[str] = set()
    for source in sources:
        if source.id in seen:
            raise ConfigError(f"{where}: stream id {source.id!r} appears twice; ids must be unique")
        seen.add(source.id)


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


class Resumption:
    """Recognises a reconnected live stream that starts by repeating audio it already delivered, and drops
    the repeat, so that the stream goes on as if it had never broken and a play on air across a short drop
    stays one play. The last RESUME_KEEP_SECONDS of delivered audio are kept in a ring; a new connection's
    audio from RESUME_SETTLE_SECONDS on (past the decoder's start-up) is looked for in them by normalised
    cross-correlation."""

    def __init__(self, sample_rate: int):
        self.ring = np.zeros(int(RESUME_KEEP_SECONDS * sample_rate), np.float32)
        self.filled = self.end = 0
        self.settle, self.match = int(RESUME_SETTLE_SECONDS * sample_rate), int(RESUME_MATCH_SECONDS * sample_rate)

    def delivered(self, chunk: np.ndarray) -> None:
        chunk = chunk[-len(self.ring):]
        first = min(len(chunk), len(self.ring) - self.end)
        self.ring[self.end : self.end + first] = chunk[:first]
        self.ring[: len(chunk) - first] = chunk[first:]
        self.end = (self.end + len(chunk)) % len(self.ring)
        self.filled = min(len(self.ring), self.filled + len(chunk))

    def resume(self, chunks: Iterator[np.ndarray]) -> tuple[bool, Iterator[np.ndarray]]:
        """Whether the new connection's `chunks` continue the delivered audio, and the chunks less the repeat."""
        head, size = [], 0
        for chunk in chunks:
            head.append(chunk)
            size += len(chunk)
            if size >= self.settle + self.match:
                break
        audio = np.concatenate(head) if head else np.zeros(0, np.float32)
        repeat = self._repeat_length(audio)
        return repeat is not None, self._skipping(audio, chunks, repeat or 0)

    def _repeat_length(self, audio: np.ndarray) -> int | None:
        """Samples at the start of `audio` that repeat the end of the delivered audio; None if it does not."""
        tail = np.roll(self.ring, -self.end)[len(self.ring) - self.filled :].astype(np.float64)
        piece = audio[self.settle : self.settle + self.match].astype(np.float64)
        if len(piece) < self.match or len(tail) < self.match or np.sqrt(np.mean(piece**2)) < SILENCE_RMS:
            return None  # too little, or silence, which repeats anywhere
        n = 1 << (len(tail) + len(piece)).bit_length()
        dots = np.fft.irfft(np.fft.rfft(tail, n) * np.conj(np.fft.rfft(piece, n)), n)[: len(tail) - len(piece) + 1]
        energy = np.concatenate([[0.0], np.cumsum(tail**2)])
        norms = np.sqrt(np.maximum(energy[len(piece) :] - energy[: len(tail) - len(piece) + 1], 1e-12) * np.sum(piece**2))
        correlation = dots / norms
        best = int(np.argmax(correlation))
        if correlation[best] < RESUME_MIN_CORRELATION:
            return None
        return len(tail) - best + self.settle

    @staticmethod
    def _skipping(head: np.ndarray, chunks: Iterator[np.ndarray], skip: int) -> Iterator[np.ndarray]:
        for chunk in itertools.chain([head], chunks):
            if skip < len(chunk):
                yield chunk[skip:]
            skip = max(0, skip - len(chunk))


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
    resumption = Resumption(grid.sample_rate) if live else None
    windower = StreamWindower(grid)
    seq, after_gap = 0, False
    while not stop.is_set():
        ends = not live  # a file ends; a network source says whether it does when it opens

        def on_open(container: av.container.InputContainer) -> None:
            nonlocal ends
            if live and declares_its_end(source.url, container):
                ends = True
                clock.live = False  # read as fast as it arrives: it airs from the moment it was opened, as a file does

        decoded = decode_chunks(source.url, grid.sample_rate, source.options, timeout=(options.open_timeout, options.read_timeout), opened=on_open)
        chunks = _paced(decoded, grid.sample_rate) if options.realtime and not live else decoded
        first = True
        try:
            continues = False
            if resumption is not None and seq > 0:
                continues, chunks = resumption.resume(chunks)
            for chunk in chunks:
                if stop.is_set():
                    return
                if first:  # first audio of this connection
                    first = False
                    if continues:  # it repeated what we had: nothing was lost, the stream goes on unbroken
                        log.info("stream %s resumed where it broke off", source.id)
                        after_gap = False
                    else:
                        windower = StreamWindower(grid)
                        clock.connect()
                    if metrics:
                        metrics.stream_up.labels(source.id).set(1)
                if resumption is not None:
                    resumption.delivered(chunk)
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
            if ends:
                log.info("stream %s: end of %s", source.id, source.url)
                return
            log.warning("stream %s dropped (end of data); reopening", source.id)
        except (AudioError, av.FFmpegError, OSError, ValueError) as exc:  # ValueError: format changed mid-stream
            if metrics:
                metrics.decode_errors.labels(source.id).inc()
            if ends:
                log.error("stream %s: %s; skipping this file", source.id, exc)
                return
            log.warning("stream %s: %s", source.id, exc)
        finally:
            decoded.close()
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


def declares_its_end(url: str, container: av.container.InputContainer) -> bool:
    """Whether a network source says that it ends: an HTTP(S) response with a length (FFmpeg then knows its
    size and duration; a live HLS playlist has none) and without Icecast/Shoutcast `icy-*` headers, which
    mark a live stream whatever else it says. Reopening a source that ended would play it again from its
    start, and every reopening would be a new play of the same audio."""
    if urlparse(url).scheme not in ("http", "https"):
        return False
    icecast = any(key.lower().startswith("icy-") for key in container.metadata)
    return container.size > 0 and container.duration is not None and not icecast


def start_readers(
    sources: Sequence[StreamSource | MuxSource],
    grid: WindowGrid,
    sink: Callable[[AudioWindow | EndOfStream], None],
    options: IngestOptions = IngestOptions(),
    metrics: Metrics | None = None,
    stop: threading.Event | None = None,
) -> list[threading.Thread]:
    """One daemon thread per stream (or multiplex, see monitor.stages.mux) feeding `sink`; a stream that raises is
    logged and ends alone. Its last item is the EndOfStream of source.id."""
    from monitor.stages.mux import MuxSource, read_mux

    stop = stop or threading.Event()

    def run(source: StreamSource | MuxSource) -> None:
        read = read_mux if isinstance(source, MuxSource) else read_windows
        next_seq = 0
        try:
            for item in read(source, grid, options, metrics, stop):
                if isinstance(item, AudioWindow) and item.stream_id == source.id:
                    next_seq = item.seq + 1
                sink(item)
        except Exception:  # a bug in one stream must not take the others down
            log.exception("stream %s stopped on an unexpected error", source.id)
        finally:
            sink(EndOfStream(source.id, next_seq))

    threads = [threading.Thread(target=run, args=(s,), name=f"ingest-{s.id}", daemon=True) for s in sources]
    for thread in threads:
        thread.start()
    return threads
