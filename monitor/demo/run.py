"""`airtrace demo`: everything a new user needs to see airtrace work, from the repository alone.

It builds (or reuses) a catalog of five of the six shipped excerpts, composes a broadcast of them with a
speed change, noise, a crossfade, espeak-ng voice-over between and over the music, and the sixth excerpt
(which is not in the catalog), then monitors it in embedded mode and compares the plays with the truth.
The plays also go into a play log (plays.sqlite), whose report the demo prints last.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from encoders import DEFAULT_ENCODER, Encoder, Sources, load_audio, load_encoder, synthesize_speech
from monitor.catalog import Catalog, CatalogError
from monitor.demo.broadcast import SAMPLE_RATE, Piece, Scorecard, compose, read_truth, score_plays, table, write_broadcast
from monitor.embedded import EmbeddedMonitor
from monitor.events import Event, describe
from monitor.options import IngestOptions, MonitorOptions
from monitor.stages.sources import StreamSource
from monitor.playlog.queries import TimeRange, report, write_rows
from monitor.playlog.store import PlayLog, beside

log = logging.getLogger(__name__)

MUSIC = Path(__file__).parent / "music"
CATALOG_TRACKS = ("area1-game", "area2-game", "area3-game", "gardien-go", "over-theme")
NOT_IN_CATALOG = "termigator_reg-zbb"
WORKDIR_MARK = ".airtrace-demo"
STATION = "demo-radio"
TALK = (
    "Good evening, you are listening to airtrace radio. Here is some music from the game TecnoballZ.",
    "That was a classic. Stay with us, there is more music after this short message.",
    "And now, something completely different.",
    "Here comes the last one tonight, the game over theme.",
)


def claim_workdir(workdir: Path) -> None:
    """Make `workdir` the demo's, or refuse: the demo replaces what it made there, so it must never take a
    folder that holds anything of the user's."""
    workdir.mkdir(parents=True, exist_ok=True)
    mark = workdir / WORKDIR_MARK
    if not mark.is_file() and any(workdir.iterdir()):
        raise CatalogError(f"{workdir} is not empty and was not made by `airtrace demo`; give an empty or new folder with --workdir")
    mark.write_text("This folder is airtrace demo's; it rebuilds what is here as it needs.\n")


def demo_catalog(directory: Path, encoder: Encoder, encoder_source: str | None) -> Catalog:
    """The five demo tracks, reused when a catalog of the same encoder already holds them; otherwise rebuilt
    (the folder is the demo's own: `claim_workdir` saw to that)."""
    try:
        catalog = Catalog.open(directory, encoder)
        if {t.track_id for t in catalog.tracks()} == set(CATALOG_TRACKS):
            return catalog
    except CatalogError as exc:
        log.info("building a new demo catalog (%s)", exc)
    if directory.exists():
        shutil.rmtree(directory)
    catalog = Catalog.create(directory, encoder, encoder_source=encoder_source)
    manifest = directory.parent / "demo-tracks.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["track_id", "path", "title", "artist"])
        for name in CATALOG_TRACKS:
            writer.writerow([name, str((MUSIC / f"{name}.opus").resolve()), name.replace("-", " ").title(), "TLK Games"])
    report = catalog.add([manifest], progress=False)
    if report.skipped:
        raise CatalogError(f"the demo catalog could not index {report.skipped}")
    return catalog


def demo_programme() -> list[Piece]:
    """About four minutes of radio: the truth of what plays when comes out of `compose`."""
    music = {name: load_audio(MUSIC / f"{name}.opus", SAMPLE_RATE) for name in (*CATALOG_TRACKS, NOT_IN_CATALOG)}
    talk = [synthesize_speech(line, SAMPLE_RATE, voice) for line, voice in zip(TALK, ("en", "en-us", "en-gb-x-rp", "en"))]
    return [
        Piece("talk", "intro", talk[0]),
        Piece("track", "area1-game", music["area1-game"], chain="noise:20", overlap=0.5),
        Piece("track", "area2-game", music["area2-game"], chain="speed:1.04+noise:15", overlap=3.0),  # crossfade
        Piece("talk", "message", talk[1], overlap=1.0, crossfade=False),  # over the outro
        Piece("track", "gardien-go", music["gardien-go"], ref_start=8.0, seconds=34.0, chain="tempo:0.97+noise:10"),
        Piece("talk", "announce", talk[2]),
        Piece("music", NOT_IN_CATALOG, music[NOT_IN_CATALOG], ref_start=5.0, seconds=30.0, chain="noise:20"),
        Piece("talk", "last", talk[3], overlap=0.5),
        Piece("track", "over-theme", music["over-theme"], chain="noise:15", overlap=4.0, crossfade=False),  # voice over the intro
        Piece("track", "area3-game", music["area3-game"], seconds=30.0, chain="speed:0.97+noise:12", overlap=2.5),
    ]


def demo_broadcast(path: Path) -> Path:
    """The demo broadcast as MP3 with its truth; reused when both files exist."""
    if path.is_file() and path.with_suffix(".truth.json").is_file():
        return path
    audio, truth = compose(demo_programme(), np.random.default_rng(7), Sources())
    return write_broadcast(path, audio, truth)


def run_demo(workdir: str | Path, encoder: Encoder | None = None, realtime: bool = False,
             on_event: Callable[[Event], None] | None = None) -> Scorecard:
    """Build what is missing under `workdir`, monitor the broadcast, and score the plays against the truth."""
    workdir = Path(workdir)
    claim_workdir(workdir)
    source = None
    if encoder is None:
        encoder, source = load_encoder(DEFAULT_ENCODER), DEFAULT_ENCODER
    catalog = demo_catalog(workdir / "catalog", encoder, source)
    broadcast = demo_broadcast(workdir / "broadcast.mp3")
    events_file = workdir / "plays.jsonl"
    for old in (events_file, *workdir.glob(beside(events_file).name + "*")):
        old.unlink(missing_ok=True)  # this run's plays only (the play log and its WAL files too)
    options = MonitorOptions(ingest=IngestOptions(realtime=realtime))
    playlog = PlayLog.open(beside(events_file), migrate=True)
    try:
        monitor = EmbeddedMonitor(catalog, [StreamSource(STATION, str(broadcast))], options, on_event=on_event,
                                  events_file=events_file, playlog=playlog)
        return score_plays(read_truth(broadcast), monitor.run())
    finally:
        playlog.close()


def demo_report(workdir: str | Path) -> str:
    """The demo station's play log report (CSV), as `airtrace plays report` writes it."""
    playlog = PlayLog.open(beside(Path(workdir) / "plays.jsonl"))
    try:
        out = io.StringIO()
        write_rows(*report(playlog, TimeRange(), STATION), "csv", out)
        return out.getvalue()
    finally:
        playlog.close()


def main(workdir: str | Path, realtime: bool, echo: Callable[[str], None]) -> Scorecard:
    """The CLI's demo: events as they happen, then the truth-against-detection table."""
    card = run_demo(workdir, realtime=realtime, on_event=lambda e: echo(describe(e)))
    echo("")
    echo(table(card))
    echo(f"\nplay events (JSON lines): {Path(workdir) / 'plays.jsonl'}")
    playlog = beside(Path(workdir) / "plays.jsonl")
    echo(f"\nthe play log's report (airtrace plays report --playlog {playlog} --station {STATION}):\n")
    echo(demo_report(workdir).rstrip("\n"))
    return card
