"""`airtrace worker`: a Faust app that turns windows on Kafka into play events, as one of any number of peers.

Two agents, each a short loop over batches that calls plain functions:
- `embed` takes windows of all the streams on this worker's partitions in batches (up to `batch_size`,
  waiting at most `batch_wait`), embeds and searches them in one go (monitor.stages.tracking.LiveCatalog) and
  publishes each window's hits, keyed by stream id (and a stream's EndOfStream after its last hits);
  windows that the catalog could not search are not heard, as in embedded mode.
- `track` runs the tracking step that embedded mode runs too (monitor.stages.tracking.TrackingStep) on batches
  of hits, with each stream's state in Redis, claims the events not yet published, publishes them as JSON
  lines to the plays topic and then commits them and the new states (a worker being stopped finishes that).
Each agent's heartbeat (monitor.health) shows whether it is stuck.
Both ack a batch only after it is handled, so a worker that dies hands its partitions and unacked
messages to the others: windows are embedded again, the state machine skips hits it has seen (by seq),
and events it emits again carry the same ids: it publishes none already published, and waits for those
another worker is publishing (StateStore.claim), which become its own if that one dies first; it then sends
only those it does not find on the plays topic (monitor.fleet.already_out: the dead one may have sent them).
A message that cannot be read goes to the dead-letter topic and is counted; the worker keeps going.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

import faust
from faust.types import TP, EventT, Message

from monitor.fleet.already_out import events_already_out
from monitor.fleet.broker import BrokerError, KafkaSettings, Topics, ensure_topics
from monitor.catalog import Catalog
from monitor.events import Event, describe
from monitor.health import BEAT_SECONDS, Heartbeat
from monitor.fleet.kafka_records import (
    DEAD_LETTER_KEEP_BYTES,
    MAX_MESSAGE_BYTES,
    BadMessage,
    dead_letter_headers,
    decode_hits,
    decode_window,
    encode_hits,
    read_run_header,
    read_stream_headers,
    stream_headers,
)
from monitor.metrics import Metrics, observe_events
from monitor.options import WorkerOptions
from monitor.records import AudioWindow, EndOfStream, WindowHits
from monitor.stages.play_state import StreamState
from monitor.stages.state import StateStore
from monitor.stages.unknown_store import UnknownStore
from monitor.stages.tracking import LiveCatalog, TrackingStep, Unpublished, use_threads

log = logging.getLogger(__name__)
T = TypeVar("T")
FORGET_EVERY_SECONDS = 10.0  # how often the streams of partitions handed to another worker are looked for


class StreamPartitions:
    """The partition each stream handled here arrives on (its windows and hits share the number), so that what this
    worker holds in memory of the streams a rebalance gave to another worker can be dropped: their unknown-music
    buffers, about 10 MB a stream, stayed until a restart."""

    def __init__(self, topic: str):
        self.topic = topic  # the topic whose assignment says which partitions are held (the hits topic)
        self.partitions: dict[str, int] = {}
        self.held: set[int] | None = None  # None before the first assignment

    def note(self, messages: Iterable[Message]) -> None:
        for message in messages:
            if message.key:
                self.partitions[message.key.decode(errors="replace")] = message.partition

    def assigned(self, assignment: Iterable[TP]) -> None:
        self.held = {tp.partition for tp in assignment if tp.topic == self.topic}

    def lost(self) -> list[str]:
        """The streams last seen on a partition this worker no longer holds, noted no more. A batch under way when
        the partitions went notes its streams again; the next call returns them."""
        if self.held is None:
            return []
        lost = sorted(stream for stream, partition in self.partitions.items() if partition not in self.held)
        for stream in lost:
            del self.partitions[stream]
        return lost


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


def add_agents(app: faust.App, catalog: LiveCatalog, step: TrackingStep, kafka: KafkaSettings, topics: Topics, options: WorkerOptions,
               metrics: Metrics) -> None:
    """Declare the topics (with their partition counts) and wire the agents and timers into `app`."""
    encoder = catalog.catalog.encoder
    embed_beat, track_beat = Heartbeat("embed", metrics), Heartbeat("track", metrics)
    compute = ThreadPoolExecutor(1, thread_name_prefix="compute")  # embedding, search and catalog reloads, one at a time
    streams = StreamPartitions(topics.hits)

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

    async def decoded(events: Sequence[EventT], decode: Callable[[bytes, int | None], T]) -> list[tuple[T, dict[str, Any] | None]]:
        """The readable messages (decoded with the ingest run their headers name), each with the stream metadata
        its headers carry (None: none)."""
        good = []
        for event in events:
            headers = event.message.headers
            try:
                good.append((decode(event.message.value or b"", read_run_header(headers)), read_stream_headers(headers)))
            except BadMessage as error:
                await set_aside(event, error)
        return good

    def decode_for_encoder(data: bytes, run: int | None) -> AudioWindow | EndOfStream:
        return decode_window(data, encoder.sample_rate, encoder.window_samples, run)

    def decode_hits_of_run(data: bytes, run: int | None) -> WindowHits | EndOfStream:
        return decode_hits(data)  # hits carry their run in their JSON

    @app.agent(windows_topic, name="embed")
    async def embed(stream: faust.StreamT) -> None:
        async for events in stream.take_events(options.batch_size, within=options.batch_wait):
            with embed_beat.busy():
                streams.note(e.message for e in events)
                items = await decoded(events, decode_for_encoder)
                windows = [item for item, _ in items if isinstance(item, AudioWindow)]
                found = await in_thread(catalog.search, windows, executor=compute)
                step.unknowns.hear_audio(found or ())  # Faust co-partitions the windows and hits topics: a stream's
                # hits come to this worker's track agent, which makes its unknown stretches' excerpts of this audio
                hits = iter(found or ())  # None: the catalog cannot be searched, the windows go unheard
                for item, metadata in items:  # in the order read, so a stream's end follows its last hits
                    if isinstance(item, AudioWindow) and found is None:
                        continue
                    out = next(hits) if isinstance(item, AudioWindow) else item
                    await hits_topic.send(key=out.stream_id.encode(), value=encode_hits(out), headers=stream_headers(metadata) or None)

    @app.agent(hits_topic, name="track")
    async def track(stream: faust.StreamT) -> None:
        async for events in stream.take_events(options.hits_batch_size, within=options.hits_batch_wait):
            with track_beat.busy():
                streams.note(e.message for e in events)
                items = await decoded(events, decode_hits_of_run)
                metadata = {item.stream_id: meta for item, meta in items if meta is not None}
                states, caused = await in_thread(step.advance, [item for item, _ in items])
                claimed = await in_thread(step.unpublished, caused) if caused else Unpublished([])
                out = await events_already_out(kafka, topics.plays, claimed.maybe_out)
                fresh = [replace(e, stream=metadata.get(e.stream_id, {})) for e in claimed.events]
                publishing = asyncio.ensure_future(publish(fresh, states, out))
                try:
                    await asyncio.shield(publishing)
                except asyncio.CancelledError:  # stopping: events sent must be marked, or the next owner sends them again
                    await publishing
                    raise

    async def publish(events: list[Event], states: dict[str, StreamState], already_out: set[str]) -> None:
        """Send the claimed events not `already_out`, then commit them all and the states. If sending fails part-way,
        the events the broker took are marked published and the others' claims given up (no state saved): the worker
        that redoes the batch sends only those. Only events whose claims still hold now are sent (TrackingStep.renew)."""
        states, events = await in_thread(step.renew, states, events)
        if already_out:
            log.info("%d event(s) of a worker that died publishing are on %s already; not sending them again", len(already_out), topics.plays)

        def send(event: Event) -> Awaitable[Awaitable[Any]]:
            return plays_topic.send(key=event.stream_id.encode(), value=event.to_line().encode())

        unsent, error = await send_in_order(send, [e for e in events if e.event_id not in already_out])
        if error is not None:
            await in_thread(step.release, unsent, [e for e in events if e not in unsent])
            raise error
        await in_thread(step.commit, states, events)
        observe_events(metrics, events)
        for event in events:
            log.info("%s", describe(event))

    @app.timer(options.reload_seconds)
    async def look_for_catalog_changes() -> None:
        await in_thread(catalog.reload, executor=compute)

    @app.timer(BEAT_SECONDS)
    async def beat_while_waiting() -> None:
        """The agents beat on each batch; one that waits for messages is alive too, one inside a batch is not."""
        embed_beat.idle()
        track_beat.idle()

    @app.on_partitions_assigned.connect
    def partitions_assigned(sender: Any, assigned: set[TP], **_: Any) -> None:
        streams.assigned(assigned)

    @app.timer(FORGET_EVERY_SECONDS)
    async def forget_streams_handed_over() -> None:
        lost = streams.lost()
        if lost:
            await in_thread(step.forget, lost)
            log.info("%d stream(s) went to another worker; what this one held of them is dropped: %s", len(lost), ", ".join(lost))

    @app.timer(options.lag_seconds)
    async def report_lag() -> None:
        set_consumer_lag(app, [topics.windows, topics.hits], metrics)

    @app.task
    async def declare_output_topics() -> None:
        for output in (plays_topic, dead_topic):
            await output.maybe_declare()



async def send_in_order(send: Callable[[Event], Awaitable[Awaitable[Any]]], events: Sequence[Event]) -> tuple[list[Event], BaseException | None]:
    """Send `events` in order and wait until the broker took each or failed to: the events not sent, and the first
    error. Sending stops at an event the producer refuses outright, so a stream's later events never go out
    before it; deliveries already under way are waited for, since those that arrive are out for good."""
    deliveries: list[Awaitable[Any]] = []
    error: BaseException | None = None
    for event in events:
        try:
            deliveries.append(await send(event))
        except Exception as exc:
            error = exc
            break
    outcomes = await asyncio.gather(*deliveries, return_exceptions=True)
    failed = [e for e, outcome in zip(events, outcomes) if isinstance(outcome, BaseException)]
    error = error or next((o for o in outcomes if isinstance(o, BaseException)), None)
    return failed + list(events[len(deliveries):]) if error is not None else [], error


def set_consumer_lag(app: faust.App, topic_names: Sequence[str], metrics: Metrics) -> None:
    """Messages between the group's committed offset (what it has handled, to within a commit interval) and
    the end of each partition this worker holds, per topic; a partition the group never committed counts from 0.
    The consumer reads the committed offsets from Kafka when partitions are assigned: the monitor's own record
    holds only this process's commits, so a worker that took partitions over showed their whole length as lag.
    A worker that holds none of a topic's partitions, or knows the end of none of them yet (just started or
    rebalanced: ends are learnt from fetches, so an empty partition's may never be), reports no lag for the
    topic rather than 0: workers restarted behind a backlog read as caught up."""
    assigned = app.consumer.assignment()
    committed = app.consumer._committed_offset  # Faust offers no public view of it
    ends = app.monitor.tp_end_offsets
    for name in topic_names:
        held = [tp for tp in assigned if tp.topic == name]
        known = [tp for tp in held if tp in ends]
        if known:
            metrics.consumer_lag.labels(name).set(sum(max(0, ends[tp] - (committed.get(tp) or 0)) for tp in known))
        else:
            with contextlib.suppress(KeyError):  # older prometheus_client raise for a label set never set
                metrics.consumer_lag.remove(name)


def run_worker(
    catalog: Catalog, store: StateStore, kafka: KafkaSettings, topics: Topics, options: WorkerOptions, metrics: Metrics, loglevel: str = "info",
    unknowns: UnknownStore | None = None,
) -> None:
    """Run one worker until it is stopped (SIGINT or SIGTERM); a BrokerError if Kafka does not answer at start-up,
    a CatalogError if the catalog cannot calibrate the matcher (it is empty). Unknown stretches are kept in
    `unknowns`, which all workers must share to find repeats across them (the play log's database)."""
    use_threads(options.threads)
    live = LiveCatalog(catalog, metrics, options.k)
    step = TrackingStep(live, store, options.plays, unknowns, options.unknowns, metrics)
    all_topics = [topics.windows, topics.hits, topics.plays, topics.dead_letters]
    counts = asyncio.run(ensure_topics(kafka, all_topics, topics))  # fails in startup_timeout, before Faust starts, if Kafka is silent
    if counts.get(topics.windows) != counts.get(topics.hits):
        raise BrokerError(f"{topics.windows} has {counts.get(topics.windows)} partitions and {topics.hits} {counts.get(topics.hits)}: a "
                          f"stream's windows and hits must share a partition number (its unknown music is kept where both arrive); "
                          f"give both the same count (Kafka adds partitions to the smaller one: kafka-topics --alter --partitions N)")
    with tempfile.TemporaryDirectory(prefix="airtrace-faust-") as datadir:  # not {group}-data in the current folder
        app = create_app(kafka, topics, options, datadir)
        add_agents(app, live, step, kafka, topics, options, metrics)
        faust.Worker(app, loglevel=loglevel).execute_from_commandline()
