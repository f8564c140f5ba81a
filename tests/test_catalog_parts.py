"""Parallel catalog builds: parts written apart and merged give the catalog one `catalog add` gives."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile
from click.testing import CliRunner

from catalog_fixtures import CATALOG_TRACKS, MUSIC, SAMPLE_RATE, music
from encoders import load_encoder
from monitor.catalog import catalog as catalog_module
from monitor.catalog import sources, store
from monitor.catalog import AddReport, Catalog, CatalogError
from monitor.catalog.parts import PARTS_DIR, PartPlan, merge_parts, parse_part, write_part
from monitor.cli import main
from monitor.catalog.index import VectorIndex

F16_TOLERANCE = 2.0 ** -10  # two float16 steps of a unit vector's components (< 1): float32 noise may round either way


@pytest.fixture
def references(tmp_path: Path) -> list[Path]:
    """Catalog tracks, a copy of one under another id, an unreadable file and an id given twice."""
    folder = tmp_path / "refs"
    folder.mkdir()
    for name in CATALOG_TRACKS:
        shutil.copy(MUSIC / f"{name}.opus", folder / f"{name}.opus")
    shutil.copy(MUSIC / f"{CATALOG_TRACKS[0]}.opus", folder / "zz-copy.opus")
    (folder / "broken.mp3").write_bytes(b"not audio")
    shutil.copy(MUSIC / "area3-game.opus", tmp_path / f"{CATALOG_TRACKS[1]}.opus")  # other audio, same id as a folder track
    return [folder, tmp_path / f"{CATALOG_TRACKS[1]}.opus", tmp_path / "missing.wav"]


def shard_rows(catalog: Catalog) -> tuple[np.ndarray, np.ndarray]:
    """Every indexed window's id and float16 embedding, sorted by id."""
    parts = [store.read_shard(catalog.directory, name) for name in catalog._shards]
    vectors, ids = np.concatenate([v for v, _ in parts]), np.concatenate([i for _, i in parts])
    order = np.argsort(ids)
    return ids[order], vectors[order]


def assert_same_catalog(one: Catalog, other: Catalog) -> None:
    assert one.tracks() == other.tracks() and one._ords == other._ords
    ids, vectors = shard_rows(one)
    other_ids, other_vectors = shard_rows(other)
    np.testing.assert_array_equal(ids, other_ids)
    np.testing.assert_allclose(vectors, other_vectors, rtol=0, atol=F16_TOLERANCE)
    assert [(q.source, q.reversed) for q in one.null_queries()] == [(q.source, q.reversed) for q in other.null_queries()]
    for query, other_query in zip(one.null_queries(), other.null_queries()):
        np.testing.assert_allclose(query.vectors, other_query.vectors, rtol=0, atol=F16_TOLERANCE)
    sr = one.encoder.sample_rate
    for name in CATALOG_TRACKS:
        queries = one.encoder.embed(one.grid.cut(music(name)[10 * sr : 14 * sr]).copy())
        found, other_found = one.search(queries, k=3), other.search(queries, k=3)
        assert [[(n.track_id, n.ref_time) for n in row] for row in found] == [[(n.track_id, n.ref_time) for n in row] for row in other_found]
        assert all(n.similarity == pytest.approx(m.similarity, abs=4 * F16_TOLERANCE) for row, other_row in zip(found, other_found)
                   for n, m in zip(row, other_row))


def index_loaded(*args: object) -> None:
    raise AssertionError("the index was loaded")


def single_add(tmp_path: Path, encoder_dir: Path, references: list[Path]) -> tuple[Catalog, AddReport]:
    catalog = Catalog.create(tmp_path / "single", load_encoder(encoder_dir), encoder_source=str(encoder_dir))
    return catalog, catalog.add(references, progress=False)


def test_three_parts_merged_give_the_catalog_one_add_gives(tmp_path: Path, encoder_dir: Path, references: list[Path]) -> None:
    single, expected = single_add(tmp_path, encoder_dir, references)
    assert expected.added == ["area1-game", "area2-game", "over-theme"] and expected.duplicates == [(str(references[0] / "zz-copy.opus"), "area1-game")]
    assert [Path(p).name for p, _ in expected.skipped] == ["missing.wav", "broken.mp3", "area2-game.opus"]

    directory = tmp_path / "parallel"  # no catalog yet: the parts use the given encoder, the merge creates it
    for part in range(3):
        write_part(directory, references, part, 3, str(encoder_dir), progress=False)
    assert not (directory / store.CONFIG_FILE).exists()
    merged, report = merge_parts(directory, references, 3, str(encoder_dir), progress=False)
    assert (report.added, report.skipped, report.duplicates) == (expected.added, expected.skipped, expected.duplicates)
    assert merged.generation == 1 and not (directory / PARTS_DIR).exists()
    assert_same_catalog(single, merged)
    assert_same_catalog(single, Catalog.open(directory))


def test_parts_of_an_existing_catalog_skip_its_ids_and_its_audio(tmp_path: Path, encoder_dir: Path, references: list[Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = Catalog.create(tmp_path / "catalog", load_encoder(encoder_dir), encoder_source=str(encoder_dir))
    catalog.add([MUSIC / f"{CATALOG_TRACKS[0]}.opus"], progress=False)
    reader = Catalog.open(catalog.directory)  # a worker: picks the merged generation up without a restart
    with monkeypatch.context() as patch:
        patch.setattr(VectorIndex, "load", index_loaded)  # a part reads the tracks, not a worker-sized index
        for part in range(2):
            write_part(catalog.directory, references, part, 2, progress=False)
    plan = PartPlan(catalog.directory, sources.expand_sources(references, AddReport()), 2)
    (plan.folder / ".part-0001-of-0002-crashed").mkdir()  # what a killed pod leaves: removed with the build
    (plan.folder / "notes.txt").write_text("not the catalog's: kept")
    _, report = merge_parts(catalog.directory, references, 2, progress=False)
    assert sorted(p.name for p in plan.folder.iterdir()) == ["notes.txt"]
    assert report.added == list(CATALOG_TRACKS[1:])
    assert report.duplicates == [(str(references[0] / "zz-copy.opus"), CATALOG_TRACKS[0])]
    assert any(Path(p).name == f"{CATALOG_TRACKS[0]}.opus" and "already in the catalog" in why for p, why in report.skipped)
    assert reader.reload_if_changed() and [t.track_id for t in reader.tracks()] == list(CATALOG_TRACKS)


def test_a_missing_or_damaged_part_is_named_and_nothing_is_committed(tmp_path: Path, encoder_dir: Path, references: list[Path]) -> None:
    catalog = Catalog.create(tmp_path / "catalog", load_encoder(encoder_dir), encoder_source=str(encoder_dir))
    catalog.add([MUSIC / "gardien-go.opus"], progress=False)
    before = sorted(p.name for p in catalog.directory.rglob("*") if PARTS_DIR not in p.parts)
    for part in (0, 2):
        write_part(catalog.directory, references, part, 3, progress=False)
    with pytest.raises(CatalogError, match="part-0001-of-0003"):
        merge_parts(catalog.directory, references, 3, progress=False)
    write_part(catalog.directory, references, 1, 3, progress=False)
    plan = PartPlan(catalog.directory, sources.expand_sources(references, AddReport()), 3)
    vectors = plan.part_dir(2) / "vectors.f16"
    vectors.write_bytes(vectors.read_bytes()[:-2])
    with pytest.raises(CatalogError, match="part-0002-of-0003.*truncated"):
        merge_parts(catalog.directory, references, 3, progress=False)
    with pytest.raises(CatalogError, match="part-0000-of-0002"):  # parts of another build (N) never mix in
        merge_parts(catalog.directory, references, 2, progress=False)
    assert sorted(p.name for p in catalog.directory.rglob("*") if PARTS_DIR not in p.parts) == before
    reopened = Catalog.open(catalog.directory)
    assert reopened.generation == 1 and [t.track_id for t in reopened.tracks()] == ["gardien-go"]


def test_a_part_that_fills_the_disk_is_one_line_and_leaves_nothing_half_written(tmp_path: Path, encoder_dir: Path, references: list[Path],
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while a part wrote its embeddings ended `--part` (and each `--jobs` process) with an OSError
    traceback, and the half-written part stayed, holding the space a retry needed."""
    from monitor.catalog import parts as parts_module

    real_entry = parts_module._embed_entry

    def disk_full_after_one(*args: object) -> dict:
        entry = real_entry(*args)
        monkeypatch.setattr(parts_module, "_embed_entry", lambda *_: (_ for _ in ()).throw(OSError(28, "No space left on device")))
        return entry

    monkeypatch.setattr(parts_module, "_embed_entry", disk_full_after_one)
    with pytest.raises(CatalogError, match=r"part 0/2 .*No space left on device.*run the part again"):
        write_part(tmp_path / "catalog", references, 0, 2, str(encoder_dir), progress=False)
    assert not [p for p in (tmp_path / "catalog").rglob("*") if p.name.startswith((".part-", "part-"))]


@pytest.mark.parametrize("text", ["3/3", "1", "a/b", "-1/2"])
def test_a_bad_part_is_refused(text: str) -> None:
    with pytest.raises(CatalogError, match="part"):
        parse_part(text)


def test_catalog_add_jobs_runs_processes_and_commits_one_generation(tmp_path: Path, encoder_dir: Path, references: list[Path]) -> None:
    single, expected = single_add(tmp_path, encoder_dir, references)
    result = CliRunner().invoke(main, ["catalog", "add", "--catalog", str(tmp_path / "jobs"), "--encoder", str(encoder_dir), "--jobs", "2",
                                       *map(str, references)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == expected.summary()
    assert f"duplicate {references[0] / 'zz-copy.opus'}: the same audio is already area1-game" in result.stderr
    parallel = Catalog.open(tmp_path / "jobs")
    assert parallel.generation == 1
    assert_same_catalog(single, parallel)


def test_a_copy_its_part_did_not_embed_is_still_added_when_the_track_it_copies_is_not(tmp_path: Path, encoder_dir: Path) -> None:
    """Part 1 holds `x` (an id part 0 takes first) and `y`, the same audio: `y` is a copy there, left unembedded,
    but one add adds it because `x` is skipped; the merge embeds it then."""
    for name in ("area1-game", "area2-game", "over-theme"):
        shutil.copy(MUSIC / f"{name}.opus", tmp_path / f"{name}.opus")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("track_id,path\nx,area1-game.opus\nx,area2-game.opus\nz,over-theme.opus\ny,area2-game.opus\n")
    single, expected = single_add(tmp_path, encoder_dir, [manifest])
    assert expected.added == ["x", "z", "y"] and not expected.duplicates
    for part in range(2):
        write_part(tmp_path / "parallel", [manifest], part, 2, str(encoder_dir), progress=False)
    merged, report = merge_parts(tmp_path / "parallel", [manifest], 2, str(encoder_dir), progress=False)
    assert (report.added, report.skipped, report.duplicates) == (expected.added, expected.skipped, expected.duplicates)
    assert_same_catalog(single, merged)


def test_the_kubernetes_path_part_by_part_then_merge_through_the_cli(tmp_path: Path, encoder_dir: Path, references: list[Path]) -> None:
    def add(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(main, ["catalog", "add", "--catalog", str(tmp_path / "catalog"), "--encoder", str(encoder_dir), *args,
                                           *map(str, references)])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        return result.exit_code, result.stdout, result.stderr

    code, out, err = add("--part", "0/2")  # positions 0, 2, 4: area1-game, broken.mp3, zz-copy (area1-game's audio, not embedded again)
    assert code == 0 and out.startswith("part 0/2: embedded 1, skipped 2") and "broken.mp3" in err and "missing.wav" in err
    code, _, err = add("--merge-parts", "2")
    assert code == 1 and "part-0001-of-0002" in err and "Nothing was committed" in err and "Traceback" not in err
    assert not (tmp_path / "catalog" / store.CONFIG_FILE).exists()  # the merge created no catalog for parts it could not commit
    code, out, err = add("--part", "1/2")  # the second area2-game is embedded: only the merge knows its id is taken by then
    assert code == 0 and out.startswith("part 1/2: embedded 3, skipped 1") and "broken.mp3" not in err
    code, out, _ = add("--merge-parts", "2")
    assert code == 0 and out.strip().splitlines()[-1] == "added 3, skipped 3, duplicates 1"
    assert [t.track_id for t in Catalog.open(tmp_path / "catalog").tracks()] == list(CATALOG_TRACKS)
    code, _, err = add("--jobs", "2", "--part", "0/2")
    assert code == 2 and "one of --jobs, --part and --merge-parts" in err


def test_a_merge_without_the_parts_encoder_creates_no_catalog_that_would_refuse_the_right_one(tmp_path: Path, encoder_dir: Path,
                                                                                               references: list[Path]) -> None:
    """Parts written with --encoder E, merged without it: the merge created an empty catalog of the default encoder,
    refused the parts, and then refused the merge given --encoder E too (the folder's catalog was another encoder's)."""
    directory = tmp_path / "catalog"
    for part in range(2):
        write_part(directory, references, part, 2, str(encoder_dir), progress=False)
    result = CliRunner().invoke(main, ["catalog", "add", "--catalog", str(directory), "--merge-parts", "2", *map(str, references)])
    assert result.exit_code == 1 and "encoder_fingerprint" in result.stderr and "--encoder and --hop the parts were given" in result.stderr
    assert not (directory / store.CONFIG_FILE).exists()
    result = CliRunner().invoke(main, ["catalog", "add", "--catalog", str(directory), "--merge-parts", "2", "--encoder", str(encoder_dir),
                                       *map(str, references)])
    assert result.exit_code == 0, result.output
    assert [t.track_id for t in Catalog.open(directory).tracks()] == list(CATALOG_TRACKS)


@pytest.mark.parametrize("factory", [None, "IVF8,Flat"])
def test_a_merge_larger_than_memory_moves_windows_to_shards_and_still_commits_once(tmp_path: Path, encoder_dir: Path, references: list[Path],
                                                                                  factory: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    single = Catalog.create(tmp_path / "single", load_encoder(encoder_dir), index_factory=factory, encoder_source=str(encoder_dir))
    single.add(references, progress=False)
    merged = Catalog.create(tmp_path / "parallel", load_encoder(encoder_dir), index_factory=factory, encoder_source=str(encoder_dir))
    for part in range(3):
        write_part(merged.directory, references, part, 3, progress=False)
    reader = Catalog.open(merged.directory)
    monkeypatch.setattr(catalog_module, "COMMIT_WINDOWS", 1)  # every track's windows go to a shard at once
    merged, _ = merge_parts(merged.directory, references, 3, progress=False)
    assert merged.generation == 1 and len(merged._shards) == len(CATALOG_TRACKS)
    assert reader.reload_if_changed() and reader.stats()["index_factory"] == (factory or "Flat")
    assert_same_catalog(single, reader)


@pytest.fixture(scope="module")
def slow_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An encoder of wide layers (random weights) and a folder of one 20-minute file per part of a 2-part build:
    each part takes seconds, so none finishes in the moment a test takes to stop it."""
    from encoders import Encoder, EncoderConfig

    folder = tmp_path_factory.mktemp("long-tracks")
    for name in CATALOG_TRACKS[:2]:
        audio = music(name)
        soundfile.write(folder / f"{name}.wav", np.tile(audio, 20 * 60 * SAMPLE_RATE // len(audio) + 1), SAMPLE_RATE)
    encoder = Encoder(EncoderConfig.for_backbone("compact", backbone_args={"channels": [96, 192, 384, 640]}))
    return encoder.save(tmp_path_factory.mktemp("encoder") / "wide"), folder


# SIGTERM is what Kubernetes and systemd send; SIGINT takes the same path in the parent (10 s more of the default run).
@pytest.mark.parametrize("signal_number", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM])
def test_a_signal_to_the_jobs_parent_alone_stops_its_parts_and_commits_nothing(tmp_path: Path, slow_build: tuple[Path, Path],
                                                                                signal_number: int) -> None:
    """`kill -INT` to a `catalog add --jobs` parent waited for its parts to finish (a terminal's Ctrl-C reaches every
    process of the group), and SIGTERM (Kubernetes, systemd) killed it and left its parts embedding on their own."""
    directory, (encoder_dir, tracks) = tmp_path / "catalog", slow_build
    add = subprocess.Popen([sys.executable, "-m", "monitor", "catalog", "add", "--catalog", str(directory), "--encoder", str(encoder_dir),
                            "--jobs", "2", str(tracks)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        while len(list(directory.glob(f"{PARTS_DIR}/*/.part-*"))) < 2 and add.poll() is None:  # both parts are embedding
            time.sleep(0.05)
        parts = [p for p in psutil.Process(add.pid).children() if "resource_tracker" not in " ".join(p.cmdline())]
        os.kill(add.pid, signal_number)
        _, err = add.communicate(timeout=60)
    finally:
        add.kill()
    assert add.returncode == 130, err
    assert "interrupted: 0 of the 0 tracks indexed so far were committed" in err and "Traceback" not in err and "leaked" not in err
    assert not [p for p in parts if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not (directory / PARTS_DIR).exists(), "a part was finished or left half-written"
    assert Catalog.open(directory).track_count == 0


def test_a_finished_part_of_the_same_inputs_is_reused_and_a_stale_one_embedded_again(tmp_path: Path, encoder_dir: Path, references: list[Path],
                                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun of an interrupted `--jobs` build embedded every part again; now a finished part is kept for the files,
    encoder and catalog tracks it was written from, and written again when any of them changed."""
    from monitor.catalog import parts as parts_module

    directory = tmp_path / "catalog"
    first = [write_part(directory, references, part, 2, str(encoder_dir), progress=False) for part in range(2)]
    embed_entry = parts_module._embed_entry
    monkeypatch.setattr(parts_module, "_embed_entry", index_loaded)  # nothing may be embedded
    again = [write_part(directory, references, part, 2, str(encoder_dir), progress=False) for part in range(2)]
    assert [r.reused for r in again] == [True, True] and [r.reused for r in first] == [False, False]
    assert [(r.added, r.skipped) for r in again] == [(r.added, r.skipped) for r in first]

    monkeypatch.setattr(parts_module, "_embed_entry", embed_entry)
    os.utime(references[0] / f"{CATALOG_TRACKS[0]}.opus", ns=(0, 0))  # a file of part 0 (area1-game, broken.mp3, zz-copy) was touched
    assert [write_part(directory, references, part, 2, str(encoder_dir), progress=False).reused for part in range(2)] == [False, True]
    catalog = Catalog.create(directory, load_encoder(encoder_dir), encoder_source=str(encoder_dir))
    assert write_part(directory, references, 1, 2, progress=False).reused  # an empty catalog skips nothing: the same
    catalog.add([MUSIC / "gardien-go.opus"], progress=False)
    assert not write_part(directory, references, 1, 2, progress=False).reused  # its tracks decide what a part skips

    single, expected = single_add(tmp_path, encoder_dir, [MUSIC / "gardien-go.opus", *references])
    merged, report = merge_parts(directory, references, 2, progress=False)
    assert (report.added, report.duplicates) == (expected.added[1:], expected.duplicates)
    assert_same_catalog(single, merged)


def test_a_jobs_rerun_reuses_the_parts_an_interrupted_run_finished(tmp_path: Path, encoder_dir: Path, references: list[Path],
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "catalog"
    Catalog.create(directory, load_encoder(encoder_dir), encoder_source=str(encoder_dir))  # as `--jobs` does before its parts
    write_part(directory, references, 0, 2, progress=False)  # what an interrupted `--jobs 2` run finished
    with caplog.at_level("INFO", logger="monitor.catalog.parts"):
        result = CliRunner().invoke(main, ["catalog", "add", "--catalog", str(directory), "--jobs", "2", *map(str, references)])
    assert result.exit_code == 0, result.output
    assert "1 of the 2 parts were finished by an earlier run" in caplog.text
    single, _ = single_add(tmp_path, encoder_dir, references)
    assert_same_catalog(single, Catalog.open(directory))
