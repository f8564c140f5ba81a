"""`airtrace bench chaos`: the distributed mode under faults loses no play and doubles none.

The default suite runs a short schedule (5 streams, 1.5 minutes: a worker SIGKILLed and restarted, Redis and
the broker restarted, streams off air, a partition replayed); the slow run is the full one (20 streams,
16 minutes, the broker paused rather than restarted, the workers starved of CPU for 13 minutes), where the
worker-down, stream-down and lag alerts must also fire, and the lag alert must be over once they catch up.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import numpy as np

from monitor.bench.chaos import (LAG_GROWING_FOR, PROCESS_DOWN_FOR, STREAM_DOWN_FOR, ChaosResult, Stations, Starver, heard_plays, run_chaos,
                                 schedule)
from monitor.demo.broadcast import TruePlay


def check(result: ChaosResult) -> None:
    assert result.total("heard") > 0, "no true play went out whole"
    assert result.lost_to_faults == 0, f"{result.lost_to_faults} plays lost to faults"
    assert result.duplicate_event_ids == 0, "an event id was published twice"
    assert result.second_plays_from_faults == 0, "a fault made a true play reported twice"
    assert result.total("unended") == 0, "a play started and never ended"
    hop = 0.5  # one window hop: a live stream's windows fall on another grid than the file's
    for name in ("start_errors", "end_errors"):
        assert result.median_error(name) <= result.median_error(name, baseline=True) + hop, name
    assert result.alerts_ok, (result.alerts_fired, result.alerts_expected, result.alerts_not_expected)


def needs_servers() -> None:
    for tool in ("redis-server", "prometheus", "ffmpeg"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (deploy/install.sh installs it)")


def test_the_schedule_has_every_fault_and_long_runs_outlast_the_alerts() -> None:
    streams = [f"s{n}" for n in range(20)]
    short = schedule(120, streams, 2, np.random.default_rng(0))
    assert {f.kind for f in short} == {"kill-worker", "restart-redis", "restart-broker", "off-air", "replay"}
    assert all(0 < f.at < 120 for f in short)
    full = schedule(600, streams, 2, np.random.default_rng(0), durable_broker=False)
    assert "pause-broker" in {f.kind for f in full} and "restart-broker" not in {f.kind for f in full}
    assert max(f.seconds for f in full if f.kind == "kill-worker") > PROCESS_DOWN_FOR
    assert max(f.seconds for f in full if f.kind == "off-air") > STREAM_DOWN_FOR
    assert "starve-workers" not in {f.kind for f in full}, "10 minutes leave no room for lag to grow 10 minutes"
    (starved,) = [f for f in schedule(960, streams, 2, np.random.default_rng(0)) if f.kind == "starve-workers"]
    assert starved.seconds > LAG_GROWING_FOR and starved.at + starved.seconds < 960


def test_starved_processes_are_stopped_most_of_the_time_and_continued_at_the_end() -> None:
    """The starver stops and continues whatever its list holds now, including a process started meanwhile,
    lets them run at full speed while paused, and continues them all when it stops."""
    import subprocess
    import sys
    import time

    def state(process: subprocess.Popen) -> str:
        return Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

    def seen_stopped(process: subprocess.Popen) -> bool:
        for _ in range(2000):
            if state(process) == "T":
                return True
            time.sleep(0.01)
        return False

    busy = [sys.executable, "-c", "while True: pass"]
    processes = [subprocess.Popen(busy)]
    starver = Starver(lambda: processes)
    try:
        starver.start()
        assert seen_stopped(processes[0])
        processes.append(subprocess.Popen(busy))
        assert seen_stopped(processes[1])
        with starver.paused():
            assert all(state(p) != "T" for p in processes), "full speed while paused"
        assert seen_stopped(processes[0])
        starver.stop()
        assert all(state(p) != "T" for p in processes), "continued once the starving is over"
    finally:
        starver.stop()
        for process in processes:
            process.kill()
            process.wait()


def test_a_play_counts_only_when_the_station_sent_it_whole() -> None:
    plays = [TruePlay("a", 10.0, 40.0, 0, 30, 1.0), TruePlay("b", 50.0, 80.0, 0, 30, 1.0)]
    whole, cut = heard_plays(plays, [(0.0, 60.0), (75.0, 100.0)])
    assert whole == plays[:1] and cut == plays[1:]


def test_a_station_goes_off_air_and_resumes_at_the_live_position(tmp_path: Path) -> None:
    """Sent bytes are the programme from its live position on (the listener that put it on air hears it from
    its first byte); off air closes the connection and answers 503. Nothing here depends on timing: the
    programme is 10 minutes long, and where a listener came in is read from what the station logged."""
    import urllib.error
    import urllib.request

    from monitor.bench.chaos import Broadcast

    byte_rate, seconds = 1024, 600.0
    programme = np.random.default_rng(0).integers(0, 256, int(byte_rate * seconds), dtype=np.uint8).tobytes()
    broadcast = Broadcast("s", programme, seconds, [], tmp_path / "s.mp3")
    with Stations([broadcast]) as stations:
        with urllib.request.urlopen(stations.url("s"), timeout=30) as response:
            first = response.read(300)
            stations.off_air("s", 60.0)
            rest = response.read()  # the station closes the connection
        with pytest.raises(urllib.error.HTTPError, match="503"):
            urllib.request.urlopen(stations.url("s"), timeout=30)
        stations.off_until["s"] = 0.0  # back on air
        with urllib.request.urlopen(stations.url("s"), timeout=30) as response:
            later = response.read(300)
    (span, later_span) = stations.sent["s"]
    assert span[0] == 0.0 and programme.startswith(first + rest), "the first listener hears the programme from its first byte, unbroken"
    assert span[0] < span[1] < seconds and len(first + rest) < len(programme)
    at = int(later_span[0] * byte_rate)
    assert later_span[0] > 0.0 and programme[at : at + len(later)] == later, "a later listener comes in at the live position"


@pytest.mark.timeout(900)
def test_short_chaos_run_loses_and_doubles_no_play(tmp_path: Path) -> None:
    needs_servers()
    check(run_chaos(streams=5, minutes=1.5, workers=2, seed=0, partitions=4, encoder="compact", workdir=tmp_path, out=None, command="test"))
    assert list(tmp_path.glob("airtrace-faust-*")), "the SIGKILLed worker's Faust folder is left in the run's folder, not in /tmp"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_full_chaos_run_loses_and_doubles_no_play_and_alerts(tmp_path: Path) -> None:
    needs_servers()
    result = run_chaos(streams=20, minutes=16.0, workers=2, seed=0, partitions=4, encoder="compact", workdir=tmp_path, out=None, command="test",
                       durable_broker=False)  # the local S3 server cannot carry 20 streams on 2 cores (README, Faults)
    check(result)
    alerted = {name for name, _ in result.alerts_expected}
    assert alerted == {"AirtraceProcessDown", "AirtraceStreamDown", "AirtraceConsumerLagGrowing"}, "a 16-minute schedule outlasts every alert"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_broker_down_longer_than_aiokafka_waits_loses_no_window(tmp_path: Path) -> None:
    """The broker (its topics on S3) is down for 50 s while ingest publishes three paced streams: every window
    reaches the topic once it is back. With aiokafka's default 40 s request timeout the window in flight for
    each stream was given up (seen: windows 21-22 of every stream)."""
    import time

    from monitor.bench import servers
    from monitor.fleet.kafka_records import decode_window
    from monitor.records import AudioWindow
    from catalog_fixtures import MUSIC

    needs_servers()
    s3 = servers.local_s3(tmp_path)
    broker = servers.tansu(tmp_path, s3)
    streams = tmp_path / "streams.yaml"
    streams.write_text("".join(f"- id: s{i}\n  url: {path}\n" for i, path in enumerate(sorted(MUSIC.glob("*.opus"))[:3])))
    ingest = servers.airtrace(["ingest", "--streams", str(streams), "--realtime", "--broker", f"{servers.HOST}:{broker.port}",
                               "--topic-prefix", "outage", "--partitions", "2"], tmp_path / "ingest.log")
    try:
        time.sleep(8.0)
        broker.stop()
        time.sleep(50.0)
        broker.start()
        assert ingest.wait(300) == 0, (tmp_path / "ingest.log").read_text()[-2000:]
        windows = [w for r in servers.read_topic(broker.port, "outage.windows", idle=2.0)
                   if isinstance(w := decode_window(r.value, 8000, 8000), AudioWindow)]
    finally:
        if ingest.poll() is None:
            ingest.kill()
        broker.stop()
        s3.stop()
    for stream in ("s0", "s1", "s2"):
        seqs = sorted({w.seq for w in windows if w.stream_id == stream})
        holes = [(a - seqs[0], b - seqs[0]) for a, b in zip(seqs, seqs[1:]) if b != a + 1]
        assert len(seqs) > 60 and holes == [], f"{stream}: windows missing between these (from its first): {holes}"
