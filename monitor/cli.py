"""The `airtrace` command: a thin layer that parses arguments and calls one function per command."""

from __future__ import annotations

import io
import logging
import math
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from monitor.constants import DEFAULT_HOP_SECONDS, NOTICE_CONFIDENCE, SCALE_WINDOWS
from monitor.health import STALE_SECONDS
from monitor.options import DEFAULT_REDIS_PREFIX, DEFAULT_REDIS_URL, THREADS, IngestOptions, MonitorOptions, UnknownConfig, WorkerOptions

SHIPPED_DEFAULT = "the shipped default encoder"


def shipped_encoder() -> str:
    """The encoders package's default, read when a command runs: importing `encoders` loads torch, which
    `--help` and the commands that need no model should not wait for."""
    from encoders import DEFAULT_ENCODER

    return DEFAULT_ENCODER


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange without nan and inf, which it lets through: nan compares false with every bound, inf passes an
    open one. A --read-timeout of nan never timed out (a stalled stream hung for good), a --min-confidence of nan
    selected nothing, a --min-unknown-seconds of nan ended in a traceback."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number in the range {self._describe_range()}.", param, ctx)
        return number


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail.")
def main(verbose: bool) -> None:
    """airtrace: find recorded music in radio and TV streams with neural audio fingerprints."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build loaded is noise to users
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its plugin set-up is too


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
    try:
        click.echo(f"encoder written to {run_training(cfg, run_dir)}")
    except (ValueError, OSError) as exc:  # EncoderError and AudioError are ValueErrors
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        raise click.exceptions.Exit(130) from None


# ---- airtrace bench: scripts that measure, not tests ----------------------------------------------


@main.group()
def bench() -> None:
    """Benchmarks: track-level and segment-level accuracy against baselines, and speed. Prints tables; --out writes JSON."""


def _bench_errors(run: Callable[[], None]) -> None:
    """Bad benchmark input ends in one clear message, never a traceback."""
    from encoders import AudioError, EncoderError
    from monitor.bench.references import BenchError
    from monitor.catalog import CatalogError

    try:
        run()
    except (BenchError, EncoderError) as exc:
        raise click.UsageError(str(exc)) from exc
    except (AudioError, CatalogError) as exc:
        raise click.ClickException(str(exc)) from exc


def _bench_inputs(command: Callable[..., None]) -> Callable[..., None]:
    """The reference set, engines and cache that `bench tracks` and `bench segments` share."""
    options = [
        click.option("--reference", multiple=True, required=True, help="Manifest.csv or folder of tracks to query (in the catalog); repeatable."),
        click.option("--distractors", multiple=True, help="Manifest.csv or folder of tracks only added to the catalog; repeatable."),
        click.option("--encoder", "encoders", multiple=True, default=lambda: [shipped_encoder()], show_default=SHIPPED_DEFAULT, help="Encoder name or directory; repeatable."),
        click.option("--landmark/--no-landmark", default=True, show_default=True, help="Also run the landmark (peak-pair) baseline."),
        click.option("--holdout", default=8, show_default=True, help="Reference tracks kept out of the catalog as non-catalog music."),
        click.option("--limit", type=int, help="Use at most this many tracks of each manifest (quick runs)."),
        click.option("--hop", default=DEFAULT_HOP_SECONDS, show_default=True, help="Catalog hop in seconds."),
        click.option("--seed", default=0, show_default=True),
        click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Where built catalogs are kept [~/.cache/airtrace/bench]."),
        click.option("--out", type=click.Path(dir_okay=False), help="Also write the results as JSON here."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _check_rows(ctx: click.Context, param: click.Parameter, rows: tuple[str, ...]) -> tuple[str, ...]:
    """Each --row read as a distortion chain before any catalog is built, so a bad one is one line."""
    from encoders import parse_chain

    for row in rows:
        try:
            parse_chain(row)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return rows


def _track_queries(command: Callable[..., None]) -> Callable[..., None]:
    """The queries that `bench tracks` and `bench compare` share."""
    options = [
        click.option("--queries", default=30, show_default=True, help="Queries per distortion row (each at every length); 30 take ~18 min on 2 cores with cached catalogs."),
        click.option("--negatives", default=60, show_default=True, help="Non-catalog queries per kind (held-out music, speech, noise)."),
        click.option("--lengths", default="1,3,5,10", show_default=True, help="Query lengths in seconds, comma-separated."),
        click.option("--row", "rows", multiple=True, callback=_check_rows, help="Distortion rows to run (e.g. tempo:1.1 or speed:1.03+aac:48); default all."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _run_track_queries(summary: bool, reference, distractors, encoders, landmark, holdout, limit, hop, seed, cache_dir, out,
                       queries, negatives, lengths, rows, distractor_counts: str | None = None) -> None:
    from monitor.bench.commands import default_cache_dir, run_tracks
    from monitor.bench.queries import TRACK_ROWS

    try:
        parsed = [float(x) for x in lengths.split(",")]
    except ValueError:
        raise click.UsageError(f"--lengths {lengths!r}: give seconds separated by commas, e.g. 1,3,5,10") from None
    _bench_errors(lambda: run_tracks(reference, distractors, encoders, landmark, queries, negatives, parsed, rows or TRACK_ROWS,
                                     holdout, limit, hop, seed, cache_dir or default_cache_dir(), out, summary, distractor_counts))


@bench.command("tracks")
@_bench_inputs
@_track_queries
@click.option("--distractor-counts", help="Run once per count of distractor tracks in the catalog (e.g. 100,300,all; "
              "each a stable sample holding the smaller ones) and print accuracy as the catalog grows.")
def bench_tracks(**options: Any) -> None:
    """Top-1 accuracy per distortion and query length, and false matches on non-catalog audio."""
    _run_track_queries(False, **options)


@bench.command("compare")
@_bench_inputs
@_track_queries
def bench_compare(**options: Any) -> None:
    """Encoders (names or trained directories) and the landmark baseline side by side, as in the paper's table:
    the `bench tracks` queries, plus parameters, speed on one core and index bytes per second of audio."""
    _run_track_queries(True, **options)


@bench.command("segments")
@_bench_inputs
@click.option("--preset", "presets", multiple=True, type=click.Choice(["easy", "medium", "hard"]), help="Difficulty; repeatable [all three].")
@click.option("--queries", default=30, show_default=True, help="Montage query files per preset.")
@click.option("--query-dir", type=click.Path(file_okay=False, path_type=Path), help="Where the MP3 queries and annotations.csv go [under the cache dir].")
def bench_segments(reference, distractors, encoders, landmark, holdout, limit, hop, seed, cache_dir, out, presets, queries, query_dir) -> None:
    """Pex-style montages: precision, recall, F1, Pex F and start/end errors per difficulty."""
    from monitor.bench.commands import default_cache_dir, run_segments

    _bench_errors(lambda: run_segments(reference, distractors, encoders, landmark, presets or ("easy", "medium", "hard"), queries,
                                       holdout, limit, hop, seed, cache_dir or default_cache_dir(), query_dir, out))


@bench.command("speed")
@click.option("--encoder", "encoders", multiple=True, default=lambda: [shipped_encoder()], show_default=SHIPPED_DEFAULT, help="Encoder name or directory; repeatable.")
@click.option("--reference", multiple=True, help="Manifest.csv or folder whose audio is indexed [the demo music].")
@click.option("--index-seconds", default=600.0, show_default=True, help="Seconds of reference audio to index.")
@click.option("--hop", default=DEFAULT_HOP_SECONDS, show_default=True, help="Catalog hop in seconds.")
@click.option("--sizes", default="10000,1000000", show_default=True, help="Catalog sizes (windows) to search, comma-separated.")
@click.option("--queries", default=1000, show_default=True, help="Searches timed per index.")
@click.option("--landmark/--no-landmark", default=True, show_default=True, help="Also time the landmark baseline's indexing.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the results as JSON here.")
def bench_speed(encoders, reference, index_seconds, hop, sizes, queries, landmark, out) -> None:
    """Indexing and embedding speed on one core; search speed and memory of catalogs up to 1 M windows (bench scale: 40 M)."""
    from monitor.bench.commands import run_speed

    try:
        parsed = [int(x) for x in sizes.split(",")]
    except ValueError:
        raise click.UsageError(f"--sizes {sizes!r}: give window counts separated by commas, e.g. 10000,1000000") from None
    _bench_errors(lambda: run_speed(encoders, reference, index_seconds, hop, parsed, queries, landmark, out))


@bench.command("scale")
@click.option("--encoder", default=shipped_encoder, show_default=SHIPPED_DEFAULT, help="Encoder name or directory whose embeddings are real.")
@click.option("--reference", default=None, help="Manifest.csv or folder whose windows are the real embeddings [the demo music].")
@click.option("--windows", "total", default=SCALE_WINDOWS, show_default=True, help="Windows in the index: real ones plus synthetic.")
@click.option("--factory", default=None, help="FAISS index factory [what `catalog add` would choose for --windows].")
@click.option("--search-params", multiple=True, help="Also search with these FAISS parameters (e.g. nprobe=16); repeatable. The catalog's own come first.")
@click.option("--hop", default=DEFAULT_HOP_SECONDS, show_default=True, help="Catalog hop in seconds.")
@click.option("--recall-queries", default=500, show_default=True, help="Queries whose first result is checked against exact search.")
@click.option("--batches", default=100, show_default=True, help="Search batches timed (one second of 200 streams' windows each).")
@click.option("--threads", default=1, show_default=True, help="FAISS threads of the worker that searches.")
@click.option("--seed", default=0, show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Where the embeddings and the index (while measured) are kept [~/.cache/airtrace/bench].")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the results as JSON here.")
def bench_scale(encoder, reference, total, factory, search_params, hop, recall_queries, batches, threads, seed, cache_dir, out) -> None:
    """Build an index of --windows windows (40 M: about 1 h and 8 GB on 2 cores), hold it in a worker process and
    report its memory, reload time, search latency per batch and recall@1 against exact search."""
    from monitor.bench.commands import default_cache_dir, run_scale

    _bench_errors(lambda: run_scale(encoder, reference, total, factory, search_params, hop, recall_queries, batches, threads, seed,
                                    cache_dir or default_cache_dir(), out))


@bench.command("backbones")
@click.option("--model", "models", multiple=True, default=["mert-v1-95m", "muq-large"], show_default=True,
              help="A published size (mert-v1-95m, muq-large) or BACKBONE=CONFIG.json; repeatable.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the results as JSON here.")
def bench_backbones(models: tuple[str, ...], out: str | None) -> None:
    """MERT and MuQ at their published size with random weights: load time, memory, windows/s and training step cost on one core."""
    from encoders.backbones import PUBLISHED
    from monitor.bench.commands import run_backbones

    for name in models:
        if name not in PUBLISHED and "=" not in name:
            raise click.UsageError(f"--model {name!r}: give one of {', '.join(PUBLISHED)} or BACKBONE=CONFIG.json")
    _bench_errors(lambda: run_backbones(models, out))


@bench.command("broadcast")
@click.option("--reference", multiple=True, required=True, help="Manifest.csv or folder of catalog tracks that the broadcast plays; repeatable.")
@click.option("--distractors", multiple=True, help="Manifest.csv or folder of tracks only added to the catalog; repeatable.")
@click.option("--encoder", default=shipped_encoder, show_default=SHIPPED_DEFAULT, help="Encoder name or directory.")
@click.option("--holdout", default=8, show_default=True, help="Reference tracks kept out of the catalog: the broadcast's non-catalog music.")
@click.option("--limit", type=int, help="Use at most this many tracks of each manifest (quick runs).")
@click.option("--plays", default=40, show_default=True, help="Catalog plays in the broadcast.")
@click.option("--seed", default=0, show_default=True)
@click.option("--hop", default=DEFAULT_HOP_SECONDS, show_default=True, help="Catalog hop in seconds.")
@click.option("--notice-confidence", default=NOTICE_CONFIDENCE, show_default=True, type=FiniteFloatRange(0, 1),
              help="Confidence at which a play is first noticed, as for `monitor --notice-confidence`.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Where the catalog and broadcast are kept [~/.cache/airtrace/bench].")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the results as JSON here.")
def bench_broadcast(reference, distractors, encoder, holdout, limit, plays, seed, hop, notice_confidence, cache_dir, out) -> None:
    """Play events on a synthetic broadcast: precision, recall, start/end error and detection latency."""
    from monitor.bench.broadcast import run_broadcast
    from monitor.bench.commands import _command, default_cache_dir
    from monitor.stages.play_state import PlayConfig

    _bench_errors(lambda: run_broadcast(reference, distractors, encoder, holdout, limit, plays, seed, hop, cache_dir or default_cache_dir(), out, _command(),
                                        PlayConfig(notice_confidence=notice_confidence)))


@bench.command("unknowns")
@click.option("--reference", multiple=True, required=True, help="Manifest.csv or folder of tracks (the dev split): the catalog, and the non-catalog songs, jingles and filler; repeatable.")
@click.option("--distractors", multiple=True, help="Manifest.csv or folder of tracks only added to the catalog; repeatable.")
@click.option("--encoder", default=shipped_encoder, show_default=SHIPPED_DEFAULT, help="Encoder name or directory.")
@click.option("--stations", default=4, show_default=True, type=click.IntRange(1), help="Synthetic stations, monitored at once.")
@click.option("--hours", default=3.0, show_default=True, type=FiniteFloatRange(0.05), help="Stream per station: the simulated day compressed into this.")
@click.option("--songs", default=12, show_default=True, type=click.IntRange(1), help="Non-catalog songs that air 2-5 times across stations.")
@click.option("--jingles", default=2, show_default=True, type=click.IntRange(0), help="Jingles (5-15 s) per station.")
@click.option("--jingle-minutes", default=10.0, show_default=True, type=FiniteFloatRange(0.5), help="Stream minutes between a jingle's airings (at least 3 airings each).")
@click.option("--fill", default=24, show_default=True, type=click.IntRange(1), help="Held-out tracks for non-catalog music aired once each (fewer where the catalog finds something of a held-out track).")
@click.option("--min-unknown-seconds", default=5.0, show_default=True, type=FiniteFloatRange(1.0),
              help=f"Shortest unknown stretch the monitor reports (`airtrace monitor` reports from {UnknownConfig.min_seconds:g} s; jingles need less).")
@click.option("--limit", type=int, help="Use at most this many tracks of each manifest (quick runs).")
@click.option("--seed", default=0, show_default=True)
@click.option("--hop", default=DEFAULT_HOP_SECONDS, show_default=True, help="Catalog hop in seconds.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Where the catalog and the day's audio are kept [~/.cache/airtrace/bench].")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the results and every pairing as JSON here.")
def bench_unknowns(reference, distractors, encoder, stations, hours, songs, jingles, jingle_minutes, fill, min_unknown_seconds,
                   limit, seed, hop, cache_dir, out) -> None:
    """Unknown music on a simulated day of several stations: repeats clustered, cluster purity, jingles, catalog plays, CPU."""
    from monitor.bench.commands import _command, default_cache_dir
    from monitor.bench.unknowns import DaySettings, run_unknowns

    settings = DaySettings(stations, hours, songs, jingles, jingle_minutes, fill, seed)
    _bench_errors(lambda: run_unknowns(reference, distractors, encoder, settings, limit, min_unknown_seconds, hop,
                                       cache_dir or default_cache_dir(), out, _command()))


@bench.command("chaos")
@click.option("--streams", default=20, show_default=True, help="Live HTTP streams of synthetic broadcasts of the demo music.")
@click.option("--minutes", default=16.0, show_default=True, help="Stream time of each broadcast; 10 or more also makes the worker-down and stream-down alerts fire, about 15 or more starves the workers until the lag alert fires.")
@click.option("--workers", default=2, show_default=True, help="airtrace worker processes.")
@click.option("--partitions", default=4, show_default=True, help="Partitions of the run's topics.")
@click.option("--seed", default=0, show_default=True, help="Seeds the broadcasts and the fault schedule.")
@click.option("--encoder", default=shipped_encoder, show_default=SHIPPED_DEFAULT, help="Encoder name or directory.")
@click.option("--broker-storage", type=click.Choice(["s3", "memory"]), default="s3", show_default=True,
              help="Tansu's topics on a local S3 server (the broker fault is a restart) or in its memory (a restart would wipe them, so the fault is a 20 s SIGSTOP).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), help="Where the broadcasts, catalog, fault-free baseline and logs go (the first three are reused when found there: a new folder after changing the pipeline) [a new temporary folder].")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the results as JSON here.")
def bench_chaos(streams, minutes, workers, partitions, seed, encoder, broker_storage, workdir, out) -> None:
    """Ingest, Tansu, workers and Redis under a seeded fault schedule: plays lost, doubled, boundary errors, alerts."""
    import tempfile

    from monitor.bench.chaos import run_chaos
    from monitor.bench.commands import _command

    workdir = workdir or Path(tempfile.mkdtemp(prefix="airtrace-chaos-"))
    click.echo(f"working in {workdir}", err=True)
    _bench_errors(lambda: run_chaos(streams, minutes, workers, seed, partitions, encoder, workdir, out, _command(), broker_storage == "s3"))


@bench.command("fleet")
@click.option("--streams", default=20, show_default=True, help="Live HTTP streams of synthetic broadcasts of the demo music.")
@click.option("--minutes", default=3.0, show_default=True, help="Stream time of each broadcast.")
@click.option("--workers", "worker_counts", default=[1, 2, 4], multiple=True, type=int, show_default=True,
              help="Fleet sizes measured one after the other; repeatable.")
@click.option("--partitions", default=4, show_default=True, help="Partitions of the run's topics (at least the largest fleet).")
@click.option("--seed", default=0, show_default=True, help="Seeds the broadcasts.")
@click.option("--encoder", default=shipped_encoder, show_default=SHIPPED_DEFAULT, help="Encoder name or directory.")
@click.option("--distractors", multiple=True, help="Manifest.csv or folder of tracks only added to the catalog (a realistic catalog size); repeatable.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), help="Where the broadcasts, catalog and logs go (found there, they are reused) [a new temporary folder].")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the results as JSON here.")
def bench_fleet(streams, minutes, worker_counts, partitions, seed, encoder, distractors, workdir, out) -> None:
    """Ingest, Tansu, 1/2/4 workers and Redis at real-time pace: streams per worker core, delays, lag, plays vs embedded mode."""
    import tempfile

    from monitor.bench.commands import _command
    from monitor.bench.fleet import run_fleet

    workdir = workdir or Path(tempfile.mkdtemp(prefix="airtrace-fleet-"))
    click.echo(f"working in {workdir}", err=True)
    _bench_errors(lambda: run_fleet(streams, minutes, worker_counts, seed, partitions, encoder, distractors, workdir, out, _command()))


@bench.command("streams")
@click.option("--reference", multiple=True, required=True, help="Manifest.csv or folder: the catalog, and the files monitored as streams; repeatable.")
@click.option("--encoder", default=shipped_encoder, show_default=SHIPPED_DEFAULT, help="Encoder name or directory.")
@click.option("--streams", default=50, show_default=True, help="Streams monitored at once (files, cycled).")
@click.option("--limit", type=int, help="Use at most this many tracks of each manifest.")
@click.option("--hop", default=DEFAULT_HOP_SECONDS, show_default=True, help="Catalog hop in seconds.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Where the catalog is kept [~/.cache/airtrace/bench].")
@click.option("--over-http", is_flag=True, help="Serve the files over HTTP at the pace they play (from another process), so that they are read as live streams are.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the results as JSON here.")
def bench_streams(reference, encoder, streams, limit, hop, cache_dir, over_http, out) -> None:
    """Streams one CPU core monitors in real time in embedded mode."""
    from monitor.bench.broadcast import run_streams
    from monitor.bench.commands import _command, default_cache_dir

    _bench_errors(lambda: run_streams(reference, encoder, streams, limit, hop, cache_dir or default_cache_dir(), out, _command(), over_http))


@bench.command("mux")
@click.option("--programs", default=10, show_default=True, type=click.IntRange(1, 40), help="Programs in the multiplex.")
@click.option("--multiplexes", default=1, show_default=True, type=click.IntRange(1), help="Multiplexes read at once, one reader each (copies of one).")
@click.option("--decode-turns", default=IngestOptions.decode_turns, show_default=True, type=click.IntRange(0),
              help="Readers that may decode at once, as for `ingest --decode-turns`; 0: as many as the cores.")
@click.option("--encoder", default=shipped_encoder, show_default=SHIPPED_DEFAULT, help="Encoder whose window and hop cut the streams.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the results as JSON here.")
def bench_mux(programs: int, multiplexes: int, decode_turns: int, encoder: str, out: str | None) -> None:
    """Ingest CPU per program of TV multiplexes built from the demo music, in CPU seconds."""
    from encoders import load_encoder
    from monitor.bench.mux import run_mux

    grid_of = load_encoder(encoder)
    _bench_errors(lambda: run_mux(programs, grid_of.sample_rate, grid_of.window_samples, grid_of.hop_samples, out, click.echo,
                                  multiplexes, decode_turns))


@bench.command("classes")
@click.option("--music", required=True, help="Held-out music: a folder or a corpus manifest.csv (the dev split: data/corpus/dev/manifest.csv).")
@click.option("--classifier", "classifiers", multiple=True, default=("classes",), show_default=True, help="Shipped name or directory; repeat to compare.")
@click.option("--voice", default=None, help="Held-out voice [encoders.speech.HELD_OUT_VOICE].")
@click.option("--examples", default=100, show_default=True, type=click.IntRange(1), help="Examples per class, each cut into 1 s windows.")
@click.option("--seconds", default=4.0, show_default=True, type=FiniteFloatRange(1.0), help="Length of each example.")
@click.option("--seed", default=1, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the results as JSON here.")
def bench_classes(music, classifiers, voice, examples, seconds, seed, out) -> None:
    """Content classes (music, speech, speech over music, silence, other): per-class accuracy on held-out music and voice, and CPU cost."""
    from encoders.speech import HELD_OUT_VOICE
    from monitor.bench.classes import run_classes
    from monitor.bench.commands import _command

    _bench_errors(lambda: run_classes(classifiers, music, voice or HELD_OUT_VOICE, examples, seconds, seed, out, _command()))


@bench.command("playlog")
@click.option("--playlog", required=True, help="An empty PostgreSQL database: postgresql://user@host:port/db (it is migrated, then filled).")
@click.option("--stations", default=100, show_default=True, type=click.IntRange(1))
@click.option("--days", default=365, show_default=True, type=click.IntRange(1))
@click.option("--plays-per-day", default=274, show_default=True, type=click.IntRange(1), help="Plays per station and day (274: 10 M rows a year for 100 stations).")
@click.option("--upsert-plays", default=20000, show_default=True, type=click.IntRange(1), help="Plays written through the idempotent upsert, timed apart.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the results as JSON here.")
def bench_playlog(playlog, stations, days, plays_per_day, upsert_plays, out) -> None:
    """The play log on PostgreSQL at scale: insert rate and the latency of every report query."""
    from monitor.bench.commands import _command
    from monitor.bench.report import publish
    from monitor.playlog.bench import run_playlog_bench
    from monitor.playlog.store import PlayLogError

    try:
        tables, extra = run_playlog_bench(playlog, stations, days, plays_per_day, upsert_plays, progress=lambda line: click.echo(line, err=True))
    except PlayLogError as exc:
        raise click.ClickException(str(exc)) from exc
    publish(tables, out, _command(), extra)


if TYPE_CHECKING:
    from datetime import datetime, tzinfo

    from monitor.catalog import Catalog
    from monitor.catalog.parts import PartReport


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
@click.option("--hop", type=float, help=f"Reference hop in seconds for a new catalog (default {DEFAULT_HOP_SECONDS}).")
@click.option("--index-factory", help="FAISS index_factory string for a new catalog (default: chosen by size).")
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True,
              help="Processes embedding at once on this machine; their parts are committed together as one generation.")
@click.option("--part", "part_spec", metavar="I/N", help="Only embed part I (0-based) of N of PATHS into the catalog folder's parts/ "
              "staging area, for a build spread over machines (a Kubernetes Indexed Job); --merge-parts N commits them.")
@click.option("--merge-parts", type=click.IntRange(1), metavar="N", help="Commit the N parts that --part I/N wrote for the same PATHS as one new generation.")
@click.argument("paths", nargs=-1, required=True)
def catalog_add(directory: str, encoder: str | None, hop: float | None, index_factory: str | None, jobs: int, part_spec: str | None,
                merge_parts: int | None, paths: tuple[str, ...]) -> None:
    """Add audio files, folders and manifest.csv files (track_id,path[,title,artist,...]); creates the catalog if missing."""
    from monitor.catalog import parts as catalog_parts
    from monitor.catalog import AddReport, Catalog, CatalogError
    from monitor.stages.calibration import calibrate

    if sum([jobs > 1, part_spec is not None, merge_parts is not None]) > 1:
        raise click.UsageError("give one of --jobs, --part and --merge-parts")
    report = AddReport()
    try:
        with _signals_interrupt() if jobs > 1 else nullcontext():
            if part_spec is not None:
                part, parts = catalog_parts.parse_part(part_spec)
                _report_part(part_spec, catalog_parts.write_part(directory, paths, part, parts, encoder, hop))
                return
            if jobs > 1:
                cat, _ = catalog_parts.build_in_parallel(directory, paths, jobs, encoder, hop, index_factory, report=report)
            elif merge_parts is not None:
                cat, _ = catalog_parts.merge_parts(directory, paths, merge_parts, encoder, hop, index_factory, report=report)
            else:
                cat = Catalog.open_or_create(directory, encoder, hop, index_factory)
                cat.add(paths, report=report)
            if cat.tracks():
                calibrate(cat)
    except CatalogError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        committed = _committed(directory, report.added)
        click.echo(f"\ninterrupted: {len(committed)} of the {len(report.added)} tracks indexed so far were committed"
                   f"{': ' + ', '.join(committed) if committed else ''}; run the same command again to add the rest"
                   f"{' (it reuses the parts that were finished)' if jobs > 1 else ''}", err=True)
        raise SystemExit(130) from None
    for path, reason in report.skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    for path, track_id in report.duplicates:
        click.echo(f"duplicate {path}: the same audio is already {track_id}", err=True)
    click.echo(report.summary())
    if report.skipped and not report.added and not report.duplicates:
        raise SystemExit(1)  # every input failed


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM (Kubernetes, systemd, `kill`) and SIGINT stop a `--jobs` parent as Ctrl-C in its terminal does, also
    where SIGINT was ignored (a script's background job): a KeyboardInterrupt, on which it stops its parts. Only
    there: the parent waits in Python, while a process that decodes can lose the exception inside PyAV, and then
    would not stop at all (the default SIGTERM ends it at once; its commits are atomic)."""
    previous = {number: signal.signal(number, signal.default_int_handler) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _report_part(part_spec: str, report: PartReport) -> None:
    for path, reason in report.skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    reused = " (a finished part of the same files, encoder and catalog tracks: not embedded again)" if report.reused else ""
    click.echo(f"part {part_spec}: embedded {len(report.added)}, skipped {len(report.skipped)}{reused}; commit the parts with --merge-parts")


def _committed(directory: str, track_ids: list[str]) -> list[str]:
    """Those of `track_ids` that the catalog on disk holds: what an interrupted add did commit."""
    from monitor.catalog import Catalog, CatalogError

    try:
        on_disk = {t.track_id for t in Catalog.open(directory).tracks()}
    except CatalogError:
        return []
    return [t for t in track_ids if t in on_disk]


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
@click.option("--hop", type=FiniteFloatRange(0, min_open=True), help="Query hop in seconds (default: the catalog's); finer finds shorter excerpts.")
@click.option("--min-confidence", type=FiniteFloatRange(0, 1), help="Report matches at least this confident (default 0.99).")
@click.argument("files", nargs=-1, required=True)
def identify(directory: str, hop: float | None, min_confidence: float | None, files: tuple[str, ...]) -> None:
    """Print one JSON line per FILE (a folder: each audio file in it; -: audio piped in): {"file", "matches": [{track_id,
    query_start, query_end, ref_start, ref_end, speed, score, confidence}]}."""
    import json

    from monitor.catalog import CatalogError
    from monitor.stages.identify import identify_file
    from monitor.stages.matcher import MIN_CONFIDENCE

    cat = _open_catalog(directory)
    level = MIN_CONFIDENCE if min_confidence is None else min_confidence
    lines = failed = 0
    try:
        for arg in files:
            if arg == "-":  # audio piped in (from ffmpeg, curl, a recorder): read whole, then matched as a file
                piped = _Piped(click.get_binary_stream("stdin").read())
                found = [identify_file(cat, piped, hop, level, name="-") if piped.getbuffer().nbytes else
                         {"file": "-", "error": "nothing was piped in; pipe audio into identify -, or give files"}]
            else:
                found = [identify_file(cat, path, hop, level) for path in _audio_files(arg)]
            for line in found or [{"file": arg, "error": "no audio files in this folder"}]:
                lines, failed = lines + 1, failed + ("error" in line)
                click.echo(json.dumps(line))
    except (CatalogError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if failed == lines:
        click.echo(f"every file failed ({failed}); each line's error says why", err=True)
        raise SystemExit(1)


class _Piped(io.BytesIO):
    """Audio piped into `identify -`, named so in messages."""

    def __str__(self) -> str:
        return "the audio piped in"


def _audio_files(path: str) -> list[str]:
    """A file as given; a folder's audio files, sorted, from its sub-folders too (as `catalog add` reads a folder)."""
    from pathlib import Path

    from encoders import audio_files

    return [str(f) for f in audio_files(Path(path))] if Path(path).is_dir() else [path]


# ---- Kafka and Redis services: `airtrace ingest` and `airtrace worker` ---------------------------
# Every option can also be set by the environment variable of the same name: --redis-url is AIRTRACE_REDIS_URL.


def _env_options(*options: click.Option) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _env(name: str, *args: object, **kwargs: object) -> click.Option:
    """An option whose environment variable is AIRTRACE_ and its name in capitals (--broker: AIRTRACE_BROKER)."""
    return click.option(name, *args, envvar="AIRTRACE_" + name.lstrip("-").replace("-", "_").upper(), show_envvar=True, **kwargs)


KAFKA_OPTIONS = _env_options(
    _env("--broker", default="127.0.0.1:9092", show_default=True, help="Kafka bootstrap servers, host:port[,host:port...]."),
    _env("--topic-prefix", default="airtrace", show_default=True, help="Topics are PREFIX.windows, .hits, .plays and .dead-letters."),
    _env("--partitions", type=click.IntRange(1), default=12, show_default=True, help="Partitions of topics this process creates (the most workers that share the work)."),
    _env("--replication", type=click.IntRange(1), default=1, show_default=True, help="Replication factor of topics this process creates."),
    _env("--sasl-mechanism", type=click.Choice(["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]), help="Authenticate to Kafka with SASL."),
    _env("--sasl-username", help="SASL username."),
    _env("--sasl-password", help="SASL password (prefer the environment variable)."),
    _env("--tls", is_flag=True, help="Connect to Kafka with TLS (implied by any --tls-* file)."),
    _env("--tls-ca-file", type=click.Path(exists=True, dir_okay=False), help="CA bundle that signed the brokers' certificates."),
    _env("--tls-cert-file", type=click.Path(exists=True, dir_okay=False), help="Client certificate for mutual TLS."),
    _env("--tls-key-file", type=click.Path(exists=True, dir_okay=False), help="Client certificate's key."),
    _env("--startup-timeout", type=FiniteFloatRange(0, min_open=True),
         help="Seconds to wait for Kafka to answer at start-up before stopping with an error [default: 15]."),  # broker.STARTUP_TIMEOUT_SECONDS
)
UNKNOWN_OPTIONS = _env_options(
    _env("--min-unknown-seconds", type=FiniteFloatRange(1), default=UnknownConfig.min_seconds, show_default=True,
         help="Music no catalog play covers is an unknown stretch from this long (lower it to find jingles and ads)."),
    _env("--unknown-retention-days", type=FiniteFloatRange(0, min_open=True), default=UnknownConfig.retention_days, show_default=True,
         help="Unknown stretches are kept and searched for repeats this long after they aired."),
)


def _unknown_config(min_unknown_seconds: float, unknown_retention_days: float) -> UnknownConfig:
    return UnknownConfig(min_seconds=min_unknown_seconds, retention_days=unknown_retention_days)


THREADS_OPTION = _env("--threads", type=click.IntRange(1), default=THREADS, show_default=True,
                      help="CPU threads that embed and search. One spends the least CPU per stream; for more cores run more workers.")

READING_OPTIONS = _env_options(
    _env("--decode-turns", type=click.IntRange(0), default=IngestOptions.decode_turns, show_default=True,
         help="Stream readers that may decode at once; more spend CPU handing Python's interpreter lock to each other. "
              "0: as many as the process may use cores."),
    _env("--read-timeout", type=FiniteFloatRange(1), default=IngestOptions.read_timeout, show_default=True,
         help="Seconds without data after which a live stream has stalled and is reopened. A live HLS playlist gets at least "
              "three of its segments' target duration (FFmpeg waits for the next segment inside one read)."),
)


def _ingest_options(realtime: bool, decode_turns: int, read_timeout: float) -> IngestOptions:
    return IngestOptions(realtime=realtime, decode_turns=decode_turns, read_timeout=read_timeout)

NOTICE_OPTION = _env("--notice-confidence", type=FiniteFloatRange(0, 1), default=NOTICE_CONFIDENCE, show_default=True,
                     help="Confidence at which a play is first noticed (a provisional event, withdrawn if it stops short; its started "
                          "event waits until it is sure). Lower: sooner notices and more withdrawn; 0.999: no notice before a play is sure.")

METRICS_OPTIONS = _env_options(
    _env("--metrics-port", type=click.IntRange(0, 65535), help="Serve Prometheus metrics on this port (default: not served)."),
    _env("--metrics-host", default="127.0.0.1", show_default=True, help="Address the metrics server binds."),
)


def _kafka(broker: str, topic_prefix: str, partitions: int, replication: int, startup_timeout: float | None, **auth: object):
    from monitor.fleet.broker import STARTUP_TIMEOUT_SECONDS, KafkaSettings, Topics

    try:
        settings = KafkaSettings(broker, **auth, startup_timeout=startup_timeout or STARTUP_TIMEOUT_SECONDS)
        return settings, Topics.with_prefix(topic_prefix, partitions, replication)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _check_port_free(host: str, port: int, option: str) -> None:
    import socket

    try:
        socket.create_server((host, port)).close()
    except OSError as exc:
        raise click.UsageError(f"cannot serve on {host}:{port}: {exc.strerror or exc}; give a free {option}") from None


def _metrics(metrics_port: int | None, metrics_host: str, holds_catalog: bool = True):
    from monitor import metrics

    created = metrics.create(holds_catalog=holds_catalog)
    if metrics_port is not None:
        try:
            metrics.serve(metrics_port, metrics_host)
        except OSError as exc:  # the port is taken, or the host does not resolve to an address of this machine
            raise click.UsageError(f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc.strerror or exc}; give a free --metrics-port "
                                   "and a --metrics-host that is an address of this machine (127.0.0.1, or 0.0.0.0 for all)") from None
    return created


STREAMS_HELP = ("YAML list of streams (id, url; optional name, metadata, options, audio, air_start: a recorded file's ISO 8601 air time) and multiplexes "
                "(mux, url, programs; optional audio, metadata, options, air_start).")
AUDIO_OPTIONS = _env_options(
    click.option("--audio", help="Which audio track of the URLS: KEY=VALUE,... with program (number or service name), language, "
                 "index, disposition (main or description); `airtrace streams probe URL` lists them."),
    click.option("--programs", help="Read each URL as a multiplex: 'all' its programs, or numbers and service names separated "
                 "by commas; each program is a stream with the id URLID-PROGRAM."),
)


AIR_START_OPTIONS = _env_options(
    click.option("--air-start-from", metavar="name:FORMAT", help="The URLS are recordings (logger files) named by when they aired: name:FORMAT, a strptime "
                 "format of the whole file name without its extension (name:radio1-%Y-%m-%dT%H-%M-%S, name:%Y%m%d_%H%M). Their plays "
                 "then carry the real air times, and a recording monitored again adds no plays. A file whose name does not match is "
                 "skipped. With --audio and --programs too (a TV channel recorded off air). In a --streams file: air_start per entry."),
    click.option("--air-start-zone", metavar="ZONE", default="UTC", show_default=True, help="The time zone of the file names' times (an IANA name: "
                 "Europe/Paris), unless the format holds %z. A time its clocks showed twice (the hour they go back) is the first; "
                 "a file named with one they skipped is skipped."),
    click.option("--stream", "stream_id", metavar="ID", help="The URLS are recordings of one stream, ID (a logger's hourly files): read one "
                 "after another, in the order they aired, as one station, so that a song cut where one file ends and the next "
                 "begins is one play. Without it, each file is a stream of its own, named after the file."),
)


SQLITE_HEADER = b"SQLite format 3\x00"


def _is_sqlite(path: Path) -> bool:
    """Whether `path` is a SQLite database file (a pipe or a device is not read)."""
    if not path.is_file():
        return False
    with path.open("rb") as existing:
        return existing.read(len(SQLITE_HEADER)) == SQLITE_HEADER


def _check_events_file(events: str | None, playlog: str | None = None) -> None:
    """Refuse, before anything is done rather than after, an --events file that cannot be written, or that is a SQLite
    database or the play log's file: events appended to it went between its pages, to be overwritten by the next."""
    if not events:
        return
    fix = "give the events a file of their own, such as plays.jsonl (the play log goes beside it, as plays.sqlite)"
    if playlog and "://" not in playlog and Path(events).resolve() == Path(playlog).resolve():
        raise click.UsageError(f"--events {events} is the play log's file too; {fix}")
    try:
        if _is_sqlite(Path(events)):
            raise click.UsageError(f"--events {events} is a SQLite database (a play log?), not a file of events; {fix}")
        open(events, "a", encoding="utf-8").close()
    except OSError as exc:
        raise click.UsageError(f"--events {events}: {exc.strerror}; give a file in an existing folder that you may write to") from None


def _sources(urls: tuple[str, ...], streams: str | None, audio: str | None, programs: str | None, air_start_from: str | None,
             air_start_zone: str, stream_id: str | None) -> list:
    """The streams of a streams file and of the command line (its URLs with --audio and --programs, and their air starts;
    with --stream, recordings of one stream)."""
    from monitor.stages.ingest import load_sources
    from monitor.stages.sources import AirStartFromName, ConfigError, Recordings, sources_from_urls
    from monitor.stages.mux import check_unique_ids, command_line_sources

    _check_air_start_zone(air_start_from)
    air_start = AirStartFromName.parse(air_start_from, air_start_zone) if air_start_from else None
    given = sources_from_urls(urls, air_start)
    if stream_id is not None and (audio or programs):
        raise ConfigError("--stream joins recordings of one station's audio; give --audio or --programs in a run without it")
    named = [Recordings.of(stream_id, given)] if stream_id is not None and urls else command_line_sources(given, audio, programs)
    sources = (load_sources(streams) if streams else []) + named
    if not sources:
        raise ConfigError("no stream left to monitor: the errors above say why")
    check_unique_ids(sources, "the streams file and the command line")
    return sources


def _check_air_start_zone(air_start_from: str | None) -> None:
    """--air-start-zone is read with --air-start-from alone: given on the command line without it, it changed nothing, without
    a word. Only the command line is this run's word: a value from elsewhere (an environment that holds a deployment's
    settings for every run, were the option read from one) may go unused."""
    if air_start_from is None and click.get_current_context().get_parameter_source("air_start_zone") is click.ParameterSource.COMMANDLINE:
        raise click.UsageError("--air-start-zone is the time zone of the file names' times that --air-start-from reads, and no --air-start-from "
                               "was given: give --air-start-from name:FORMAT with it, or leave --air-start-zone out")


@main.command()
@click.argument("urls", nargs=-1)
@_env("--streams", type=click.Path(exists=True, dir_okay=False), help=STREAMS_HELP)
@_env("--encoder", default=shipped_encoder, show_default=SHIPPED_DEFAULT, help="The workers' encoder, whose window and hop cut the streams: a shipped name or a directory.")
@_env("--sample-format", type=click.Choice(["int16", "float16"]), default="int16", show_default=True, help="How window samples travel.")
@click.option("--realtime", is_flag=True, help="Pace local files at real time, as if on air.")
@READING_OPTIONS
@AUDIO_OPTIONS
@AIR_START_OPTIONS
@KAFKA_OPTIONS
@METRICS_OPTIONS
def ingest(urls: tuple[str, ...], streams: str | None, encoder: str, sample_format: str, realtime: bool, decode_turns: int, read_timeout: float,
           audio: str | None, programs: str | None, air_start_from: str | None, air_start_zone: str, stream_id: str | None, metrics_port: int | None,
           metrics_host: str,
           **kafka: object) -> None:
    """Read streams (URLS and/or --streams) and publish their windows to Kafka, until stopped."""
    import asyncio

    from encoders import EncoderError, load_encoder
    from monitor.fleet.broker import BrokerError
    from monitor.stages.sources import ConfigError
    from monitor.fleet.kafka_records import SampleFormat
    from monitor.fleet.publish import PublishOptions, publish_windows
    from monitor.stages.windows import WindowGrid

    if not urls and not streams:
        raise click.UsageError("give stream URLs or files, or --streams FILE")
    try:
        sources = _sources(urls, streams, audio, programs, air_start_from, air_start_zone, stream_id)
        grid = WindowGrid.for_encoder(load_encoder(encoder))
    except (ConfigError, EncoderError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    settings, topics = _kafka(**kafka)
    options = PublishOptions(sample_format=SampleFormat(sample_format))
    try:
        asyncio.run(publish_windows(sources, grid, settings, topics, _ingest_options(realtime, decode_turns, read_timeout), options,
                                    _metrics(metrics_port, metrics_host, holds_catalog=False)))
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@_env("--catalog", required=True, type=click.Path(exists=True, file_okay=False), help="The catalog directory (its encoder embeds the windows).")
@_env("--redis-url", default=DEFAULT_REDIS_URL, show_default=True, help="Where play state lives; rediss:// for TLS.")
@_env("--redis-username", help="Redis ACL username.")
@_env("--redis-password", help="Redis AUTH password (prefer the environment variable).")
@_env("--redis-tls-ca-file", type=click.Path(exists=True, dir_okay=False), help="CA bundle that signed Redis's certificate.")
@_env("--redis-tls-cert-file", type=click.Path(exists=True, dir_okay=False), help="Client certificate for Redis TLS.")
@_env("--redis-tls-key-file", type=click.Path(exists=True, dir_okay=False), help="Client certificate's key.")
@_env("--redis-prefix", default=DEFAULT_REDIS_PREFIX, show_default=True, help="Prefix of every Redis key (one per deployment sharing a Redis).")
@_env("--group", default=WorkerOptions.group, show_default=True, help="Kafka consumer group: workers of one group share the streams.")
@_env("--batch-size", type=click.IntRange(1), default=WorkerOptions.batch_size, show_default=True, help="Windows per embedding batch, across streams.")
@_env("--batch-wait", type=FiniteFloatRange(0, min_open=True), default=WorkerOptions.batch_wait, show_default=True, help="Seconds a batch waits to fill.")
@_env("--neighbours", type=click.IntRange(1), default=WorkerOptions.k, show_default=True, help="Catalog neighbours searched per window; the matcher is calibrated for as many.")
@THREADS_OPTION
@NOTICE_OPTION
@_env("--session-timeout", type=FiniteFloatRange(1), default=WorkerOptions.session_timeout, show_default=True, help="Seconds of silence before a worker's streams go to the others.")
@_env("--reload-seconds", type=FiniteFloatRange(0, min_open=True), default=WorkerOptions.reload_seconds, show_default=True, help="How often to look for catalog changes.")
@_env("--web-port", type=click.IntRange(1, 65535), help="Serve Faust's web views on this port (default: off).")
@_env("--playlog", help="The play log's database (postgresql://...): unknown stretches are kept there, shared by all workers "
      "[default: each worker keeps its own in memory, and repeats heard by different workers are not found].")
@UNKNOWN_OPTIONS
@KAFKA_OPTIONS
@METRICS_OPTIONS
def worker(catalog: str, redis_url: str, redis_username: str | None, redis_password: str | None, redis_tls_ca_file: str | None,
           redis_tls_cert_file: str | None, redis_tls_key_file: str | None, redis_prefix: str, group: str, batch_size: int,
           batch_wait: float, neighbours: int, threads: int, notice_confidence: float, session_timeout: float, reload_seconds: float, web_port: int | None,
           playlog: str | None, min_unknown_seconds: float, unknown_retention_days: float,
           metrics_port: int | None, metrics_host: str, **kafka: object) -> None:
    """Embed windows from Kafka, search the catalog and publish play events; run several to share the load."""
    import redis

    from monitor.fleet.broker import BrokerError
    from monitor.catalog import Catalog, CatalogError
    from monitor.fleet.redis_state import RedisSettings, RedisStateStore
    from monitor.fleet.worker import run_worker
    from monitor.stages.play_state import PlayConfig

    settings, topics = _kafka(**kafka)
    redis_settings = RedisSettings(redis_url, redis_username, redis_password, redis_tls_ca_file, redis_tls_cert_file, redis_tls_key_file, redis_prefix)
    try:
        store = RedisStateStore(redis_settings)
        store.ping()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    except redis.RedisError as exc:
        raise click.ClickException(f"cannot use Redis at {redis_settings.redacted_url()}: {exc}; check --redis-url and its credentials") from exc
    try:
        cat = Catalog.open(catalog)
    except CatalogError as exc:
        raise click.ClickException(str(exc)) from exc
    options = WorkerOptions(group=group, k=neighbours, batch_size=batch_size, batch_wait=batch_wait, threads=threads, session_timeout=session_timeout,
                            reload_seconds=reload_seconds, web_port=web_port, plays=PlayConfig(notice_confidence=notice_confidence),
                            unknowns=_unknown_config(min_unknown_seconds, unknown_retention_days))
    if web_port is not None:  # Faust would find out after starting, with a traceback
        _check_port_free(options.web_host, web_port, "--web-port")
    unknowns = _open_playlog(playlog).unknown_store() if playlog else None
    try:
        run_worker(cat, store, settings, topics, options, _metrics(metrics_port, metrics_host), unknowns=unknowns)
    except (CatalogError, BrokerError) as exc:  # an empty catalog cannot calibrate the matcher
        raise click.ClickException(str(exc)) from exc


@main.command()
@_env("--metrics-port", type=click.IntRange(0, 65535), required=True, help="The port the checked process serves its metrics on.")
@_env("--metrics-host", default="127.0.0.1", show_default=True, help="Where the checked process serves them.")
@click.option("--stale-seconds", type=FiniteFloatRange(0, min_open=True), default=STALE_SECONDS, show_default=True,
              help="A loop (worker agent, embedded loop) silent this long is stuck.")
@click.option("--loops-only", is_flag=True, help="Judge only whether it answers and its loops beat, not its catalog (a liveness probe: a restart mends no catalog).")
def health(metrics_port: int, metrics_host: str, stale_seconds: float, loops_only: bool) -> None:
    """Exit 0 when the process serving metrics there is healthy: it answers, none of its loops is stuck and its
    catalog can be searched; else exit 1 naming what is wrong (the container's health check)."""
    from monitor.health import check

    host = "127.0.0.1" if metrics_host == "0.0.0.0" else metrics_host
    found = check(f"http://{host}:{metrics_port}/metrics", stale_seconds, catalog=not loops_only)
    if found:
        raise click.ClickException("; ".join(found))
    click.echo("healthy")


# ---- one process, no Kafka, no Redis: `airtrace monitor` and `airtrace demo` --------------------


@main.command("monitor")
@click.argument("urls", nargs=-1)
@click.option("--catalog", "catalog_dir", required=True, type=click.Path(exists=True, file_okay=False), help="The catalog directory (its encoder embeds the windows).")
@click.option("--streams", type=click.Path(exists=True, dir_okay=False), help=STREAMS_HELP)
@click.option("--events", type=click.Path(dir_okay=False), help="Append play events to this file as JSON lines.")
@click.option("--realtime", is_flag=True, help="Pace local files at real time, as if on air (files are read as fast as they decode otherwise).")
@READING_OPTIONS
@click.option("--batch-size", type=click.IntRange(1), default=MonitorOptions.batch_size, show_default=True, help="Windows per embedding batch, across streams.")
@THREADS_OPTION
@NOTICE_OPTION
@AUDIO_OPTIONS
@AIR_START_OPTIONS
@_env("--playlog", help="The play log (SQLite file or postgresql:// URL) [beside --events as .sqlite, else ~/.local/share/airtrace/plays.sqlite].")
@click.option("--no-playlog", is_flag=True, help="Keep no play log.")
@UNKNOWN_OPTIONS
@METRICS_OPTIONS
def monitor_command(urls: tuple[str, ...], catalog_dir: str, streams: str | None, events: str | None, realtime: bool, decode_turns: int, read_timeout: float,
                    batch_size: int, threads: int, notice_confidence: float, audio: str | None, programs: str | None, air_start_from: str | None,
                    air_start_zone: str, stream_id: str | None, playlog: str | None, no_playlog: bool,
                    min_unknown_seconds: float, unknown_retention_days: float, metrics_port: int | None, metrics_host: str) -> None:
    """Monitor URLS (files, HTTP, HLS, RTMP, RTSP, UDP, RTP) and --streams in one process; print plays as they happen."""
    from monitor.catalog import CatalogError
    from monitor.embedded import EventsUnwritten, NothingHeard, run_embedded
    from monitor.events import Event, PlayEvent, describe
    from monitor.stages.play_state import PlayConfig
    from monitor.stages.sources import ConfigError

    if not urls and not streams:
        raise click.UsageError("give stream URLs or files, or --streams FILE")
    try:
        sources = _sources(urls, streams, audio, programs, air_start_from, air_start_zone, stream_id)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    log_location = None if no_playlog else playlog or _default_playlog(events)
    _check_events_file(events, log_location)
    options = MonitorOptions(batch_size=batch_size, threads=threads, ingest=_ingest_options(realtime, decode_turns, read_timeout),
                             plays=PlayConfig(notice_confidence=notice_confidence), unknowns=_unknown_config(min_unknown_seconds, unknown_retention_days))
    plays_log = _open_playlog(log_location, migrate=True) if log_location else None
    unwritten = None
    plays: Counter[str] = Counter()  # by stream that emitted an event (a multiplex input is a stream per program): its plays ended

    def on_event(event: Event) -> None:
        click.echo(describe(event))
        plays[event.stream_id] += int(isinstance(event, PlayEvent) and event.state == "ended")

    try:
        run_embedded(catalog_dir, sources, options, _metrics(metrics_port, metrics_host), on_event, events, plays_log)
    except (CatalogError, NothingHeard) as exc:
        raise click.ClickException(str(exc)) from exc
    except EventsUnwritten as exc:
        unwritten = exc
    click.echo(f"{plays.total()} plays on {len(plays)} stream(s)" + (f"; events in {events}" if events else "")
               + (f"; play log in {plays_log.where}" if plays_log else ""))
    if unwritten:
        raise click.ClickException(str(unwritten))


@main.command()
@click.option("--workdir", default="airtrace-demo", show_default=True, type=click.Path(file_okay=False), help="Where the demo catalog, broadcast and plays.jsonl go (reused on the next run).")
@click.option("--realtime", is_flag=True, help="Play the broadcast at real time, as a live stream (about four minutes).")
def demo(workdir: str, realtime: bool) -> None:
    """Build a demo catalog and broadcast from the shipped music, monitor it, and compare with the truth."""
    from encoders import AudioError, EncoderError
    from monitor.catalog import CatalogError
    from monitor.demo.run import main as run_demo

    try:
        run_demo(workdir, realtime, click.echo)
    except (EncoderError, CatalogError, AudioError) as exc:
        raise click.ClickException(str(exc)) from exc


# ---- TV inputs: what an input carries, to write a streams file -----------------------------------


@main.group()
def streams() -> None:
    """Inspect inputs before monitoring them."""


@streams.command("probe")
@click.argument("url")
@click.option("--option", "options", multiple=True, help="FFmpeg input option KEY=VALUE (e.g. rtsp_transport=tcp); repeatable.")
def streams_probe(url: str, options: tuple[str, ...]) -> None:
    """List the programs (service name, provider) and audio tracks (index, codec, channels, language,
    main or description) of URL, as the audio and programs fields of a streams file select them."""
    import av

    from monitor.stages.mux import describe_inventory, probe
    from monitor.stages.sources import ConfigError, ffmpeg_options

    unpaired = [option for option in options if "=" not in option]
    if unpaired:
        raise click.UsageError(f"--option {unpaired[0]!r} is not KEY=VALUE (e.g. rtsp_transport=tcp)")
    try:
        parsed = ffmpeg_options({"options": dict(option.split("=", 1) for option in options)}, "--option")
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        click.echo(describe_inventory(probe(url, parsed)))
    except (av.FFmpegError, OSError) as exc:
        raise click.ClickException(f"cannot open {url}: {exc}; check the URL and that FFmpeg can read it") from exc


# ---- the play log: `airtrace plays ...` -----------------------------------------------------------


def _default_playlog(events: str | None) -> str:
    from monitor.playlog.store import beside, default_location

    return str(beside(events) if events else default_location())


def _open_playlog(location: str, migrate: bool = False):
    from monitor.playlog.store import PlayLog, PlayLogError

    try:
        return PlayLog.open(location, migrate=migrate)
    except PlayLogError as exc:
        raise click.ClickException(str(exc)) from exc


def _station_playlog(location: str, station: str | None):
    """The play log, for a report or list of `station`: one it has never heard of is a misspelt stream id, whose
    empty report would read as a station with no plays."""
    from monitor.playlog.queries import has_station, stations

    log = _open_playlog(location)
    if station is not None and not has_station(log, station):
        known = stations(log)
        shown = ", ".join(known[:10]) + (f" and {len(known) - 10} more" if len(known) > 10 else "")
        raise click.ClickException(f"no station {station!r} in the play log at {log.where}; its stations are: {shown or 'none yet'}")
    return log


PLAYLOG_OPTION = _env("--playlog", default=lambda: _default_playlog(None), show_default="~/.local/share/airtrace/plays.sqlite",
                      help="The play log: a SQLite file (what airtrace monitor writes) or a postgresql://user:password@host/db URL.")
OUTPUT_OPTIONS = _env_options(
    click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True, help="Output format."),
    click.option("--out", type=click.File("w", encoding="utf-8"), default="-", help="Write here instead of stdout."),
)


class _Time(click.ParamType):
    """An ISO 8601 time as the reports write them (2026-11-24T23:31:03.250Z) or plainer (2026-11-24,
    2026-11-24 06:00); one without an offset is read in --zone, by `_span`."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from datetime import datetime

        try:
            return value if isinstance(value, datetime) else datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not a time; give an ISO 8601 time such as 2026-11-24, 2026-11-24T06:00:00 or "
                      "2026-11-24T06:00:00.000Z (in --zone, UTC by default, unless it has an offset such as +01:00)", param, ctx)


class _Zone(click.ParamType):
    """An IANA time zone name, read with the standard library's zoneinfo; UTC is None, the reports' own clock."""

    name = "zone"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from datetime import tzinfo
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        if value == "UTC":
            return None
        if value is None or isinstance(value, tzinfo):
            return value
        try:
            return ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            self.fail(f"unknown time zone {value!r}: give an IANA name such as Europe/Paris, America/New_York or UTC", param, ctx)


def _span(start, end, day=None, zone=None):
    """The range of --day or --from/--to, read in --zone (`zone`, None for UTC)."""
    from datetime import timezone

    from monitor.playlog.queries import TimeRange

    if day is not None:
        if start or end:
            raise click.UsageError("give either --day or --from/--to")
        return TimeRange.day(day.date(), zone)
    clock = zone or timezone.utc
    start, end = (None if moment is None else _instant(moment, clock, option).astimezone(timezone.utc)
                  for moment, option in ((start, "--from"), (end, "--to")))
    if start is not None and end is not None and start >= end:
        raise click.UsageError(f"--from {start.astimezone(clock):%Y-%m-%dT%H:%M:%S} is not before --to {end.astimezone(clock):%Y-%m-%dT%H:%M:%S}, "
                               "so the range holds no time (--to is exclusive); give the earlier time to --from")
    return TimeRange(start, end, zone)


def _instant(moment: datetime, clock: tzinfo, option: str) -> datetime:
    """`moment` with its offset, or read in `clock` (monitor.local_time's rule: a time the clocks skipped is refused). A date
    alone is its day's start as --day reads it, also where the clocks skip midnight (America/Santiago: 00:00 is 01:00 that day)."""
    from datetime import time

    from monitor.local_time import SkippedTime, instant

    if moment.tzinfo is None and moment.time() == time.min:
        return moment.replace(tzinfo=clock)
    try:
        return instant(moment, clock)
    except SkippedTime as exc:
        raise click.UsageError(f"{option} {exc}; give a time they showed, or this one with its offset ({exc.before} or {exc.after})") from None


ZONE_OPTION = _env("--zone", type=_Zone(), default="UTC", show_default=True,
                   help="The time zone (an IANA name: Europe/Paris, America/New_York) of --day, of --from/--to without an offset, and "
                        "of the times written: then with their offset (2026-11-24T10:31:03.250+01:00), in columns named without _utc "
                        "(timestamp, start, end, hour).")
RANGE_OPTIONS = _env_options(
    click.option("--from", "start", type=_Time(), help="From this time (inclusive), in --zone unless it has an offset: 2026-11-24, "
                                                       "2026-11-24T06:00:00, 2026-11-24T06:00:00.000Z or 2026-11-24T07:00:00+01:00. "
                                                       "A local time that occurs twice (clocks going back) is its first; give an offset for the second."),
    click.option("--to", "end", type=_Time(), help="Up to this time (exclusive), written as --from."),
    ZONE_OPTION,
)
STATION_OPTION = click.option("--station", help="Only this station (stream id) [all].")
DAY_HELP = "One day, midnight to midnight in --zone (23 or 25 hours when the clocks change)"
STATION_DAY_OPTIONS = _env_options(
    click.option("--day", type=click.DateTime(["%Y-%m-%d"]), help=DAY_HELP + " (or --from/--to)."), RANGE_OPTIONS, STATION_OPTION,
)


@main.group()
def plays() -> None:
    """The play log: list, report, reject and restore plays; `consume` fills it from Kafka in distributed mode."""


@plays.command("migrate")
@PLAYLOG_OPTION
def plays_migrate(playlog: str) -> None:
    """Create the play log, or bring its schema up to this version of airtrace."""
    click.echo(f"play log at {_open_playlog(playlog, migrate=True).where} is at schema revision {_head()}")


def _head() -> str:
    from monitor.playlog.store import head_revision

    return head_revision()


@plays.command("list")
@PLAYLOG_OPTION
@RANGE_OPTIONS
@click.option("--stream", help="Only this stream (station).")
@click.option("--track", help="Only this track id.")
@click.option("--min-confidence", type=FiniteFloatRange(0, 1), help="Only plays at least this confident.")
@click.option("--all", "include_hidden", is_flag=True, help="Also the rejected plays.")
@click.option("--limit", type=click.IntRange(1), help="At most this many plays.")
@OUTPUT_OPTIONS
def plays_list(playlog, start, end, zone, stream, track, min_confidence, include_hidden, limit, fmt, out) -> None:
    """Plays, oldest first; rejected plays only with --all."""
    from monitor.playlog.queries import list_plays, write_rows

    write_rows(*list_plays(_station_playlog(playlog, stream), _span(start, end, zone=zone), stream, track, min_confidence, include_hidden, limit), fmt, out)


@plays.command("reject")
@PLAYLOG_OPTION
@click.argument("play_id")
@click.option("--reason", required=True, help="Why the play is wrong (kept with it).")
@click.option("--by", default=lambda: _user(), show_default="your user name", help="Who rejects it.")
def plays_reject(playlog: str, play_id: str, reason: str, by: str) -> None:
    """Mark PLAY_ID wrong: lists and reports leave it out until `restore`."""
    from monitor.playlog.store import PlayLogError

    try:
        _open_playlog(playlog).reject(play_id, reason, by)
    except PlayLogError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"rejected {play_id}")


def _user() -> str:
    import getpass

    return getpass.getuser()


@plays.command("restore")
@PLAYLOG_OPTION
@click.argument("play_id")
def plays_restore(playlog: str, play_id: str) -> None:
    """Undo the rejection of PLAY_ID."""
    from monitor.playlog.store import PlayLogError

    try:
        _open_playlog(playlog).restore(play_id)
    except PlayLogError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"restored {play_id}")


@plays.command("report")
@PLAYLOG_OPTION
@STATION_DAY_OPTIONS
@OUTPUT_OPTIONS
def plays_report(playlog, day, start, end, zone, station, fmt, out) -> None:
    """Play log report per station: timestamp_utc (timestamp with --zone), played_duration, station, title, artist, isrc, ref offsets, speed, score."""
    from monitor.playlog.queries import report, write_rows

    write_rows(*report(_station_playlog(playlog, station), _span(start, end, day, zone), station), fmt, out)


@plays.command("cuesheet")
@PLAYLOG_OPTION
@click.option("--station", required=True, help="The station (stream id).")
@click.option("--day", required=True, type=click.DateTime(["%Y-%m-%d"]), help=DAY_HELP + ".")
@ZONE_OPTION
@OUTPUT_OPTIONS
def plays_cuesheet(playlog, station, day, zone, fmt, out) -> None:
    """A station's cue sheet for one day: numbered cues with start, end, duration, title, artist, isrc."""
    from monitor.playlog.queries import cuesheet, write_rows

    write_rows(*cuesheet(_station_playlog(playlog, station), station, _span(None, None, day, zone)), fmt, out)


@plays.command("totals")
@PLAYLOG_OPTION
@RANGE_OPTIONS
@STATION_OPTION
@OUTPUT_OPTIONS
def plays_totals(playlog, start, end, zone, station, fmt, out) -> None:
    """Airplay per track per station over a range: plays and seconds."""
    from monitor.playlog.queries import totals, write_rows

    write_rows(*totals(_station_playlog(playlog, station), _span(start, end, zone=zone), station), fmt, out)


@plays.command("airtime")
@PLAYLOG_OPTION
@STATION_DAY_OPTIONS
@OUTPUT_OPTIONS
def plays_airtime(playlog, day, start, end, zone, station, fmt, out) -> None:
    """Seconds per station and hour (of --zone): catalog music, unknown music, and each content class (music, speech, ...)."""
    from monitor.playlog.queries import airtime_report, write_rows

    write_rows(*airtime_report(_station_playlog(playlog, station), _span(start, end, day, zone), station), fmt, out)


@plays.command("import")
@PLAYLOG_OPTION
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def plays_import(playlog: str, files: tuple[str, ...]) -> None:
    """Add the events of JSON-lines FILES (airtrace monitor --events): plays, unknown stretches, airtime; events already there change nothing."""
    from monitor.playlog.store import import_lines

    log = _open_playlog(playlog, migrate=True)
    for path in files:
        with open(path, "rb") as lines:  # each line decoded on its own: one that is not UTF-8 is skipped, not the file
            stored, skipped = import_lines(log, lines)
        for number, reason in skipped:
            click.echo(f"skipped {path}:{number}: {reason}", err=True)
        click.echo(f"{path}: {stored['play']} play events, {stored['unknown']} unknown stretches, {stored['airtime']} airtime events "
                   f"into the play log at {log.where}")


@plays.command("consume")
@PLAYLOG_OPTION
@_env("--playlog-group", default="airtrace-playlog", show_default=True, help="Kafka consumer group of the play log writers.")
@KAFKA_OPTIONS
@METRICS_OPTIONS
def plays_consume(playlog: str, playlog_group: str, metrics_port: int | None, metrics_host: str, **kafka: object) -> None:
    """Write the play events of the plays topic into the play log (PostgreSQL in distributed mode), until stopped."""
    import asyncio

    from monitor.fleet.broker import BrokerError
    from monitor.playlog.consumer import ConsumerOptions, consume_plays

    settings, topics = _kafka(**kafka)
    log = _open_playlog(playlog)
    try:
        asyncio.run(consume_plays(log, settings, topics, ConsumerOptions(group=playlog_group), _metrics(metrics_port, metrics_host, holds_catalog=False)))
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc


# ---- unknown music: `airtrace unknowns ...` -------------------------------------------------------


@main.group()
def unknowns() -> None:
    """Music no catalog track covered, from the play log: clusters of repeated pieces, their airings, their audio."""


def _cluster_filter(start, end, zone, stream, kind, min_plays):
    from monitor.playlog.unknowns import ClusterFilter

    return ClusterFilter(_span(start, end, zone=zone), stream, kind, min_plays)


CLUSTER_OPTIONS = _env_options(
    RANGE_OPTIONS,
    click.option("--stream", help="Only airings on this stream (station)."),
    click.option("--kind", type=click.Choice(["jingle", "song"]), help="Only jingles (typical airing under 60 s) or songs."),
    click.option("--min-plays", type=click.IntRange(1), default=1, show_default=True, help="Only clusters aired at least this often."),
)


@unknowns.command("list")
@PLAYLOG_OPTION
@CLUSTER_OPTIONS
@click.option("--stretches", is_flag=True, help="List the unknown stretches themselves, clustered or not, instead of the clusters.")
@OUTPUT_OPTIONS
def unknowns_list(playlog, start, end, zone, stream, kind, min_plays, stretches, fmt, out) -> None:
    """Clusters of repeated unknown music, most aired first (counting airings in the range and on the stream)."""
    from monitor.playlog.queries import write_rows
    from monitor.playlog.unknowns import list_clusters, list_stretches

    log = _station_playlog(playlog, stream)
    if stretches:
        if kind or min_plays > 1:
            raise click.UsageError("--kind and --min-plays choose clusters; leave them out with --stretches")
        write_rows(*list_stretches(log, _span(start, end, zone=zone), stream), fmt, out)
    else:
        write_rows(*list_clusters(log, _cluster_filter(start, end, zone, stream, kind, min_plays)), fmt, out)


@unknowns.command("show")
@PLAYLOG_OPTION
@click.argument("cluster")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: a summary line, then the airings as CSV; json: one object {cluster, occurrences}.")
@click.option("--out", type=click.File("w", encoding="utf-8"), default="-", help="Write here instead of stdout.")
@ZONE_OPTION
def unknowns_show(playlog, cluster, fmt, out, zone) -> None:
    """The cluster CLUSTER and every airing of it: stream, air start and end, duration, speed, the stretch it matched."""
    import json

    from monitor.playlog.queries import write_rows
    from monitor.playlog.store import PlayLogError
    from monitor.playlog.unknowns import show_cluster

    try:
        summary, (columns, rows) = show_cluster(_open_playlog(playlog), cluster, zone)
    except PlayLogError as exc:
        raise click.ClickException(str(exc)) from exc
    if fmt == "json":
        json.dump({"cluster": summary, "occurrences": rows}, out, indent=1)
        out.write("\n")
        return
    out.write(f"cluster {summary['cluster_id']}: {summary['kind']}, {summary['plays']} airings on {summary['streams']}, "
              f"{summary['first_seen']} to {summary['last_seen']}, typically {summary['typical_duration']:.1f} s, "
              f"{'excerpt saved' if summary['excerpt'] else 'no excerpt'}\n")
    write_rows(columns, rows, "csv", out)


@unknowns.command("export")
@PLAYLOG_OPTION
@CLUSTER_OPTIONS
@click.option("--out", "directory", required=True, type=click.Path(file_okay=False, writable=True), help="The directory to write into.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True, help="Format of clusters and occurrences.")
@click.option("--overwrite", is_flag=True, help="Replace files of an earlier export there (else nothing is written if one exists).")
def unknowns_export(playlog, start, end, zone, stream, kind, min_plays, directory, fmt, overwrite) -> None:
    """Clusters and their airings as CSV or JSON, and each saved excerpt as CLUSTER_ID.ogg, into a directory."""
    from pathlib import Path

    from monitor.playlog.store import PlayLogError
    from monitor.playlog.unknowns import export

    try:
        written = export(_station_playlog(playlog, stream), Path(directory), fmt, _cluster_filter(start, end, zone, stream, kind, min_plays), overwrite)
    except PlayLogError as exc:
        raise click.ClickException(str(exc)) from exc
    excerpts = sum(path.suffix == ".ogg" for path in written)
    click.echo(f"{len(written) - excerpts} tables and {excerpts} excerpts written to {directory}")


@unknowns.command("promote")
@PLAYLOG_OPTION
@click.argument("cluster")
@click.option("--catalog", "catalog_dir", required=True, type=click.Path(exists=True, file_okay=False), help="The catalog the track joins.")
@click.option("--track-id", required=True, help="The catalog id the cluster's music gets.")
@click.option("--title", help="The track's title (catalog metadata).")
@click.option("--artist", help="The track's artist (catalog metadata).")
@click.option("--audio", "audio_file", type=click.Path(exists=True, dir_okay=False),
              help="A recording of the music to add instead of the cluster's saved excerpt (or where none was saved).")
@click.option("--events", type=click.Path(dir_okay=False),
              help="Also append the new plays' events to this file as JSON lines (not those an earlier promotion made).")
def unknowns_promote(playlog, cluster, catalog_dir, track_id, title, artist, audio_file, events) -> None:
    """Add CLUSTER's music to the catalog as --track-id and turn each of its airings into a play in the play log."""
    from pathlib import Path

    from monitor.catalog import Catalog, CatalogError
    from monitor.events import EventsFile
    from monitor.playlog.store import PlayLogError
    from monitor.promote import promote

    metadata = {key: value for key, value in (("title", title), ("artist", artist)) if value}
    _check_events_file(events, playlog)
    try:
        done = promote(_open_playlog(playlog), Catalog.open(catalog_dir), cluster, track_id, metadata, Path(audio_file) if audio_file else None)
    except (PlayLogError, CatalogError) as exc:
        raise click.ClickException(str(exc)) from exc
    if events:
        with EventsFile(events) as out:
            out.write(done.new_plays)  # the earlier airings' events were written by the promotion that made them plays
        if out.unwritten:
            raise click.ClickException(f"{out.unwritten} of the new plays' events could not be written to {events}; they are in the play log")
    added = f"added {track_id} to the catalog" if done.added else f"{track_id} was already in the catalog"
    before = f" ({done.promoted_before} were already)" if done.promoted_before else ""
    click.echo(f"{added}; {done.new_airings} more airing(s) of cluster {cluster} are now plays of it in the play log{before}")
