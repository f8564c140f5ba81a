"""The `airtrace` command: a thin layer that parses arguments and calls one function per command."""

from __future__ import annotations

import logging

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
