"""End to end with real servers: a live HTTP broadcast at real-time pace -> `airtrace ingest` -> Kafka (Tansu)
-> two `airtrace worker`s sharing the work over Redis, one of them killed mid-way -> the plays topic.

The broadcast (about 110 s) mixes catalog tracks with a tempo change, noise, crossfades and talk over
them, and music that is not in the catalog. Every true play must be reported exactly once (one started
and one ended event, no duplicates after the kill), with start and end within 1 s of the truth, and
nothing may be reported for the music that is not in the catalog.

Marked slow: the default suite's short chaos run (tests/test_chaos.py) drives the same path (live streams,
ingest, Kafka, two workers over Redis, a worker SIGKILLed) with more faults; this one stays for its
absolute boundary check on a broadcast of its own.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

from monitor.bench import servers
from encoders import load_audio, synthesize_speech
from monitor.demo.broadcast import SAMPLE_RATE, Piece, TruePlay, compose, score_plays
from monitor.events import PlayEvent, plays_in, read_event

MUSIC = Path(__file__).parents[1] / "monitor" / "demo" / "music"
PACE = 1.0  # real time
PREFIX = "e2e"
STREAM = "radio"


def programme() -> list[Piece]:
    music = {name: load_audio(MUSIC / f"{name}.opus", SAMPLE_RATE) for name in ("area1-game", "area2-game", "gardien-go", "termigator_reg-zbb")}
    hello = synthesize_speech("Good evening, this is airtrace radio. Here is some music for you.", SAMPLE_RATE)
    news = synthesize_speech("That was lovely. And now for something that you will not find in the catalog.", SAMPLE_RATE, "en-us")
    return [
        Piece("talk", "hello", hello),
        Piece("track", "area1-game", music["area1-game"], seconds=20.0, chain="noise:20", overlap=0.5),
        Piece("track", "area2-game", music["area2-game"], ref_start=10.0, seconds=22.0, chain="tempo:1.06+noise:15", overlap=1.0),  # crossfade
        Piece("talk", "news", news, overlap=1.5, crossfade=False),  # over the outro
        Piece("music", "termigator_reg-zbb", music["termigator_reg-zbb"], ref_start=8.0, seconds=16.0, chain="noise:20"),
        Piece("track", "gardien-go", music["gardien-go"], ref_start=6.0, seconds=20.0, chain="noise:10", overlap=1.0),  # crossfade
        # Not area3-game: it shares material with area2-game, and a small catalog cannot tell them apart.
        # Longer than a play's dropout gap: the last play's ended event is decided only once the gap has passed
        # in stream time, and a live stream that stops gives none.
        Piece("music", "termigator_reg-zbb", music["termigator_reg-zbb"], ref_start=28.0, seconds=20.0, chain="noise:20", overlap=1.0),
    ]


def events_on(broker: servers.ServerProcess) -> list[PlayEvent]:
    return plays_in(read_event(json.loads(r.value)) for r in servers.read_topic(broker.port, f"{PREFIX}.plays"))


@pytest.mark.slow
def test_live_broadcast_through_two_workers_one_killed(kafka_broker: servers.ServerProcess, service_catalog: Path, service_encoder_source: str, tmp_path: Path) -> None:
    began = time.monotonic()
    audio, truth = compose(programme(), np.random.default_rng(4))
    wav = tmp_path / "broadcast.wav"
    soundfile.write(wav, audio, SAMPLE_RATE)
    config = tmp_path / "streams.yaml"
    redis = servers.redis_server(tmp_path)
    live = servers.LiveAudioServer.of_file(wav, tmp_path, speed=PACE, once=True).start()
    config.write_text(f"- id: {STREAM}\n  url: {live.url()}\n  name: airtrace test radio\n")
    kafka = ["--broker", f"127.0.0.1:{kafka_broker.port}", "--topic-prefix", PREFIX, "--partitions", "4"]
    metrics_ports = [servers.free_port() for _ in range(2)]
    processes = [
        servers.airtrace(["worker", "--catalog", str(service_catalog), "--redis-url", f"redis://127.0.0.1:{redis.port}/0", "--session-timeout", "3",
                          "--batch-wait", "0.2", "--metrics-port", str(port), *kafka], tmp_path / f"worker{n}.log")
        for n, port in enumerate(metrics_ports)
    ]
    try:
        for port in metrics_ports:
            servers.wait_until(lambda: servers.metric(port, "airtrace_catalog_tracks"), 60, "the workers start")
        processes.append(servers.airtrace(["ingest", "--streams", str(config), "--encoder", service_encoder_source, *kafka], tmp_path / "ingest.log"))
        servers.wait_until(live.played.is_set, 60, "ingest tunes in")
        on_air = time.monotonic()
        killed = kill_the_busy_worker_mid_play(processes[:2], metrics_ports, truth, on_air)
        air_seconds = len(audio) / SAMPLE_RATE / PACE
        servers.wait_until(lambda: time.monotonic() - on_air > air_seconds, air_seconds + 30, "the broadcast ends")
        servers.wait_until(lambda: Counter(e.state for e in events_on(kafka_broker))["ended"] >= len(truth), 30, "every play has ended")
        time.sleep(3.0)  # late duplicates would arrive now
        events = events_on(kafka_broker)
    finally:
        for process in reversed(processes):
            servers.stop(process)
        live.stop()
        redis.stop()
    report(events, truth, time.monotonic() - began, killed)

    assert len({e.event_id for e in events}) == len(events), "an event was published twice"
    assert Counter(e.state for e in events) == {"started": len(truth), "ended": len(truth)}
    card = score_plays(truth, events)
    assert card.precision == 1.0 and card.recall == 1.0, card
    for pairing in card.pairings:
        assert abs(pairing.start_error) <= 1.0 and abs(pairing.end_error) <= 1.0, pairing
    assert len(list(tmp_path.glob("airtrace-faust-*"))) == 1  # the killed worker's Faust folder: in the run's folder, not /tmp


def kill_the_busy_worker_mid_play(workers: list, metrics_ports: list[int], truth: list[TruePlay], on_air: float) -> int:
    """SIGKILL the worker that embeds the stream, halfway through the second play."""
    middle = (truth[1].stream_start + truth[1].stream_end) / 2 / PACE
    servers.wait_until(lambda: time.monotonic() - on_air >= middle, middle + 30, "the middle of the second play")
    hits = [servers.metric(port, "airtrace_hits_total", stream=STREAM) or 0.0 for port in metrics_ports]
    busy = int(np.argmax(hits))
    assert hits[busy] > 0, "no worker has embedded the stream yet"
    workers[busy].send_signal(signal.SIGKILL)
    workers[busy].wait()
    return busy


def report(events: list[PlayEvent], truth: list[TruePlay], seconds: float, killed: int) -> None:
    from monitor.demo.broadcast import table

    print(f"\ne2e: {seconds:.0f} s wall, worker {killed} killed, {len(events)} events")
    print(table(score_plays(truth, events)))

