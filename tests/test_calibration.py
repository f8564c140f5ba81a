"""The matcher's confidence on a small real catalog that holds one recording twice (a duplicate file, a
remaster): the shipped encoder, the demo music, and the catalog's own null clips."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest

from catalog_fixtures import music
from encoders import coloured_noise, load_encoder, parse_chain
from monitor.catalog import Catalog
from monitor.stages import calibration
from monitor.stages.calibration import DEFAULT_K, calibrate, same_music
from monitor.stages.identify import identify
from monitor.stages.search import contrasts, embed_audible, nearest

IN_CATALOG = ("area1-game", "area2-game", "area3-game", "gardien-go", "over-theme")
NOT_IN_CATALOG = "termigator_reg-zbb"
DUPLICATE = "area1-game (remaster)"


def remaster(audio: np.ndarray) -> np.ndarray:
    """The same recording in other bytes: 2 dB quieter with a hiss 60 dB down."""
    return (audio * 10 ** (-2 / 20) + 1e-3 * coloured_noise(len(audio), 0.0, np.random.default_rng(0))).astype(np.float32)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    catalog = Catalog.create(tmp_path_factory.mktemp("calibration") / "catalog", load_encoder("compact"), encoder_source="compact")
    with catalog.transaction():
        for name in IN_CATALOG:
            catalog.add_audio(name, music(name))
        catalog.add_audio(DUPLICATE, remaster(music("area1-game")))
    return catalog


def test_the_null_leaves_out_an_excerpts_duplicate_with_its_own_track(catalog: Catalog) -> None:
    left_out = {}
    for query in catalog.null_queries():
        if query.source is not None:
            left_out[query.source] = same_music(catalog.search(query.vectors, 2 * DEFAULT_K), query.source, catalog.grid, DEFAULT_K)
    pair = {"area1-game", DUPLICATE}
    assert left_out == {name: pair if name in pair else {name} for name in (*IN_CATALOG, DUPLICATE)}


@pytest.mark.parametrize("chain", ["clean", "tempo:1.08", "noise:5"])
def test_a_small_catalog_is_sure_of_a_10_second_match_and_of_no_match_for_music_it_lacks(catalog: Catalog, chain: str) -> None:
    sr = catalog.encoder.sample_rate
    query = parse_chain(chain).apply(music("over-theme")[30 * sr : 42 * sr], sr, np.random.default_rng(0))[: 10 * sr]
    best = identify(catalog, query, min_confidence=0.0)[0]
    assert (best.track_id, best.confidence >= 0.99) == ("over-theme", True)
    lacking = identify(catalog, music(NOT_IN_CATALOG)[30 * sr : 40 * sr], min_confidence=0.0)
    assert max((m.confidence for m in lacking), default=0.0) < 0.99


def test_a_whole_track_the_catalog_lacks_is_no_sure_match(catalog: Catalog) -> None:
    """50 s of music the catalog lacks, scored by its best 20 s stretch and weighed by the stretches it had.
    A null measured on 30 s segments held only the clips whose every window is audible (11 of 68 on the dev
    catalog), and this query matched gardien-go at 0.9997 on it."""
    lacking = identify(catalog, music(NOT_IN_CATALOG), min_confidence=0.0)
    assert max((m.confidence for m in lacking), default=0.0) < 0.99


@pytest.fixture(scope="module")
def sliced(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    """A catalog large enough to weigh hits above their backgrounds: the catalog music in 4 s tracks."""
    catalog = Catalog.create(tmp_path_factory.mktemp("sliced") / "catalog", load_encoder("compact"), encoder_source="compact")
    sr = catalog.encoder.sample_rate
    with catalog.transaction():
        for name in IN_CATALOG:
            for start in range(0, 50, 4):
                catalog.add_audio(f"{name}@{start}", music(name)[start * sr : (start + 4) * sr])
    assert contrasts(catalog)
    return catalog


def test_noise_and_music_the_catalog_lacks_stand_out_less_above_their_background_than_a_catalog_excerpt(sliced: Catalog, catalog: Catalog) -> None:
    """Pink noise and music the catalog lacks are about half as near to their best reference windows as an
    excerpt of a catalog track is to its own, but stand out above their backgrounds under a third as far.
    A catalog of a few tracks has no background: its hits are weighed raw."""
    sr, rng = sliced.encoder.sample_rate, np.random.default_rng(0)
    queries = {"excerpt": music("over-theme")[32 * sr : 40 * sr], "lacking": music(NOT_IN_CATALOG)[30 * sr : 40 * sr],
               "pink noise": 0.1 * coloured_noise(10 * sr, 1.0, rng).astype(np.float32)}
    raw, contrast = {}, {}
    for name, audio in queries.items():
        vectors, _ = embed_audible(sliced.encoder, sliced.grid, audio)
        found = nearest(sliced, vectors, DEFAULT_K)
        raw[name] = float(np.mean([neighbours[0].similarity for neighbours, _ in found]))
        contrast[name] = float(np.mean([neighbours[0].similarity - behind for neighbours, behind in found]))
        assert {behind for _, behind in nearest(catalog, vectors, DEFAULT_K)} == {0.0}
    for name in ("lacking", "pink noise"):
        assert contrast[name] / contrast["excerpt"] < min(0.35, raw[name] / raw["excerpt"]), (name, raw, contrast)


def test_a_calibration_cached_on_the_other_side_of_the_contrast_line_is_made_again(sliced: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    """A release that weighs a catalog of this size raw left a raw null beside it; raw scores set against
    contrasted hits make every chance line sure (bench unknowns composed no day with such a leftover)."""
    made = calibrate(sliced)
    path = sliced.generation_dir() / f"calibration-k{made.k}.json"
    left = json.loads(path.read_text())
    left.update(contrasted=False, null_scores=[[s * 10 for s in scores] for scores in left["null_scores"]])
    path.write_text(json.dumps(left))
    monkeypatch.setattr(calibration, "_calibrations", OrderedDict())
    again = calibrate(sliced)
    assert made.contrasted and again.contrasted and json.loads(path.read_text())["contrasted"]
    for ours, theirs in zip(made.null_scores, again.null_scores):
        np.testing.assert_allclose(theirs, ours, atol=1e-5)  # the cache rounds to 5 decimals
