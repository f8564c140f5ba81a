"""Embedded mode: ingest, embedding, search and the play state machine in one process, no Kafka, no Redis.

Each stream is read in its own thread (monitor.stages.ingest) into one queue; the main loop takes windows of
all streams in batches (up to `batch_size`, waiting at most `max_wait` for a batch to fill) and runs the
tracking step that workers run too (monitor.stages.tracking): embed and search them together, then each stream's
play state machine over its hits in seq order, with the states in a MemoryStateStore.
Play events go to a callback (the CLI prints them), as JSON lines to an events file, and into the play log
(monitor.playlog, a SQLite file by default). The catalog is
checked for changes every `reload_seconds`, so tracks added while it runs are found without a restart.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from monitor.catalog import Catalog
from monitor.events import Event, EventsFile
from monitor.health import Heartbeat
from monitor.options import MonitorOptions
from monitor.stages.ingest import Source, numbered_by_file_or_run, start_readers
from monitor.stages.sources import Recordings, StreamSource
from monitor.metrics import Metrics, observe_events
from monitor.stages.mux import StreamStarted
from monitor.playlog.store import PlayLog, PlayLogError
from monitor.records import AudioWindow, EndOfStream, WindowHits
from monitor.stages.state import MemoryStateStore
from monitor.stages.unknown_store import UnknownStore
from monitor.stages.tracking import LiveCatalog, TrackingStep, use_threads
from monitor.stages.windows import WindowGrid

log = logging.getLogger(__name__)


class NothingHeard(RuntimeError):
    """Every stream failed: not one delivered a window of audio."""


class EventsUnwritten(RuntimeError):
    """Monitoring ran, but some events never reached the events file or the play log (they were printed)."""


class EmbeddedMonitor:
    """Runs until every stream has ended (files) or `stop` is set (live streams run forever). With `keep_events`,
    `run` returns every event it emitted; a monitor that runs for months keeps none (they grow with air time:
    tens of thousands a stream a month), and hands them to `on_event`, the events file and the play log only."""

    def __init__(self, catalog: Catalog, sources: Sequence[Source], options: MonitorOptions = MonitorOptions(),
                 metrics: Metrics | None = None, on_event: Callable[[Event], None] | None = None,
                 events_file: str | Path | None = None, playlog: PlayLog | None = None, unknowns: UnknownStore | None = None,
                 keep_events: bool = True):
        self.playlog = playlog
        self.sources, self.options, self.metrics = list(sources), options, metrics
        self.on_event = on_event
        self.events_path = Path(events_file) if events_file else None
        self.grid = WindowGrid.for_encoder(catalog.encoder)
        self.catalog = LiveCatalog(catalog, metrics)
        if unknowns is None and playlog is not None:  # kept beside the plays, so repeats are found across runs too
            unknowns = playlog.unknown_store()
        self.step = TrackingStep(self.catalog, MemoryStateStore(), options.plays, unknowns, options.unknowns, metrics)
        self.heartbeat = Heartbeat("embedded", metrics)
        self.stream_metadata = {s.id: dict(s.metadata) for s in self.sources if isinstance(s, (StreamSource, Recordings))}
        self.events: list[Event] = []  # what `run` returns: every event emitted, with `keep_events`
        self.keep_events = keep_events
        self.emitted = 0  # events emitted
        self.heard: set[str] = set()  # streams that delivered at least one window
        self.waiting: list[Event] = []  # events the play log could not take yet
        self.unwritten = 0  # events that never reached the events file or the play log

    def run(self, stop: threading.Event | None = None) -> list[Event]:
        stop = stop or threading.Event()
        use_threads(self.options.threads)
        inbox: queue.Queue[AudioWindow | EndOfStream] = queue.Queue(self.options.queue_windows)
        readers = start_readers(self.sources, self.grid, inbox.put, self.options.ingest, self.metrics, stop,
                                numbered_by_file_or_run(int(time.time() * 1000)))
        live = {s.id for s in self.sources}
        next_seq: dict[str, int] = {}  # per stream heard: the seq an end of it takes
        next_reload = time.monotonic() + self.options.reload_seconds
        out = EventsFile(self.events_path) if self.events_path else None
        try:
            while live and not stop.is_set():
                self.heartbeat.beat()
                batch = self._next_batch(inbox)
                self.stream_metadata.update((item.stream_id, item.metadata) for item in batch if isinstance(item, StreamStarted))
                windows = [item for item in batch if isinstance(item, AudioWindow)]
                self.heard.update(w.stream_id for w in windows)
                next_seq.update((w.stream_id, w.seq + 1) for w in windows)
                ends = [item for item in batch if isinstance(item, EndOfStream)]
                live.difference_update(end.stream_id for end in ends)
                self._track(windows, ends, out)
                if time.monotonic() >= next_reload:
                    next_reload = time.monotonic() + self.options.reload_seconds
                    self.catalog.reload()
        finally:
            stop.set()
            self._track([], [EndOfStream(stream_id, seq) for stream_id, seq in next_seq.items()], out)  # a replayed end changes nothing
            if out:
                out.close()
                self.unwritten += out.unwritten
            self._log_plays([])  # what a database that was down kept waiting
            if self.waiting:
                log.error("%d play events never reached the play log at %s; `airtrace plays import` adds them from the events file",
                          len(self.waiting), self.playlog.where)
                self.unwritten += len(self.waiting)
            for reader in readers:
                reader.join(timeout=1.0)
        return self.events

    def _next_batch(self, inbox: queue.Queue) -> list[AudioWindow | EndOfStream]:
        """Block for the first item (briefly, to notice a stop); then, unless a full batch is already waiting,
        let `max_wait` pass and take what came meanwhile: one wake a batch, not one a window (see
        monitor.stages.ingest._gathered for what a wake costs)."""
        try:
            batch = [inbox.get(timeout=0.5)]
        except queue.Empty:
            return []
        if inbox.qsize() < self.options.batch_size - 1:
            time.sleep(self.options.max_wait)
        while len(batch) < self.options.batch_size:
            try:
                batch.append(inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _track(self, windows: list[AudioWindow], ends: list[EndOfStream], out: EventsFile | None) -> None:
        """One tracking step: search the windows (unheard while the catalog cannot be searched), run the
        state machine over their hits and the streams' ends, emit the events, commit the states."""
        hits: list[WindowHits] = self.catalog.search(windows) or []
        states, events = self.step.advance([*hits, *ends])
        fresh = self.step.unpublished(events).events  # no other process: nothing claimed by another
        self._emit(fresh, out)
        self.step.commit(states, fresh)

    def _emit(self, events: list[Event], out: EventsFile | None) -> None:
        if not events:
            return
        if self.metrics:
            observe_events(self.metrics, events)
        events = [replace(event, stream=self.stream_metadata.get(event.stream_id, {})) for event in events]
        self.emitted += len(events)
        if self.keep_events:
            self.events += events
        if self.on_event:
            for event in events:
                self.on_event(event)
        if out:
            out.write(events)
        self._log_plays(events)

    def _log_plays(self, events: list[Event]) -> None:
        """Into the play log, with those a failing database kept waiting before them (the play log takes an event
        twice as once): monitoring goes on meanwhile, and what never got in is counted in `unwritten`."""
        if not self.playlog:
            return
        self.waiting += events
        if not self.waiting:
            return
        try:
            self.playlog.apply(event.to_json() for event in self.waiting)
        except (PlayLogError, SQLAlchemyError) as exc:
            if len(self.waiting) == len(events):  # the first failure of a spell
                log.error("could not write play events to the play log at %s: %s; they are kept and tried again with the next ones",
                          self.playlog.where, exc)
            return
        self.waiting = []


def run_embedded(catalog_dir: str | Path, sources: Sequence[Source], options: MonitorOptions = MonitorOptions(),
                 metrics: Metrics | None = None, on_event: Callable[[Event], None] | None = None,
                 events_file: str | Path | None = None, playlog: PlayLog | None = None) -> None:
    """`airtrace monitor`: open the catalog (with the encoder that built it) and monitor until every file
    has ended, Ctrl-C or SIGTERM (a container stopping); plays still open at the end get their ended events.
    Events go to `on_event`, `events_file` and `playlog` only: it may run for months. Raises NothingHeard when
    not one stream delivered audio."""
    catalog = Catalog.open(catalog_dir)
    monitor = EmbeddedMonitor(catalog, sources, options, metrics, on_event, events_file, playlog, keep_events=False)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        monitor.run(stop)
    except KeyboardInterrupt:
        log.info("stopped; %d events", monitor.emitted)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not monitor.heard:
        raise NothingHeard(f"none of the {len(monitor.sources)} input(s) delivered audio; the errors above say why")
    if monitor.unwritten:
        raise EventsUnwritten(f"{monitor.unwritten} event(s) could not be written to the events file or the play log (the errors "
                              "above say why); each was printed above as it happened")
