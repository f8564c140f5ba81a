"""`airtrace bench unknowns`: what the monitor reports of music that is not in the catalog, measured on a
simulated day of several stations.

The day is built from reference tracks (the dev split): part of them form the catalog and air as catalog
plays the way `bench broadcast` plays them; of the rest (less those the catalog finds anything of: a
corpus holds the same music under two names), some are songs that air 2-5 times across stations (whole
or in part), some give each station its jingles (5-15 s excerpts aired again and again), and the others
air once each as filler music. Talk is recorded speech of the voice no model trained on
(encoders.speech.HELD_OUT_VOICE). Every airing goes through a distortion chain of `bench broadcast`
(tempo, speed, pitch, noise, compression), and every non-catalog piece has a catalog track or talk on
either side, so that where one unknown stretch ends is a fact of the programme. A day is compressed into
`hours` of stream per station; all stations start together and are monitored at once, so their order
on air is their stream offset's (the truth also gives each airing its simulated time of day).

Scored: catalog plays as `bench broadcast` scores them; for each repeated piece, the first airing
found in one cluster with an earlier airing (targets: songs by their 2nd airing, jingles by their 3rd);
cluster purity (each occurrence stands for the airing it overlaps most) and clusters mixing pieces; and
process CPU seconds per stream second, to hold against `bench streams`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import cycle
from pathlib import Path

import numpy as np
import soundfile

from encoders import Sources, load_audio, parse_chain
from encoders.speech import HELD_OUT_VOICE, SpeechError, get_voice, load_voice, talk
from monitor.bench.broadcast import PlayFigures, decoded, distortion_chain, readable
from monitor.bench.engines import NeuralEngine
from monitor.bench.references import BenchError, Reference, audible_span, reference_set
from monitor.bench.report import Table, percent, publish, verdict
from monitor.catalog import Catalog
from monitor.demo.broadcast import SAMPLE_RATE, Piece, TruePlay, arrange
from monitor.embedded import EmbeddedMonitor
from monitor.events import UnknownEvent, from_iso, iso_utc, plays_in
from monitor.options import MonitorOptions, UnknownConfig
from monitor.stages.identify import identify
from monitor.stages.sources import StreamSource

log = logging.getLogger(__name__)

DAY_SECONDS = 86400.0
DAY_START = 1796083200.0  # 2026-12-01T00:00Z: the simulated day's midnight
COVERED_SHARE = 0.5  # an unknown event stands for an airing when it covers at least this share of it
SONG_SECONDS = (70.0, 150.0)  # a repeated song's full airing
PARTIAL_SHARE = 0.3  # of a song's airings are partial: cut in or out by up to PARTIAL_CUT of its length
PARTIAL_CUT = 0.3
JINGLE_SECONDS = (5.0, 15.0)
FILL_SECONDS = (30.0, 90.0)
FILL_CHANCE = 0.3  # of breaks between catalog tracks that air filler music while some is left
TALK_SECONDS = (8.0, 20.0)


@dataclass(frozen=True)
class DaySettings:
    stations: int = 4
    hours: float = 3.0  # stream per station: the day compressed into this (4 x 3 h: about 20 minutes on 2 cores)
    songs: int = 12  # non-catalog songs that air 2-5 times
    jingles: int = 2  # per station
    jingle_minutes: float = 10.0  # stream minutes between a jingle's airings (each airs at least 3 times)
    fill: int = 24  # non-catalog tracks that air once each (fewer: those the catalog finds something of are left out)
    seed: int = 0

    @property
    def seconds(self) -> float:
        return self.hours * 3600

    @property
    def held_out(self) -> int:
        """Reference tracks kept out of the catalog."""
        return self.songs + self.jingles * self.stations + self.fill

    def station(self, index: int) -> str:
        return f"station-{index + 1}"

    def name(self) -> str:
        return (f"unknowns-seed{self.seed}-{self.stations}x{self.hours:g}h-songs{self.songs}-jingles{self.jingles}"
                f"every{self.jingle_minutes:g}m-fill{self.fill}")


@dataclass(frozen=True)
class Airing:
    """One piece on one station: what it is and where it landed. `kind` is catalog, song (repeated,
    not in the catalog), jingle, music (non-catalog, aired once) or talk; `identity` names the piece
    (a track id, or a jingle's name), the same for every airing of it."""

    station: str
    kind: str
    identity: str
    stream_start: float
    stream_end: float
    ref_start: float
    ref_end: float
    speed: float
    how: str
    air_time: float = 0.0  # UTC epoch on the simulated day
    source: str = ""  # the track the audio comes from ("" for talk): a jingle's is not its name

    @property
    def piece(self) -> str:
        return f"{self.kind}:{self.identity}"

    def overlap(self, start: float, end: float) -> float:
        return max(0.0, min(self.stream_end, end) - max(self.stream_start, start))

    def true_play(self) -> TruePlay:
        return TruePlay(self.identity, self.stream_start, self.stream_end, self.ref_start, self.ref_end, self.speed, self.how)

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "air_time": iso_utc(self.air_time)}


# --- the programme --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DaySources:
    """The decoded material of a day: catalog tracks, repeated songs, jingle sources, filler music, talk."""

    catalog: Sequence[Reference]
    songs: Sequence[Reference]
    jingles: Sequence[Reference]
    fill: Sequence[Reference]
    talk: Sequence[np.ndarray] = field(repr=False)


def split_held_out(held_out: Sequence[Reference], settings: DaySettings) -> tuple[list[Reference], list[Reference], list[Reference]]:
    """(songs, jingle sources, filler music: what is left, maybe none) from the readable held-out tracks, a seeded draw."""
    usable = readable(held_out)
    needed = settings.songs + settings.jingles * settings.stations
    if len(usable) < needed:
        raise BenchError(f"{len(usable)} readable held-out tracks that the catalog finds nothing of are too few for {settings.songs} "
                         f"songs and {settings.jingles * settings.stations} jingles: give more references, or more --fill, or ask for fewer")
    order = [usable[i] for i in np.random.default_rng(settings.seed).permutation(len(usable))]
    jingles_end = settings.songs + settings.jingles * settings.stations
    return order[: settings.songs], order[settings.songs : jingles_end], order[jingles_end:]


def not_in_catalog(candidates: Sequence[Reference], catalog: Catalog) -> list[Reference]:
    """The candidates the catalog finds nothing of. A corpus holds the same music under two names (a theme
    in two games, a track and its remix): aired as "non-catalog", such a track would be a catalog play in
    truth and a phantom in the score, so it is left out, with a warning naming what the catalog found."""
    kept = []
    for ref in candidates:
        matches = identify(catalog, load_audio(ref.path, catalog.encoder.sample_rate))
        if matches:
            log.warning("not aired as non-catalog music: the catalog finds %s in %s (%.0f s of it)", matches[0].track_id,
                        ref.track_id, sum(m.query_end - m.query_start for m in matches))
        else:
            kept.append(ref)
    return kept


def _warped_seconds(seconds: float, chain: str) -> float:
    return seconds / parse_chain(chain).rate


def _spread(count: int, seconds: float, rng: np.random.Generator) -> list[float]:
    """`count` moments over the stream, one in the middle 80 % of each of `count` equal parts of it."""
    part = seconds / count
    return [part * (i + float(rng.uniform(0.1, 0.9))) for i in range(count)]


def song_airings(songs: Sequence[Reference], settings: DaySettings, rng: np.random.Generator) -> list[list[tuple[float, Piece]]]:
    """Per station, (when it is due, the piece) for every airing of every repeated song: 2-5 airings each,
    spread over the day on random stations, some cut in or out, each under its own distortion chain."""
    due: list[list[tuple[float, Piece]]] = [[] for _ in range(settings.stations)]
    for ref in songs:
        audio = decoded(ref)
        first, last = audible_span(audio, SAMPLE_RATE)
        length = min(last - first, float(rng.uniform(*SONG_SECONDS)))
        start = float(rng.uniform(first, last - length))
        for when in _spread(int(rng.integers(2, 6)), settings.seconds * 0.9, rng):
            begin, seconds = start, length
            if rng.random() < PARTIAL_SHARE:
                cut = float(rng.uniform(0, PARTIAL_CUT)) * length
                begin, seconds = (begin + cut, seconds - cut) if rng.random() < 0.5 else (begin, seconds - cut)
            piece = Piece("music", f"song:{ref.track_id}", audio, ref_start=begin, seconds=seconds, chain=distortion_chain(rng))
            due[int(rng.integers(settings.stations))].append((when, piece))
    return due


def jingle_airings(jingles: Sequence[Reference], settings: DaySettings, rng: np.random.Generator) -> list[list[tuple[float, Piece]]]:
    """Per station, (when it is due, the piece) for its own jingles: a fixed 5-15 s excerpt each, aired
    every `jingle_minutes` or so (at least 3 times)."""
    due: list[list[tuple[float, Piece]]] = [[] for _ in range(settings.stations)]
    airings = max(3, round(settings.seconds / (settings.jingle_minutes * 60)))
    for index, ref in enumerate(jingles):
        station = index // settings.jingles
        audio = decoded(ref)
        first, last = audible_span(audio, SAMPLE_RATE)
        seconds = min(last - first, float(rng.uniform(*JINGLE_SECONDS)))
        start = float(rng.uniform(first, last - seconds))
        name = f"jingle:{settings.station(station)}/{index % settings.jingles + 1}={ref.track_id}"
        for when in _spread(airings, settings.seconds * 0.95, rng):
            due[station].append((when, Piece("music", name, audio, ref_start=start, seconds=seconds, chain=distortion_chain(rng))))
    return due


class _Station:
    """One station's programme as it is planned: pieces appended, with the stream time they reach."""

    def __init__(self, sources: DaySources, rng: np.random.Generator):
        self.sources, self.rng = sources, rng
        self.pieces: list[Piece] = []
        self.clock = 0.0
        self.catalog_order = cycle([sources.catalog[i] for i in rng.permutation(len(sources.catalog))])  # each once while others remain

    def add(self, piece: Piece) -> None:
        self.pieces.append(piece)
        seconds = piece.seconds if piece.seconds is not None else len(piece.audio) / SAMPLE_RATE
        self.clock += _warped_seconds(seconds, piece.chain) - piece.overlap

    def talk(self, seconds: tuple[float, float] = TALK_SECONDS) -> None:
        length = int(self.rng.uniform(*seconds) * SAMPLE_RATE)
        self.add(Piece("talk", "talk", talk(self.sources.talk, length, SAMPLE_RATE, self.rng)))

    def catalog_track(self) -> None:
        """As `bench broadcast` plays one: from its start or cut in, 30-75 s, crossfaded after music."""
        ref = next(self.catalog_order)
        audio = decoded(ref)
        first, last = audible_span(audio, SAMPLE_RATE)
        cut_in = self.rng.random() < 0.35 and last - first > 60
        ref_start = float(self.rng.uniform(first + 10, last - 45)) if cut_in else first
        seconds = min(last - ref_start, float(self.rng.uniform(30, 75)))
        after_music = bool(self.pieces) and self.pieces[-1].kind != "talk"
        overlap = float(self.rng.uniform(2, 5)) if after_music and self.rng.random() < 0.5 else 0.0
        self.add(Piece("track", ref.track_id, audio, ref_start=ref_start, seconds=seconds, chain=distortion_chain(self.rng), overlap=overlap))

    def fill(self, ref: Reference) -> None:
        audio = decoded(ref)
        first, last = audible_span(audio, SAMPLE_RATE)
        seconds = min(last - first, float(self.rng.uniform(*FILL_SECONDS)))
        start = float(self.rng.uniform(first, last - seconds))
        self.add(Piece("music", f"music:{ref.track_id}", audio, ref_start=start, seconds=seconds, chain=distortion_chain(self.rng)))


def plan_day(sources: DaySources, settings: DaySettings) -> list[list[Piece]]:
    """Each station's pieces: catalog tracks, and between them breaks that air what is due (a repeated
    song, a jingle after a few words), filler music while some is left, or talk. Non-catalog music always
    has a catalog track or talk on either side."""
    if not sources.catalog:
        raise BenchError("the day needs catalog tracks: give more readable references than are held out")
    rng = np.random.default_rng(settings.seed)
    due = [sorted(songs + jingles, key=lambda item: item[0]) for songs, jingles in
           zip(song_airings(sources.songs, settings, rng), jingle_airings(sources.jingles, settings, rng))]
    fill = list(sources.fill)
    stations = [_Station(sources, rng) for _ in range(settings.stations)]
    for station in stations:
        station.talk()
    while any(s.clock < settings.seconds for s in stations):
        for index, station in enumerate(stations):  # in step, so that filler music spreads over the day and stations
            if station.clock >= settings.seconds:
                continue
            station.catalog_track()
            if due[index] and due[index][0][0] <= station.clock:
                while due[index] and due[index][0][0] <= station.clock:  # all that is due, so none is left over at the end
                    _, piece = due[index].pop(0)
                    if piece.name.startswith("jingle:") or rng.random() < 0.5 or station.pieces[-1].kind != "track":
                        station.talk()
                    station.add(piece)
                station.talk()
            elif fill and rng.random() < FILL_CHANCE:
                station.talk()
                station.fill(fill.pop())
                station.talk()
            elif rng.random() < 0.5:
                station.talk()
    return [s.pieces for s in stations]


def _kind_identity_source(piece: Piece) -> tuple[str, str, str]:
    """What an airing is, from its piece's name: a catalog track id, "talk", or "kind:identity[=source track]"."""
    if piece.kind == "track":
        return "catalog", piece.name, piece.name
    if piece.kind == "talk":
        return "talk", "talk", ""
    kind, _, named = piece.name.partition(":")
    identity, _, source = named.partition("=")
    return kind, identity, source or identity


def compose_day(pieces: Sequence[Sequence[Piece]], settings: DaySettings, directory: Path, talk_clips: Sequence[np.ndarray]) -> list[Airing]:
    """Each station's audio as MP3 in `directory` and the airings of all stations, also written as day.json."""
    directory.mkdir(parents=True, exist_ok=True)
    airings: list[Airing] = []
    for index, station_pieces in enumerate(pieces):
        station = settings.station(index)
        audio, aired = arrange(station_pieces, np.random.default_rng([settings.seed, index]), Sources(speech=tuple(talk_clips)))
        soundfile.write(directory / f"{station}.mp3", audio, SAMPLE_RATE, format="MP3")
        scale = DAY_SECONDS / (len(audio) / SAMPLE_RATE)
        for piece, where in aired:
            kind, identity, source = _kind_identity_source(piece)
            airings.append(Airing(station, kind, identity, where.stream_start, where.stream_end, where.ref_start, where.ref_end,
                                  where.speed, where.how, DAY_START + where.stream_start * scale, source))
    day_path(directory).write_text(json.dumps({"settings": asdict(settings), "airings": [a.to_json() for a in airings]}, indent=1))
    return read_day(directory)  # air times to the millisecond, as a rerun reads them


def day_path(directory: Path) -> Path:
    return directory / "day.json"


def read_day(directory: Path) -> list[Airing]:
    return [Airing(**{**a, "air_time": from_iso(a["air_time"])}) for a in json.loads(day_path(directory).read_text())["airings"]]


# --- scoring --------------------------------------------------------------------------------------------


def latest_unknowns(events: Iterable[object]) -> list[UnknownEvent]:
    """The unknown events, the last one of each unknown_id (a later event of a stretch supersedes it)."""
    latest: dict[str, UnknownEvent] = {}
    for event in events:
        if isinstance(event, UnknownEvent):
            latest[event.unknown_id] = event
    return list(latest.values())


def clusters(unknowns: Sequence[UnknownEvent]) -> dict[str, str]:
    """unknown_id -> the cluster it belongs to, for every clustered stretch: events joined by
    matched_unknown_id chains or by a shared cluster_id are one cluster (named by its cluster_id; by the
    earliest matched stretch where none carries one). A stretch in no cluster is not in the result."""
    parent: dict[str, str] = {}

    def root(node: str) -> str:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    def join(a: str, b: str) -> None:
        parent[root(a)] = root(b)

    named: dict[str, str] = {}
    for event in unknowns:
        root(event.unknown_id)
        if event.matched_unknown_id:
            join(event.unknown_id, event.matched_unknown_id)
        if event.cluster_id:
            if event.cluster_id in named:
                join(event.unknown_id, named[event.cluster_id])
            named[event.cluster_id] = event.unknown_id
    members: dict[str, list[str]] = {}
    for node in parent:
        members.setdefault(root(node), []).append(node)
    ids = {e.unknown_id: e.cluster_id for e in unknowns}
    result: dict[str, str] = {}
    for group in members.values():
        if len(group) < 2 and not ids.get(group[0]):
            continue
        name = min((ids[n] for n in group if ids.get(n)), default=min(group))
        result.update((n, name) for n in group)
    return result


def covering(airing: Airing, unknowns: Sequence[UnknownEvent]) -> UnknownEvent | None:
    """The unknown event of the airing's station that overlaps it most, if it covers COVERED_SHARE of it."""
    overlaps = [(airing.overlap(e.stream_start, e.stream_end), e.unknown_id, e) for e in unknowns if e.stream_id == airing.station]
    best = max(overlaps, default=None, key=lambda item: item[:2])
    length = airing.stream_end - airing.stream_start
    return best[2] if best is not None and best[0] >= COVERED_SHARE * length else None


def piece_of(event: UnknownEvent, airings: Sequence[Airing]) -> Airing | None:
    """The airing of music an unknown event overlaps most (on its own station), else the talk it overlaps
    most, if any: a stretch of a jingle and the words before it is that jingle (the tracker may well hear
    talk as music at a stretch's edge), but a stretch on talk alone is talk."""
    mine = [a for a in airings if a.station == event.stream_id]
    for candidates in ([a for a in mine if a.kind != "talk"], [a for a in mine if a.kind == "talk"]):
        overlap, best = max(((a.overlap(event.stream_start, event.stream_end), i) for i, a in enumerate(candidates)), default=(0.0, -1))
        if overlap > 0:
            return candidates[best]
    return None


@dataclass(frozen=True)
class Repeat:
    """A piece aired more than once, and the first of its airings that was found in one cluster with an
    earlier airing of it (1-based; None: never)."""

    kind: str
    identity: str
    airings: tuple[Airing, ...]
    found_at: int | None
    clustered: tuple[bool, ...]  # per airing from the 2nd: found in one cluster with an earlier airing

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "identity": self.identity, "found_at": self.found_at, "clustered": list(self.clustered),
                "airings": [[a.station, a.stream_start, a.stream_end] for a in self.airings]}


def repeats(airings: Sequence[Airing], unknowns: Sequence[UnknownEvent], kinds: Sequence[str] = ("song", "jingle")) -> list[Repeat]:
    """Each piece of `kinds` that aired twice or more, in air order (stream offset: the stations air at once)."""
    cluster_of = clusters(unknowns)
    by_piece: dict[tuple[str, str], list[Airing]] = {}
    for airing in airings:
        if airing.kind in kinds:
            by_piece.setdefault((airing.kind, airing.identity), []).append(airing)
    result = []
    for (kind, identity), aired in sorted(by_piece.items()):
        if len(aired) < 2:
            continue
        aired.sort(key=lambda a: a.stream_start)
        seen: set[str] = set()  # clusters of the earlier airings
        clustered = []
        for airing in aired:
            event = covering(airing, unknowns)
            cluster = cluster_of.get(event.unknown_id) if event else None
            if airing is not aired[0]:
                clustered.append(cluster is not None and cluster in seen)
            if cluster is not None:
                seen.add(cluster)
        found_at = next((i + 2 for i, hit in enumerate(clustered) if hit), None)
        result.append(Repeat(kind, identity, tuple(aired), found_at, tuple(clustered)))
    return result


@dataclass(frozen=True)
class ClusterTruth:
    """One cluster the monitor formed: its occurrences, each named by the piece it overlaps most."""

    cluster_id: str
    pieces: tuple[str, ...]  # per occurrence: "kind:identity" of the airing it overlaps most, or "nothing"

    @property
    def majority(self) -> int:
        return Counter(self.pieces).most_common(1)[0][1]

    @property
    def mixed(self) -> bool:
        return len(set(self.pieces)) > 1

    @property
    def repeated_content(self) -> bool:
        """Its majority is non-catalog music that really aired repeatedly (a song or a jingle), not the
        part of a catalog airing its play left uncovered, talk, or music aired once."""
        return Counter(self.pieces).most_common(1)[0][0].split(":")[0] in ("song", "jingle")


def cluster_truths(airings: Sequence[Airing], unknowns: Sequence[UnknownEvent]) -> list[ClusterTruth]:
    members: dict[str, list[str]] = {}
    by_id = {e.unknown_id: e for e in unknowns}
    for unknown_id, cluster in clusters(unknowns).items():
        event = by_id.get(unknown_id)
        if event is None:
            continue  # a matched stretch heard before this run (or lost): nothing to place it by
        where = piece_of(event, airings)
        members.setdefault(cluster, []).append(where.piece if where else "nothing")
    return [ClusterTruth(c, tuple(sorted(p))) for c, p in sorted(members.items())]


def purity(truths: Sequence[ClusterTruth]) -> float | None:
    """Share of clustered occurrences that belong to their cluster's majority piece; None with no cluster."""
    total = sum(len(t.pieces) for t in truths)
    return sum(t.majority for t in truths) / total if total else None


def found_share(found: Sequence[Repeat], by_airing: int) -> tuple[int, int]:
    """(pieces found in a cluster by their `by_airing`th airing, pieces that aired at least that often)."""
    eligible = [r for r in found if len(r.airings) >= by_airing]
    return sum(r.found_at is not None and r.found_at <= by_airing for r in eligible), len(eligible)


# --- the run --------------------------------------------------------------------------------------------


def monitor_options(min_unknown_seconds: float) -> MonitorOptions:
    """The monitor's defaults, with unknown stretches reported from `min_unknown_seconds` on (jingles are shorter than the default)."""
    return MonitorOptions(unknowns=UnknownConfig(min_seconds=min_unknown_seconds))


def _talk_clips() -> tuple[np.ndarray, ...]:
    try:
        return load_voice(get_voice(HELD_OUT_VOICE), SAMPLE_RATE)
    except SpeechError as exc:
        raise BenchError(f"{exc} (the day's talk is this recorded voice)") from exc


def build_day(reference: Sequence[str], distractors: Sequence[str], settings: DaySettings, limit: int | None, encoder: str,
              hop: float, cache_dir: Path) -> tuple[NeuralEngine, Path, list[Airing]]:
    """The catalog (cached) and the day's audio and truth (cached by settings and references)."""
    refs = reference_set(list(reference), list(distractors), settings.held_out, limit)
    engine = NeuralEngine.open_or_build(encoder, refs.catalog, cache_dir, hop)
    directory = cache_dir / f"{settings.name()}-{len(refs.queried)}-{len(refs.holdout)}"
    if not day_path(directory).is_file():
        songs, jingles, fill = split_held_out(not_in_catalog(refs.holdout, engine.catalog), settings)
        catalog = readable([r for r in refs.queried if r.track_id in engine.track_ids])
        talk_clips = _talk_clips()
        log.info("composing %d stations of %.1f h", settings.stations, settings.hours)
        pieces = plan_day(DaySources(catalog, songs, jingles, fill, talk_clips), settings)
        compose_day(pieces, settings, directory, talk_clips)
    return engine, directory, read_day(directory)


def run_unknowns(reference: Sequence[str], distractors: Sequence[str], encoder: str, settings: DaySettings, limit: int | None,
                 min_unknown_seconds: float, hop: float, cache_dir: Path, out: str | None, command: str) -> dict[str, object]:
    engine, directory, airings = build_day(reference, distractors, settings, limit, encoder, hop, cache_dir)
    stations = [settings.station(i) for i in range(settings.stations)]
    sources = [StreamSource(s, str(directory / f"{s}.mp3")) for s in stations]
    monitor = EmbeddedMonitor(engine.catalog, sources, monitor_options(min_unknown_seconds))
    cpu, wall = time.process_time(), time.perf_counter()
    events = monitor.run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return report(airings, events, stations, cpu, wall, {
        **engine.settings, "day": f"{directory.name}: {settings.stations} stations x {settings.hours:g} h of stream (one day compressed)",
        "unknown stretches from": f"{min_unknown_seconds:g} s", "monitored": f"in {wall:.0f} s wall, one thread embedding and searching",
    }, out, command)


def report(airings: Sequence[Airing], events: Sequence[object], stations: Sequence[str], cpu: float, wall: float,
           settings: dict[str, str], out: str | None, command: str) -> dict[str, object]:
    """Score the events against the day and publish the table and the JSON; returns the figures."""
    plays = plays_in(events)
    unknowns = latest_unknowns(events)
    per_station = {s: PlayFigures.of([a.true_play() for a in airings if a.station == s and a.kind == "catalog"],
                                     [e for e in plays if e.stream_id == s]) for s in stations}
    figures = PlayFigures.summed(list(per_station.values()))
    found = repeats(airings, unknowns)
    songs = [r for r in found if r.kind == "song"]
    jingles = [r for r in found if r.kind == "jingle"]
    truths = cluster_truths(airings, unknowns)
    stream_seconds = sum(max((a.stream_end for a in airings if a.station == s), default=0.0) for s in stations)
    songs_found, songs_eligible = found_share(songs, 2)
    jingles_found, jingles_eligible = found_share(jingles, 3)
    later = [hit for r in found for hit in r.clustered]
    pure = purity(truths)
    table = Table("Unknown music and its repeats on a simulated day (embedded mode)", ["measure", "value", "target"], settings=settings)
    figures.add_rows(table)
    table.add("unknown events / clusters formed", f"{len(unknowns)} / {len(truths)}", "")
    table.add("repeated songs clustered by their 2nd airing (%)",
              verdict(100 * songs_found / songs_eligible, 95.0) if songs_eligible else None, ">= 95")
    table.add("  songs found / aired 2+ times", f"{songs_found} / {songs_eligible}", "")
    table.add("jingles found by their 3rd airing (%)",
              verdict(100 * jingles_found / jingles_eligible, 100.0) if jingles_eligible else None, "100")
    table.add("  jingles found / aired 3+ times", f"{jingles_found} / {jingles_eligible}", "")
    table.add("later airings clustered with an earlier one (%)", percent(sum(later), len(later)), "")
    table.add("cluster purity", None if pure is None else verdict(pure, 0.98, digits=3), ">= 0.98")
    table.add("clusters mixing pieces", verdict(sum(t.mixed for t in truths), 0, below=True, digits=0), "0")
    table.add("clusters of no repeated song or jingle (catalog music, talk)", sum(not t.repeated_content for t in truths), "")
    table.add("stream seconds (all stations)", round(stream_seconds), "")
    table.add("process CPU seconds per stream second", round(cpu / stream_seconds, 4) if stream_seconds else None, "")
    table.add("streams per core (bench streams: same measure, real-time paced)", round(stream_seconds / cpu) if cpu else None, "")
    extra = {
        "figures": {"recall": figures.card.recall, "precision": figures.card.precision, "songs_found": songs_found,
                    "songs_eligible": songs_eligible, "jingles_found": jingles_found, "jingles_eligible": jingles_eligible,
                    "purity": pure, "mixed_clusters": sum(t.mixed for t in truths), "unknown_events": len(unknowns),
                    "clusters": len(truths), "stream_seconds": stream_seconds, "cpu_seconds": cpu, "wall_seconds": wall},
        "play_pairings": [{"station": s, **p} for s, f in per_station.items() for p in f.pairings_json()],
        "repeats": [r.to_json() for r in found],
        "clusters": [{"cluster_id": t.cluster_id, "occurrences": list(t.pieces), "mixed": t.mixed} for t in truths],
        "unknown_events": [{**e.to_json(), "piece": (p.piece if (p := piece_of(e, airings)) else None)} for e in unknowns],
    }
    publish([table], out, command, extra)
    return extra["figures"]
