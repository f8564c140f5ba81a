"""The `airtrace` command: a thin layer that parses arguments and calls one function per command."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import click


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail.")
def main(verbose: bool) -> None:
    """airtrace: find recorded music in radio and TV streams with neural audio fingerprints."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="Checkpoints and the exported encoder go here; rerun to resume.")
@click.option("--data", help="Override the config's data: an audio folder or a manifest.csv.")
@click.option("--steps", type=int, help="Override the config's number of steps.")
def train(config: str, run_dir: str, data: str | None, steps: int | None) -> None:
    """Train an encoder from a YAML/JSON CONFIG (resumes from RUN_DIR's checkpoint)."""
    from encoders.train import TrainConfig, train as run_training

    try:
        cfg = TrainConfig.from_file(config, data=data, steps=steps)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"encoder written to {run_training(cfg, run_dir)}")


if TYPE_CHECKING:
    from monitor.catalog import Catalog


@main.group()
def catalog() -> None:
    """Build and inspect a reference catalog (one directory)."""


CATALOG_OPTION = click.option("--catalog", "directory", required=True, type=click.Path(file_okay=False), help="The catalog directory.")


def _open_catalog(directory: str) -> Catalog:
    from monitor.catalog import Catalog, CatalogError

    try:
        return Catalog.open(directory)
    except CatalogError as exc:
        raise click.ClickException(str(exc)) from exc


@catalog.command("add")
@CATALOG_OPTION
@click.option("--encoder", help="Shipped encoder name or directory; a new catalog records it (default: the shipped default).")
@click.option("--hop", type=float, help="Reference hop in seconds for a new catalog (default 0.5).")
@click.option("--index-factory", help="FAISS index_factory string for a new catalog (default: chosen by size).")
@click.argument("paths", nargs=-1, required=True)
def catalog_add(directory: str, encoder: str | None, hop: float | None, index_factory: str | None, paths: tuple[str, ...]) -> None:
    """Add audio files, folders and manifest.csv files (track_id,path[,title,artist,...]); creates the catalog if missing."""
    from monitor.catalog import Catalog, CatalogError
    from monitor.matcher import calibrate

    try:
        cat = Catalog.open_or_create(directory, encoder, hop, index_factory)
        report = cat.add(paths)
        if cat.tracks():
            calibrate(cat)
    except CatalogError as exc:
        raise click.ClickException(str(exc)) from exc
    for path, reason in report.skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    for path, track_id in report.duplicates:
        click.echo(f"duplicate {path}: the same audio is already {track_id}", err=True)
    click.echo(report.summary())


@catalog.command("list")
@CATALOG_OPTION
def catalog_list(directory: str) -> None:
    """One line per track: track_id, seconds, indexed windows, metadata (JSON)."""
    import json

    for track in _open_catalog(directory).tracks():
        click.echo(f"{track.track_id}\t{track.seconds:.1f}\t{track.windows}\t{json.dumps(track.metadata, ensure_ascii=False)}")


@catalog.command("remove")
@CATALOG_OPTION
@click.argument("track_id")
def catalog_remove(directory: str, track_id: str) -> None:
    """Remove TRACK_ID from the catalog."""
    from monitor.catalog import CatalogError

    try:
        _open_catalog(directory).remove(track_id)
    except CatalogError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"removed {track_id}")


@catalog.command("stats")
@CATALOG_OPTION
def catalog_stats(directory: str) -> None:
    """Tracks, windows, seconds, encoder and index of the catalog, as JSON."""
    import json

    click.echo(json.dumps(_open_catalog(directory).stats(), indent=2))


@main.command()
@CATALOG_OPTION
@click.option("--hop", type=float, help="Query hop in seconds (default: the catalog's); finer finds shorter excerpts.")
@click.option("--min-confidence", type=click.FloatRange(0, 1), help="Report matches at least this confident (default 0.99).")
@click.argument("files", nargs=-1, required=True)
def identify(directory: str, hop: float | None, min_confidence: float | None, files: tuple[str, ...]) -> None:
    """Print one JSON line per FILE: {"file", "matches": [{track_id, query_start, query_end, ref_start, ref_end, speed, score, confidence}]}."""
    import json

    from monitor.catalog import CatalogError
    from monitor.matcher import MIN_CONFIDENCE, identify_file

    cat = _open_catalog(directory)
    try:
        for path in files:
            click.echo(json.dumps(identify_file(cat, path, hop, MIN_CONFIDENCE if min_confidence is None else min_confidence)))
    except (CatalogError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
