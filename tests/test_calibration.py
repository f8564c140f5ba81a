"""The matcher's confidence on a small real catalog that holds one recording twice (a duplicate file, a
remaster): the shipped encoder, the demo music, and the catalog's own null clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catalog_fixtures import MUSIC, music
from encoders import coloured_noise, load_encoder, parse_chain
from monitor.catalog import Catalog
from monitor.stages.calibration import DEFAULT_K, same_music
from monitor.stages.identify import identify

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
