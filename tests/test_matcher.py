"""The matcher on synthetic hits, where the truth is exact: speeds, outliers, two songs, loops, chance."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest

from monitor.stages.calibration import NULL_DURATIONS, Calibration
from monitor.stages import matcher
from monitor.stages.matcher import SPEED_RANGE, TOLERANCE, Match, align, match_hits, score_bounds
from monitor.records import Neighbour, NeighbourTable, WindowHits
from monitor.stages.search import CONTRAST_RANK, backgrounds

HOP, WINDOW, REF_HOP, K = 0.5, 1.0, 0.5, 10
DISTRACTORS = [f"other-{i}" for i in range(40)]


@dataclass(frozen=True)
class Play:
    """`track` plays from query time `start` to `end`, from `ref_start` in the track, at `speed`."""

    track: str
    start: float
    end: float
    ref_start: float
    speed: float = 1.0
    similarity: float = 0.8


def query(seconds: float, plays: list[Play], seed: int = 0, misses: float = 0.0, loop: Play | None = None) -> list[WindowHits]:
    """Each window finds the reference window nearest its centre's true position (snapped to the reference
    hop) among chance neighbours; a fraction `misses` of windows find only chance; `loop` adds a second
    alignment of a track, as a passage that repeats in it."""
    rng = np.random.default_rng(seed)
    hits = []
    for seq in range(int((seconds - WINDOW) / HOP) + 1):
        t = seq * HOP
        neighbours = [Neighbour(str(rng.choice(DISTRACTORS)), float(rng.integers(0, 600)) * REF_HOP, float(rng.uniform(0.3, 0.6)))
                      for _ in range(K)]
        for play in plays + ([loop] if loop else []):
            centre = t + WINDOW / 2
            if play.start <= centre < play.end and rng.random() >= misses:
                ref_centre = play.ref_start + play.speed * (centre - play.start)
                ref = round((ref_centre - WINDOW / 2) / REF_HOP) * REF_HOP
                neighbours.append(Neighbour(play.track, ref, play.similarity + float(rng.uniform(-0.05, 0.05))))
        neighbours.sort(key=lambda n: -n.similarity)
        hits.append(WindowHits("test", seq, t, t, tuple(neighbours[:K])))
    return hits


@pytest.fixture(scope="module")
def calibration() -> Calibration:
    """Null scores of chance-only queries, as `null_calibration` measures them on a catalog: 150 per duration,
    so that the exponential tail is fitted to 15 (on 40, 3-7 of 100 chance queries matched at 0.99)."""
    scores = []
    for d, duration in enumerate(NULL_DURATIONS):
        samples = []
        for seed in range(150):
            lines = align(query(duration, [], seed=1000 * d + seed), WINDOW, SPEED_RANGE, TOLERANCE)
            samples.append(lines[0].score if lines else 0.0)
        scores.append(np.sort(samples))
    return Calibration(K, SPEED_RANGE, TOLERANCE, NULL_DURATIONS, tuple(scores))


def only(matches: list[Match]) -> Match:
    assert len(matches) == 1, matches
    return matches[0]


@pytest.mark.parametrize("seconds", [10.0, 30.0])
@pytest.mark.parametrize("speed", [0.8, 0.9, 1.0, 1.1, 1.25])
def test_a_sped_up_or_slowed_play_is_found_with_its_speed_and_offsets(speed: float, seconds: float, calibration: Calibration) -> None:
    hits = query(seconds, [Play("song", 0.0, seconds, 42.0, speed)], misses=0.3)
    match = only(match_hits(hits, WINDOW, calibration=calibration))
    assert match.track_id == "song"
    assert match.speed == pytest.approx(speed, abs=0.6 / seconds)  # references snap to a 0.5 s hop
    assert match.query_start <= 1.0 and match.query_end >= seconds - 1.0
    assert match.ref_start == pytest.approx(42.0 + speed * match.query_start, abs=0.5)
    assert match.ref_end == pytest.approx(42.0 + speed * match.query_end, abs=0.5)
    assert match.confidence > 0.99


def test_the_end_of_one_song_and_the_start_of_the_next_are_two_matches(calibration: Calibration) -> None:
    hits = query(20.0, [Play("first", 0.0, 8.0, 170.0), Play("second", 8.0, 20.0, 0.0, 1.05)])
    first, second = sorted(match_hits(hits, WINDOW, calibration=calibration), key=lambda m: m.query_start)
    assert (first.track_id, second.track_id) == ("first", "second")
    assert first.query_end == pytest.approx(8.0, abs=1.0)
    assert second.query_start == pytest.approx(8.0, abs=1.0)
    assert second.ref_start == pytest.approx(0.0, abs=0.5)
    assert second.speed == pytest.approx(1.05, abs=0.02)


@pytest.mark.parametrize("stray_at", [-1, 1])
def test_a_chance_hit_on_the_line_well_before_or_after_a_play_does_not_stretch_its_match(stray_at: int, calibration: Calibration) -> None:
    """In a 3-track catalog, `identify` on a mix gave a 20 s play as 0-33 s: one window of the next song, 12.5 s on,
    had a neighbour on the play's line. One or two such windows cut off by a long gap are left out of the span."""
    play = Play("song", 12.5, 32.5, 42.0, 1.02, similarity=0.95)
    hits = query(45.0, [play], seed=3)
    strays = [0, 1] if stray_at < 0 else [len(hits) - 2, len(hits) - 1]
    for seq in strays:
        centre = hits[seq].offset + WINDOW / 2
        on_line = Neighbour("song", round((play.ref_start + play.speed * (centre - play.start) - WINDOW / 2) / REF_HOP) * REF_HOP, 0.45)
        hits[seq] = replace(hits[seq], neighbours=(on_line, *hits[seq].neighbours[: K - 1]))
    match = only(match_hits(hits, WINDOW, calibration=calibration))
    assert match.query_start == pytest.approx(play.start - WINDOW / 2, abs=HOP) and match.query_end == pytest.approx(play.end + WINDOW / 2, abs=HOP)
    assert match.ref_start == pytest.approx(play.ref_start + play.speed * (match.query_start - play.start), abs=REF_HOP)


def test_a_line_whose_gap_another_alignment_of_its_track_fills_keeps_its_ends(calibration: Calibration) -> None:
    """A loop: the track's other alignment takes the windows in the middle of the played one, whose first two windows
    are then 19 s from the rest of its line, and still its own (seen on the montages: 20 s of a chunk lost)."""
    played = [Play("song", 0.0, 1.5, 42.0), Play("song", 20.0, 30.0, 62.0)]  # one alignment, its middle heard at another
    hits = query(30.0, played, seed=5, loop=Play("song", 1.5, 20.0, 142.0))
    matches = match_hits(hits, WINDOW, calibration=calibration)
    (loop,) = [m for m in matches if m.ref_start > 100.0]
    (main,) = [m for m in matches if m is not loop]
    assert loop.query_start < 2.0 and loop.query_end > 19.0  # it holds the middle
    assert (main.query_start, main.query_end) == (0.0, pytest.approx(30.0, abs=HOP)) and main.ref_start == pytest.approx(42.0, abs=REF_HOP)


def test_a_repeated_passage_does_not_pull_the_match_off_the_played_alignment(calibration: Calibration) -> None:
    played = Play("looped", 0.0, 12.0, 30.0)
    repeat = Play("looped", 0.0, 12.0, 62.0, similarity=0.78)  # the same bars again 32 s later
    hits = query(12.0, [played], loop=repeat, seed=3)
    match = only(match_hits(hits, WINDOW, calibration=calibration))
    assert match.ref_start == pytest.approx(30.0 + match.query_start, abs=0.5)


def test_the_loop_with_more_support_wins_even_when_it_comes_second(calibration: Calibration) -> None:
    truth = Play("looped", 0.0, 12.0, 90.0)
    partial = Play("looped", 0.0, 12.0, 10.0, similarity=0.9)
    hits = query(12.0, [truth], loop=partial, seed=5)
    thinned = [h if h.seq % 3 == 0 else WindowHits(h.stream_id, h.seq, h.offset, h.air_time,
               tuple(n for n in h.neighbours if not (n.track_id == "looped" and n.ref_time < 40))) for h in hits]
    match = only(match_hits(thinned, WINDOW, calibration=calibration))
    assert match.ref_start == pytest.approx(90.0 + match.query_start, abs=0.5)


def test_a_long_query_has_lines_for_every_track_it_holds(calibration: Calibration) -> None:
    """A montage or a recorded hour holds many tracks, and each track's loops take lines of their own: a short
    play late in a long query must not be crowded out of the lines the matcher refines."""
    songs = [Play(f"song-{i}", 20.0 * i, 20.0 * i + 20, 30.0) for i in range(5)]
    loops = [Play(p.track, p.start, p.end, p.ref_start + shift) for p in songs for shift in (40.0, 80.0)]
    jingle = Play("jingle", 100.0, 108.0, 10.0)
    hits = query(110.0, songs + loops + [jingle], seed=4)
    found = sorted(match_hits(hits, WINDOW, calibration=calibration), key=lambda m: m.query_start)
    assert [m.track_id for m in found] == [p.track for p in songs] + ["jingle"]
    for match, play in zip(found, songs + [jingle]):
        assert match.query_start == pytest.approx(play.start, abs=1.0) and match.query_end == pytest.approx(play.end, abs=1.0)
        assert match.confidence > 0.99


def test_a_long_query_gives_every_airing_of_a_track_aired_again_and_again(calibration: Calibration) -> None:
    """A recorded hour holds a station's rotation: the same songs, each aired many times. Each airing is a
    line of its own; the matcher considered 3 lines a track, so it gave 3 airings of each and dropped the rest."""
    airings = [Play(f"song-{i % 2}", 25.0 * i, 25.0 * i + 20, 30.0) for i in range(10)]
    hits = query(250.0, airings, seed=5)
    found = sorted(match_hits(hits, WINDOW, calibration=calibration), key=lambda m: m.query_start)
    assert [m.track_id for m in found] == [p.track for p in airings]
    for match, play in zip(found, airings):
        assert match.query_start == pytest.approx(play.start, abs=1.0) and match.ref_start == pytest.approx(play.ref_start, abs=1.0)


def test_a_short_play_gets_a_line_beside_looping_ones_that_stand_far_above_their_background() -> None:
    """A window of looping music finds its track at every repeat at once, and each repeat votes for lines at
    every speed; weighed above their windows' backgrounds, those votes dwarf a short play's. In `bench
    segments` the cells of a montage's three longest chunks filled every cell the matcher looked at, and a
    17 s chunk matched at confidence 1.0 on its own got no line. Each track now has cells of its own."""
    rng, long_play, period, hits = np.random.default_rng(0), 28.0, 8.0, []
    for seq in range(int((3 * long_play + 11.0 - WINDOW) / HOP) + 1):
        t = seq * HOP
        centre = t + WINDOW / 2
        if centre < 3 * long_play:  # every repeat of the looping passage is as near
            found = [Neighbour(f"loop-{int(centre // long_play)}", centre % period + period * r, 0.9) for r in range(K)]
        else:
            found = [Neighbour("short", 10.0 + centre - 3 * long_play, 0.7)] + [
                Neighbour(str(rng.choice(DISTRACTORS)), float(rng.integers(0, 600)) * REF_HOP, float(rng.uniform(0.3, 0.6))) for _ in range(K - 1)]
        hits.append(WindowHits("test", seq, t, t, tuple(found), background=0.6))
    short = next(line for line in align(hits, WINDOW, max_lines=4 * matcher.MAX_LINES) if line.track_id == "short")
    assert hits[int(short.windows[0])].offset == pytest.approx(3 * long_play, abs=1.0) and len(short.windows) >= 18


def test_a_long_play_is_one_match_at_its_speed(calibration: Calibration) -> None:
    """Sure on its best stretch of the longest null duration, reported whole."""
    play = Play("song", 5.0, 95.0, 12.0, speed=1.1)
    found = only(match_hits(query(100.0, [play], misses=0.3, seed=6), WINDOW, calibration=calibration))
    assert (found.query_start, found.query_end) == (pytest.approx(5.0, abs=1.0), pytest.approx(95.0, abs=1.0))
    assert found.speed == pytest.approx(1.1, abs=0.01)
    assert found.ref_start == pytest.approx(12.0 + 1.1 * (found.query_start - 5.0), abs=0.5)


@pytest.mark.parametrize("seconds", [3.0, 10.0, 30.0, 120.0])
def test_chance_hits_give_no_match(seconds: float, calibration: Calibration) -> None:
    false = sum(bool(match_hits(query(seconds, [], seed=500 + s), WINDOW, calibration=calibration)) for s in range(30))
    assert false <= 1


def test_a_short_query_matches_when_it_stands_out(calibration: Calibration) -> None:
    match = only(match_hits(query(3.0, [Play("song", 0.0, 3.0, 20.0, similarity=0.95)]), WINDOW, calibration=calibration))
    assert match.speed == 1.0  # too short to tell speeds apart: the vote's tie goes to 1
    assert match.ref_start == pytest.approx(20.0, abs=0.5)


def test_no_hits_no_matches(calibration: Calibration) -> None:
    assert match_hits([], WINDOW, calibration=calibration) == []
    empty = [WindowHits("test", i, i * HOP, i * HOP, ()) for i in range(5)]
    assert match_hits(empty, WINDOW, calibration=calibration) == []


def test_confidence_falls_with_false_match_rate_and_is_stable_across_json(calibration: Calibration) -> None:
    scores = np.linspace(0, 10, 50)
    rates = [calibration.false_match_rate(s, 10.0) for s in scores]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert rates[0] == 1.0 and rates[-1] < 1e-3
    again = Calibration.from_json(calibration.to_json())
    assert again.confidence(3.0, 7.0) == pytest.approx(calibration.confidence(3.0, 7.0), rel=1e-4)


def test_a_query_longer_than_the_longest_null_has_a_try_per_stretch_of_it(calibration: Calibration) -> None:
    """A long query is scored by its best stretch of the longest null duration, and chance had one try at
    that score per such stretch: the false-match rate of a query n stretches long is n times the stretch's."""
    longest = calibration.durations[-1]
    for score in np.linspace(0.5, 2.0, 7):
        once = calibration.false_match_rate(score, longest)
        for stretches in (1.5, 4.0, 30.0):
            assert calibration.false_match_rate(score, stretches * longest) == pytest.approx(min(1.0, stretches * once), rel=1e-9)


def test_match_json_has_the_stable_fields() -> None:
    match = Match("t", 0.0, 10.0, 5.0, 15.5, 1.0, 9.123456, 0.99999)
    assert list(match.to_json()) == ["track_id", "query_start", "query_end", "ref_start", "ref_end", "speed", "score", "confidence"]


def bound_cases() -> list[list[WindowHits]]:
    """Stretches of 1-12 s of chance alone, faint plays, plays at the ends of the speed range, two songs
    and loops: where the bound is loose and where a line takes the best hit of nearly every window."""
    cases = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        speed = float(rng.choice([0.8, 0.9, 1.0, 1.1, 1.25]))
        similarity = float(rng.uniform(0.45, 0.9))
        plays = [Play("song", 0.0, 30.0, 40.0, speed, similarity), Play("next", 9.0, 30.0, 0.0, 1.0, similarity)]
        loop = Play("song", 0.0, 30.0, 52.0, speed, similarity) if seed % 3 == 0 else None
        hits = query(30.0, plays if seed % 4 else [], seed=seed, misses=float(rng.uniform(0.0, 0.6)), loop=loop)
        for size in (1, 2, 4, 6, 12, 24):
            cases += [hits[begin : begin + size] for begin in range(0, len(hits) - size + 1, 5)]
    return cases


def test_no_line_scores_above_its_tracks_bound() -> None:
    """`score_bounds` is what lets `match_hits` skip lines and whole alignments: it must hold for every line `align` finds."""
    for hits in bound_cases():
        bounds = score_bounds(hits, WINDOW)
        for line in align(hits, WINDOW, SPEED_RANGE, TOLERANCE):
            assert line.score <= bounds[line.track_id]


def no_bounds(hits: list[WindowHits], window_seconds: float) -> dict[str, float]:
    """Bounds that spare nothing: every line of every track aligned."""
    return {n.track_id: float("inf") for h in hits for n in h.neighbours}


@pytest.mark.parametrize("min_confidence", [0.0, 0.9, 0.99, 0.999])
def test_skipping_hopeless_queries_changes_no_match(min_confidence: float, calibration: Calibration, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the bounds and without them (every line of every query aligned), the same matches; and some
    queries are skipped whole, and in others some tracks' lines."""
    cases = bound_cases()
    with_bound = [match_hits(hits, WINDOW, calibration=calibration, min_confidence=min_confidence) for hits in cases]
    spared = [(sum(calibration.confidence(bound, hits[-1].offset - hits[0].offset + WINDOW) < min_confidence for bound in bounds), len(bounds))
              for hits in cases if (bounds := score_bounds(hits, WINDOW).values())]
    skipped, partly = sum(none == all for none, all in spared), sum(0 < none < all for none, all in spared)
    monkeypatch.setattr(matcher, "score_bounds", no_bounds)
    without = [match_hits(hits, WINDOW, calibration=calibration, min_confidence=min_confidence) for hits in cases]
    assert with_bound == without
    assert any(with_bound)
    assert min_confidence == 0.0 or (skipped > 0 and partly > 0)


def table(rows: list[list[Neighbour]]) -> NeighbourTable:
    """Neighbour rows as a search's table, padded with -1 tracks where a row found fewer."""
    names = sorted({n.track_id for row in rows for n in row})
    width = max(map(len, rows))
    tracks, times, sims = np.full((len(rows), width), -1), np.zeros((len(rows), width)), np.zeros((len(rows), width), np.float32)
    for r, row in enumerate(rows):
        tracks[r, : len(row)] = [names.index(n.track_id) for n in row]
        times[r, : len(row)], sims[r, : len(row)] = [n.ref_time for n in row], [n.similarity for n in row]
    return NeighbourTable(tracks, times, sims, np.array(names, dtype=object))


def test_a_windows_background_is_its_contrast_rank_th_neighbour_beside_its_nearest_track() -> None:
    # similarities a search returns: float32
    own = [Neighbour("loop", float(i), float(np.float32(0.95 - 0.01 * i))) for i in range(10)]  # a track's windows are near each other
    others = [Neighbour(f"t{i}", float(i), float(np.float32(0.8 - 0.01 * i))) for i in range(CONTRAST_RANK + 5)]
    rows = [sorted(own + others, key=lambda n: -n.similarity), sorted(own + others[:5], key=lambda n: -n.similarity), own]  # a small catalog, a tiny one
    found = table(rows)
    expected = [others[CONTRAST_RANK - 1].similarity, others[4].similarity, 0.0]
    np.testing.assert_array_equal(backgrounds(found), np.float32(expected))
    assert found.rows() == [tuple(row) for row in rows] and found.rows(3) == [tuple(row[:3]) for row in rows]
    # leaving out two other tracks instead (as the calibration's null does its excerpt's own): the loop counts
    left_out = found.of_tracks({"t0", "t1"})
    expected = [others[2 + CONTRAST_RANK - len(own) - 1].similarity, others[4].similarity, own[-1].similarity]
    np.testing.assert_array_equal(backgrounds(found, left_out), np.float32(expected))


def test_hits_count_what_they_stand_out_above_their_windows_background(calibration: Calibration) -> None:
    hits = query(10.0, [Play("song", 0.0, 10.0, 20.0)])
    behind = [replace(h, background=0.3) for h in hits]
    lowered = [replace(h, neighbours=tuple(replace(n, similarity=n.similarity - 0.3) for n in h.neighbours)) for h in hits]
    (line, *_), (same, *_) = align(behind, WINDOW), align(lowered, WINDOW)
    assert (line.track_id, line.score) == (same.track_id, pytest.approx(same.score, rel=1e-9))
    assert score_bounds(behind, WINDOW)["song"] == pytest.approx(score_bounds(lowered, WINDOW)["song"], rel=1e-9)
    short = hits[:5]  # 3 s: confidences short of certainty
    sure, less_sure = (only(match_hits(h, WINDOW, calibration=calibration, min_confidence=0.0)).confidence for h in (short, behind[:5]))
    assert less_sure < sure < 1.0
