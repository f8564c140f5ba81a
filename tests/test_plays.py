"""The play-event state machine on synthetic hits: a scripted broadcast, so the truth is exact."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import jsonschema
import numpy as np
import pytest

from monitor.events import PlayEvent, PlayNotice, ProvisionalEvent, kinds_schema, plays_in, read_event, schema
from monitor.stages import matcher
from monitor.stages.calibration import NULL_DURATIONS, Calibration
from monitor.stages.matcher import SPEED_RANGE, TOLERANCE, align
from monitor.stages.play_runs import Runs
from monitor.stages.play_state import CatalogInfo, PlayConfig, StreamState
from monitor.stages.plays import PlayTracker
from monitor.records import Neighbour, WindowHits

HOP, WINDOW, REF_HOP = 0.5, 1.0, 0.5
CATALOG = [f"track-{i}" for i in range(20)]


@dataclass(frozen=True)
class Info:
    seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)


TRACKS = {t: Info(180.0, {"title": t.upper()}) for t in CATALOG}


@dataclass(frozen=True)
class Segment:
    """`track` plays on the stream from `start` to `end` (seconds), from `ref_start` in it, at `speed`."""

    track: str
    start: float
    end: float
    ref_start: float = 0.0
    speed: float = 1.0
    echo: tuple[float, float] = (0.0, 0.0)  # (shift, seconds): for its first seconds the track also matches itself
    # `shift` seconds further on, as music that repeats a passage does
    similarity: tuple[float, float] = (0.75, 0.95)  # its own neighbour's similarity (noise and talk bring it down
    # towards chance's 0.2-0.5)


def broadcast(seconds: float, segments: list[Segment], seed: int = 0, dropouts: tuple[tuple[float, float], ...] = (),
              gaps: tuple[tuple[float, float], ...] = (), stream: str = "radio", found: float = 1.0) -> list[WindowHits]:
    """Hits a good encoder and catalog would give: the playing track's reference window (when at least half
    of the query window holds it, in a fraction `found` of windows) among chance neighbours; none of the
    track during `dropouts`; no windows
    at all during `gaps` (the stream was lost from a to b), and the one after each marked after_gap."""
    rng = np.random.default_rng(seed)
    hits = []
    for seq in range(int((seconds - WINDOW) / HOP) + 1):
        t = seq * HOP
        if any(a <= t < b for a, b in gaps):
            continue
        neighbours = [Neighbour(str(rng.choice(CATALOG)), float(rng.integers(0, 360)) * REF_HOP, float(rng.uniform(0.2, 0.5)))
                      for _ in range(8)]
        for s in segments:
            inside = min(t + WINDOW, s.end) - max(t, s.start)
            dropped = any(a <= t < b for a, b in dropouts) or rng.random() >= found
            if inside >= WINDOW / 2 and not dropped:
                ref = s.ref_start + s.speed * (t - s.start)
                neighbours.insert(0, Neighbour(s.track, round(ref / REF_HOP) * REF_HOP, float(rng.uniform(*s.similarity))))
                shift, seconds = s.echo
                if t < s.start + seconds:
                    neighbours.insert(0, Neighbour(s.track, round((ref + shift) / REF_HOP) * REF_HOP, float(rng.uniform(0.75, 0.95))))
        neighbours.sort(key=lambda n: -n.similarity)
        hits.append(WindowHits(stream, seq, t, 1_800_000_000.0 + t, tuple(neighbours[:8]), after_gap=any(t == b for _, b in gaps)))
    return hits


def chance_calibration() -> Calibration:
    """The matcher's null, measured as `calibrate` does, on hits that hold chance neighbours only."""
    hits = broadcast(600, [], seed=99)
    durations, scores = [], []
    for duration in NULL_DURATIONS:
        size = int((duration - WINDOW) / HOP) + 1
        lines = [align(hits[b : b + size], WINDOW, SPEED_RANGE, TOLERANCE) for b in range(0, len(hits) - size, 7)]
        durations.append(duration)
        scores.append(np.sort([found[0].score if found else 0.0 for found in lines]))
    return Calibration(8, SPEED_RANGE, TOLERANCE, tuple(durations), tuple(scores))


CATALOG_INFO = CatalogInfo(chance_calibration(), TRACKS.get)


def run(hits: list[WindowHits], tracker: PlayTracker | None = None, state: StreamState | None = None) -> tuple[StreamState, list[PlayNotice]]:
    tracker = tracker or PlayTracker(PlayConfig(window_seconds=WINDOW, hop_seconds=HOP))
    state = state or StreamState(hits[0].stream_id)
    events: list[PlayNotice] = []
    for h in hits:
        state, new = tracker.update(state, h, CATALOG_INFO)
        events += new
    state, new = tracker.close(state, CATALOG_INFO)
    events += new
    assert_whole_lifecycles(events)
    return state, events


def assert_whole_lifecycles(events: list[PlayNotice]) -> None:
    """Every reported play has one started and then one ended event; a play heard before it was sure is
    then confirmed by its started event or withdrawn, never both, and nothing is left dangling."""
    steps: dict[str, list[str]] = defaultdict(list)
    for event in events:
        steps[event.play_id].append(event.state if isinstance(event, PlayEvent) else event.kind)
    whole = (["started", "ended"], ["provisional", "started", "ended"], ["provisional", "withdrawn"])
    assert all(seq in whole for seq in steps.values()), dict(steps)


def plays(events: list[PlayNotice]) -> list[PlayEvent]:
    return [e for e in plays_in(events) if e.state == "ended"]


def test_a_play_opens_soon_and_its_boundaries_snap_to_the_track() -> None:
    _, events = run(broadcast(90, [Segment("track-3", 10.0, 70.0, speed=1.0)]))
    heard, started, ended = events
    assert (heard.kind, started.state, ended.state) == ("provisional", "started", "ended")
    assert heard.track_id == started.track_id == ended.track_id == "track-3" and heard.play_id == started.play_id == ended.play_id
    assert heard.decided_offset - 10.0 <= 4.0  # heard once a run of 2 s supports it, a window confirms it, a window long
    assert started.decided_offset - 10.0 <= PlayConfig().min_play_seconds + 1.0  # reported once it cannot be a phantom
    assert heard.stream_start == pytest.approx(10.0, abs=0.3)
    assert ended.stream_start == pytest.approx(10.0, abs=0.3)
    assert ended.stream_end == pytest.approx(70.0, abs=0.6)
    assert ended.speed == pytest.approx(1.0, abs=0.01)
    assert ended.track == {"title": "TRACK-3"}
    assert ended.started_at == pytest.approx(1_800_000_000.0 + ended.stream_start)


@pytest.mark.parametrize("speed", [0.95, 1.0, 1.06])
def test_a_play_cut_in_mid_track_is_bounded_from_the_alignment(speed: float) -> None:
    _, events = run(broadcast(80, [Segment("track-7", 12.3, 61.8, ref_start=40.0, speed=speed)], seed=2))
    (ended,) = plays(events)
    assert ended.stream_start == pytest.approx(12.3, abs=0.5)
    assert ended.stream_end == pytest.approx(61.8, abs=0.5)
    assert ended.speed == pytest.approx(speed, abs=0.01)
    assert ended.ref_start == pytest.approx(40.0, abs=0.6)
    assert ended.ref_end == pytest.approx(40.0 + speed * (61.8 - 12.3), abs=0.6)


def test_a_dropout_within_the_tolerance_keeps_one_play() -> None:
    _, events = run(broadcast(80, [Segment("track-1", 5.0, 70.0)], dropouts=((30.0, 36.0),)))
    assert len(plays(events)) == 1


@pytest.mark.parametrize("seed", [0, 3, 4])
def test_a_play_found_in_half_its_windows_is_one_play(seed: int) -> None:
    _, events = run(broadcast(90, [Segment("track-6", 10.0, 80.0, ref_start=30.0, speed=1.04)], seed=seed, found=0.5))
    started, ended = plays_in(events)
    assert started.decided_offset - 10.0 <= 11.0 + PlayConfig().min_play_seconds
    assert 10.0 <= ended.stream_start <= started.decided_offset  # from the first evidence, which noise delays
    assert ended.stream_end == pytest.approx(80.0, abs=1.5)  # to the last evidence, within a hole or two
    assert ended.speed == pytest.approx(1.04, abs=0.005)


def test_a_long_dropout_ends_the_play() -> None:
    _, events = run(broadcast(90, [Segment("track-1", 5.0, 80.0)], dropouts=((30.0, 50.0),)))
    first, second = plays(events)
    assert first.stream_end == pytest.approx(30.0, abs=1.0)
    assert second.stream_start == pytest.approx(50.0, abs=1.0)
    assert first.play_id != second.play_id
    ended_first = next(e for e in plays_in(events) if e.state == "ended" and e.play_id == first.play_id)
    assert ended_first.decided_offset >= 30.0 + PlayConfig().dropout_seconds - HOP  # decided once the gap has passed


@pytest.mark.parametrize("speed", [0.96, 1.0, 1.05])
@pytest.mark.parametrize("loss", ["dropouts", "gaps"])
def test_a_loss_of_any_length_up_to_the_dropout_keeps_one_play(speed: float, loss: str) -> None:
    """Talk-over, a noise burst, lost hits (`dropouts`), or seconds of the stream lost to a reconnect while the
    station played on (`gaps`): the airing resumes on its line and stays one play (one royalty), however long
    the loss, up to the dropout (the last support is half a window before the loss); a longer one ends it."""
    gap = PlayConfig().dropout_seconds
    for seconds in np.arange(0.5, gap - HOP, 1.5):
        _, events = run(broadcast(100, [Segment("track-8", 5.0, 95.0, ref_start=12.0, speed=speed)], seed=int(seconds * 2),
                                  **{loss: ((40.0, 40.0 + seconds),)}))
        (ended,) = plays(events)
        assert ended.stream_start == pytest.approx(5.0, abs=0.5) and ended.stream_end == pytest.approx(95.0, abs=0.6), seconds
        assert ended.speed == pytest.approx(speed, abs=0.01)
    for seconds in (gap + 1.0, gap + 4.0, gap + 20.0):
        _, events = run(broadcast(140, [Segment("track-8", 5.0, 135.0, ref_start=12.0, speed=speed)], **{loss: ((40.0, 40.0 + seconds),)}))
        first, second = plays(events)
        assert first.stream_end == pytest.approx(40.0, abs=1.0) and second.stream_start == pytest.approx(40.0 + seconds, abs=1.0)


@pytest.mark.parametrize("seconds", [1.0, 2.0, 3.0, 3.5, 4.0, 4.5])
def test_a_few_seconds_of_a_track_are_never_reported(seconds: float) -> None:
    """Non-catalog music quoting a catalog track, or talk, lands on a line for a few seconds: such a stretch,
    however strong, is no play; where it was heard as a provisional play, that is withdrawn."""
    for seed in range(3):
        _, events = run(broadcast(60, [Segment("track-11", 20.0, 20.0 + seconds, ref_start=40.0)], seed=seed))
        assert [e.kind for e in events] in ([], ["provisional", "withdrawn"])


def test_a_track_played_twice_in_a_row_is_two_plays() -> None:
    _, events = run(broadcast(130, [Segment("track-2", 5.0, 60.0), Segment("track-2", 60.0, 120.0)], seed=6))
    first, second = plays(events)
    assert first.stream_end == pytest.approx(60.0, abs=0.6) and second.stream_start == pytest.approx(60.0, abs=0.6)
    assert second.ref_start == pytest.approx(0.0, abs=0.6) and first.play_id != second.play_id


def test_a_track_played_again_after_talk_is_two_plays() -> None:
    _, events = run(broadcast(130, [Segment("track-2", 5.0, 55.0, ref_start=30.0), Segment("track-2", 62.0, 120.0)], seed=8))
    first, second = plays(events)
    assert first.stream_end == pytest.approx(55.0, abs=0.6) and second.stream_start == pytest.approx(62.0, abs=0.6)


@pytest.mark.parametrize("overlap", [2.0, 3.5, 5.0])
def test_a_crossfade_is_two_plays(overlap: float) -> None:
    _, events = run(broadcast(120, [Segment("track-4", 5.0, 55.0 + overlap, ref_start=20.0), Segment("track-9", 55.0, 110.0)], seed=int(overlap)))
    first, second = plays(events)
    assert (first.track_id, second.track_id) == ("track-4", "track-9")
    assert first.stream_end == pytest.approx(55.0 + overlap, abs=1.0) and second.stream_start == pytest.approx(55.0, abs=0.6)


@pytest.mark.parametrize("shift", [-24.0, 16.0, 150.0])
def test_a_track_that_repeats_itself_is_one_play_on_its_true_line(shift: float) -> None:
    """For its first seconds the track also matches itself `shift` seconds away (a loop, a reprise): the play
    may open on either line, but it is one play, and it ends on the line the track really follows."""
    for seed in range(3):
        _, events = run(broadcast(90, [Segment("track-13", 10.0, 80.0, ref_start=30.0, echo=(shift, 8.0))], seed=seed))
        (ended,) = plays(events)
        assert ended.stream_start == pytest.approx(10.0, abs=0.6) and ended.stream_end == pytest.approx(80.0, abs=0.6)
        assert ended.ref_start == pytest.approx(30.0, abs=0.6)


@pytest.mark.parametrize("speed", [0.93, 1.0, 1.1])
def test_a_reprise_at_the_end_of_a_track_keeps_the_plays_start_and_speed(speed: float) -> None:
    """The last seconds of a track repeat an earlier passage, so its windows find that passage instead, on a
    line a loop away; then the track ends. That line is the same airing: it must not move the play's start,
    position and speed, which 45 s of evidence measured, to those of its last seconds."""
    for seed in range(3):
        _, events = run(broadcast(120, [Segment("track-5", 0.0, 46.0), Segment("track-5", 46.0, 50.0, ref_start=39.8, speed=speed),
                                        Segment("track-12", 60.0, 110.0)], seed=seed))
        first, second = plays(events)
        assert (first.track_id, second.track_id) == ("track-5", "track-12")
        assert first.stream_start == pytest.approx(0.0, abs=0.3) and first.ref_start == pytest.approx(0.0, abs=0.6)
        assert first.speed == pytest.approx(1.0, abs=0.01) and first.stream_end == pytest.approx(50.0, abs=1.0)
        assert first.ref_end == pytest.approx(50.0, abs=1.0)  # on the measured alignment, not the reprise's


def test_a_play_following_a_reprise_round_trips_through_json() -> None:
    hits = broadcast(120, [Segment("track-5", 0.0, 46.0), Segment("track-5", 46.0, 60.0, ref_start=39.8, speed=0.93)])
    _, whole = run(hits)
    tracker = PlayTracker(PlayConfig(window_seconds=WINDOW, hop_seconds=HOP))
    state, events, followed = StreamState("radio"), [], False
    for h in hits:
        text = state.to_json()
        state = StreamState.from_json(text)
        assert state.to_json() == text
        state, new = tracker.update(state, h, CATALOG_INFO)
        events += new
        followed = followed or (state.play is not None and state.play.measured is not None)
    events += tracker.close(state, CATALOG_INFO)[1]
    assert followed and events == whole


def test_another_track_takes_over() -> None:
    _, events = run(broadcast(100, [Segment("track-1", 5.0, 45.0, ref_start=20), Segment("track-2", 45.0, 90.0, ref_start=30)]))
    assert [(e.state, e.track_id) for e in plays_in(events)] == [
        ("started", "track-1"), ("ended", "track-1"), ("started", "track-2"), ("ended", "track-2")]
    first, second = plays(events)
    assert first.stream_end == pytest.approx(45.0, abs=0.5)
    assert second.stream_start == pytest.approx(45.0, abs=0.5)
    assert events[2].decided_offset - 45.0 <= PlayConfig().min_play_seconds + 1.5


@pytest.mark.parametrize("seed", range(3))
def test_a_track_that_follows_another_is_heard_before_it_can_take_over(seed: int) -> None:
    """Back to back (a few seconds between, or none): the newcomer is announced provisionally once its run is
    sure and the ending play has fallen silent, while that play still holds the stream, and is confirmed under
    the same play id. In a crossfade the newcomer's run may span `min_play_seconds` by then: it starts at once."""
    takeover = PlayConfig().takeover_seconds
    for overlap in (-3.0, 0.0, 2.0):
        _, events = run(broadcast(110, [Segment("track-1", 5.0, 45.0 + overlap, ref_start=20), Segment("track-2", 45.0, 100.0, ref_start=30)],
                                  seed=seed))
        assert [(e.track_id, e.state) for e in plays_in(events)] == [
            ("track-1", "started"), ("track-1", "ended"), ("track-2", "started"), ("track-2", "ended")]
        first, *_ = notices = [e for e in events if e.track_id == "track-2"]
        assert first.decided_offset - max(45.0, 45.0 + overlap) <= takeover + 1.5, (overlap, notices)
        assert first.stream_start == pytest.approx(45.0, abs=0.6) and len({e.play_id for e in notices}) == 1
        if overlap <= 0:
            assert isinstance(first, ProvisionalEvent) and first.kind == "provisional", (overlap, notices)


@pytest.mark.parametrize("seconds", [2.5, 3.5, 4.5])
def test_a_newcomer_heard_during_a_dropout_of_the_play_is_withdrawn_and_the_play_stays_one(seconds: float) -> None:
    """Another track quoted for a few seconds while the play's own line is silent (a jingle over a noise
    burst): it may be announced, but it is withdrawn, and the airing stays one play."""
    for seed in range(3):
        airing = [Segment("track-1", 5.0, 36.0, ref_start=20), Segment("track-1", 48.0, 100.0, ref_start=63)]  # silent on its line 36-48 s
        _, events = run(broadcast(110, [*airing, Segment("track-11", 40.0, 40.0 + seconds, ref_start=60)], seed=seed))
        (ended,) = plays(events)
        assert ended.track_id == "track-1" and ended.stream_start == pytest.approx(5.0, abs=0.6) and ended.stream_end == pytest.approx(100.0, abs=0.6)
        assert [e.kind for e in events if isinstance(e, ProvisionalEvent) and e.track_id == "track-11"] == ["provisional", "withdrawn"]


def test_a_herald_round_trips_through_json_and_is_withdrawn_at_a_gap() -> None:
    hits = broadcast(90, [Segment("track-1", 5.0, 45.0, ref_start=20), Segment("track-2", 45.0, 90.0, ref_start=30)],
                     gaps=((49.0, 60.0),))
    tracker, state = PlayTracker(PlayConfig(window_seconds=WINDOW, hop_seconds=HOP)), StreamState("radio")
    for h in hits:
        if h.offset >= 49.0:
            break
        state, _ = tracker.update(state, h, CATALOG_INFO)
    assert state.herald is not None and state.herald.line.track_id == "track-2" and state.play is not None
    text = state.to_json()
    assert StreamState.from_json(text) == state and StreamState.from_json(text).to_json() == text
    older = {k: v for k, v in json.loads(text).items() if k != "herald"} | {"v": 3}  # saved by the previous release
    assert StreamState.from_json(json.dumps(older)) == replace(state, herald=None, history=())  # its hits lack their backgrounds
    closed, events = tracker.close(state, CATALOG_INFO)
    assert [(e.track_id, getattr(e, "state", None) or e.kind) for e in events] == [("track-1", "ended"), ("track-2", "withdrawn")]
    assert events[1].play_id == state.herald.play_id and closed.herald is None


def test_another_track_after_a_gap_ends_the_play_at_its_last_window_before_the_gap() -> None:
    _, events = run(broadcast(90, [Segment("track-4", 0.0, 37.0, ref_start=10), Segment("track-5", 37.0, 90.0, ref_start=20)],
                              gaps=((35.0, 40.0),)))
    first, second = plays(events)
    assert (first.track_id, second.track_id) == ("track-4", "track-5")
    assert first.stream_end == pytest.approx(35.0, abs=0.6) and second.stream_start >= 40.0


def test_stream_time_that_goes_back_at_a_gap_closes_the_play_there() -> None:
    """A new ingest run counts its stream time from 0 again: no line of the run before reaches into it."""
    before = broadcast(60, [Segment("track-4", 0.0, 60.0, ref_start=10)])
    again = broadcast(30, [Segment("track-4", 0.0, 30.0, ref_start=70)], seed=1)
    restarted = [replace(h, seq=len(before) + h.seq, after_gap=h.seq == 0) for h in again]
    _, events = run(before + restarted)
    first, second = plays(events)
    assert first.stream_end == pytest.approx(60.0, abs=0.6) and second.stream_start == pytest.approx(0.0, abs=0.5)
    second_heard = next(i for i, e in enumerate(events) if e.play_id == second.play_id)
    assert events.index(first) < second_heard  # ended at the gap, before the new run's play was heard


def test_a_version_1_state_carries_on_its_announced_play() -> None:
    """A worker of the previous release saved the state mid-play; that play was announced as it opened."""
    hits = broadcast(80, [Segment("track-5", 4.0, 60.0, ref_start=7)], seed=4)
    tracker, state = PlayTracker(PlayConfig(window_seconds=WINDOW, hop_seconds=HOP)), StreamState("radio")
    for h in hits[:60]:
        state, _ = tracker.update(state, h, CATALOG_INFO)
    saved = json.loads(state.to_json())
    saved["v"] = 1
    for field_name in ("first_support_offset", "published"):
        del saved["play"][field_name]
    state = StreamState.from_json(json.dumps(saved))
    assert state.play is not None and state.play.published
    events = []
    for h in hits[60:]:
        state, new = tracker.update(state, h, CATALOG_INFO)
        events += new
    events += tracker.close(state, CATALOG_INFO)[1]
    assert [e.state for e in events] == ["ended"] and events[0].stream_end == pytest.approx(60.0, abs=0.6)


def similar_catalog() -> CatalogInfo:
    """A catalog whose tracks resemble each other more (its null scores six times chance's): a line of a
    thinly heard track takes seconds to climb from the notice confidence to the sure one."""
    base = CATALOG_INFO.calibration
    return CatalogInfo(replace(base, null_scores=tuple(scores * 6 for scores in base.null_scores)), TRACKS.get)


def run_on(hits: list[WindowHits], config: PlayConfig, catalog: CatalogInfo) -> list[PlayNotice]:
    tracker, state, events = PlayTracker(config), StreamState(hits[0].stream_id), []
    for h in hits:
        state, new = tracker.update(state, h, catalog)
        events += new
    events += tracker.close(state, catalog)[1]
    assert_whole_lifecycles(events)
    return events


def test_a_play_can_be_noticed_before_it_is_sure_and_is_reported_as_when_notices_wait() -> None:
    """A play heard in 80 % of its windows: with notices at 0.99, its first event comes no later than when
    notices wait for the sure confidence (`notice_confidence` = `min_confidence`, the default), and sooner
    on some seeds; its started and ended events bound the same play; chance alone is never started."""
    catalog, sooner = similar_catalog(), []
    waiting = PlayConfig(window_seconds=WINDOW, hop_seconds=HOP, notice_confidence=PlayConfig.min_confidence)
    noticing = PlayConfig(window_seconds=WINDOW, hop_seconds=HOP, notice_confidence=0.99)
    for seed in range(3):
        hits = broadcast(90, [Segment("track-1", 5.0, 70.0, ref_start=30)], seed=seed, found=0.8)
        before, now = run_on(hits, waiting, catalog), run_on(hits, noticing, catalog)
        assert [(e.state, e.stream_start, e.stream_end) for e in plays_in(now)] == [(e.state, e.stream_start, e.stream_end) for e in plays_in(before)]
        assert now[0].decided_offset <= before[0].decided_offset
        sooner.append(now[0].decided_offset < before[0].decided_offset)
        assert not plays_in(run_on(broadcast(300, [], seed=seed), noticing, catalog))
    assert any(sooner)


def test_chance_neighbours_make_no_play() -> None:
    _, events = run(broadcast(120, [], seed=5))
    assert events == []


def test_ids_are_deterministic_and_replays_change_nothing() -> None:
    hits = broadcast(60, [Segment("track-9", 3.0, 50.0)], seed=3)
    _, once = run(hits)
    _, again = run(hits)
    assert [e.event_id for e in once] == [e.event_id for e in again]
    assert len({e.event_id for e in once}) == len(once) == 3  # provisional, started, ended
    tracker = PlayTracker(PlayConfig(window_seconds=WINDOW, hop_seconds=HOP))
    state, events = StreamState("radio"), []
    for h in hits[:40] + hits[30:]:  # a worker restarted and replays ten windows it had already seen
        state, new = tracker.update(state, h, CATALOG_INFO)
        events += new
    events += tracker.close(state, CATALOG_INFO)[1]
    assert events == once


def test_state_round_trips_through_json_mid_play() -> None:
    hits = broadcast(80, [Segment("track-5", 4.0, 60.0, ref_start=7, speed=1.04)], seed=4)
    _, whole = run(hits)
    tracker = PlayTracker(PlayConfig(window_seconds=WINDOW, hop_seconds=HOP))
    state, events = StreamState("radio"), []
    for i, h in enumerate(hits):
        if i % 17 == 0:
            text = state.to_json()
            state = StreamState.from_json(text)
            assert state.to_json() == text
        state, new = tracker.update(state, h, CATALOG_INFO)
        events += new
        if i == 60:
            assert state.play is not None  # the round trip happened mid-play
    events += tracker.close(state, CATALOG_INFO)[1]
    assert events == whole


def test_events_follow_the_published_schema() -> None:
    _, events = run(broadcast(75, [Segment("track-7", 3.0, 7.0, ref_start=30.0), Segment("track-2", 20.0, 55.0)]))
    assert [e.kind for e in events if isinstance(e, ProvisionalEvent)] == ["provisional", "withdrawn", "provisional"]
    validator = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())
    notices = jsonschema.Draft202012Validator(kinds_schema(), format_checker=jsonschema.FormatChecker())
    for event in events:
        (validator if isinstance(event, PlayEvent) else notices).validate(event.to_json())
        assert read_event(json.loads(event.to_line())) == event
    started = plays_in(events)[0]
    broken = {**started.to_json(), "stream_end": 12.0}  # a started event has no end yet
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


def test_chance_neighbours_on_the_line_do_not_carry_a_play_past_its_end() -> None:
    """In a small catalog every window's neighbours come from few tracks, so after a track ends one of them
    lands on its line now and then by chance, far below the similarity of the track itself."""
    rng = np.random.default_rng(7)
    hits = []
    for h in broadcast(90, [Segment("track-3", 10.0, 50.0, ref_start=20.0)], seed=1):
        if 50.0 <= h.offset < 60.0 and rng.random() < 0.3:  # within the tolerance of where the track would be
            near = round((20.0 + h.offset - 10.0) / REF_HOP) * REF_HOP + float(rng.choice([-REF_HOP, 0.0, REF_HOP]))
            chance = Neighbour("track-3", near, float(rng.uniform(0.45, 0.6)))
            h = WindowHits(h.stream_id, h.seq, h.offset, h.air_time, tuple(sorted((chance, *h.neighbours), key=lambda n: -n.similarity)), h.after_gap)
        hits.append(h)
    _, events = run(hits)
    (ended,) = plays(events)
    assert ended.stream_end == pytest.approx(50.0, abs=1.0)


class UngatedRuns(Runs):
    """The run search without its cheap pre-check: it asks the matcher at every window."""

    def worth_matching(self, state: StreamState) -> bool:
        return True


class UngatedTracker(PlayTracker):
    def __init__(self, config: PlayConfig):
        super().__init__(config)
        self.runs = UngatedRuns(config)


@pytest.mark.parametrize("seed", range(4))
def test_the_matcher_gate_hides_no_run(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gates only save work: with `Runs.worth_matching` and the matcher's score bound or without them,
    thinned-out plays at several speeds, dropouts, a crossfade and chance in between give the same events."""
    segments = [Segment("track-1", 2.0, 40.0, speed=0.85), Segment("track-2", 38.0, 80.0, ref_start=30.0, speed=1.2),
                Segment("track-3", 95.0, 130.0, speed=1.05)]
    hits = broadcast(160, segments, seed=seed, dropouts=((50.0, 58.0),), found=0.6)
    grid = PlayConfig(window_seconds=WINDOW, hop_seconds=HOP)
    _, gated = run(hits, PlayTracker(grid))
    monkeypatch.setattr(matcher, "score_bounds", lambda hits, _: {n.track_id: float("inf") for h in hits for n in h.neighbours})
    _, ungated = run(hits, UngatedTracker(grid))
    assert [e.to_json() for e in gated] == [e.to_json() for e in ungated]
    assert len(plays(gated)) >= 2
