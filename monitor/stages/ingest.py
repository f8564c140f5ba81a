"""Ingest: any input FFmpeg reads (files, Icecast/Shoutcast over HTTP(S), HLS, RTMP, RTSP, UDP, RTP) cut
into the encoder's windows, stamped with stream id, seq, stream offset and UTC air time.

Contracts other processes rely on:
- `read_windows(source, grid, options, metrics, stop)` yields `AudioWindow`s of one stream in order.
  `seq` counts windows since ingest began and is never reused, across reconnects too. `offset` is stream
  time in seconds; it never goes back, and after a gap it jumps ahead by the wall-clock time lost. A live
  connection's windows wait until its clock has placed it (monitor.stages.airtime.ClockedWindows: a second after
  the audio it sent at once, such as the last segments of an HLS playlist, that aired before it opened).
- A live source (anything but a local file) is read forever: when it fails to open, drops (ends) or
  stalls (no data for `read_timeout` s) it is reopened after an exponential backoff with jitter, and the
  first window after the break carries `after_gap=True`, so no run of evidence spans it (a play heard on its
  line again after a short break carries on: monitor.stages.plays). A reconnection that starts
  by repeating audio already delivered (a short drop, and a server that sends its recent seconds to a new
  listener, as Icecast's burst-on-connect does) lost nothing: the repeat is dropped and the stream goes
  on without a gap (monitor.stages.resumption). A local file is read once (as fast as it decodes, or at real-time pace
  with `realtime=True`), and so is a file served over HTTP, which says so when it opens (`declares_its_end`).
- A source that opens as an MPEG transport stream, and any input of datagrams (UDP, RTP, SRT), is read the way a stream
  with an audio selection is: its main audio track on the input's own clock (monitor.stages.mux): an audio PID absent
  while the video goes on is a gap.
- Dead air (windows below `silence_dbfs` for `dead_air_seconds` or more) is counted in
  airtrace_silence_seconds_total and logged; its windows still flow (they simply match nothing).
- `start_readers` runs each stream in its own daemon thread, so one stream's failure or stall never
  holds up another; windows and a final `EndOfStream` go to a sink callable (usually a queue's put).
  Its readers (multiplexes too) take turns to decode (`decode_turns`), as many at once as
  `IngestOptions.decode_turns` says: by default, as many as the process has cores.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import av
import numpy as np
import yaml

from encoders import AudioError, decode_chunks
from monitor.constants import Backoff
from monitor.metrics import Metrics
from monitor.options import IngestOptions
from monitor.records import AudioWindow, EndOfStream
from monitor.stages.airtime import ClockedWindows
from monitor.stages.mux import AudioSelection, MuxSource, is_transport_stream, read_mux, source_from_entry
from monitor.stages.sources import (
    ConfigError,
    Recordings,
    StreamSource,
    check_unique,
    declares_its_end,
    never_opens,
    not_a_stream,
    read_timeout_for,
    sent_once,
    stream_from_entry,
)
from monitor.stages.windows import WindowGrid

log = logging.getLogger(__name__)

Source = StreamSource | MuxSource | Recordings  # what start_readers reads: a stream, a multiplex, or one stream's recordings


EDGE_WAIT_SECONDS = 0.02  # a read that waited this long for data found none waiting: the reader is at the live edge
CGROUP_CPU_LIMIT = Path("/sys/fs/cgroup/cpu.max")  # "QUOTA PERIOD" (or "max PERIOD"): a container's CPU limit, in cgroup v2


def load_sources(path: str | Path) -> list[Source]:
    """Streams from a YAML file: a list of {id, url, name?, metadata?, options?, audio?, air_start?} (or {streams: [...]}),
    and multiplexes {mux, url, programs?, audio?, metadata?, options?, air_start?} (see monitor.stages.mux). Entries of
    one id that are all recordings with their air start are that stream's recordings (`Recordings`)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the streams config is not UTF-8 text ({exc.reason} at byte {exc.start + 1}); save it as UTF-8") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read streams config: {exc}") from exc
    if isinstance(raw, dict) and set(raw) == {"streams"}:
        raw = raw["streams"]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{path}: expected a non-empty list of streams, each with id and url")
    sources = _recordings_joined([_entry(entry, f"{path}: stream #{i + 1}") for i, entry in enumerate(raw)])
    check_unique(sources, str(path))
    return sources


def _recordings_joined(sources: list[StreamSource | MuxSource]) -> list[Source]:
    """`sources` with the plain entries that share an id, every one a local file with its air start (one station's
    logger files), made one stream of recordings in the place of the first."""
    by_id: dict[str, list[StreamSource]] = {}
    for source in sources:
        if isinstance(source, StreamSource):
            by_id.setdefault(source.id, []).append(source)
    joined = {stream_id: parts for stream_id, parts in by_id.items()
              if len(parts) > 1 and all(part.is_file and part.air_start is not None for part in parts)}
    out: list[Source] = []
    for source in sources:
        if not isinstance(source, StreamSource) or source.id not in joined:
            out.append(source)
        elif joined[source.id][0] is source:
            out.append(Recordings.of(source.id, joined[source.id]))
    return out


def _entry(entry: Any, where: str) -> StreamSource | MuxSource:
    """A plain stream here; a multiplex (`mux`) or a stream with an `audio` selection in monitor.stages.mux."""
    if isinstance(entry, dict) and ("mux" in entry or "audio" in entry):
        return source_from_entry(entry, where)
    return stream_from_entry(entry, where)


def _paced(chunks: Iterator[np.ndarray], sample_rate: int, gather_seconds: float, lead_seconds: float = 0.2) -> Iterator[np.ndarray]:
    """Release chunks no faster than real time (a file played as if it were on air), in bursts of
    `gather_seconds`, as `_gathered` takes a live stream's."""
    start, sent = time.monotonic(), 0
    for chunk in chunks:
        ahead = start + sent / sample_rate - lead_seconds - time.monotonic()
        if ahead > 0:
            time.sleep(ahead + gather_seconds)
        sent += len(chunk)
        yield chunk


def _gathered(chunks: Iterator[np.ndarray], sample_rate: int, gather_seconds: float, stop: threading.Event) -> Iterator[np.ndarray]:
    """A live stream's chunks, taken in bursts: once a read had to wait for the network (the reader is at
    the live edge), sleep `gather_seconds` so that the next reads find that much audio already waiting.

    Waking costs a reader more than the work it wakes for: on a 2-core machine, decoding a 0.1 s chunk
    took 0.12 ms of CPU in a loop and 0.6 ms right after a 0.1 s sleep (cold caches, an idle core
    waking). A reader that wakes for every packet spends most of its CPU waking; in bursts of 0.5 s,
    about 2 wakes a second. The windows reach the monitor up to `gather_seconds` later; their air times
    do not move (StreamClock anchors on the earliest arrival of the last minutes).

    A read can also be slow because the machine is busy, with audio waiting. So the reader keeps how far
    the audio it read runs ahead of the wall clock since it connected (the server's connect burst, at
    most, once it has read all there was) and sleeps only within one gather of the furthest ahead it has
    been: one that fell behind reads on until it has caught up, and never lags by more than two gathers.
    (A server slower than real time drifts that mark away; gathering then stops, reading does not.)
    """
    connected, read_seconds, furthest = time.monotonic(), 0.0, -math.inf
    while True:
        began = time.monotonic()
        chunk = next(chunks, None)
        if chunk is None:
            return
        read_at = time.monotonic()
        read_seconds += len(chunk) / sample_rate
        ahead = read_seconds - (read_at - connected)
        furthest = max(furthest, ahead)
        yield chunk
        if read_at - began > EDGE_WAIT_SECONDS and ahead >= furthest - gather_seconds:
            stop.wait(gather_seconds)


def decode_turns(turns: int = 0) -> threading.BoundedSemaphore:
    """The turns a process's readers take to decode (encoders.audio.decode_batches holds one per batch of packets and
    reads outside it): `turns` of them, or as many as it has cores (`usable_cores`) for 0.

    PyAV lets go of Python's interpreter lock in every FFmpeg call, so readers that decode at the same time
    hand it to each other many times per chunk, and each handover costs both threads CPU: 200 threads
    decoding dev files at once spent 19.8 ms of CPU per audio second, 3.8 taking two turns (2.9 one; one
    thread alone 1.6). A process that falls behind real time has every reader decoding at once, so without
    turns falling behind made it fall further behind: 200 streams in one process ran at 35 streams per core
    (45 over HTTP), and at 160 (141) with turns (README, "200 streams in one process")."""
    return threading.BoundedSemaphore(turns or usable_cores())


def usable_cores(limit_file: Path = CGROUP_CPU_LIMIT) -> int:
    """The cores this process may use: its CPU affinity, capped by a container's CPU limit (Docker's
    `--cpus`, a Kubernetes limit), which affinity does not show: on a 32-core node, a pod limited to one
    core would otherwise let 32 readers decode at once."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = limit_file.read_text().split()
        return cores if quota == "max" else max(1, min(cores, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 CPU controller here: nothing caps the affinity
        return cores


class _TransportStream(Exception):
    """A plain stream that opened as an MPEG transport stream before it delivered a window (see read_windows)."""


class _LongerReads(Exception):
    """A live HLS playlist opened with a read timeout shorter than its segments need (sources.read_timeout_for)."""

    def __init__(self, seconds: float):
        super().__init__(seconds)
        self.seconds = seconds


def read_windows(
    source: StreamSource,
    grid: WindowGrid,
    options: IngestOptions = IngestOptions(),
    metrics: Metrics | None = None,
    stop: threading.Event | None = None,
    turns: AbstractContextManager = nullcontext(),
) -> Iterator[AudioWindow]:
    """Windows of one stream, in order; see the module docstring for the guarantees. Decoding holds
    `turns` (see decode_turns).

    A stream that opens as an MPEG transport stream (a TS file, a TV channel over HTTP or UDP) is read the way a stream
    with an audio selection is: its main audio track (monitor.stages.mux), on the input's own clock: its audio's
    timestamps alone read an audio PID absent while the video went on as timestamps that start again, and the audio
    after the absence came early by all of it. An input of datagrams (UDP, RTP, SRT: `sent_once`) is read that way from
    its first open, whatever it carries: opened once to find a transport stream and again to read it, it lost what came
    to the first open (2.1 s of a channel over UDP; a 4 s channel gave no window)."""
    stop = stop or threading.Event()
    if sent_once(source.url):  # opened once, by the multiplex reader, which reads any input (a TS over UDP as a rule)
        log.info("stream %s: %s sends datagrams: monitoring its main audio track on the input's clock", source.id, source.url)
    else:
        try:
            yield from _read_plain(source, grid, options, metrics, stop, turns)
            return
        except _TransportStream:
            log.info("stream %s: %s is an MPEG transport stream or a TV channel's HLS: monitoring its main audio track on the input's clock",
                     source.id, source.url)
    for item in read_mux(MuxSource.single(source, AudioSelection()), grid, options, metrics, stop, turns):
        if isinstance(item, AudioWindow):  # its ends and metadata are a plain stream's (start_readers, source.metadata)
            yield item


def read_recordings(
    recordings: Recordings,
    grid: WindowGrid,
    options: IngestOptions = IngestOptions(),
    metrics: Metrics | None = None,
    stop: threading.Event | None = None,
    turns: AbstractContextManager = nullcontext(),
) -> Iterator[AudioWindow]:
    """Windows of a stream's recordings, one after another, as one stream. Each part's windows air when it aired (its air
    start) and are numbered from it, as when it is monitored alone, so the same file gives the same play ids; their stream
    time goes on across the parts, so that a song cut where one file ends and the next begins is one play. Audio missing
    between two parts (the logger was off for more than a window) is a gap; audio two parts both hold (files that
    overlap) is heard once. Parts without an air start follow one another without a gap and air as the first does."""
    stop = stop or threading.Event()
    first_air = recordings.parts[0].air_start
    last: AudioWindow | None = None
    aired_at_zero: float | None = None  # parts without an air start: where stream offset 0 aired
    for number, part in enumerate(recordings.parts, start=1):
        if stop.is_set():
            return
        timed = first_air is not None and part.air_start is not None
        heard_to = last.offset + grid.window_seconds if last else 0.0  # stream time its last window reached
        shift = part.air_start - first_air if timed else heard_to
        numbered = round(part.air_start * 1000) - round(first_air * 1000) if timed else 0
        numbered = max(numbered, last.seq + 1 if last else 0)
        gap = shift - heard_to > grid.window_seconds
        log.info("stream %s: recording %d of %d, %s%s", recordings.id, number, len(recordings.parts), part.url, " after a gap" if gap else "")
        for window in read_windows(part, grid, options, metrics, stop, turns):
            offset = shift + window.offset
            if last is not None and offset < last.offset + grid.hop_seconds / 2:
                continue  # heard already, in the part before
            if aired_at_zero is None:
                aired_at_zero = window.air_time - offset
            air_time = window.air_time if timed else aired_at_zero + offset
            last = replace(window, seq=numbered + window.seq, offset=offset, air_time=air_time, after_gap=window.after_gap or gap)
            gap = False
            yield last


def _read_plain(source: StreamSource, grid: WindowGrid, options: IngestOptions, metrics: Metrics | None, stop: threading.Event,
                turns: AbstractContextManager) -> Iterator[AudioWindow]:
    """read_windows for any input but a transport stream, which raises _TransportStream as it opens."""
    live = not source.is_file
    timed = ClockedWindows(source.id, grid, options, metrics, live=live or options.realtime, air_start=source.air_start, resumable=live)
    backoff = Backoff(options.backoff_initial, options.backoff_max)

    def delivered() -> Iterator[AudioWindow]:
        for window in timed.take():
            yield window
            backoff.reset()

    while not stop.is_set():
        ends = not live  # a file ends; a network source says whether it does when it opens

        def on_open(container: av.container.InputContainer) -> None:
            nonlocal ends
            if timed.seq == 0 and is_transport_stream(container):
                raise _TransportStream
            if live and declares_its_end(source.url, container):
                ends = True
                timed.clock.live = False  # read as fast as it arrives: it airs from the moment it was opened, as a file does
            if (live and not ends and timed.seq == 0  # a playlist's target duration, read once: not at every reconnection
                    and (needed := read_timeout_for(source.url, container, options.read_timeout, options.open_timeout)) > options.read_timeout):
                raise _LongerReads(needed)

        decoded = decode_chunks(source.url, grid.sample_rate, source.options, timeout=(options.open_timeout, options.read_timeout), opened=on_open,
                                lock=turns, skip_damaged=True)
        if live:
            chunks = _gathered(decoded, grid.sample_rate, options.gather_seconds, stop)
        else:
            chunks = _paced(decoded, grid.sample_rate, options.gather_seconds) if options.realtime else decoded
        first = True
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                if first:  # first audio of this connection
                    first = False
                    timed.connect(resumable=True)
                    if metrics:
                        metrics.stream_up.labels(source.id).set(1)
                timed.push(chunk)
                yield from delivered()
            timed.end()
            yield from delivered()
            if ends:
                if timed.seq == 0:  # else the run's only word was that no stream delivered audio, "the errors above say why"
                    log.warning("stream %s: %s holds %.2f s of audio, less than one window (%g s): nothing to monitor", source.id, source.url,
                                timed.windower.samples_seen / grid.sample_rate, grid.window_seconds)
                log.info("stream %s: end of %s", source.id, source.url)
                return
            log.warning("stream %s dropped (end of data); reopening", source.id)
        except _LongerReads as longer:
            log.info("stream %s: a live HLS playlist whose segments need a read timeout of %g s: reopening it with that", source.id, longer.seconds)
            options = replace(options, read_timeout=longer.seconds)
            continue
        except (AudioError, av.FFmpegError, OSError, ValueError) as exc:  # ValueError: format changed mid-stream
            timed.end()  # the connection broke, its clock perhaps unsettled: its audio as it stands
            yield from delivered()
            if metrics:
                metrics.decode_errors.labels(source.id).inc()
            if ends and live and timed.clock.came_as_it_plays():  # a length the server declared, but a live stream's pace
                log.info("stream %s: %s said how long it is but came as fast as it plays: a live stream, broken off", source.id, source.url)
            elif ends or never_opens(exc):
                log.error("stream %s: %s; skipping %s", source.id, exc, "the rest of this file" if timed.seq else "this file")
                return
            if timed.seq == 0 and (why := not_a_stream(source.url, options.open_timeout)):
                log.error("stream %s: %s %s; skipping it", source.id, source.url, why)
                return
            if (line := backoff.failed(str(exc))) is not None:
                log.warning("stream %s: %s", source.id, line)
        finally:
            decoded.close()
            if metrics:
                metrics.stream_up.labels(source.id).set(0)
        delay = backoff.next_delay()
        log.log(logging.INFO if backoff.told else logging.DEBUG, "stream %s: reconnecting in %.1f s", source.id, delay)
        if stop.wait(delay):
            return
        if metrics:
            metrics.stream_reconnects.labels(source.id).inc()


def numbered_by_file_or_run(run_started_ms: int) -> Callable[[Source], int]:
    """Where embedded mode numbers a source's windows from (see start_readers) when its air start is unknown: a local file
    from its modification time in milliseconds, anything else from the run's start. Two runs on one stream id must not give two plays
    one id (the play log keeps the first): daily logger files, a restarted monitor. The same file monitored
    again gives the same ids, so its plays are not counted twice."""

    def first_seq(source: Source) -> int:
        if source.is_file:
            try:
                return Path(source.url.removeprefix("file:")).stat().st_mtime_ns // 1_000_000
            except OSError:  # unreadable: its reader reports why
                pass
        return run_started_ms

    return first_seq


def numbered_from(source: Source, first_seq: Callable[[Source], int]) -> int:
    """The number a source's first window takes. A recording with a known air start is numbered from it in milliseconds,
    in embedded mode and in `airtrace ingest` alike: the same recording monitored again gives the same windows, so the
    same play ids and times (the play log keeps one of each), and two recordings of one stream id are numbered apart by
    their air times (a few windows a second against a thousand numbers), in the order they aired."""
    if source.air_start is None:
        return first_seq(source)
    log.info("stream %s: a recording that aired from %s: its windows are numbered (and its run named) from then", source.id,
             datetime.fromtimestamp(source.air_start, timezone.utc).isoformat(timespec="milliseconds"))
    return round(source.air_start * 1000)


def start_readers(
    sources: Sequence[Source],
    grid: WindowGrid,
    sink: Callable[[AudioWindow | EndOfStream], None],
    options: IngestOptions = IngestOptions(),
    metrics: Metrics | None = None,
    stop: threading.Event | None = None,
    first_seq: Callable[[Source], int] = lambda source: 0,
) -> list[threading.Thread]:
    """One daemon thread per stream (or multiplex, see monitor.stages.mux) feeding `sink`; a stream that raises is
    logged and ends alone. Its last item is the EndOfStream of source.id. A source's windows (and ends) are
    numbered from `first_seq(source)`, or from its air start in milliseconds when that is known (`numbered_from`):
    a play's id is made of its first window's number (monitor.events); that number is their `run` too
    (monitor.stages.ingest_runs)."""

    stop = stop or threading.Event()
    turns = decode_turns(options.decode_turns)

    def run(source: Source) -> None:
        read = read_mux if isinstance(source, MuxSource) else read_recordings if isinstance(source, Recordings) else read_windows
        items = read(source, grid, options, metrics, stop, turns)
        base = numbered_from(source, first_seq)
        next_seq = base
        try:
            for item in items:
                if isinstance(item, (AudioWindow, EndOfStream)):
                    item = replace(item, seq=base + item.seq, run=base)
                if isinstance(item, AudioWindow) and item.stream_id == source.id:
                    next_seq = item.seq + 1
                sink(item)
        except Exception:  # a bug in one stream must not take the others down
            log.exception("stream %s stopped on an unexpected error", source.id)
        finally:
            sink(EndOfStream(source.id, next_seq, base))

    threads = [threading.Thread(target=run, args=(s,), name=f"ingest-{s.id}", daemon=True) for s in sources]
    for thread in threads:
        thread.start()
    return threads
