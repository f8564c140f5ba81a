"""`airtrace plays consume`: the play log of the distributed mode, fed from the `airtrace.plays` topic.

A plain aiokafka consumer in a group of its own: it takes a batch of play events, writes them to the
play log in one transaction, and only then commits the batch's offsets. Kafka delivers at least once
(a consumer that dies before committing gets its batch again), and the upsert keyed by play and state
(monitor.playlog.store) makes a second delivery change nothing: exactly-once rows. While the database
cannot be reached the batch is retried with backoff and nothing is committed, so plays wait in Kafka.
The topic carries the kinds beside plays as well (unknown stretches, hourly airtime), written the same way.
A message that is not an event goes to the dead-letter topic, like the worker's, and is counted; so does
an event of a kind or schema version this version does not know (reason unsupported_version), where a
newer consumer can take it up again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from sqlalchemy.exc import InterfaceError, OperationalError

from monitor.fleet.broker import KafkaSettings, Topics, ensure_topics
from monitor.fleet.kafka_records import DEAD_LETTER_KEEP_BYTES, Reason, dead_letter_headers
from monitor.constants import Backoff
from monitor.metrics import Metrics
from monitor.playlog.store import EventRow, PlayLog, UnsupportedEvent, event_row

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsumerOptions:
    group: str = "airtrace-playlog"  # the Kafka consumer group; its committed offsets say which plays are in the log
    batch_size: int = 500  # play events per transaction
    batch_wait: float = 1.0  # seconds to wait for a batch
    retry_first_seconds: float = 0.5  # while the database is down, retry after this, doubling up to the cap
    retry_cap_seconds: float = 30.0


async def consume_plays(playlog: PlayLog, kafka: KafkaSettings, topics: Topics, options: ConsumerOptions = ConsumerOptions(),
                        metrics: Metrics | None = None, stop: asyncio.Event | None = None) -> None:
    """Write every event of the plays topic into `playlog` until stopped (SIGINT, SIGTERM or `stop`)."""
    stop = stop or asyncio.Event()
    await ensure_topics(kafka, [topics.plays, topics.dead_letters], topics)
    consumer = AIOKafkaConsumer(topics.plays, **kafka.client_kwargs(), group_id=options.group, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_poll_records=options.batch_size)
    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all")
    loop = asyncio.get_running_loop()
    try:
        await consumer.start()
        await producer.start()
    except KafkaError as exc:
        await asyncio.gather(consumer.stop(), producer.stop())
        raise kafka.unreachable(exc) from exc
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("writing play events of %s into the play log at %s", topics.plays, playlog.where)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=int(options.batch_wait * 1000), max_records=options.batch_size)
            records = [record for part in batch.values() for record in part]
            if not records:
                continue
            rows = [row for record in records if (row := await _row_or_dead_letter(record, producer, topics, metrics)) is not None]
            if not await _write_until_done(playlog, rows, options, stop, lambda: _report_lag(consumer, topics, metrics)):
                return  # stopped while the database was down: the batch stays uncommitted, and comes again
            try:
                await consumer.commit()
            except KafkaError as exc:  # a rebalance took the partitions: their next owner rewrites the batch, harmlessly
                log.warning("could not commit the offsets of %d play events (%s); they will be written again", len(records), exc)
            await _report_lag(consumer, topics, metrics)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await asyncio.gather(consumer.stop(), producer.stop())


async def _row_or_dead_letter(record: Any, producer: AIOKafkaProducer, topics: Topics, metrics: Metrics | None) -> EventRow | None:
    value = record.value or b""
    try:
        return event_row(json.loads(value))
    except (ValueError, RecursionError) as exc:  # MalformedEvent, UnsupportedEvent, JSON and UTF-8 errors; nesting no parser follows
        reason = Reason.VERSION if isinstance(exc, UnsupportedEvent) else Reason.MALFORMED
        log.warning("dead letter from %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
        headers = dead_letter_headers(reason, str(exc), record.topic, record.partition, record.offset, len(value))
        await producer.send_and_wait(topics.dead_letters, value[:DEAD_LETTER_KEEP_BYTES], key=record.key, headers=headers)
        if metrics:
            metrics.dead_letters.labels(reason.value).inc()
        return None


async def _write_until_done(playlog: PlayLog, rows: list[EventRow], options: ConsumerOptions, stop: asyncio.Event,
                            waiting: Callable[[], Awaitable[None]]) -> bool:
    """Write the rows, retrying with backoff while the database fails (calling `waiting` each time); False if stopped first."""
    backoff = Backoff(options.retry_first_seconds, options.retry_cap_seconds)
    while not stop.is_set():
        try:
            await asyncio.to_thread(playlog.write, rows)
            return True
        except (OperationalError, InterfaceError) as exc:  # the connection, not the data: waiting helps
            wait = backoff.next_delay()
            if (line := backoff.failed(str(playlog.unavailable(exc)))) is not None:
                log.warning("%s; retrying in %.1f s", line, wait)
            await waiting()
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except asyncio.TimeoutError:
                pass
    return False


async def _report_lag(consumer: AIOKafkaConsumer, topics: Topics, metrics: Metrics | None) -> None:
    """Play events on Kafka not yet committed to the play log (airtrace_consumer_lag_messages{topic=plays}):
    it grows while the database is down, which the consumer-lag alert catches."""
    if metrics is None or not (assigned := consumer.assignment()):
        return
    try:
        ends = await consumer.end_offsets(list(assigned))
        committed = {tp: await consumer.committed(tp) or 0 for tp in assigned}
    except KafkaError as exc:
        log.debug("no consumer lag this time: %s", exc)
        return
    metrics.consumer_lag.labels(topics.plays).set(sum(max(0, ends[tp] - committed[tp]) for tp in assigned))
