"""`airtrace worker`: a Faust app that turns windows on Kafka into play events, as one of any number of peers.

Two agents, each a short loop over batches that calls plain functions:
- `embed` takes windows of all the streams on this worker's partitions in batches (up to `batch_size`,
  waiting at most `batch_wait`), embeds and searches them in one go (monitor.pipeline) and publishes
  each window's hits, keyed by stream id (and a stream's EndOfStream after its last hits).
- `track` takes hits in batches, loads each stream's play state from the StateStore (Redis), runs the
  play state machine (monitor.plays) over the stream's hits in seq order (closing the open play at an
  EndOfStream), publishes the events not yet published as JSON lines to the plays topic, remembers
  their ids, and saves the new states.
Both ack a batch only after it is handled, so a worker that dies hands its partitions and unacked
messages to the others: windows are embedded again, the state machine skips hits it has seen (by seq),
and events it emits again carry the same ids and are dropped (StateStore.published) before publishing.
A message that cannot be read goes to the dead-letter topic and is counted; the worker keeps going.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import faust
from faust.types import EventT

from monitor.broker import KafkaSettings, Topics, ensure_topics
from monitor.catalog import Catalog, CatalogError
from monitor.events import PlayEvent
from monitor.kafka_records import (
    DEAD_LETTER_KEEP_BYTES,
    MAX_MESSAGE_BYTES,
    BadMessage,
    EndOfStream,
    dead_letter_headers,
    decode_hits,
    decode_window,
    encode_hits,
    read_stream_headers,
    stream_headers,
)
from monitor.metrics import Metrics, observe_play_events
from monitor.pipeline import hits_for
from monitor.plays import CatalogInfo, PlayConfig, PlayTracker, StreamState
from monitor.records import AudioWindow, WindowHits
from monitor.state import StateStore

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class WorkerOptions:
    group: str = "airtrace"  # the Faust app id and Kafka consumer group: workers with the same group share the work
    k: int = 10  # neighbours per window
    batch_size: int = 64  # windows per embedding batch, across streams
    batch_wait: float = 0.5  # seconds a batch may wait to fill
    hits_batch_size: int = 256
    hits_batch_wait: float = 0.2
    session_timeout: float = 10.0  # seconds without heartbeats before a worker's partitions go to the others
    reload_seconds: float = 10.0  # how often to look for a changed catalog
    lag_seconds: float = 1.0  # how often to update airtrace_consumer_lag_messages
    web_port: int | None = None  # Faust's own web server (None: off)
    web_host: str = "127.0.0.1"
    plays: PlayConfig | None = None  # None: the defaults for the encoder's window and hop


class PlayStage:
    """The play state machine over batches of hits from many streams, with its state in a StateStore."""

    def __init__(self, tracker: PlayTracker, store: StateStore, catalog: CatalogInfo):
        self.tracker, self.store = tracker, store
        self.catalog = catalog  # replaced when the catalog reloads

    def advance(self, hits: Sequence[WindowHits | EndOfStream]) -> tuple[dict[str, str], list[PlayEvent]]:
        """New states (JSON per stream) and the events they caused; nothing is saved yet."""
        by_stream: dict[str, list[WindowHits | EndOfStream]] = defaultdict(list)
        for item in hits:
            by_stream[item.stream_id].append(item)
        saved = self.store.load(by_stream)
        states, events = {}, []
        for stream_id, items in by_stream.items():
            state = self._state(stream_id, saved.get(stream_id))
            for item in sorted(items, key=lambda h: h.seq):
                state, caused = self._step(state, item)
                events += caused
            states[stream_id] = state.to_json()
        return states, events

    def _step(self, state: StreamState, item: WindowHits | EndOfStream) -> tuple[StreamState, list[PlayEvent]]:
        if isinstance(item, WindowHits):
            return self.tracker.update(state, item, self.catalog)
        if item.seq <= state.last_seq:  # a replayed end
            return state, []
        state, events = self.tracker.close(state, self.catalog)
        return replace(state, last_seq=item.seq), events

    def unpublished(self, events: Sequence[PlayEvent]) -> list[PlayEvent]:
        """The events no worker has published yet (a replay re-derives published ones)."""
        published = self.store.published(e.event_id for e in events)
        return [e for e in events if e.event_id not in published]

    def commit(self, states: dict[str, str], published: Sequence[PlayEvent]) -> None:
        """After the events are on Kafka: remember them, then save the states that caused them."""
        self.store.mark_published(e.event_id for e in published)
        self.store.save(states)

    def _state(self, stream_id: str, saved: str | None) -> StreamState:
        if saved is None:
            return StreamState(stream_id)
        try:
            return StreamState.from_json(saved)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("play state of stream %s is unreadable (%s); starting it afresh", stream_id, exc)
            return StreamState(stream_id)


def create_app(kafka: KafkaSettings, topics: Topics, options: WorkerOptions, datadir: str) -> faust.App:
    """The Faust app with Kafka settings; agents are added by `add_agents`. Faust creates folders in
    `datadir` though it keeps nothing there (all state lives in the StateStore)."""
    return faust.App(
        options.group,
        datadir=datadir,
        broker=kafka.faust_broker,
        broker_credentials=kafka.credentials(),
        broker_session_timeout=options.session_timeout,
        broker_heartbeat_interval=min(3.0, options.session_timeout / 4),
        consumer_auto_offset_reset="earliest",  # a new group starts from the oldest window still on Kafka
        producer_max_request_size=MAX_MESSAGE_BYTES,
        topic_partitions=topics.partitions,
        topic_replication_factor=topics.replication,
        store="memory://",  # all state lives in the StateStore, none in Faust tables
        web_enabled=options.web_port is not None,
        web_port=options.web_port or 6066,
        web_bind=options.web_host,
        autodiscover=False,
    )


def add_agents(app: faust.App, catalog: Catalog, stage: PlayStage, topics: Topics, options: WorkerOptions, metrics: Metrics) -> None:
    """Declare the topics (with their partition counts) and wire the agents and timers into `app`."""
    encoder = catalog.encoder
    compute = ThreadPoolExecutor(1, thread_name_prefix="compute")  # embedding, search and catalog reloads, one at a time

    def topic(name: str) -> faust.TopicT:
        return app.topic(name, partitions=topics.partitions, key_serializer="raw", value_serializer="raw", internal=True)

    windows_topic, hits_topic, plays_topic, dead_topic = (topic(n) for n in (topics.windows, topics.hits, topics.plays, topics.dead_letters))

    async def in_thread(call: Callable[..., T], *args: Any, executor: ThreadPoolExecutor | None = None) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, call, *args)

    async def set_aside(event: EventT, error: BadMessage) -> None:
        message, value = event.message, event.message.value or b""
        metrics.dead_letters.labels(error.reason.value).inc()
        log.warning("dead letter from %s[%d]@%d: %s: %s", message.topic, message.partition, message.offset, error.reason.value, error)
        headers = dead_letter_headers(error.reason, str(error), message.topic, message.partition, message.offset, len(value))
        await dead_topic.send(key=message.key, value=value[:DEAD_LETTER_KEEP_BYTES], headers=headers)

    async def decoded(events: Sequence[EventT], decode: Callable[[bytes], T]) -> list[tuple[T, dict[str, Any] | None]]:
        """The readable messages, each with the stream metadata its headers carry (None: none)."""
        good = []
        for event in events:
            try:
                good.append((decode(event.message.value or b""), read_stream_headers(event.message.headers)))
            except BadMessage as error:
                await set_aside(event, error)
        return good

    def decode_for_encoder(data: bytes) -> AudioWindow | EndOfStream:
        return decode_window(data, encoder.sample_rate, encoder.window_samples)

    def search(windows: list[AudioWindow]) -> list[WindowHits]:
        """The windows' hits; an unusable catalog (emptied, say) finds nothing until it is fixed."""
        try:
            return hits_for(windows, encoder, catalog, options.k, metrics)
        except CatalogError as exc:
            log.error("cannot search the catalog (%s); %d windows find nothing", exc, len(windows))
            return [WindowHits(w.stream_id, w.seq, w.offset, w.air_time, (), w.after_gap) for w in windows]

    @app.agent(windows_topic, name="embed")
    async def embed(stream: faust.StreamT) -> None:
        async for events in stream.take_events(options.batch_size, within=options.batch_wait):
            items = await decoded(events, decode_for_encoder)
            windows = [item for item, _ in items if isinstance(item, AudioWindow)]
            hits = iter(await in_thread(search, windows, executor=compute))
            for item, metadata in items:  # in the order read, so a stream's end follows its last hits
                out = next(hits) if isinstance(item, AudioWindow) else item
                await hits_topic.send(key=out.stream_id.encode(), value=encode_hits(out), headers=stream_headers(metadata) or None)

    @app.agent(hits_topic, name="track")
    async def track(stream: faust.StreamT) -> None:
        async for events in stream.take_events(options.hits_batch_size, within=options.hits_batch_wait):
            items = await decoded(events, decode_hits)
            metadata = {item.stream_id: meta for item, meta in items if meta is not None}
            states, caused = await in_thread(stage.advance, [item for item, _ in items])
            fresh = await in_thread(stage.unpublished, caused) if caused else []
            fresh = [replace(e, stream=metadata.get(e.stream_id, {})) for e in fresh]
            deliveries = [await plays_topic.send(key=e.stream_id.encode(), value=e.to_line().encode()) for e in fresh]
            await asyncio.gather(*deliveries)
            await in_thread(stage.commit, states, fresh)
            observe_play_events(metrics, fresh)
            for event in fresh:
                log.info("play %s: %s on %s at %.1f s", event.state, event.track_id, event.stream_id, event.stream_start)

    def reload_catalog() -> bool:
        """Pick up a changed catalog; a broken one is reported and the loaded one kept."""
        try:
            if not catalog.reload_if_changed():
                return False
            stage.catalog = CatalogInfo.of(catalog)
        except (CatalogError, OSError) as exc:
            log.error("cannot reload the catalog (%s); still searching generation %d", exc, catalog.generation)
            return False
        return True

    @app.timer(options.reload_seconds)
    async def look_for_catalog_changes() -> None:
        if await in_thread(reload_catalog, executor=compute):
            log.info("catalog changed on disk; reloaded (generation %d)", catalog.generation)
            set_catalog_gauges(catalog, metrics)

    @app.timer(options.lag_seconds)
    async def report_lag() -> None:
        set_consumer_lag(app, [topics.windows, topics.hits], metrics)

    @app.task
    async def declare_output_topics() -> None:
        for output in (plays_topic, dead_topic):
            await output.maybe_declare()

    set_catalog_gauges(catalog, metrics)


def set_catalog_gauges(catalog: Catalog, metrics: Metrics) -> None:
    stats = catalog.stats()
    metrics.catalog_tracks.set(stats["tracks"])
    metrics.catalog_windows.set(stats["windows"])
    metrics.index_bytes.set(stats["index_bytes"])


def set_consumer_lag(app: faust.App, topic_names: Sequence[str], metrics: Metrics) -> None:
    """Messages between the group's committed offset (what it has handled, to within a commit interval) and
    the end of each partition this worker holds, per topic; a partition the group never committed counts from 0.
    The consumer reads the committed offsets from Kafka when partitions are assigned: the monitor's own record
    holds only this process's commits, so a worker that took partitions over showed their whole length as lag."""
    assigned = app.consumer.assignment()
    committed = app.consumer._committed_offset  # Faust offers no public view of it
    lag = dict.fromkeys(topic_names, 0)
    for tp, end in app.monitor.tp_end_offsets.items():
        if tp in assigned and tp.topic in lag:
            lag[tp.topic] += max(0, end - (committed.get(tp) or 0))
    for name, value in lag.items():
        metrics.consumer_lag.labels(name).set(value)


def run_worker(
    catalog: Catalog, store: StateStore, kafka: KafkaSettings, topics: Topics, options: WorkerOptions, metrics: Metrics, loglevel: str = "info"
) -> None:
    """Run one worker until it is stopped (SIGINT or SIGTERM); a BrokerError if Kafka does not answer at start-up."""
    encoder = catalog.encoder.config
    config = options.plays or PlayConfig.for_grid(encoder.window_seconds, encoder.hop_seconds)
    stage = PlayStage(PlayTracker(config), store, CatalogInfo.of(catalog))
    all_topics = [topics.windows, topics.hits, topics.plays, topics.dead_letters]
    asyncio.run(ensure_topics(kafka, all_topics, topics))  # fails in startup_timeout, before Faust starts, if Kafka is silent
    with tempfile.TemporaryDirectory(prefix="airtrace-faust-") as datadir:  # not {group}-data in the current folder
        app = create_app(kafka, topics, options, datadir)
        add_agents(app, catalog, stage, topics, options, metrics)
        faust.Worker(app, loglevel=loglevel).execute_from_commandline()
