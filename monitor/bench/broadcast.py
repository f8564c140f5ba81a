"""`airtrace bench broadcast` and `airtrace bench streams`: the streaming monitor measured end to end.

broadcast: a synthetic radio programme from the reference tracks (a seeded draw): catalog tracks played
from their start or cut in, under a tempo or speed change, pitch, noise, joined by cuts, crossfades,
talk between tracks and voice over intros, with held-out (non-catalog) music in between. It is written as
MP3, monitored by the embedded mode as a file, and scored play by play (monitor.demo.broadcast): a
detected play counts when it overlaps a true play of the same track. The other detected plays are told
apart, since they cost differently: a fragment is a second play of one airing (the same track over a true
play of it: paid twice), a phantom is a play of a track that was not on air. Targets (issue 17): no
fragmented airing, at most 1 phantom per 400 true plays, recall >= 0.99, median start and end error
<= 0.5 s, detection latency p95 <= 8 s (stream time from the true start to the started event); the first
notice of a play (its provisional event) and the provisional plays withdrawn are reported beside it.

streams: how many streams one CPU core monitors in real time: the embedded mode reads many files at
once, each at real-time pace as a live stream arrives (read as fast as they decode, fifty reader threads
race for the interpreter lock and the CPU they burn on it grows with the machine's load: 16-150 streams
per core were measured so on one machine); streams per core = stream seconds monitored per CPU second
of the process (decoding, embedding, search and the state machine together; one thread embeds and
searches, `airtrace monitor`'s default).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from prometheus_client import CollectorRegistry

from encoders import AudioError, Sources, load_audio
from monitor import metrics as metrics_module
from monitor.bench.engines import NeuralEngine
from monitor.bench.queries import speech_clips
from monitor.bench.references import BenchError, Reference, audible_span, read_references, reference_set
from monitor.bench.report import Table, publish, verdict
from monitor.bench.servers import paced_files_elsewhere
from monitor.demo.broadcast import SAMPLE_RATE, Pairing, Piece, Scorecard, TruePlay, compose, read_truth, score_plays, table, write_broadcast
from monitor.embedded import EmbeddedMonitor
from monitor.events import Event, plays_in
from monitor.options import IngestOptions, MonitorOptions
from monitor.stages.play_state import PlayConfig
from monitor.stages.sources import StreamSource

log = logging.getLogger(__name__)

TRANSITIONS = ("cut", "crossfade", "talk", "voice-over", "non-catalog")
WARPS = ("clean", "tempo", "speed", "pitch")


def _warp(rng: np.random.Generator) -> str:
    """A station's speed-up, a DJ's tempo change, a pitched master, or none; +-2 to 6 %, as radio does."""
    kind = WARPS[rng.integers(len(WARPS))]
    percent = float(rng.uniform(2, 6)) * (1 if rng.random() < 0.5 else -1)
    if kind == "tempo":
        return f"tempo:{1 + percent / 100:.3f}"
    if kind == "speed":
        return f"speed:{1 + percent / 100:.3f}"
    if kind == "pitch":
        return f"pitch:{percent / 6:.2f}"
    return "clean"


def distortion_chain(rng: np.random.Generator) -> str:
    """A warp, often noise, sometimes compression: how one airing of a piece differs from its recording."""
    steps = [_warp(rng)]
    if rng.random() < 0.7:
        steps.append(f"noise:{rng.uniform(5, 20):.0f}")
    if rng.random() < 0.3:
        steps.append(f"compress:{rng.uniform(3, 8):.0f}")
    return "+".join(s for s in steps if s != "clean") or "clean"


def programme(catalog: Sequence[Reference], holdout: Sequence[Reference], plays: int, seed: int) -> list[Piece]:
    """`plays` plays of `catalog` tracks (each at most once while others remain), `holdout` music between."""
    rng = np.random.default_rng(seed)
    catalog, holdout = readable(catalog), readable(holdout)
    if not holdout or not catalog:
        raise BenchError("the broadcast needs catalog tracks and non-catalog music: give readable tracks and --holdout 1 or more")
    talk = speech_clips(SAMPLE_RATE)
    order = [catalog[i] for i in rng.permutation(len(catalog))]
    chosen = [order[i % len(order)] for i in range(plays)]
    pieces: list[Piece] = [Piece("talk", "opening", talk[rng.integers(len(talk))])]
    for ref in chosen:
        audio = _decoded[ref.path]
        transition = TRANSITIONS[rng.integers(len(TRANSITIONS))]
        if transition == "talk":
            pieces.append(Piece("talk", "talk", talk[rng.integers(len(talk))], overlap=0.5))
        elif transition == "non-catalog":
            other = _decoded[holdout[rng.integers(len(holdout))].path]
            first, last = audible_span(other, SAMPLE_RATE)
            seconds = min(float(rng.uniform(15, 30)), last - first)
            start = float(rng.uniform(first, last - seconds))
            pieces.append(Piece("music", "non-catalog", other, ref_start=start, seconds=seconds, chain=distortion_chain(rng), overlap=2.0))
        voice = talk[rng.integers(len(talk))]
        if transition == "voice-over":
            pieces.append(Piece("talk", "voice-over", voice))
        first, last = audible_span(audio, SAMPLE_RATE)
        cut_in = rng.random() < 0.35 and last - first > 60
        ref_start = float(rng.uniform(first + 10, last - 45)) if cut_in else first
        seconds = min(last - ref_start, float(rng.uniform(30, 75)))
        overlap = {"crossfade": float(rng.uniform(2, 5)), "voice-over": len(voice) / SAMPLE_RATE}.get(transition, 0.0)
        pieces.append(Piece("track", ref.track_id, audio, ref_start=ref_start, seconds=seconds, chain=distortion_chain(rng),
                            overlap=overlap, crossfade=transition != "voice-over"))
    return pieces


_decoded: dict[Path, np.ndarray] = {}


def decoded(ref: Reference) -> np.ndarray:
    """A track that `readable` kept, at SAMPLE_RATE."""
    return _decoded[ref.path]


def readable(refs: Sequence[Reference]) -> list[Reference]:
    """The tracks that decode to 20 s or more of sound (kept decoded); the others are left out, with a reason."""
    kept = []
    for ref in refs:
        if ref.path not in _decoded:
            try:
                _decoded[ref.path] = load_audio(ref.path, SAMPLE_RATE)
            except AudioError as exc:
                log.warning("not in the broadcast: %s", exc)
                continue
        first, last = audible_span(_decoded[ref.path], SAMPLE_RATE)
        if last - first < 20:
            log.warning("not in the broadcast: %s has only %.0f s of sound", ref.track_id, last - first)
            continue
        kept.append(ref)
    return kept


def run_broadcast(reference: Sequence[str], distractors: Sequence[str], encoder: str, holdout: int, limit: int | None,
                  plays: int, seed: int, hop: float, cache_dir: Path, out: str | None, command: str,
                  play_config: PlayConfig = PlayConfig()) -> Scorecard:
    refs = reference_set(list(reference), list(distractors), holdout, limit)
    engine = NeuralEngine.open_or_build(encoder, refs.catalog, cache_dir, hop)
    path = cache_dir / f"broadcast-seed{seed}-plays{plays}-{len(refs.queried)}-{len(refs.holdout)}.mp3"
    if not path.is_file():
        log.info("composing a broadcast of %d plays", plays)
        in_catalog = [r for r in refs.queried if r.track_id in engine.track_ids]
        pieces = programme(in_catalog, refs.holdout, plays, seed)
        audio, truth = compose(pieces, np.random.default_rng(seed), Sources(speech=speech_clips(SAMPLE_RATE)))
        write_broadcast(path, audio, truth)
    truth = read_truth(path)
    began = time.perf_counter()
    events = EmbeddedMonitor(engine.catalog, [StreamSource("bench", str(path))], MonitorOptions(plays=play_config)).run()
    elapsed = time.perf_counter() - began
    figures = PlayFigures.of(truth, events)
    print(table(figures.card), "\n")
    stream_seconds = max(t.stream_end for t in truth)
    summary = Table("Play events on a synthetic broadcast (embedded mode)", ["measure", "value", "target"], settings={
        **engine.settings, "broadcast": f"{path.name}: {stream_seconds / 60:.1f} min, {len(truth)} catalog plays, "
        f"holdout (non-catalog) tracks {len(refs.holdout)}", "notice confidence": play_config.notice_confidence,
        "monitored": f"in {elapsed:.0f} s wall"})
    figures.add_rows(summary)
    publish([summary], out, command, {"pairings": figures.pairings_json()})
    return figures.card


@dataclass(frozen=True)
class PlayFigures:
    """Detected plays scored against the truth (one stream's, or several streams' summed), with each
    pairing's kind and the airings fragmented: what `bench broadcast` reports, and `bench unknowns` as well."""

    card: Scorecard
    kinds: tuple[str, ...]
    fragmented: int
    detected: int
    withdrawn: int  # provisional plays withdrawn: first notices that were wrong

    @classmethod
    def of(cls, truth: Sequence[TruePlay], events: Sequence[Event]) -> "PlayFigures":
        """One stream's plays: `truth` and `events` (of every kind) of the same stream."""
        card = score_plays(truth, events)
        kinds = tuple(_kind(p, truth) for p in card.pairings)
        fragmented = len({_airing(p, truth) for p, kind in zip(card.pairings, kinds) if kind == "fragment"})
        return cls(card, kinds, fragmented, sum(e.state == "ended" for e in plays_in(events)), sum(e.kind == "withdrawn" for e in events))

    @classmethod
    def summed(cls, parts: Sequence["PlayFigures"]) -> "PlayFigures":
        """Several streams' figures as one."""
        return cls(Scorecard(tuple(p for part in parts for p in part.card.pairings)), tuple(k for part in parts for k in part.kinds),
                   sum(part.fragmented for part in parts), sum(part.detected for part in parts), sum(part.withdrawn for part in parts))

    def add_rows(self, summary: Table) -> None:
        card, kinds = self.card, self.kinds
        true_plays = sum(p.truth is not None for p in card.pairings)
        start, end, latency = card.median_abs("start_error"), card.median_abs("end_error"), card.p95("latency")
        phantoms = kinds.count("phantom")
        summary.add("recall", verdict(card.recall, 0.99, digits=3), ">= 0.99")
        summary.add("fragmented airings (a second play of one airing)", verdict(self.fragmented, 0, below=True, digits=0), "0")
        summary.add("phantoms per 400 true plays", verdict(400 * phantoms / max(true_plays, 1), 1.0, below=True, digits=1), "<= 1")
        summary.add("precision", round(card.precision, 3), "")
        summary.add("median |start error| (s)", None if start is None else verdict(start, 0.5, below=True, digits=2), "<= 0.5")
        summary.add("median |end error| (s)", None if end is None else verdict(end, 0.5, below=True, digits=2), "<= 0.5")
        summary.add("detection latency p95 (s)", None if latency is None else verdict(latency, 8.0, below=True), "<= 8")
        heard, heard_median = card.p95("heard"), card.median_abs("heard")
        summary.add("first notice (provisional event) latency median / p95 (s)",
                    None if heard is None else f"{heard_median:.1f} / {heard:.1f}", "")
        summary.add("provisional plays withdrawn per 400 true plays", round(400 * self.withdrawn / max(true_plays, 1), 1), "")
        summary.add("true plays / detected / matched / fragments / phantoms / missed",
                    f"{true_plays} / {self.detected} / {kinds.count('matched')} / "
                    f"{kinds.count('fragment')} / {phantoms} / {kinds.count('missed')}", "")

    def pairings_json(self) -> list[dict[str, object]]:
        return [{**_pairing_json(p), "kind": kind} for p, kind in zip(self.card.pairings, self.kinds)]


def _ffmpeg_opens(path: Path) -> bool:
    try:
        with av.open(str(path), metadata_errors="replace"):
            return True
    except av.FFmpegError:
        return False


def _kind(pairing: Pairing, truth: Sequence[TruePlay]) -> str:
    """matched, missed, fragment (a detected play of a track over a true play of it that another detected
    play already stands for) or phantom (its track was not on air then)."""
    if pairing.truth is not None:
        return "matched" if pairing.detected is not None else "missed"
    return "phantom" if _airing(pairing, truth) is None else "fragment"


def _airing(pairing: Pairing, truth: Sequence[TruePlay]) -> int | None:
    """The index of the true play of the same track that an unpaired detected play overlaps most, if any."""
    detected = pairing.detected
    assert detected is not None and detected.stream_end is not None
    overlaps = [(min(t.stream_end, detected.stream_end) - max(t.stream_start, detected.stream_start), i)
                for i, t in enumerate(truth) if t.track_id == detected.track_id]
    best = max(overlaps, default=(0.0, None))
    return best[1] if best[0] > 0 else None


def _pairing_json(pairing: Pairing) -> dict[str, object]:
    return {
        "track_id": (pairing.truth or pairing.detected).track_id,
        "true": None if pairing.truth is None else [pairing.truth.stream_start, pairing.truth.stream_end],
        "detected": None if pairing.detected is None else [pairing.detected.stream_start, pairing.detected.stream_end],
        "start_error": pairing.start_error, "end_error": pairing.end_error, "latency": pairing.latency, "heard": pairing.heard,
    }


def run_streams(reference: Sequence[str], encoder: str, streams: int, limit: int | None, hop: float, cache_dir: Path,
                out: str | None, command: str, over_http: bool = False) -> float:
    """Monitor `streams` files at once, each at real-time pace, as `airtrace monitor` does by default (one
    thread embeds and searches); returns streams per core. With `over_http` the files are served over HTTP at
    the pace they play by a server in another process, so that they are read as live streams are: through
    FFmpeg's network reads, at the live edge."""
    refs = [r for source in reference for r in read_references(source, limit)]
    engine = NeuralEngine.open_or_build(encoder, refs, cache_dir, hop)
    if over_http:
        refs = [r for r in refs if _ffmpeg_opens(r.path)]  # one only libsndfile reads can be indexed, not streamed
    registry = CollectorRegistry()
    metrics = metrics_module.create(registry)
    with paced_files_elsewhere([(r.path, r.seconds) for r in refs]) if over_http else nullcontext() as url:
        sources = [StreamSource(f"stream-{i}", url(i % len(refs)) if url else str(refs[i % len(refs)].path)) for i in range(streams)]
        monitor = EmbeddedMonitor(engine.catalog, sources, MonitorOptions(ingest=IngestOptions(realtime=True)), metrics)
        cpu, wall = time.process_time(), time.perf_counter()
        events = monitor.run()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    windows = sum(registry.get_sample_value("airtrace_windows_ingested_total", {"stream": s.id}) or 0 for s in sources)
    stream_seconds = windows * monitor.grid.hop_seconds
    per_core = stream_seconds / cpu
    get = registry.get_sample_value
    how = "served over HTTP at real-time pace (read as live streams)" if over_http else "each at real-time pace"
    result = Table("Streams monitored in real time per CPU core (embedded mode)", ["measure", "value", "target"], settings={
        **engine.settings, "streams": f"{streams} files at once, {how}, one thread embeds and searches"})
    result.add("stream seconds monitored", round(stream_seconds), "")
    result.add("process CPU seconds (all threads)", round(cpu, 1), "")
    result.add("wall seconds", round(wall, 1), "")
    result.add("  of which embedding (s)", round(get("airtrace_embedding_seconds_sum"), 1), "")
    result.add("  of which search (s)", round(get("airtrace_search_seconds_sum"), 1), "")
    result.add("play events", len(plays_in(events)), "")
    result.add("unknown stretches", sum(e.kind == "unknown" for e in events), "")
    result.add("streams per core", verdict(per_core, 200.0, digits=0), ">= 200")
    publish([result], out, command)
    return per_core
