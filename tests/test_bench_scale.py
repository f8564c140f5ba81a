"""`airtrace bench scale` at a small size: the windows it indexes, exact search and recall, and every figure."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from catalog_fixtures import MUSIC
from encoders import load_encoder
from monitor.bench import scale
from monitor.bench.scale import STREAMS, Mixture, exact_top1, recall_at_1, windows
from monitor.cli import main
from monitor.stages.windows import WindowGrid

FLOAT32_NORM = 1e-5  # |1 - norm| of a float32 unit vector of 128 dims, with room


def unit(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_top1_over_chunks_is_flat_search_over_all_of_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scale, "EXACT_BLOCK", 50 * 300)  # blocks of 300 windows inside the chunks of 1000
    rng = np.random.default_rng(0)
    vectors, queries = unit(3000, 32, rng), unit(50, 32, rng)
    ids = np.arange(3000, dtype=np.int64) * 7 + 5  # ids unlike positions: a mix-up shows
    chunks = [(vectors[i : i + 1000], ids[i : i + 1000]) for i in range(0, 3000, 1000)]
    flat = faiss.IndexFlatIP(32)
    flat.add(vectors)
    truth = ids[flat.search(queries, 1)[1][:, 0]]
    assert np.array_equal(exact_top1(queries, iter(chunks)), truth)
    assert recall_at_1(truth, truth) == 1.0
    assert recall_at_1(np.r_[truth[:40], truth[:10] + 1], truth) == 0.8


def test_windows_are_the_real_ones_then_unit_draws_of_their_mixture_again_by_seed() -> None:
    rng = np.random.default_rng(1)
    centres = unit(2, 128, rng)
    real = centres[rng.integers(0, 2, 2000)] + 0.05 * rng.standard_normal((2000, 128)).astype(np.float32)
    real = (real / np.linalg.norm(real, axis=1, keepdims=True)).astype(np.float32)
    mixture = Mixture.fit(real)
    assert len(mixture.weights) == 2000 // (4 * 128)
    chunks = list(windows(real, mixture, 5000, seed=3))
    vectors = np.concatenate([v for v, _ in chunks])
    assert np.array_equal(np.concatenate([i for _, i in chunks]), np.arange(5000))
    assert np.array_equal(vectors[:2000], real)
    assert np.all(np.abs(np.linalg.norm(vectors, axis=1) - 1) < FLOAT32_NORM)
    nearest_centre = (vectors @ centres.T).max(axis=1)  # ~0.87 for the real windows, ~0.1 anywhere on the sphere
    assert abs(np.median(nearest_centre[2000:]) - np.median(nearest_centre[:2000])) < 0.02  # the draws lie where the real ones lie
    again = np.concatenate([v for v, _ in windows(real, mixture, 5000, seed=3)])
    assert np.array_equal(vectors, again)


def test_bench_scale_reports_every_figure_at_50k_windows(tmp_path: Path, encoder_dir: Path) -> None:
    """An IVF index over exact vectors searched in all its lists finds the exact nearest window: recall@1 is 1."""
    out = tmp_path / "scale.json"
    result = CliRunner().invoke(main, ["bench", "scale", "--reference", str(MUSIC), "--encoder", str(encoder_dir),
                                       "--windows", "50000", "--factory", "IVF128,Flat", "--search-params", "nprobe=128",
                                       "--recall-queries", "100", "--batches", "3", "--cache-dir", str(tmp_path / "cache"),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    scale = report["scale"]
    assert scale["real_windows"] + scale["synthetic_windows"] == scale["windows"] == scale["worker"]["ntotal"] == 50_000
    grid = WindowGrid.for_encoder(load_encoder(encoder_dir), 0.5)
    assert scale["batch_windows"] == round(STREAMS * grid.sample_rate / grid.hop)
    assert [s["search_params"] for s in scale["search"]] == ["nprobe=64", "nprobe=128"]
    exhaustive = scale["search"][1]
    assert exhaustive["recall_at_1"] == 1.0
    assert 0 < exhaustive["batch_p50_seconds"] <= exhaustive["batch_p99_seconds"]
    assert scale["worker"]["rss_loaded"] > scale["worker"]["rss_before_load"] > 0
    assert {t["title"] for t in report["tables"]} == {"An index of 50,000 windows, built and held by a worker process",
                                                      "Search at 50,000 windows, one batch = one second of 200 streams"}
    assert "Gaussian mixture" in report["tables"][0]["settings"]["windows"]
