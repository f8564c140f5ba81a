"""`airtrace ingest`: read streams and publish their windows to Kafka, keyed by stream id, so that each
stream stays in order on one partition and one worker at a time.

Workers keep each stream's play state in Redis across ingest restarts, so the windows of a new ingest
run must read as newer than anything before: on Kafka a window's seq is the run's start time in
milliseconds plus its window number (growing as long as a stream yields under 1000 windows a second),
and each stream's first window of a run is marked `after_gap`, so no play spans the restart. A stream's
end (a file's end, or ingest stopping) is published as an EndOfStream, which closes its open play. Every
message carries the run (its start in milliseconds) in a header: a worker tells two ingest runs that publish
one stream apart by it (monitor.stages.ingest_runs).

A recording with a known air start (a logger file: monitor.stages.sources) is numbered from its air start instead,
and that is its run (monitor.stages.ingest.numbered_from): ingesting it again gives the same windows, which the
worker takes as replays (no play twice), and the recordings of one stream id follow each other in the order they aired.
A recording that aired before the run a stream's worker state follows (an older hour ingested after a newer one, or
after the live stream) reads as a replay of it too: ingest a stream's recordings in the order they aired.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from monitor.fleet.broker import BrokerError, KafkaSettings, Topics, ensure_topics
from monitor.options import IngestOptions
from monitor.stages.ingest import Source, start_readers
from monitor.fleet.kafka_records import MAX_MESSAGE_BYTES, SampleFormat, encode_end, encode_window, stream_headers
from monitor.constants import Backoff
from monitor.metrics import Metrics
from monitor.stages.mux import StreamStarted
from monitor.records import AudioWindow, EndOfStream
from monitor.stages.windows import WindowGrid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishOptions:
    sample_format: SampleFormat = SampleFormat.INT16
    queue_windows: int = 1000  # windows waiting for Kafka before the stream readers are held back
    linger_ms: int = 20  # how long the producer gathers windows into one request
    retry_first_seconds: float = 0.5  # while Kafka refuses windows, retry after this, doubling up to the cap
    retry_cap_seconds: float = 30.0
    delivery_timeout_seconds: float = 120.0  # a window the broker has not acknowledged by then is given up: longer than a
    # broker restart, where aiokafka's 40 s lost the windows in flight (one or two a stream); meanwhile the queue fills and
    # holds the readers back. Kafka's own producer waits as long (delivery.timeout.ms)


async def publish_windows(
    sources: Sequence[Source],
    grid: WindowGrid,
    kafka: KafkaSettings,
    topics: Topics,
    ingest: IngestOptions = IngestOptions(),
    options: PublishOptions = PublishOptions(),
    metrics: Metrics | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Read every stream and publish its windows until all streams end (files) or `stop` is set."""
    stop = stop or threading.Event()
    await ensure_topics(kafka, [topics.windows], topics)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[AudioWindow | EndOfStream | None] = asyncio.Queue(options.queue_windows)

    def sink(item: AudioWindow | EndOfStream | None) -> None:
        """Called in reader threads: hand the item to the event loop, waiting while the queue is full."""
        if not loop.is_closed():
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

    def on_signal() -> None:
        stop.set()
        if not queue.full():
            queue.put_nowait(None)  # wakes the loop below

    seq_base = int(time.time() * 1000)
    log.info("publishing %d stream(s) as ingest run %d (a worker names the run so if another publishes one of them too)", len(sources), seq_base)
    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", linger_ms=options.linger_ms, max_request_size=MAX_MESSAGE_BYTES,
                                request_timeout_ms=round(options.delivery_timeout_seconds * 1000))
    try:
        await kafka.starting(producer.start())
    except BrokerError:
        await producer.stop()
        raise
    ends: dict[str, EndOfStream] = {}  # per stream with windows on Kafka: its end-of-stream marker
    metadata = {s.id: s.metadata for s in sources}  # each window carries its stream's metadata to the workers
    headers: dict[str, list[tuple[str, bytes]]] = {}  # per stream, made at its first window (its run's)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        start_readers(sources, grid, sink, ingest, metrics, stop, first_seq=lambda source: seq_base)
        live = {source.id for source in sources}
        while live and not stop.is_set():
            item = await queue.get()
            if isinstance(item, StreamStarted):
                metadata[item.stream_id] = item.metadata
                headers.pop(item.stream_id, None)
            elif isinstance(item, EndOfStream):
                live.discard(item.stream_id)
                if item.stream_id in ends:
                    await _send_end(producer, topics.windows, ends.pop(item.stream_id), options)
            elif isinstance(item, AudioWindow):
                window = run_start_marked(item)
                data = encode_window(window, grid.sample_rate, options.sample_format)
                if window.stream_id not in headers:
                    headers[window.stream_id] = stream_headers(metadata.get(window.stream_id), window.run)
                await _send(producer, topics.windows, window.stream_id, data, options, headers[window.stream_id])
                ends[window.stream_id] = EndOfStream(window.stream_id, window.seq + 1, window.run)
        for end in ends.values():  # stopped: the streams still on air end here
            await _send_end(producer, topics.windows, end, options)
    finally:
        stop.set()
        await producer.stop()  # sends what is buffered first
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_start_marked(window: AudioWindow) -> AudioWindow:
    """The window of an ingest run (numbered from its run), its stream's first marked `after_gap` (see the module
    docstring)."""
    return replace(window, after_gap=window.after_gap or window.seq == window.run)


async def _send_end(producer: AIOKafkaProducer, topic: str, end: EndOfStream, options: PublishOptions) -> None:
    await _send(producer, topic, end.stream_id, encode_end(end), options, stream_headers(None, end.run))


async def _send(producer: AIOKafkaProducer, topic: str, stream_id: str, data: bytes, options: PublishOptions,
                headers: list[tuple[str, bytes]] | None = None) -> None:
    """Queue one message of a stream in the producer, retrying with backoff while Kafka cannot take it
    (which holds the readers back; a stream held too long stalls and is reconnected with a gap)."""
    backoff = Backoff(options.retry_first_seconds, options.retry_cap_seconds)
    while True:
        try:
            delivery = await producer.send(topic, data, key=stream_id.encode(), headers=headers or None)
        except KafkaError as exc:
            wait = backoff.next_delay()
            log.warning("Kafka refused a message of %s (%s); retrying in %.1f s", stream_id, exc, wait)
            await asyncio.sleep(wait)
            continue
        delivery.add_done_callback(lambda done: _log_failed_delivery(done, stream_id))
        return


def _log_failed_delivery(delivery: asyncio.Future, stream_id: str) -> None:
    if not delivery.cancelled() and delivery.exception() is not None:
        log.error("a message of %s may be lost: Kafka did not acknowledge it within the delivery timeout (%s)", stream_id, delivery.exception())
