"""The catalog on the demo music: adding, duplicates, atomic writes, bad catalogs, removal, reloads, indexes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from catalog_fixtures import CATALOG_TRACKS, MUSIC, music, random_encoder
from encoders import load_encoder
from monitor.catalog import sources, store
from monitor.catalog import Catalog, CatalogError
from monitor.bench.speed import distorted, measure_index, synthetic_vectors
from monitor.catalog import index as index_module
from monitor.catalog.index import VectorIndex, auto_factory, ivf_factory, split_ids, window_ids
from monitor.stages.identify import identify


FLOAT32_DOT = 4 * 32 * float(np.finfo(np.float32).eps)  # a 32-dim inner product of unit vectors, summed in any order
FLOAT16_DOT = 2.0**-11 + FLOAT32_DOT  # float16 rounds each component by <= 2^-11 of it; sum |q_i x_i| <= 1 for unit vectors


def exact_windows(catalog: Catalog, name: str, start: float, seconds: float) -> np.ndarray:
    """Embeddings of an excerpt cut on the catalog's grid: each equals a reference window's exactly."""
    sr = catalog.encoder.sample_rate
    return catalog.encoder.embed(catalog.grid.cut(music(name)[int(start * sr) : int((start + seconds) * sr)]).copy())


def test_a_folder_is_added_with_bad_files_reported_and_every_window_found(tmp_path: Path, encoder_dir: Path) -> None:
    folder = tmp_path / "music"
    folder.mkdir()
    for name in CATALOG_TRACKS[:2]:
        shutil.copy(MUSIC / f"{name}.opus", folder / f"{name}.opus")
    (folder / "broken.mp3").write_bytes(b"not audio at all")
    (folder / "notes.txt").write_text("ignored: not an audio suffix")
    catalog = Catalog.create(tmp_path / "catalog", load_encoder(encoder_dir))
    report = catalog.add([folder, tmp_path / "missing.wav"], progress=False)
    assert report.added == list(CATALOG_TRACKS[:2])
    assert sorted(Path(p).name for p, _ in report.skipped) == ["broken.mp3", "missing.wav"]
    assert catalog.stats()["tracks"] == 2 and catalog.stats()["windows"] == sum(t.windows for t in catalog.tracks())
    nulls = catalog.null_queries()  # noise, speech, and each track's middle windows
    sources = [null.source for null in nulls]
    assert sources.count(None) >= 3 and sorted(s for s in sources if s) == list(CATALOG_TRACKS[:2])
    assert not any(null.reversed for null in nulls)

    neighbours = catalog.search(exact_windows(catalog, CATALOG_TRACKS[1], 20.0, 3.0), k=3)
    assert [(n[0].track_id, n[0].ref_time) for n in neighbours] == [(CATALOG_TRACKS[1], 20.0 + 0.5 * i) for i in range(5)]
    assert all(n[0].similarity == pytest.approx(1.0, abs=1e-4) for n in neighbours)


def test_a_manifest_brings_ids_and_metadata(tmp_path: Path, encoder_dir: Path) -> None:
    shutil.copy(MUSIC / "over-theme.opus", tmp_path / "a.opus")
    (tmp_path / "manifest.csv").write_text("track_id,path,title,artist,isrc\nthe-theme,a.opus,Over Theme,TecnoballZ,\n,gone.opus,x,y,z\n")
    catalog = Catalog.create(tmp_path / "catalog", load_encoder(encoder_dir))
    report = catalog.add([tmp_path / "manifest.csv"], progress=False)
    assert report.added == ["the-theme"] and len(report.skipped) == 1
    info = Catalog.open(tmp_path / "catalog").track("the-theme")
    assert info.metadata == {"title": "Over Theme", "artist": "TecnoballZ"}
    assert info.seconds == pytest.approx(50.0, abs=0.1)


def test_a_manifest_row_whose_file_is_not_beside_the_manifest_says_where_paths_are_read_from(tmp_path: Path, encoder_dir: Path) -> None:
    """A manifest written with paths relative to the folder it was made in (not its own) gave FFmpeg's 'No such
    file or directory' per row, which did not say that a manifest's paths are read from the manifest's folder."""
    (tmp_path / "lists").mkdir()
    shutil.copy(MUSIC / "over-theme.opus", tmp_path / "over-theme.opus")
    (tmp_path / "lists" / "manifest.csv").write_text("track_id,path\nthe-theme,over-theme.opus\n")
    catalog = Catalog.create(tmp_path / "catalog", load_encoder(encoder_dir))
    report = catalog.add([tmp_path / "lists" / "manifest.csv"], progress=False)
    assert report.skipped == [(f"{tmp_path / 'lists' / 'manifest.csv'}:2",
                               f"no file {tmp_path / 'lists' / 'over-theme.opus'}: a manifest's paths are relative to the manifest's "
                               f"folder ({tmp_path / 'lists'}); write them from there, or absolute")]


def test_a_track_id_given_twice_in_one_manifest_is_named_as_such(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"track_id,path\nsong,{MUSIC / 'area1-game.opus'}\nsong,{MUSIC / 'gardien-go.opus'}\n")
    catalog = Catalog.create(tmp_path / "catalog", random_encoder())
    report = catalog.add([manifest], progress=False)
    assert report.added == ["song"] and len(report.skipped) == 1
    assert report.skipped[0][0].endswith("gardien-go.opus") and "given twice in this run" in report.skipped[0][1]


def test_the_same_audio_under_another_name_is_a_duplicate(catalog_copy: Path, tmp_path: Path) -> None:
    copy = tmp_path / "renamed.opus"
    shutil.copy(MUSIC / f"{CATALOG_TRACKS[0]}.opus", copy)
    catalog = Catalog.open(catalog_copy)
    report = catalog.add([copy, MUSIC / f"{CATALOG_TRACKS[1]}.opus"], progress=False)
    assert report.duplicates == [(str(copy), CATALOG_TRACKS[0])]
    assert report.added == [] and "already in the catalog" in report.skipped[0][1]
    assert catalog.generation == Catalog.open(catalog_copy).generation


def test_a_crash_while_embedding_leaves_the_previous_catalog(catalog_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = Catalog.open(catalog_copy)
    before = (catalog.generation, catalog.tracks())
    monkeypatch.setattr(catalog.encoder, "embed", _raise)
    with pytest.raises(KeyboardInterrupt):
        catalog.add([MUSIC / "area3-game.opus"], progress=False)
    assert (catalog.generation, catalog.tracks()) == before  # the failed transaction was rolled back in memory too
    again = Catalog.open(catalog_copy)
    assert (again.generation, again.tracks()) == before


def test_a_crash_while_committing_leaves_the_previous_catalog(catalog_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = Catalog.open(catalog_copy)
    before = (catalog.generation, catalog.tracks(), catalog.stats()["windows"])
    monkeypatch.setattr(store, "write_tracks", _raise)
    with pytest.raises(KeyboardInterrupt):
        catalog.add([MUSIC / "area3-game.opus"], progress=False)
    assert list(catalog_copy.glob(".gen-*")) and len(list((catalog_copy / "shards").iterdir())) == 1  # the crash's shard removed
    again = Catalog.open(catalog_copy)
    assert (again.generation, again.tracks(), again.stats()["windows"]) == before
    monkeypatch.undo()
    assert again.add([MUSIC / "area3-game.opus"], progress=False).added == ["area3-game"]
    assert not list(catalog_copy.glob(".gen-*")) and len(list((catalog_copy / "shards").iterdir())) == 2  # debris swept


def test_a_full_disk_while_committing_is_one_line_and_leaves_no_half_generation(catalog_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """faiss's write error on a full disk ended `catalog add` with a RuntimeError traceback, and the half-written
    generation stayed behind, holding the space a retry needs."""
    from click.testing import CliRunner

    from monitor.cli import main

    def disk_full(index: VectorIndex, path: Path) -> None:
        Path(path).write_bytes(b"\0" * 100)
        raise RuntimeError(f"Error in void faiss::write_index(...): write error in {path}: 100 != 304128 (No space left on device)")

    monkeypatch.setattr(VectorIndex, "save", disk_full)
    result = CliRunner().invoke(main, ["catalog", "add", "--catalog", str(catalog_copy), str(MUSIC / "area3-game.opus")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "No space left on device" in result.stderr and "the catalog is as its last commit left it" in result.stderr
    assert not list(catalog_copy.glob(".gen-*")) and not list(catalog_copy.glob("gen-000002"))
    assert len(list((catalog_copy / "shards").iterdir())) == 1  # the failed commit's shard gave its space back
    monkeypatch.undo()
    assert [t.track_id for t in Catalog.open(catalog_copy).tracks()] == list(CATALOG_TRACKS)


def _raise(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt  # what a user's Ctrl-C does mid-write


@pytest.fixture(scope="module")
def long_mp3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 20 minutes of MP3 (a demo track encoded once, then looped without encoding again): a second to decode."""
    folder = tmp_path_factory.mktemp("long-mp3")
    ffmpeg = ["ffmpeg", "-nostdin", "-loglevel", "error"]
    subprocess.run([*ffmpeg, "-i", str(MUSIC / "gardien-go.opus"), "-ar", "22050", "-b:a", "64k", str(folder / "once.mp3")], check=True)
    subprocess.run([*ffmpeg, "-stream_loop", "23", "-i", str(folder / "once.mp3"), "-c", "copy", str(folder / "long.mp3")], check=True)
    return folder / "long.mp3"


CTRL_C_PRESSES = 24  # decoding in one process, the old code lost about a third of them: all 24 kept about once in 17,000
# One process presses Ctrl-C at itself while it decodes, so that no press can reach pytest: `load_audio` again and
# again, each time pressed at another moment of the first half of a decoding, and says what became of the presses.
PRESSING = """
import json, os, signal, sys, threading, time
from encoders import load_audio
path, presses = sys.argv[1], int(sys.argv[2])
began = time.monotonic()
load_audio(path, 8000)
whole = time.monotonic() - began  # one decoding, not pressed
outcome = {"lost": 0, "raised": 0, "late": 0}
for press in range(presses):
    pressed, decoded = threading.Event(), False
    timer = threading.Timer(whole * 0.5 * press / presses, lambda: (pressed.set(), os.kill(os.getpid(), signal.SIGINT)))
    try:
        timer.start()
        load_audio(path, 8000)
        decoded = True
        outcome["lost"] += pressed.is_set()  # decoded to its end after the press came: the press was dropped
        timer.join()
    except KeyboardInterrupt:
        outcome["late" if decoded else "raised"] += 1
print(json.dumps(outcome))
"""


def test_ctrl_c_while_a_file_decodes_stops_it_at_the_first_press(long_mp3: Path) -> None:
    """A Ctrl-C that came while FFmpeg decoded was dropped inside PyAV (see encoders.audio.interrupts_held): decoding
    went on as if none had come (`catalog add` on a 20-minute MP3 ignored 23 of 120 presses, and ran to its end)."""
    pressing = subprocess.run([sys.executable, "-c", PRESSING, str(long_mp3), str(CTRL_C_PRESSES)], capture_output=True, text=True,
                              timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert pressing.returncode == 0, pressing.stderr
    outcome = json.loads(pressing.stdout)
    assert outcome["lost"] == 0 and outcome["raised"] >= CTRL_C_PRESSES // 2, outcome


def test_another_encoder_cannot_open_the_catalog(built_catalog: Path) -> None:
    with pytest.raises(CatalogError, match="built by encoder .* open it with the encoder that built it"):
        Catalog.open(built_catalog, random_encoder(seed=1))


def test_adding_with_another_encoder_says_how_to_keep_this_one_or_index_anew(catalog_copy: Path) -> None:
    """A catalog built before the default became compact3, given `catalog add --encoder compact3`: the refusal said
    only that the weights differ; it names both encoders, how to go on adding, and how to move to the new one."""
    before = sorted(p.name for p in catalog_copy.rglob("*"))
    with pytest.raises(CatalogError, match=r"leave out --encoder to add to it with .*; to index with 'compact3', build a new catalog "
                                           r"in another folder \(`airtrace catalog add --catalog NEW-FOLDER --encoder compact3"):
        Catalog.open_or_create(catalog_copy, "compact3")
    assert sorted(p.name for p in catalog_copy.rglob("*")) == before
    assert Catalog.open_or_create(catalog_copy).encoder.fingerprint() == store.read_config(catalog_copy)["encoder"]["fingerprint"]


def test_two_adds_creating_one_catalog_at_once_keep_both_adds(tmp_path: Path, encoder_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two `catalog add`s into one new folder: the second checked the folder before the first created its catalog,
    then wrote its own generation 0 over the first's catalog, removing its tracks, while both said "added"."""
    from monitor.catalog import catalog as catalog_module

    directory, real_check = tmp_path / "catalog", catalog_module.check_new_catalog_folder

    def another_add_meanwhile(folder: Path) -> None:
        real_check(folder)
        monkeypatch.setattr(catalog_module, "check_new_catalog_folder", real_check)
        Catalog.open_or_create(folder, str(encoder_dir)).add([MUSIC / f"{CATALOG_TRACKS[0]}.opus"], progress=False)

    monkeypatch.setattr(catalog_module, "check_new_catalog_folder", another_add_meanwhile)
    Catalog.open_or_create(directory, str(encoder_dir)).add([MUSIC / f"{CATALOG_TRACKS[1]}.opus"], progress=False)
    assert [t.track_id for t in Catalog.open(directory).tracks()] == list(CATALOG_TRACKS[:2])


def test_a_corrupt_index_is_reported(catalog_copy: Path) -> None:
    index = Catalog.open(catalog_copy).generation_dir() / "index.faiss"
    index.write_bytes(index.read_bytes()[:100])
    with pytest.raises(CatalogError, match="index is corrupt"):
        Catalog.open(catalog_copy)


def test_an_unknown_format_version_is_refused(catalog_copy: Path) -> None:
    config = json.loads((catalog_copy / "catalog.json").read_text())
    (catalog_copy / "catalog.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(CatalogError, match="catalog format 99"):
        Catalog.open(catalog_copy)


def test_a_missing_catalog_and_an_empty_catalog_are_reported(tmp_path: Path, encoder_dir: Path) -> None:
    with pytest.raises(CatalogError, match="no catalog at"):
        Catalog.open(tmp_path / "nowhere")
    catalog = Catalog.create(tmp_path / "empty", load_encoder(encoder_dir))
    with pytest.raises(CatalogError, match="is empty"):
        catalog.search(np.zeros((1, catalog.encoder.dim), np.float32))
    with pytest.raises(CatalogError, match="already holds a catalog"):
        Catalog.create(tmp_path / "empty", catalog.encoder)


def test_a_removed_track_is_gone_for_readers_that_reload(catalog_copy: Path) -> None:
    writer, reader = Catalog.open(catalog_copy), Catalog.open(catalog_copy)
    assert reader.reload_if_changed() is False
    gone = CATALOG_TRACKS[0]
    writer.remove(gone)
    with pytest.raises(CatalogError, match="no track"):
        writer.remove(gone)
    assert reader.reload_if_changed() is True and reader.reload_if_changed() is False
    assert [t.track_id for t in reader.tracks()] == list(CATALOG_TRACKS[1:])
    hits = reader.search(exact_windows(reader, gone, 10.0, 5.0), k=10)
    assert all(n.track_id != gone for row in hits for n in row)
    assert reader.stats()["windows"] == sum(t.windows for t in reader.tracks())


def test_a_track_removed_and_added_again_leaves_every_track_identifiable(catalog_copy: Path) -> None:
    """Removing a track and adding its audio again (to fix its metadata) kept the removed track's null excerpt, now
    matched perfectly by the track added again: calibration's null rose above any score and nothing was identified."""
    catalog = Catalog.open(catalog_copy)
    again = CATALOG_TRACKS[0]
    catalog.remove(again)
    catalog.add([MUSIC / f"{again}.opus"], progress=False)
    assert {q.source for q in catalog.null_queries() if q.source} == set(CATALOG_TRACKS)
    for name in CATALOG_TRACKS:
        assert [m.track_id for m in identify(catalog, music(name)[: 20 * catalog.encoder.sample_rate])][:1] == [name]


def test_the_reversed_null_excerpts_of_an_older_catalog_are_renewed_at_its_next_commit(catalog_copy: Path) -> None:
    """Catalogs built before NULL_FORMAT 2 kept time-reversed excerpts (null.npz without `reversed`)."""
    fresh = {q.source: q.vectors for q in Catalog.open(catalog_copy).null_queries()}
    null_file = store.gen_dir(catalog_copy, Catalog.open(catalog_copy).generation) / "null.npz"
    with np.load(null_file) as data:
        sources, lengths, offered = data["sources"], data["lengths"], data["offered"]
        clips = np.split(data["vectors"], np.cumsum(lengths)[:-1])
    older = [clip[::-1] if source >= 0 else clip for clip, source in zip(clips, sources)]
    np.savez(null_file, vectors=np.concatenate(older), lengths=lengths, sources=sources, offered=offered)

    catalog = Catalog.open(catalog_copy)
    assert {q.source for q in catalog.null_queries() if q.reversed} == set(CATALOG_TRACKS)
    catalog.add_audio("gardien-go", music("gardien-go"))
    renewed = Catalog.open(catalog_copy).null_queries()
    assert not any(q.reversed for q in renewed) and {q.source for q in renewed if q.source} == {*CATALOG_TRACKS, "gardien-go"}
    for query in renewed:
        if query.source in CATALOG_TRACKS:
            np.testing.assert_array_equal(query.vectors, fresh[query.source])


def test_an_ivf_pq_refine_index_is_trained_and_rebuilt_on_removal(tmp_path: Path, encoder_dir: Path) -> None:
    """Refine indexes cannot remove in place; the catalog rebuilds them from its shards."""
    catalog = Catalog.create(tmp_path / "catalog", load_encoder(encoder_dir), index_factory="IVF8,PQ16x4,Refine(Flat)")
    catalog.add([MUSIC / f"{name}.opus" for name in CATALOG_TRACKS], progress=False)
    catalog.remove(CATALOG_TRACKS[2])
    again = Catalog.open(tmp_path / "catalog")
    assert again.stats()["index_factory"] == "IVF8,PQ16x4,Refine(Flat)"
    hits = again.search(exact_windows(again, CATALOG_TRACKS[1], 30.0, 2.0), k=5)
    assert [row[0].track_id for row in hits] == [CATALOG_TRACKS[1]] * 3
    assert again.stats()["windows"] == sum(t.windows for t in again.tracks())


def test_a_factory_that_needs_more_training_data_is_a_clear_error(tmp_path: Path, encoder_dir: Path) -> None:
    catalog = Catalog.create(tmp_path / "catalog", load_encoder(encoder_dir), index_factory="IVF4096,SQ8")
    with pytest.raises(CatalogError, match="needs at least 4096 vectors"):
        catalog.add_audio("one", music("area1-game"))
    assert Catalog.open(tmp_path / "catalog").tracks() == []
    with pytest.raises(CatalogError, match="bad index factory"):
        Catalog.create(tmp_path / "other", catalog.encoder, index_factory="Nonsense42")


def test_silence_is_never_indexed(tmp_path: Path, encoder_dir: Path) -> None:
    catalog = Catalog.create(tmp_path / "catalog", load_encoder(encoder_dir))
    audio = np.concatenate([np.zeros(5 * 8000, np.float32), music("area1-game")[: 10 * 8000]])
    catalog.add_audio("late-start", audio, {"title": "Late"})
    assert catalog.track("late-start").windows == catalog.grid.count(len(audio)) - 9  # windows inside the 5 s of silence
    with pytest.raises(CatalogError, match="no audible window"):
        catalog.add_audio("silent", np.zeros(8000 * 3, np.float32))


def test_window_ids_round_trip_and_the_index_grows_from_exact_to_ivf() -> None:
    ords, windows = split_ids(window_ids(123_456, np.array([0, 7, (1 << 20) - 1])))
    assert ords.tolist() == [123_456] * 3 and windows.tolist() == [0, 7, (1 << 20) - 1]
    assert auto_factory(10_000, 128) == "Flat"
    assert auto_factory(1_000_000, 128) == "IVF4096(IVF64,Flat),PQ64x4fsr,Refine(SQfp16)"
    assert auto_factory(40_000_000, 128) == "IVF32768(IVF181,Flat),PQ64x4fsr,Refine(SQfp16)"
    assert isinstance(VectorIndex.empty("Flat", 8), VectorIndex)


@pytest.mark.parametrize("two_level", [False, True])
def test_the_large_catalog_index_finds_what_exact_search_finds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, two_level: bool) -> None:
    """The IVF choice for large catalogs, at a small size: its fast-scan candidates (codes of each window's
    residual from its list centroid) re-ranked by float16 codes give the exact nearest window, with the
    float16 codes' similarities (within float16 rounding of the exact ones, which 8-bit codes are not);
    its coarse centroids come from FAISS's k-means or, for many lists, from two-level k-means (forced here
    by lowering the threshold). The index reloads with the same results."""
    if two_level:
        monkeypatch.setattr(index_module, "TWO_LEVEL_LISTS", 64)
    rng = np.random.default_rng(0)
    vectors = synthetic_vectors(20_000, 32, rng)
    index = VectorIndex.build(ivf_factory(64, 32), 32, lambda: [(vectors, np.arange(len(vectors)) * 3)])
    assert index.search_params == "nprobe=64,quantizer_nprobe=32,k_factor_rf=16"
    ivf = faiss.try_extract_index_ivf(index.faiss)
    assert ivf.quantizer.ntotal == 64
    assert ivf.by_residual  # FAISS's fast-scan default codes the window itself: candidates missed at 40 M windows
    queries = distorted(vectors, rng.integers(0, len(vectors), 200), rng)
    exact = faiss.IndexFlatIP(32)
    exact.add(vectors)
    truth_sims, truth = exact.search(queries, 10)
    sims, ids = index.search(queries, 10)
    assert np.mean(ids[:, 0] == truth[:, 0] * 3) >= 0.98
    refine = faiss.downcast_index(faiss.downcast_index(index.faiss).index).refine_index
    decoded = refine.reconstruct_n(0, len(vectors))  # windows were added in order: position = id / 3
    expected = np.einsum("qd,qkd->qk", queries, decoded[ids // 3])
    np.testing.assert_allclose(sims, expected, rtol=0, atol=FLOAT32_DOT)  # the re-ranking codes' similarities, not the PQ estimates
    np.testing.assert_allclose(sims, np.einsum("qd,qkd->qk", queries, vectors[ids // 3]), rtol=0, atol=FLOAT16_DOT)
    index.save(tmp_path / "index.faiss")
    reloaded = VectorIndex.load(tmp_path / "index.faiss", index.factory, index.search_params)
    np.testing.assert_array_equal(reloaded.search(queries, 10)[1], ids)


def test_measure_index_reports_memory_speed_and_recall() -> None:
    result = measure_index(20_000, dim=32, factory="IVF32,SQ8", queries=200)
    assert 32 <= result["bytes_per_vector"] < 48  # 32 code bytes + an 8-byte id
    assert result["recall_at_1"] > 0.8 and result["searches_per_second"] > 100


# ---- bad input: a catalog command never deletes what it did not create ---------------------------


def test_a_folder_that_is_not_a_catalog_is_refused_and_left_as_it_was(tmp_path: Path, encoder_dir: Path) -> None:
    folder = tmp_path / "mine"
    (folder / "oxygen-music").mkdir(parents=True)  # matches *gen-*, as the old clean-up did
    (folder / "shards").mkdir()
    (folder / "oxygen-music" / "n.txt").write_text("x")
    (folder / "shards" / "mine.txt").write_text("x")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    with pytest.raises(CatalogError, match="is not empty and is not a catalog .*oxygen-music, shards"):
        Catalog.open_or_create(folder, str(encoder_dir))
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before


def test_cleaning_up_old_generations_touches_only_files_the_catalog_made(catalog_copy: Path) -> None:
    mine = [catalog_copy / "oxygen-music" / "n.txt", catalog_copy / "shards" / "mine.txt", catalog_copy / "gen-notes.txt"]
    for path in mine:
        path.parent.mkdir(exist_ok=True)
        path.write_text("x")
    catalog = Catalog.open(catalog_copy)
    for name in CATALOG_TRACKS[:2]:  # two commits, so generations and shards go stale and are removed
        catalog.remove(name)
    assert all(path.read_text() == "x" for path in mine)
    assert len(list(catalog_copy.glob("gen-0*"))) == 2


def test_missing_catalog_json_beside_generations_is_an_error_never_a_reset(catalog_copy: Path, encoder_dir: Path) -> None:
    (catalog_copy / "catalog.json").unlink()
    before = sorted(p.relative_to(catalog_copy) for p in catalog_copy.rglob("*"))
    for attempt in (lambda: Catalog.open_or_create(catalog_copy, str(encoder_dir)), lambda: Catalog.open(catalog_copy)):  # add; list, identify
        with pytest.raises(CatalogError, match=r"holds catalog data \(gen-.*\) but no catalog.json.*nothing was changed.*Restore catalog.json"):
            attempt()
    assert sorted(p.relative_to(catalog_copy) for p in catalog_copy.rglob("*")) == before


@pytest.mark.parametrize("damage, message", [
    ({"generation": "7"}, "'generation' is '7', not int"),
    ({"generation": 1.5}, "'generation' is 1.5, not int"),
    ({"encoder": None}, "'encoder' is None, not dict"),
    ({"hop_seconds": "half"}, "'hop_seconds' is 'half', not int"),
])
def test_a_damaged_catalog_json_is_named_field_by_field(catalog_copy: Path, damage: dict, message: str) -> None:
    config = json.loads((catalog_copy / "catalog.json").read_text())
    (catalog_copy / "catalog.json").write_text(json.dumps({**config, **damage}))
    with pytest.raises(CatalogError, match=f"{message}; the catalog's metadata is damaged: restore catalog.json"):
        Catalog.open(catalog_copy)
    without = {k: v for k, v in config.items() if k != "encoder"}
    (catalog_copy / "catalog.json").write_text(json.dumps(without))
    with pytest.raises(CatalogError, match="'encoder' is missing"):
        Catalog.open(catalog_copy)


def test_a_manifest_with_a_byte_order_mark_keeps_its_track_id_column(tmp_path: Path, encoder_dir: Path) -> None:
    shutil.copy(MUSIC / "over-theme.opus", tmp_path / "a.opus")
    (tmp_path / "manifest.csv").write_text("track_id,path,title\nthe-theme,a.opus,Over Theme\n", encoding="utf-8-sig")
    catalog = Catalog.create(tmp_path / "catalog", load_encoder(encoder_dir))
    assert catalog.add([tmp_path / "manifest.csv"], progress=False).added == ["the-theme"]
    assert catalog.track("the-theme").metadata == {"title": "Over Theme"}


def test_a_manifest_with_a_cell_over_128_kb_is_read_whole(tmp_path: Path) -> None:
    """Python's csv refuses a field over 128 KB by default: one long description skipped the whole manifest."""
    import csv

    shutil.copy(MUSIC / "over-theme.opus", tmp_path / "a.opus")
    shutil.copy(MUSIC / "gardien-go.opus", tmp_path / "b.opus")
    notes = "la " * 100_000  # 300 KB
    (tmp_path / "manifest.csv").write_text(f'track_id,path,notes\nthe-theme,a.opus,"{notes}"\ngo,b.opus,short\n')
    report = sources.AddReport()
    found = sources.expand_sources([tmp_path / "manifest.csv"], report)
    assert not report.skipped
    assert [(s.track_id, s.metadata) for s in found] == [("the-theme", {"notes": notes}), ("go", {"notes": "short"})]
    assert csv.field_size_limit() == 128 * 1024  # the process's limit is left as it was


def test_a_manifest_in_a_code_page_is_skipped_with_how_to_save_it(tmp_path: Path, encoder_dir: Path) -> None:
    """A spreadsheet's plain CSV export is in the system's code page (Windows-1252 here): the manifest is
    skipped with the fix, and the other sources of the run are still added."""
    shutil.copy(MUSIC / "over-theme.opus", tmp_path / "a.opus")
    (tmp_path / "manifest.csv").write_text("track_id,path,title\nthe-theme,a.opus,Café Theme\n", encoding="cp1252")
    catalog = Catalog.create(tmp_path / "catalog", load_encoder(encoder_dir))
    report = catalog.add([tmp_path / "manifest.csv", MUSIC / "gardien-go.opus"], progress=False)
    assert report.added == ["gardien-go"]
    (reason,) = [why for where, why in report.skipped if where == str(tmp_path / "manifest.csv")]
    assert "not UTF-8" in reason and "CSV UTF-8" in reason


def test_track_ids_that_would_break_lists_and_keys_are_refused(tmp_path: Path, encoder_dir: Path) -> None:
    shutil.copy(MUSIC / "over-theme.opus", tmp_path / "a.opus")
    rows = ["tab\there", "new\nline", "x" * 10_000, " padded", "bell\x07", "", "fine id/with slash é"]
    with (tmp_path / "manifest.csv").open("w", newline="") as f:
        csv_writer = __import__("csv").writer(f)
        csv_writer.writerow(["track_id", "path"])
        csv_writer.writerows([[track_id, "a.opus"] for track_id in rows])
    catalog = Catalog.create(tmp_path / "catalog", load_encoder(encoder_dir))
    report = catalog.add([tmp_path / "manifest.csv"], progress=False)
    assert report.added == ["fine id/with slash é"]
    reasons = [reason for _, reason in report.skipped]
    expected = ["empty track_id", "'\\t' (U+0009)", "'\\n' (U+000A)", "is 10000 bytes long", "starts or ends with a space", "U+0007"]
    assert len(reasons) == len(expected) and all(fragment in reason for fragment, reason in zip(expected, reasons))
    assert all("printable text" in reason for reason in reasons[1:])
    with pytest.raises(CatalogError, match="track id '' is empty"):
        catalog.add_audio("", music("area1-game"))


def test_a_batch_is_one_matrix_product_that_finds_what_searching_window_by_window_finds() -> None:
    """From BLAS_QUERIES windows on, a batch is searched as one matrix product (FAISS as shipped waits for
    128,000 queries and scans the index once per window): the same neighbours as searching each window
    alone, similarities equal to float32 rounding (`dim` products of unit vectors' components)."""
    import faiss

    from monitor.catalog.index import BLAS_QUERIES, VectorIndex, window_ids

    dim, rng = 64, np.random.default_rng(0)
    vectors = rng.normal(size=(5000, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex.empty("Flat", dim)
    index.add(vectors, window_ids(0, np.arange(len(vectors))))
    queries = vectors[: 2 * BLAS_QUERIES] + rng.normal(scale=0.3, size=(2 * BLAS_QUERIES, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    assert faiss.cvar.distance_compute_blas_threshold == BLAS_QUERIES
    sims, ids = index.search(queries, 10)
    for query, row_sims, row_ids in zip(queries, sims, ids):
        alone_sims, alone_ids = index.search(query[None], 10)
        assert np.array_equal(row_ids, alone_ids[0])
        assert np.allclose(row_sims, alone_sims[0], rtol=0, atol=dim * np.finfo(np.float32).eps)
