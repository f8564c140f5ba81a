"""`airtrace plays consume` on a real Kafka-protocol broker (Tansu) and PostgreSQL: duplicates and a
PostgreSQL restart mid-stream leave exactly one row per play; a malformed event becomes a dead letter,
and so does one of a schema version this version does not know, while every kind it knows is written."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiokafka import AIOKafkaProducer
from click.testing import CliRunner

from monitor.bench import servers
from monitor.cli import main
from monitor.events import WithdrawnEvent, play_id
from monitor.playlog import queries
from monitor.playlog.store import PlayLog
from test_playlog import heard_before, synthetic_plays

PREFIX = "playlog-test"


def publish(port: int, messages: list[bytes], topic: str = f"{PREFIX}.plays") -> None:
    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=f"{servers.HOST}:{port}", acks="all")
        await producer.start()
        try:
            for message in messages:
                await producer.send_and_wait(topic, message, key=b"radio")
        finally:
            await producer.stop()

    asyncio.run(send())


def count(log: PlayLog) -> int:
    try:
        return len(queries.list_plays(log, include_hidden=True)[1])
    except Exception:  # the database is restarting
        return 0


def test_consume_survives_a_postgresql_restart_without_losing_or_duplicating_a_play(
        kafka_broker: servers.ServerProcess, postgres: servers.PostgresServer, postgres_url: str, tmp_path: Path) -> None:
    log = PlayLog.open(postgres_url, migrate=True)
    events = [e.to_line().encode() for e in synthetic_plays(60, streams=4)]
    first, second = events[:60], events[60:]
    publish(kafka_broker.port, first + first[:10] + [b'{"schema_version": 1, "state": "started"}'])
    metrics_port = servers.free_port()
    kafka = ["--broker", f"{servers.HOST}:{kafka_broker.port}", "--topic-prefix", PREFIX, "--partitions", "2"]
    consumer = servers.airtrace(["plays", "consume", "--playlog", postgres_url, *kafka, "--metrics-port", str(metrics_port)], tmp_path / "consume.log")
    try:
        servers.wait_until(lambda: count(log) == 30, 60, "the first 30 plays in the play log")
        postgres.stop()
        publish(kafka_broker.port, second + first[:4])
        servers.wait_until(lambda: "retrying in" in (tmp_path / "consume.log").read_text(), 30, "the consumer retrying the database")
        servers.wait_until(lambda: (servers.metric(metrics_port, "airtrace_consumer_lag_messages", topic=f"{PREFIX}.plays") or 0) >= len(second),
                           30, "the plays waiting in Kafka counted as lag")
        postgres.restart()
        servers.wait_until(lambda: count(log) == 60 and all(r["state"] == "ended" for r in queries.list_plays(log)[1]), 60, "all 60 plays ended")
        assert servers.metric(metrics_port, "airtrace_dead_letters_total", reason="malformed") == 1
        servers.wait_until(lambda: servers.metric(metrics_port, "airtrace_consumer_lag_messages", topic=f"{PREFIX}.plays") == 0, 30, "no lag")
    finally:
        servers.stop(consumer)
    clean = PlayLog.open(tmp_path / "clean.sqlite", migrate=True)
    clean.apply(json.loads(e) for e in events)
    assert queries.list_plays(log, include_hidden=True)[1] == queries.list_plays(clean, include_hidden=True)[1]

    (dead,) = servers.read_topic(kafka_broker.port, f"{PREFIX}.dead-letters")
    headers = {name: value.decode() for name, value in dead.headers}
    assert headers["reason"] == "malformed" and "has no 'track' field" in headers["error"] and headers["topic"] == f"{PREFIX}.plays"

    # A new consumer group reads the whole topic again: at-least-once delivery, still exactly one row per play.
    replay = servers.airtrace(["plays", "consume", "--playlog", postgres_url, *kafka, "--playlog-group", "replay"], tmp_path / "replay.log")
    try:
        servers.wait_until(lambda: "writing play events" in (tmp_path / "replay.log").read_text(), 60, "the replay consumer")
        servers.wait_until(lambda: len(servers.read_topic(kafka_broker.port, f"{PREFIX}.dead-letters")) == 2, 60, "the replay's dead letter")
    finally:
        servers.stop(replay)
    assert queries.list_plays(log, include_hidden=True)[1] == queries.list_plays(clean, include_hidden=True)[1]


def test_consume_refuses_to_start_without_its_database() -> None:
    url = f"postgresql://airtrace@{servers.HOST}:{servers.free_port()}/plays"
    result = CliRunner().invoke(main, ["plays", "consume", "--playlog", url, "--broker", f"{servers.HOST}:{servers.free_port()}"])
    assert result.exit_code == 1 and "cannot use the play log" in result.output and "Connection refused" in result.output


def test_consume_writes_every_kind_and_sets_aside_one_it_does_not_know(kafka_broker: servers.ServerProcess, postgres_url: str,
                                                                       tmp_path: Path) -> None:
    from test_playlog_unknowns import synthetic_airtime, synthetic_unknowns, table

    from monitor.playlog.schema import airtime, unknowns

    log = PlayLog.open(postgres_url, migrate=True)
    played = synthetic_plays(3)
    heard = heard_before(played[0])
    withdrawn = WithdrawnEvent(**{**vars(heard), "play_id": play_id("radio-9", "quoted", 1)})
    events = [heard, *played, withdrawn] + synthetic_unknowns() + synthetic_airtime()  # notices: not kept, not set aside either
    lines = [e.to_line().encode() for e in events]
    future = json.dumps({**json.loads(lines[7]), "schema_version": 3}).encode()
    prefix = "kinds-test"
    deep = b"[" * 100_000 + b"]" * 100_000  # nested deeper than the parser goes: the RecursionError stopped consume for good
    publish(kafka_broker.port, lines[:7] + [future, deep] + lines[7:] + lines[-3:], topic=f"{prefix}.plays")
    metrics_port = servers.free_port()
    kafka = ["--broker", f"{servers.HOST}:{kafka_broker.port}", "--topic-prefix", prefix]
    consumer = servers.airtrace(["plays", "consume", "--playlog", postgres_url, *kafka, "--metrics-port", str(metrics_port)], tmp_path / "consume.log")
    try:
        servers.wait_until(lambda: servers.metric(metrics_port, "airtrace_dead_letters_total", reason="unsupported_version") == 1, 60,
                           "the event of schema version 3 set aside")
        servers.wait_until(lambda: servers.metric(metrics_port, "airtrace_dead_letters_total", reason="malformed") == 1, 60,
                           "the nested message set aside")
        servers.wait_until(lambda: len(table(log, airtime)) == 4, 60, "every airtime event in the play log")
    finally:
        servers.stop(consumer)
    clean = PlayLog.open(tmp_path / "clean.sqlite", migrate=True)
    clean.apply(e.to_json() for e in events)
    assert table(log, unknowns) == table(clean, unknowns) and table(log, airtime) == table(clean, airtime)
    assert queries.list_plays(log, include_hidden=True)[1] == queries.list_plays(clean, include_hidden=True)[1]
    dead, nested = servers.read_topic(kafka_broker.port, f"{prefix}.dead-letters")
    assert dict(dead.headers)["reason"] == b"unsupported_version" and dead.value == future
    assert dict(nested.headers)["reason"] == b"malformed" and nested.value == deep[: len(nested.value)]
