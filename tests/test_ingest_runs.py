"""The rule for windows of the ingest runs that publish a stream (monitor.stages.ingest_runs), case by case; the
tracking step applies it in tests/test_worker.py, on real hits and through a worker."""

from __future__ import annotations

from dataclasses import replace

import pytest

from monitor.records import EndOfStream, WindowHits
from monitor.stages.ingest_runs import Verdict, verdict
from monitor.stages.play_state import Following, StreamState

RUN, OTHER, AIR, SWITCH = 1_790_000_000_000, 1_790_000_060_000, 1_790_000_100.0, 10.0
TRACKING = StreamState("radio", last_seq=RUN + 100, following=Following(RUN, AIR))


def window(run: int | None, seq: int, later: float) -> WindowHits:
    """A window of `run` on air `later` seconds after the newest one the state took."""
    return WindowHits("radio", seq, 50.0 + later, AIR + later, (), run=run)


@pytest.mark.parametrize(("item", "expected"), [
    (window(RUN, RUN + 101, 0.5), Verdict.TAKE),
    (window(None, RUN + 101, 0.5), Verdict.TAKE),  # published by an earlier release: seq decides
    (window(RUN, RUN + 90, -5.0), Verdict.REPLAY),
    (window(None, RUN + 90, -5.0), Verdict.REPLAY),
    (window(RUN, RUN + 90, SWITCH), Verdict.RESUME),  # behind the numbering, yet later on air: the numbering ran ahead
    (window(OTHER, OTHER + 5, 0.2), Verdict.CONFLICT),
    (window(OTHER, OTHER + 5, -9.0), Verdict.CONFLICT),
    (window(OTHER, OTHER + 5, -SWITCH), Verdict.REPLAY),  # another run's window of long before: a rewind
    (window(OTHER, OTHER + 5, SWITCH), Verdict.SWITCH),  # the run tracked has been silent that long
    (window(RUN - 60_000, RUN - 59_000, SWITCH), Verdict.SWITCH),  # the other started earlier: numbered lower
    (EndOfStream("radio", OTHER + 6, OTHER), Verdict.REPLAY),  # the end of a run not tracked
    (EndOfStream("radio", RUN + 101, RUN), Verdict.TAKE),
    (EndOfStream("radio", RUN + 101), Verdict.TAKE),
])
def test_a_window_of_the_run_tracked_or_another(item: WindowHits | EndOfStream, expected: Verdict) -> None:
    assert verdict(TRACKING, item, SWITCH) is expected


@pytest.mark.parametrize(("item", "expected"), [
    (window(OTHER, OTHER + 5, -5.0), Verdict.FOLLOW),  # another run goes on after the one tracked ended
    (window(OTHER, OTHER + 5, 3600.0), Verdict.FOLLOW),  # an ingest restarted an hour later
    (window(OTHER, OTHER + 5, -SWITCH), Verdict.REPLAY),
    (window(RUN, RUN + 90, -5.0), Verdict.REPLAY),
])
def test_a_window_after_the_run_tracked_ended(item: WindowHits, expected: Verdict) -> None:
    ended = replace(TRACKING, following=Following(RUN, AIR, ended=True))
    assert verdict(ended, item, SWITCH) is expected


def test_a_fresh_stream_takes_any_run() -> None:
    assert verdict(StreamState("radio"), window(OTHER, OTHER, 0.0), SWITCH) is Verdict.TAKE
