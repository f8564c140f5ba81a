"""Which events are already on the plays topic: asked by a worker about to send events whose claim it took over
from a worker that died (monitor.fleet.redis_state). That worker may have sent them and been killed before it
marked them published; sending them again would report a play twice. Lapsed claims are rare (a worker killed
mid-batch), so reading the topic back to the claim's time costs nothing in steady state.

Kafka's own answer, transactions, is not in every broker this runs on (Tansu's in-memory storage refuses
InitProducerId), and neither is a timestamp lookup (Tansu answers offset 0 to every ListOffsets by time): so
each partition is read backwards from its end in steps, until a record older than the claim. Its end is the
high watermark of a fetch: Tansu's ListOffsets for the latest offset answers one past the first record of
the last batch written.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from monitor.constants import Backoff
from monitor.fleet.broker import KafkaSettings

log = logging.getLogger(__name__)

READ_BACK_RECORDS = 500  # records read per step back from a partition's end
# Records carry the sending worker's clock, claims Redis's: read this much further back than the claim.
CLOCK_SKEW_SECONDS = 300.0
LOOK_TIMEOUT_SECONDS = 60.0  # past this the events are sent: a play twice is better than a play lost


async def events_already_out(kafka: KafkaSettings, topic: str, maybe_out: Mapping[str, float],
                             timeout: float = LOOK_TIMEOUT_SECONDS) -> set[str]:
    """The ids of `maybe_out` (event id -> when a dead worker claimed it, Unix seconds) found on `topic`.
    If the topic cannot be read in `timeout`, none (the caller sends them all, as it would have before)."""
    if not maybe_out:
        return set()
    since_ms = int((min(maybe_out.values()) - CLOCK_SKEW_SECONDS) * 1000)
    failures: list[KafkaError] = []
    try:
        return await asyncio.wait_for(_look_until_read(kafka, topic, set(maybe_out), since_ms, failures), timeout)
    except asyncio.TimeoutError:
        log.warning("could not read %s back to see which of %d events a dead worker had sent (%s); sending them all, "
                    "so some may be on the topic twice (consumers keyed on event_id, as the play log is, see each once)",
                    topic, len(maybe_out), failures[-1] if failures else "timed out")
        return set()


async def _look_until_read(kafka: KafkaSettings, topic: str, wanted: set[str], since_ms: int, failures: list[KafkaError]) -> set[str]:
    """`_look`, again while the broker cannot be read. Claims lapse after a fault, so the broker may be the one
    restarting: giving up at its first refusal sent a dead worker's started event a second time (the default
    suite's short chaos run, worker killed at 12 s, broker restarted at 41 s)."""
    backoff = Backoff(0.5, 5.0)
    while True:
        try:
            return await _look(kafka, topic, wanted, since_ms)
        except KafkaError as exc:
            failures.append(exc)
            await asyncio.sleep(backoff.next_delay())


async def _look(kafka: KafkaSettings, topic: str, wanted: set[str], since_ms: int) -> set[str]:
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False)  # no group: it reads, never commits
    try:
        await consumer.start()
        await consumer.topics()  # loads the topic's partitions
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        found: set[str] = set()
        for tp in partitions:
            consumer.assign([tp])
            start = (await consumer.beginning_offsets([tp]))[tp]
            found |= await _read_back(consumer, tp, start, await _end(consumer, tp, start), wanted - found, since_ms)
            if found == wanted:
                break
        return found
    finally:
        await consumer.stop()


async def _end(consumer: AIOKafkaConsumer, tp: TopicPartition, start: int) -> int:
    """The offset after the partition's last record (see the module docstring)."""
    listed = (await consumer.end_offsets([tp]))[tp]
    if listed <= start:
        return start
    consumer.seek(tp, listed - 1)
    await consumer.getmany(tp, timeout_ms=1000, max_records=1)
    return max(listed, consumer.highwater(tp) or listed)


async def _read_back(consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int, wanted: set[str], since_ms: int) -> set[str]:
    """The ids of `wanted` in the partition's records from its end back to the first one stamped before `since_ms`."""
    found: set[str] = set()
    while end > start and found != wanted:
        first = max(start, end - READ_BACK_RECORDS)
        consumer.seek(tp, first)
        older = False
        while await consumer.position(tp) < end:
            for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                if record.offset >= end:
                    break
                older |= record.timestamp < since_ms
                if (event_id := _event_id(record.value)) in wanted:
                    found.add(event_id)
        if older:
            break
        end = first
    return found


def _event_id(value: bytes | None) -> str | None:
    try:
        line = json.loads(value or b"")
    except ValueError:
        return None
    return line.get("event_id") if isinstance(line, dict) else None
