"""Which ingest run of a stream the tracking step follows, so that two runs publishing one stream id never leave
it deaf, and are reported.

Ingest numbers a stream's windows from its run's start in milliseconds (monitor.fleet.publish; embedded mode
a file's from its modification time; both a recording's from its air start: monitor.stages.ingest.numbered_from),
so a run started (or a recording aired) later counts from a larger number, and a window not numbered past the
last one taken was dropped as a replay. Two ingest processes that published one stream id
(the id in two shards' streams files, a second ingest started by hand) split its play where the second
started, the first one's windows all read as replays, and when the second stopped the stream went deaf
without a word; a garbled window numbered far ahead did the same. Windows and ends now carry their run
(`run`, None from a release before), and a stream's state remembers the run it follows (`Following`). The
run started last is followed, as an ingest restart always was; while two runs publish, each stretch one of
them is followed in is a play of its own (each run has its own clock), and the operator is told. A
window or end is then:
- TAKE: of the followed run (or of no run), numbered past the last one taken.
- FOLLOW: of a run started later than any the stream followed (an ingest restarted, after a crash too: none
  of its audio is lost waiting for the old run to fall silent), or of another run on air after the followed
  run's end (or around it, within `switch_seconds`): another run carries on. Its run is followed from it,
  which starts after a gap.
- SWITCH: of another run, on air `switch_seconds` or more after the followed run's newest window: that run
  fell silent without an end (its ingest was killed). Its run is followed from it; the other clock cannot
  carry the open play on, which ends, as at an ingest restart.
- RESUME: of the followed run but not numbered past the last one taken, on air `switch_seconds` or more after
  its newest window: within one run, seq and air time grow together, so it is no replay; a garbled window had
  numbered the run ahead. It is taken after a gap (the same clock: a play heard again after it carries on).
- CONFLICT: of an earlier-started run on air around the followed run's newest window: it is set aside. Two
  runs publish the stream (the later one is followed from its first window), which the tracking step
  reports once a window of the followed run comes after it.
- REPLAY: anything else (a rewind, a crashed worker's batch delivered again, the end of a run not
  followed): it changes nothing.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from enum import Enum

from monitor.records import EndOfStream, WindowHits
from monitor.stages.play_state import Following, StreamState


class Verdict(Enum):
    TAKE = "take"
    FOLLOW = "follow"
    SWITCH = "switch"
    RESUME = "resume"
    CONFLICT = "conflict"
    REPLAY = "replay"


def verdict(state: StreamState, item: WindowHits | EndOfStream, switch_seconds: float) -> Verdict:
    """What the tracking step does with `item` of the stream whose state is `state` (see the module docstring)."""
    followed = state.following
    same_run = item.run is None or followed.run is None or item.run == followed.run
    if same_run and item.seq > state.last_seq:
        return Verdict.TAKE
    if not same_run and isinstance(item, WindowHits) and item.run > (followed.newest or followed.run):
        return Verdict.FOLLOW  # by its start, not its air time: a file read faster than real time airs ahead of the clock
    if isinstance(item, EndOfStream) or followed.air_time is None:  # the air time followed is not known: seq alone decides
        return Verdict.REPLAY
    later = item.air_time - followed.air_time
    if same_run:
        return Verdict.RESUME if later >= switch_seconds else Verdict.REPLAY
    if later <= -switch_seconds:
        return Verdict.REPLAY
    if followed.ended:
        return Verdict.FOLLOW
    return Verdict.SWITCH if later >= switch_seconds else Verdict.CONFLICT


def followed_after(state: StreamState, item: WindowHits | EndOfStream) -> Following:
    """What the state follows once it took `item`."""
    followed = state.following
    if isinstance(item, EndOfStream):
        return replace(followed, ended=True)
    newest = max((run for run in (item.run, followed.newest, followed.run) if run is not None), default=None)
    return Following(item.run, item.air_time, newest=newest)


def describe_run(run: int | None) -> str:
    """An ingest run as an operator finds it: ingest logs its run's number when it starts, which is its start time."""
    if run is None:
        return "an ingest run of an earlier release (its windows carry no run)"
    try:
        started = datetime.fromtimestamp(run / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"ingest run {run}"
    return f"ingest run {run} (started {started})"
