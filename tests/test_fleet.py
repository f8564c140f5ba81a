"""`airtrace bench fleet`: streams per worker core, delays and plays of the distributed mode at real-time pace.

Fast tests check the measures on hand-made records; the slow one runs the fleet on two short live streams.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from monitor.bench.fleet import compare_plays, delays, run_fleet
from monitor.events import PlayEvent, play_id


def event(state: str, start: float, end: float | None = None, decided: float = 0.0, stream: str = "s1", track: str = "t1") -> PlayEvent:
    air_zero = 1_800_000_000.0  # air time of stream offset 0
    return PlayEvent(play_id=play_id(stream, track, int(start * 2)), state=state, stream_id=stream, track_id=track, started_at=air_zero + start,
                     stream_start=start, ref_start=0.0, speed=1.0, score=10.0, confidence=0.9999, decided_offset=decided,
                     ended_at=None if end is None else air_zero + end, stream_end=end)


@dataclass(frozen=True)
class Record:
    """What the delays read of a Kafka record: its value and the broker's timestamp in milliseconds."""

    value: bytes
    timestamp: int


def test_delays_run_from_air_time_to_the_record_on_the_topic() -> None:
    started = event("started", start=10.0, decided=16.0)
    published_ms = int((started.started_at + 7.5) * 1000)  # 7.5 s after the play went on air, 1.5 s after the deciding window
    ended = event("ended", start=10.0, end=40.0, decided=55.0)
    records = [Record(json.dumps(e.to_json()).encode(), published_ms) for e in (started, ended)]
    detection, pipeline = delays(records)
    assert detection == pytest.approx([7.5], abs=1e-3)  # milliseconds on the record
    assert pipeline == pytest.approx([1.5], abs=1e-3)


def test_plays_compare_by_stream_track_and_boundaries_not_ids() -> None:
    embedded = [event("started", 5.0), event("ended", 5.0, 55.0), event("ended", 60.0, 90.0, track="t2"), event("ended", 100.0, 130.0)]
    fleet = [replace_id(event("ended", 5.2, 54.9)), replace_id(event("ended", 61.0, 90.0, track="t2")), event("ended", 100.0, 130.0, stream="s2")]
    same, differences, drift = compare_plays(fleet, embedded, tolerance=0.5)
    assert same == 1 and drift == pytest.approx(0.2)  # the start of the play paired, 5.2 against 5.0
    assert sorted(differences) == sorted([
        "fleet only: s1 t2 61.00-90.00 s", "fleet only: s2 t1 100.00-130.00 s",
        "embedded only: s1 t2 60.00-90.00 s", "embedded only: s1 t1 100.00-130.00 s"])


def replace_id(e: PlayEvent) -> PlayEvent:
    return replace(e, play_id=play_id(e.stream_id, e.track_id, 10_000))  # a live stream numbers its windows otherwise


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_fleet_of_one_and_two_workers_reports_the_embedded_plays(tmp_path: Path) -> None:
    for tool in ("redis-server", "prometheus", "ffmpeg"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (deploy/install.sh installs it)")
    runs = run_fleet(streams=2, minutes=1.0, worker_counts=(1, 2), seed=0, partitions=2, encoder="compact", distractors=(),
                     workdir=tmp_path, out=str(tmp_path / "fleet.json"), command="test")
    for run in runs:
        assert run.heard > 0 and run.found == run.heard
        assert run.same_as_embedded == run.plays, run.differences
        assert run.stream_seconds > 0 and run.worker_cpu > 0 and len(run.detection_delays) == run.plays
    assert json.loads((tmp_path / "fleet.json").read_text())["runs"][1]["workers"] == 2
