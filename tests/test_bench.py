"""The benchmark on the shipped demo music: the landmark baseline, Pex-style scoring and montages, and the CLI."""

from __future__ import annotations

import csv
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

from catalog_fixtures import MUSIC
from encoders import load_audio, parse_chain
from monitor.bench.landmark import LandmarkIndex, LandmarkParams
from monitor.bench.queries import DECODE_RATE, catalog_queries, noncatalog_queries
from monitor.bench.references import read_references, reference_set
from monitor.bench.segments import PRESETS, Chunk, chunk_recall, generate, score_pair, summarise
from monitor.cli import main
from monitor.stages.matcher import Match

RATE = LandmarkParams().sample_rate


@pytest.fixture(scope="module")
def landmark_index() -> LandmarkIndex:
    return LandmarkIndex.build((p.stem, load_audio(p, RATE)) for p in sorted(MUSIC.glob("*.opus")))


def test_landmarks_find_a_noisy_excerpt_and_where_it_starts(landmark_index: LandmarkIndex) -> None:
    audio = load_audio(MUSIC / "over-theme.opus", RATE)
    excerpt = parse_chain("noise:10").apply(audio[20 * RATE : 25 * RATE], RATE, np.random.default_rng(0))
    best = landmark_index.identify(excerpt)[0]
    assert best.track_id == "over-theme"
    assert abs(best.ref_start - best.query_start - 20.0) < 0.05


def test_landmarks_match_nothing_in_noise(landmark_index: LandmarkIndex) -> None:
    noise = np.random.default_rng(1).standard_normal(10 * RATE).astype(np.float32) * 0.1
    assert landmark_index.identify(noise) == []


def _chunk(ref: tuple[float, float], query: tuple[float, float], rate: float = 1.0, track: str = "R1",
           modification: str = "clean", noise: float | None = None) -> Chunk:
    return Chunk("q", track, True, ref[0], ref[1], query[0], query[1], rate, modification, noise, "end")


def _match(ref: tuple[float, float], query: tuple[float, float], track: str = "R1") -> Match:
    return Match(track, query[0], query[1], ref[0], ref[1], 1.0, 1.0, 1.0)


def test_pair_score_follows_pex_example_1() -> None:
    """Pex's README: annotation ref 15-40 / query 20-45, match ref 30-45 / query 33-51 -> TP 10, FN 15, FP 6."""
    score = score_pair([_chunk((15, 40), (20, 45))], [_match((30, 45), (33, 51))])
    assert (score.tp, score.fn, score.fp) == (10, 15, 6)


def test_a_match_in_the_wrong_place_of_the_right_track_is_all_false() -> None:
    score = score_pair([_chunk((15, 40), (20, 45))], [_match((100, 125), (20, 45))])
    assert (score.tp, score.fp, score.fn) == (0, 25, 25)


def test_reference_seconds_count_at_the_chunk_rate() -> None:
    """A chunk sped up 1.25x covers 25 s of reference in 20 s of query: a perfect match has no excess."""
    score = score_pair([_chunk((0, 25), (0, 20), rate=1.25)], [_match((0, 25), (0, 20))])
    assert score.tp == pytest.approx(20) and score.fp == pytest.approx(0) and score.fn == pytest.approx(0)


def test_summary_counts_other_tracks_as_false_positives() -> None:
    chunks = {"q": [_chunk((0, 10), (0, 10))]}
    perfect = summarise(chunks, {"q": [_match((0, 10), (0, 10))]})
    assert (perfect.precision, perfect.recall, perfect.median_start_error) == (1.0, 1.0, 0.0)
    wrong = summarise(chunks, {"q": [_match((0, 10), (0, 10)), _match((0, 10), (0, 10), track="R2")]})
    assert wrong.precision == 0.5 and wrong.recall == 1.0 and wrong.pex_f < wrong.f1


def test_chunk_recall_tells_short_and_warped_chunks_from_the_rest() -> None:
    """A long clean chunk found whole, a 6 s chunk sped up 15 % found for 3 s of it, a filtered chunk under
    noise matched only at the wrong place of its track: each kind gets its own chunks and seconds."""
    chunks = {"q": [_chunk((30, 50), (0, 20), track="R1"),
                    _chunk((10, 16.9), (20, 26), rate=1.15, track="R2", modification="speed:1.150"),
                    _chunk((40, 52), (26, 38), track="R3", modification="highpass:300", noise=5.0)]}
    found = {"q": [_match((30, 50), (0, 20), track="R1"), _match((13.45, 16.9), (23, 26), track="R2"),
                   _match((80, 92), (26, 38), track="R3"), _match((40, 52), (26, 38), track="R1")]}
    kinds = chunk_recall(chunks, found)
    assert kinds["all"][:2] == (3, 2) and kinds["all"][2] == pytest.approx(23 / 38)
    assert kinds["shorter than 10 s"] == pytest.approx((1, 1, 0.5))
    assert kinds["tempo, pitch or speed beyond 10 %"] == pytest.approx((1, 1, 0.5))
    assert kinds["tempo, pitch or speed within 10 %"] == (0, 0, 0.0)
    assert kinds["high- or low-pass"] == kinds["noise 0-5 dB"] == (1, 0, 0.0)
    assert kinds["unmodified, no noise"] == (1, 1, 1.0)


def test_montages_hold_annotated_chunks_and_decode_to_their_length(tmp_path: Path) -> None:
    tracks = read_references(MUSIC)
    made = generate(tmp_path, tracks, {t.track_id for t in tracks[:4]}, PRESETS["medium"], queries=2, seed=3)
    for path, chunks in made:
        assert len(chunks) >= 3 and len({c.track_id for c in chunks}) == len(chunks)
        assert all(4.5 <= c.ref_end - c.ref_begin <= 30.5 for c in chunks)
        assert all(abs((c.query_end - c.query_begin) * c.rate - (c.ref_end - c.ref_begin)) < 0.1 for c in chunks)
        decoded = len(load_audio(path, 8000)) / 8000
        assert abs(decoded - chunks[-1].query_end) < 0.2  # MP3 adds at most a frame of padding
    with (tmp_path / "annotations.csv").open() as f:
        assert len(list(csv.DictReader(f))) == sum(len(c) for _, c in made)


def test_excerpts_come_from_a_tracks_sound_not_its_silence(tmp_path: Path) -> None:
    """Some game tracks are 20 s of music and a minute of digital silence: a query cut from the silence is one
    that no engine can answer, and a montage's chunk there is one that no engine can find."""
    music = load_audio(MUSIC / "over-theme.opus", DECODE_RATE)[20 * DECODE_RATE : 40 * DECODE_RATE]
    silence = np.zeros(60 * DECODE_RATE, np.float32)
    folder = tmp_path / "music"
    folder.mkdir()
    soundfile.write(folder / "mostly-silence.wav", np.concatenate([silence[: 3 * DECODE_RATE], music, silence]), DECODE_RATE)
    for path in sorted(MUSIC.glob("*.opus"))[:3]:
        shutil.copy(path, folder)
    tracks = read_references(folder)
    silent = [t for t in tracks if t.track_id == "mostly-silence"]
    sound = (3.0, 23.0)  # seconds; a 10 s query needs 11 s of it
    queries = list(catalog_queries(silent, ["clean"], 20, (3.0, 10.0), seed=0))
    assert len(queries) == 20 and all(sound[0] <= q.ref_start <= sound[1] - 11 for q in queries)
    held_out = [q for q in noncatalog_queries(silent, 20, (3.0, 10.0), seed=0) if q.kind == "held-out music"]
    assert len(held_out) == 20 and all(sound[0] <= q.ref_start <= sound[1] - 11 for q in held_out)
    made = generate(tmp_path / "montages", tracks, set(), PRESETS["hard"], queries=8, seed=1)
    chunks = [c for _, cs in made for c in cs if c.track_id == "mostly-silence"]
    assert chunks and all(sound[0] <= c.ref_begin and c.ref_end <= sound[1] for c in chunks)


def test_same_seed_same_montage(tmp_path: Path) -> None:
    tracks = read_references(MUSIC)
    first = generate(tmp_path / "a", tracks, set(), PRESETS["hard"], queries=1, seed=5)
    again = generate(tmp_path / "b", tracks, set(), PRESETS["hard"], queries=1, seed=5)
    assert first[0][1] == again[0][1]


def test_bench_tracks_and_segments_run_on_the_demo_music(tmp_path: Path, encoder_dir: Path) -> None:  # noqa: F811
    common = ["--reference", str(MUSIC), "--encoder", str(encoder_dir), "--holdout", "1", "--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "tracks.json"
    result = CliRunner().invoke(main, ["bench", "tracks", *common, "--queries", "2", "--row", "clean", "--row", "tempo:1.1",
                                       "--row", "babble:5", "--lengths", "3,10", "--negatives", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    tables = {t["title"]: t for t in json.loads(out.read_text())["tables"]}
    accuracy = tables["Track-level top-1 accuracy (%) by distortion and query length"]
    assert [row[0] for row in accuracy["rows"]][:3] == ["clean", "tempo:1.1", "babble:5"]
    assert "june" in accuracy["settings"]["babble"]  # the held-out voice talks in the babble rows
    targets = tables["Targets (issues 2, 3 and 13)"]
    assert [row[0] for row in targets["rows"]].count("10 s top-1, babble:5 (held-out talkers)") == 1
    landmark_clean_10s = accuracy["rows"][0][accuracy["columns"].index("landmark 10s")]
    assert landmark_clean_10s == "100.0"
    assert "False matches on non-catalog audio (% of queries with any match)" in tables
    assert "False matches on non-catalog audio, by the catalog track they named" in tables
    strict = tables["Top-1 / false matches (%) at stricter minimum confidences (identify --min-confidence)"]
    assert strict["columns"] == ["min confidence", f"{encoder_dir.name} 3s", f"{encoder_dir.name} 10s"]  # no landmark: no confidence
    top1 = [[float(cell.split(" / ")[0]) for cell in row[1:]] for row in strict["rows"]]
    overall = next(row for row in accuracy["rows"] if row[0] == "overall")
    assert top1[0] == [float(overall[accuracy["columns"].index(c)]) for c in strict["columns"][1:]]  # the default is the run's
    assert all(a >= b for before, after in zip(top1, top1[1:]) for a, b in zip(before, after))  # stricter never finds more

    out = tmp_path / "segments.json"
    result = CliRunner().invoke(main, ["bench", "segments", *common, "--preset", "easy", "--queries", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert {s["engine"] for s in written["summaries"]} == {encoder_dir.name, "landmark"}
    kinds = {k["engine"]: k for k in written["chunk_recall"]}
    assert kinds[encoder_dir.name]["all"]["chunks"] == sum(k["chunks"] for name, k in kinds[encoder_dir.name].items()
                                                            if name in ("shorter than 10 s", "10 s or longer"))
    assert "built: from cache" in result.output  # the catalogs of the first run were reused


def test_false_matches_are_listed_with_the_track_they_named_surest_first() -> None:
    from types import SimpleNamespace

    from monitor.bench.tracks import _named_table

    fields = ("engine", "row", "length", "track_id", "ref_start", "right", "ref_error", "top_track", "top_confidence")
    records = [
        ["a", "clean", 3.0, "dev/t1", 10.0, False, None, "dev/t2", 0.999],  # a catalog query's wrong answer: top-1's business
        ["a", "noise/brown", 3.0, None, 0.0, None, None, None, None],  # non-catalog, no match
        ["a", "noise/brown", 10.0, None, 0.0, None, None, "warmux/construction", 0.99132],
        ["a", "held-out music/clean", 10.0, "colobot/music006", 90.59, None, None, "hedgewars/Castle", 0.99948],
        ["b", "speech/clean", 3.0, None, 0.0, None, None, "pingus/pingus-1", 0.995],
    ]
    assert all(len(r) == len(fields) for r in records)
    table = _named_table(records, [SimpleNamespace(name="b"), SimpleNamespace(name="a")])
    assert table.rows == [
        ["b", "speech/clean", "3 s", "-", "pingus/pingus-1", "0.99500"],
        ["a", "held-out music/clean", "10 s", "colobot/music006 at 90.59 s", "hedgewars/Castle", "0.99948"],
        ["a", "noise/brown", "10 s", "-", "warmux/construction", "0.99132"],
    ]


def test_repeated_track_ids_keep_the_first_and_holdouts_leave_the_catalog(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    rows = [f"{p.stem},{p},50" for p in sorted(MUSIC.glob("*.opus"))]
    manifest.write_text("track_id,path,seconds\n" + "\n".join(rows + [rows[0].replace(",50", ",99")]) + "\n")
    refs = reference_set([str(manifest)], [str(MUSIC)], holdout=2)
    assert len(refs.queried) == 4 and len(refs.holdout) == 2 and refs.distractors == ()  # the folder repeats every id
    assert all(r.seconds == 50 for r in refs.queried + refs.holdout)
    assert not {r.track_id for r in refs.holdout} & {r.track_id for r in refs.catalog}


def test_bench_names_a_missing_or_empty_reference_set(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["bench", "tracks", "--reference", str(tmp_path / "nope.csv"), "--no-landmark"])
    assert result.exit_code == 2 and "not found" in result.output
    empty = tmp_path / "manifest.csv"
    empty.write_text("track_id,path,seconds\n")
    result = CliRunner().invoke(main, ["bench", "segments", "--reference", str(empty)])
    assert result.exit_code == 2 and "lists no audio tracks" in result.output


@pytest.mark.parametrize("row, said", [("noise:abc", "'abc' is not a number"), ("tempo:0", "tempo takes factor from 0.5 to 4")])
def test_a_bad_distortion_row_is_one_line_before_any_work(tmp_path: Path, row: str, said: str) -> None:
    result = CliRunner().invoke(main, ["bench", "tracks", "--reference", str(tmp_path / "nope.csv"), "--row", row])
    assert result.exit_code == 2 and "Invalid value for '--row'" in result.output and said in result.output
    assert result.exc_info[0] is SystemExit


def test_bench_compare_puts_every_engine_in_one_summary_row(tmp_path: Path, encoder_dir: Path) -> None:  # noqa: F811
    from encoders import load_encoder

    out = tmp_path / "compare.json"
    result = CliRunner().invoke(main, ["bench", "compare", "--reference", str(MUSIC), "--encoder", "compact", "--encoder",
                                       str(encoder_dir), "--holdout", "1", "--cache-dir", str(tmp_path / "cache"), "--queries", "2",
                                       "--row", "clean", "--lengths", "10", "--negatives", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())["tables"][0]
    rows = {row[0]: dict(zip(summary["columns"], row)) for row in summary["rows"]}
    assert list(rows) == ["compact", encoder_dir.name, "landmark"]
    assert rows["compact"]["parameters"] == f"{sum(p.numel() for p in load_encoder('compact').parameters()):,}"
    assert rows["compact"]["top-1 10s"] == rows["landmark"]["top-1 10s"] == "100.0"  # clean 10 s excerpts of the catalog
    assert rows["landmark"]["windows/CPU-s (1 core)"] == "-" and rows["landmark"]["parameters"] == "0"
    assert all(row["x real time (1 core)"] > 0 and row["index bytes per audio s"] > 0 for row in rows.values())


def test_broadcast_scoring_tells_fragments_from_phantoms() -> None:
    """A second play of one airing (paid twice) and a play of a track not on air are counted apart."""
    from monitor.bench.broadcast import _airing, _kind
    from monitor.demo.broadcast import TruePlay, score_plays
    from monitor.events import PlayEvent

    def ended(track: str, start: float, end: float) -> PlayEvent:
        return PlayEvent(f"00000000-0000-0000-0000-{int(start * 10):012d}", "ended", "s", track, start, start, 0.0, 1.0,
                         1.0, 1.0, end + 1.0, ended_at=end, stream_end=end, ref_end=end - start)

    truth = [TruePlay("a", 10.0, 60.0, 0.0, 50.0, 1.0), TruePlay("b", 60.0, 120.0, 0.0, 60.0, 1.0), TruePlay("c", 130.0, 170.0, 0.0, 40.0, 1.0)]
    events = [ended("a", 10.2, 35.0), ended("a", 44.0, 59.8), ended("b", 60.1, 119.5), ended("a", 125.0, 129.0), ended("c", 100.0, 104.0)]
    card = score_plays(truth, events)
    kinds = sorted((p.detected.stream_start if p.detected else p.truth.stream_start, _kind(p, truth)) for p in card.pairings)
    assert kinds == [(10.2, "matched"), (44.0, "fragment"), (60.1, "matched"), (100.0, "phantom"), (125.0, "phantom"), (130.0, "missed")]
    fragment = next(p for p in card.pairings if p.detected and p.detected.stream_start == 44.0)
    assert _airing(fragment, truth) == 0


def _manifest(path: Path, names: list[str]) -> Path:
    path.write_text("track_id,path\n" + "".join(f"{name},{MUSIC / name}.opus\n" for name in names))
    return path


def test_distractor_counts_grow_one_catalog_and_report_each_size(tmp_path: Path, encoder_dir: Path) -> None:  # noqa: F811
    from monitor.bench.engines import NeuralEngine
    from monitor.catalog import Catalog

    names = sorted(p.stem for p in MUSIC.glob("*.opus"))
    inputs = ["--reference", str(_manifest(tmp_path / "refs.csv", names[:3])), "--distractors",
              str(_manifest(tmp_path / "distractors.csv", names[3:])), "--encoder", str(encoder_dir), "--holdout", "1",
              "--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "growth.json"
    result = CliRunner().invoke(main, ["bench", "tracks", *inputs, "--distractor-counts", "all,0,2", "--queries", "1",
                                       "--row", "clean", "--lengths", "10", "--negatives", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    curve = written["tables"][0]
    column = {name: curve["columns"].index(name) for name in ("distractors", "catalog", "engine", "top-1 10s")}
    assert [(row[column["distractors"]], row[column["engine"]]) for row in curve["rows"]] == [
        (count, engine) for count in (0, 2, 3) for engine in (encoder_dir.name, "landmark")]
    assert [row[column["catalog"]].split(" tracks")[0] for row in curve["rows"][::2]] == ["2", "4", "5"]
    assert all(row[column["top-1 10s"]] == "100.0" for row in curve["rows"] if row[column["engine"]] == "landmark")
    index_bytes = [size["index_bytes"][encoder_dir.name] for size in written["sizes"]]
    assert index_bytes[0] < index_bytes[1] < index_bytes[2]
    assert written["tables"][1]["columns"][1:] == [f"{engine} 10s +{count}" for engine in (encoder_dir.name, "landmark") for count in (0, 2, 3)]
    assert {r[0] for r in written["per_query"]} == {0, 2, 3}

    grown = [Catalog.open(d) for d in (tmp_path / "cache").glob("catalog-*")]  # one per size, each grown from the one before
    assert sorted(c.stats()["tracks"] for c in grown) == [2, 4, 5]
    largest = max(grown, key=lambda c: c.stats()["tracks"])
    refs = reference_set([inputs[1]], [inputs[3]], holdout=1)
    fresh = NeuralEngine.open_or_build(str(encoder_dir), refs.catalog, tmp_path / "fresh", largest.stats()["hop_seconds"])
    assert {t.track_id for t in largest.tracks()} == fresh.track_ids
    assert largest.stats()["windows"] == fresh.catalog.stats()["windows"]


def test_two_benches_building_one_catalog_at_once_both_get_it(tmp_path: Path, encoder_dir: Path) -> None:  # noqa: F811
    """Two benches started together on one cache folder both build the catalog (each in a folder of its own:
    once, the second deleted the first's half-built one) and both use the one that lands."""
    import threading

    from monitor.bench.engines import NeuralEngine

    refs = read_references(str(_manifest(tmp_path / "refs.csv", ["over-theme", "gardien-go"])))
    cache, start, built, errors = tmp_path / "cache", threading.Barrier(2), [], []

    def bench() -> None:
        start.wait()
        try:
            built.append(NeuralEngine.open_or_build(str(encoder_dir), refs, cache, 0.5))
        except Exception as exc:  # noqa: BLE001 - the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=bench) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and [e.track_ids for e in built] == [{"over-theme", "gardien-go"}] * 2
    assert sorted(p.name.split("-")[0] for p in cache.iterdir()) == ["catalog"]


def test_distractor_counts_name_what_cannot_be_measured(tmp_path: Path) -> None:
    inputs = ["--reference", str(_manifest(tmp_path / "refs.csv", ["over-theme", "gardien-go"])), "--distractors",
              str(_manifest(tmp_path / "distractors.csv", ["area1-game"])), "--holdout", "1", "--no-landmark"]
    result = CliRunner().invoke(main, ["bench", "tracks", *inputs, "--distractor-counts", "1,many"])
    assert result.exit_code == 2 and "e.g. 100,300,all" in result.output
    result = CliRunner().invoke(main, ["bench", "tracks", *inputs, "--distractor-counts", "2"])
    assert result.exit_code == 2 and "2 distractors asked for, 1 given" in result.output


def test_bench_streams_reads_files_from_disk_and_over_http_alike(tmp_path: Path, encoder_dir: Path) -> None:  # noqa: F811
    """`bench streams --over-http` serves the files at the pace they play from another process, and the
    monitor reads them as it reads live streams; it monitors the same audio as reading them from disk."""
    import soundfile

    folder = tmp_path / "music"
    folder.mkdir()
    for name in ("area1-game", "over-theme"):
        soundfile.write(folder / f"{name}.wav", load_audio(MUSIC / f"{name}.opus", 22050)[: 8 * 22050], 22050)
    rows = {}
    for mode in ([], ["--over-http"]):
        out = tmp_path / f"streams{len(mode)}.json"
        result = CliRunner().invoke(main, ["bench", "streams", "--reference", str(folder), "--encoder", str(encoder_dir), "--streams", "3",
                                           "--cache-dir", str(tmp_path / "cache"), *mode, "--out", str(out)])
        assert result.exit_code == 0, result.output
        table = json.loads(out.read_text())["tables"][0]
        assert ("served over HTTP" in table["settings"]["streams"]) == bool(mode)
        rows[bool(mode)] = {row[0]: row[1] for row in table["rows"]}
    assert rows[True]["stream seconds monitored"] == rows[False]["stream seconds monitored"] > 0
    assert rows[True]["play events"] == rows[False]["play events"]


def test_bench_broadcast_notices_plays_at_the_notice_confidence_it_is_given(tmp_path: Path) -> None:
    """`bench broadcast --notice-confidence` is `monitor --notice-confidence`: a lower level notices the same
    plays no later and withdraws the notices that were wrong; the level is recorded with the results. `compact`:
    on this broadcast it notices a wrong line at 0.9, which the default `compact3` does not, and a level that
    withdraws nothing could not show that withdrawals are counted."""
    figures = {}
    for level in ("0.999", "0.9"):
        out = tmp_path / f"broadcast-{level}.json"
        result = CliRunner().invoke(main, ["bench", "broadcast", "--reference", str(MUSIC), "--holdout", "1", "--plays", "3", "--encoder", "compact",
                                           "--notice-confidence", level, "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
        assert result.exit_code == 0, result.output
        data = json.loads(out.read_text())
        summary = data["tables"][0]
        assert summary["settings"]["notice confidence"] == float(level)
        rows = {row[0]: row[1] for row in summary["rows"]}
        heard = {tuple(p["true"]): p["heard"] for p in data["pairings"] if p["kind"] == "matched"}
        figures[level] = heard, rows["provisional plays withdrawn per 400 true plays"]
    (strict, strict_withdrawn), (early, early_withdrawn) = figures["0.999"], figures["0.9"]
    assert strict.keys() == early.keys() and len(strict) == 3
    assert all(early[play] <= strict[play] for play in strict)
    assert early_withdrawn > strict_withdrawn == 0


def test_free_ports_are_drawn_below_the_ports_outgoing_connections_take() -> None:
    """A port bind(0) hands out is one the kernel also gives any process's outgoing connection, which could take it
    before the server meant for it binds it (a restarted worker of the short chaos run found its port taken)."""
    from monitor.bench import servers

    floor = servers._ephemeral_floor()
    ports = [servers.free_port() for _ in range(20)]
    assert all(servers.LOWEST_PORT <= port < floor for port in ports), (ports, floor)
    for port in ports:
        with socket.socket() as sock:
            sock.bind((servers.HOST, port))
