"""The rule for windows of the ingest runs that publish a stream (monitor.stages.ingest_runs), case by case; the
tracking step applies it in tests/test_worker.py, on real hits and through a worker."""

from __future__ import annotations

from dataclasses import replace

import pytest

from monitor.records import EndOfStream, WindowHits
from monitor.stages.ingest_runs import Verdict, verdict
from monitor.stages.play_state import Following, StreamState

RUN, LATER, EARLIER, AIR, SWITCH = 1_790_000_000_000, 1_790_000_060_000, 1_789_999_940_000, 1_790_000_100.0, 10.0
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
    (window(LATER, LATER + 5, 0.2), Verdict.FOLLOW),  # a run started later: an ingest restarted (or a second one)
    (window(LATER, LATER + 5, -3600.0), Verdict.FOLLOW),  # by its start: a file read faster than real time airs ahead
    (window(EARLIER, EARLIER + 5, 0.2), Verdict.CONFLICT),  # a run started earlier, on air beside the one followed
    (window(EARLIER, EARLIER + 5, -9.0), Verdict.CONFLICT),
    (window(EARLIER, EARLIER + 5, -SWITCH), Verdict.REPLAY),  # its window of long before: a rewind
    (window(EARLIER, EARLIER + 5, SWITCH), Verdict.SWITCH),  # the run followed has been silent that long
    (EndOfStream("radio", EARLIER + 6, EARLIER), Verdict.REPLAY),  # the end of a run not tracked
    (EndOfStream("radio", LATER + 6, LATER), Verdict.REPLAY),
    (EndOfStream("radio", RUN + 101, RUN), Verdict.TAKE),
    (EndOfStream("radio", RUN + 101), Verdict.TAKE),
])
def test_a_window_of_the_run_tracked_or_another(item: WindowHits | EndOfStream, expected: Verdict) -> None:
    assert verdict(TRACKING, item, SWITCH) is expected


@pytest.mark.parametrize(("item", "expected"), [
    (window(EARLIER, EARLIER + 5, -5.0), Verdict.FOLLOW),  # another run goes on after the one tracked ended
    (window(EARLIER, EARLIER + 5, 3600.0), Verdict.FOLLOW),
    (window(EARLIER, EARLIER + 5, -SWITCH), Verdict.REPLAY),
    (window(LATER, LATER + 5, -3600.0), Verdict.FOLLOW),  # an ingest restarted with a file read ahead of real time
    (window(RUN, RUN + 90, -5.0), Verdict.REPLAY),
])
def test_a_window_after_the_run_tracked_ended(item: WindowHits, expected: Verdict) -> None:
    ended = replace(TRACKING, following=Following(RUN, AIR, ended=True))
    assert verdict(ended, item, SWITCH) is expected


def test_a_fresh_stream_takes_any_run() -> None:
    assert verdict(StreamState("radio"), window(LATER, LATER, 0.0), SWITCH) is Verdict.TAKE


def test_a_run_followed_before_is_not_new_again() -> None:
    """After the latest run fell silent and an earlier one was followed, a rewind's windows of the latest are no
    new run: the air time decides, as for any other run."""
    back = replace(TRACKING, following=Following(RUN, AIR, newest=LATER))
    assert verdict(back, window(LATER, LATER + 5, -60.0), SWITCH) is Verdict.REPLAY
    assert verdict(back, window(LATER + 1, LATER + 6, -60.0), SWITCH) is Verdict.FOLLOW
