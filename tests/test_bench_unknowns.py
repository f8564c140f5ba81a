"""`airtrace bench unknowns`: its scoring on hand-built days and events, the day it composes from the shipped
music, and (slow) the whole benchmark at a tiny scale."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from catalog_fixtures import CATALOG_TRACKS, MUSIC
from encoders import load_audio, load_encoder, parse_chain
from monitor.bench.broadcast import PlayFigures, decoded, readable
from monitor.bench.references import read_references
from monitor.catalog import Catalog
from monitor.bench.unknowns import (Airing, DaySettings, DaySources, _talk_clips, cluster_truths, clusters,
                                    compose_day, found_share, not_in_catalog, piece_of, plan_day, purity, read_day, repeats,
                                    split_held_out)
from monitor.demo.broadcast import SAMPLE_RATE
from monitor.events import PlayEvent, UnknownEvent, unknown_id


def aired(station: str, kind: str, identity: str, start: float, end: float) -> Airing:
    return Airing(station, kind, identity, start, end, 0.0, end - start, 1.0, "clean")


def unknown(name: str, station: str, start: float, end: float, cluster: str | None = None, matched: str | None = None) -> UnknownEvent:
    return UnknownEvent(unknown_id(station, int(start)), station, start, end, start, end, end - start, end + 5.0,
                        cluster_id=cluster, matched_unknown_id=None if matched is None else _ids.get(matched, matched))


_ids: dict[str, str] = {}


def events_named(*specs: tuple) -> list[UnknownEvent]:
    """Unknown events from (name, station, start, end[, cluster, matched name]); names stand for unknown ids
    (a matched name never made stands for a stretch heard before)."""
    made = []
    for name, station, start, end, *rest in specs:
        event = unknown(name, station, start, end, *rest)
        _ids[name] = event.unknown_id
        made.append(event)
    return made


DAY = [
    aired("A", "jingle", "J", 50, 60), aired("A", "catalog", "t1", 60, 100),
    aired("A", "song", "X", 100, 200), aired("B", "song", "X", 300, 400), aired("A", "jingle", "J", 400, 410),
    aired("A", "song", "X", 600, 700), aired("A", "jingle", "J", 800, 810),
    aired("A", "song", "Y", 1000, 1100), aired("B", "song", "Y", 1200, 1300),
    aired("A", "music", "M", 1400, 1450), aired("B", "music", "N", 1400, 1460), aired("A", "jingle", "J", 1500, 1510),
    aired("B", "talk", "talk", 1460, 1480),
]


@pytest.fixture
def day_events() -> list[UnknownEvent]:
    return events_named(
        ("u1", "A", 98, 201), ("u2", "B", 301, 399, "c1", "u1"), ("u3", "A", 600, 700, "c1", "u2"),  # X: found at its 2nd airing
        ("v1", "A", 1000, 1100), ("v2", "B", 1200, 1300),  # Y: never clustered
        ("j1", "A", 50, 60), ("j2", "A", 400, 410), ("j3", "A", 800, 810, "c2", "j1"), ("j4", "A", 1500, 1510, "c2", "j3"),
        ("w1", "A", 1400, 1450), ("w2", "B", 1400, 1465, "c3", "w1"),  # two different pieces in one cluster
    )


def test_matched_chains_and_shared_ids_make_one_cluster(day_events: list[UnknownEvent]) -> None:
    cluster_of = clusters(day_events)
    assert {n: cluster_of.get(_ids[n]) for n in ("u1", "u2", "u3", "v1", "j1", "j2", "j4")} == {
        "u1": "c1", "u2": "c1", "u3": "c1", "v1": None, "j1": "c2", "j2": None, "j4": "c2"}
    # a stretch that only carries the cluster id (its match heard before this run) still joins by the id
    late = events_named(("u9", "B", 900, 990, "c1"))
    assert clusters([*day_events, *late])[_ids["u9"]] == "c1"


def test_songs_clustered_by_their_second_airing(day_events: list[UnknownEvent]) -> None:
    found = {r.identity: r for r in repeats(DAY, day_events)}
    assert (found["X"].found_at, found["X"].clustered) == (2, (True, True))
    assert (found["Y"].found_at, found["Y"].clustered) == (None, (False,))
    assert found_share([found["X"], found["Y"]], 2) == (1, 2)


def test_a_later_airing_clustered_without_the_first_counts_later() -> None:
    """X's 2nd airing matches nothing of the 1st (a cluster of its own with a third stretch): found at the 3rd."""
    events = events_named(("a1", "A", 100, 200), ("a2", "B", 300, 400, "c9", "elsewhere"), ("a3", "A", 600, 700, "c9", "a2"))
    assert repeats(DAY, events, ["song"])[0].found_at == 3


def test_an_event_covering_too_little_of_an_airing_does_not_stand_for_it() -> None:
    events = events_named(("b1", "A", 100, 200), ("b2", "B", 370, 420, "c5", "b1"))  # 30 s of a 100 s airing
    assert repeats(DAY, events, ["song"])[0].clustered[0] is False


def test_jingles_found_after_their_third_airing(day_events: list[UnknownEvent]) -> None:
    jingle = next(r for r in repeats(DAY, day_events) if r.kind == "jingle")
    assert jingle.found_at == 3
    assert found_share([jingle], 3) == (1, 1)
    assert found_share([jingle], 2) == (0, 1)


def test_purity_and_mixed_clusters(day_events: list[UnknownEvent]) -> None:
    truths = {t.cluster_id: t for t in cluster_truths(DAY, day_events)}
    assert truths["c1"].pieces == ("song:X",) * 3 and not truths["c1"].mixed
    assert truths["c3"].pieces == ("music:M", "music:N") and truths["c3"].mixed and not truths["c3"].repeated_content
    assert [t.cluster_id for t in truths.values() if t.mixed] == ["c3"]
    assert purity(list(truths.values())) == pytest.approx((3 + 3 + 1) / (3 + 3 + 2))
    assert purity([]) is None


def test_an_occurrence_is_the_music_it_overlaps_not_the_talk_beside_it() -> None:
    day = [aired("A", "talk", "talk", 0, 15), aired("A", "jingle", "J", 15, 25), aired("A", "talk", "talk", 40, 60),
           aired("A", "catalog", "t1", 25, 40)]
    events = events_named(("k1", "A", 2, 25), ("k2", "A", 41, 59), ("k3", "A", 30, 50))
    assert [piece_of(e, day).piece for e in events] == ["jingle:J", "talk:talk", "catalog:t1"]


def test_catalog_plays_are_scored_per_station_and_summed() -> None:
    def ended(station: str, track: str, start: float, end: float) -> PlayEvent:
        return PlayEvent(f"00000000-0000-0000-0000-{int(start * 10):012d}", "ended", station, track, start, start, 0.0, 1.0,
                         1.0, 1.0, start + 5.0, ended_at=end, stream_end=end, ref_end=end - start)

    truth = {"A": [aired("A", "catalog", "t1", 0, 60).true_play()], "B": [aired("B", "catalog", "t1", 100, 160).true_play()]}
    plays = {"A": [ended("A", "t1", 0.5, 59.0)], "B": [ended("B", "t1", 10.0, 20.0)]}  # B's play of t1 is not where B aired it
    figures = PlayFigures.summed([PlayFigures.of(truth[s], plays[s]) for s in "AB"])
    assert (figures.card.recall, figures.card.precision) == (0.5, 0.5)
    assert figures.kinds.count("phantom") == 1 and figures.detected == 2


def test_held_out_music_the_catalog_finds_is_not_aired_as_non_catalog(tmp_path: Path) -> None:
    """The same recording under another name would be a catalog play in truth: it is left out of the day."""
    catalog = Catalog.create(tmp_path / "catalog", load_encoder("compact"), encoder_source="compact")
    catalog.add([MUSIC / f"{name}.opus" for name in CATALOG_TRACKS], progress=False)
    refs = read_references(MUSIC)
    kept = {r.track_id for r in not_in_catalog(refs, catalog)}
    assert not kept & set(CATALOG_TRACKS)  # the catalog's own recordings (under their file names) are found
    assert "termigator_reg-zbb" in kept  # music the catalog holds nothing of stays


@pytest.fixture(scope="module")
def tiny_day(tmp_path_factory: pytest.TempPathFactory) -> tuple[DaySettings, list[list], list[Airing], Path]:
    """Two stations of 6 minutes from the six shipped excerpts: 2 repeated songs, a jingle each, 1 filler."""
    settings = DaySettings(stations=2, hours=0.1, songs=2, jingles=1, jingle_minutes=1.5, fill=1, seed=3)
    refs = readable(read_references(MUSIC))
    songs, jingles, fill = split_held_out(refs[:5], settings)
    talk = _talk_clips()
    pieces = plan_day(DaySources(refs[5:], songs, jingles, fill, talk), settings)
    directory = tmp_path_factory.mktemp("day")
    airings = compose_day(pieces, settings, directory, talk)
    return settings, pieces, airings, directory


def test_the_day_repeats_songs_and_jingles_between_catalog_tracks_and_talk(tiny_day) -> None:
    settings, pieces, airings, directory = tiny_day
    assert read_day(directory) == airings and (directory / 'station-2.mp3').is_file()
    counts = Counter(a.piece for a in airings)
    assert any(n >= 2 for p, n in counts.items() if p.startswith("song:")), counts
    assert all(n >= 3 for p, n in counts.items() if p.startswith("jingle:")) and sum(p.startswith("jingle:") for p in counts) == 2
    assert all(n == 1 for p, n in counts.items() if p.startswith("music:"))
    for station in ("station-1", "station-2"):
        mine = [a for a in airings if a.station == station]
        assert [a.stream_start for a in mine] == sorted(a.stream_start for a in mine)
        for before, this, after in zip(mine, mine[1:], mine[2:]):
            if this.kind in ("song", "jingle", "music"):
                assert {before.kind, after.kind} <= {"catalog", "talk"}, (before, this, after)
        assert all(a.piece.startswith(f"jingle:{station}/") for a in mine if a.kind == "jingle")  # each station its own
        assert all(a.source == a.identity for a in mine if a.kind in ("catalog", "song", "music"))
        assert mine[-1].stream_end >= 0.9 * settings.seconds  # the plan's clock is the warps' nominal length
    on_air = sorted(airings, key=lambda a: a.air_time)
    assert json.loads((directory / "day.json").read_text())["airings"][0]["air_time"].startswith("2026-12-01T00:00")
    assert on_air[-1].air_time - on_air[0].air_time < 86400.0


def _best_lag(heard: np.ndarray, source: np.ndarray, around: int, reach: int) -> tuple[int, float]:
    """(lag in samples, correlation) where `heard` best matches `source[around + lag:]`, |lag| <= reach."""
    segment = source[around - reach : around + reach + len(heard)]
    size = len(segment) + len(heard)
    products = np.fft.irfft(np.fft.rfft(segment, size) * np.conj(np.fft.rfft(heard, size)), size)[: 2 * reach + 1]
    best = int(np.argmax(products))
    shifted = segment[best : best + len(heard)]
    return best - reach, float(np.corrcoef(heard, shifted)[0, 1])


def test_the_day_places_each_piece_where_its_truth_says(tiny_day) -> None:
    """Airings not warped in time or pitch are found in the station's MP3 where the truth puts them: their
    source excerpt matches best there, give or take a compressor's few milliseconds of delay."""
    settings, pieces, airings, directory = tiny_day
    refs = {r.track_id: r for r in readable(read_references(MUSIC))}
    streams = {s: load_audio(directory / f"{s}.mp3", SAMPLE_RATE) for s in ("station-1", "station-2")}
    checked = 0
    for airing in airings:
        chain = parse_chain(airing.how.split()[0])
        if airing.kind not in ("catalog", "song", "jingle", "music") or any(step.name in ("tempo", "speed", "pitch") for step in chain.steps):
            continue
        inner = 2.0 if airing.kind == "jingle" else 6.0  # past any crossfade
        heard = streams[airing.station][int((airing.stream_start + inner) * SAMPLE_RATE) : int((airing.stream_end - inner) * SAMPLE_RATE)]
        lag, correlation = _best_lag(heard, decoded(refs[airing.source]), int((airing.ref_start + inner) * SAMPLE_RATE), SAMPLE_RATE // 4)
        assert abs(lag) <= 0.01 * SAMPLE_RATE and correlation > 0.5, (airing, lag, correlation)
        checked += 1
    assert checked >= 3 and any(a.kind == 'jingle' for a in airings)


@pytest.mark.slow
def test_bench_unknowns_end_to_end(tmp_path: Path) -> None:
    """The whole benchmark at a tiny scale (two stations of 6 minutes, two catalog tracks): catalog plays
    and unknown stretches are reported, every unknown event is placed on the day, every figure is there."""
    from click.testing import CliRunner

    from monitor.cli import main

    out = tmp_path / "unknowns.json"
    result = CliRunner().invoke(main, ["bench", "unknowns", "--reference", str(MUSIC), "--stations", "2", "--hours", "0.1",
                                       "--songs", "1", "--jingles", "1", "--jingle-minutes", "1.5", "--fill", "1", "--seed", "3",
                                       "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "repeated songs clustered by their 2nd airing" in result.output
    written = json.loads(out.read_text())
    figures = written["figures"]
    assert figures["recall"] >= 0.5 and figures["stream_seconds"] >= 2 * 0.9 * 360
    assert (figures["songs_eligible"], figures["jingles_eligible"]) == (1, 2)
    assert figures["unknown_events"] >= 1 and all(e["piece"] for e in written["unknown_events"])
    assert figures["purity"] is None or 0.0 < figures["purity"] <= 1.0
    assert 0 < figures["cpu_seconds"] and {p["station"] for p in written["play_pairings"]} == {"station-1", "station-2"}
