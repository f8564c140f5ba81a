"""The tracking step of both modes: windows searched in the catalog, then hits and stream ends of many
streams turned into play events, each stream's state kept in a StateStore.

Embedded mode runs it in its main loop over a MemoryStateStore; a worker runs its search half in the
`embed` agent and its play half in the `track` agent, over Redis. Which ingest run of a stream it tracks,
and what becomes of another run's windows and of replays, is monitor.stages.ingest_runs's rule. The one rule for a catalog that cannot
be searched (emptied, its files damaged) lives here too: its windows are not heard at all, so no play ends
or opens on them; `airtrace_catalog_outage` is 1, which the health check and an alert report.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import faiss
import torch

from encoders import ContentClassifier, Encoder, EncoderError
from monitor.catalog import Catalog, CatalogError
from monitor.constants import DEFAULT_K
from monitor.events import Event, UnknownEvent, plays_in
from monitor.metrics import Metrics
from monitor.options import UnknownConfig
from monitor.stages.airing import AiringTracker
from monitor.stages.ingest_runs import Verdict, describe_run, followed_after, verdict
from monitor.stages.search import ContentCount, hits_for
from monitor.stages.play_state import CatalogInfo, PlayConfig, StreamState
from monitor.stages.plays import PlayTracker
from monitor.records import AudioWindow, EndOfStream, WindowHits
from monitor.stages.state import StateStore
from monitor.stages.unknown_store import MemoryUnknownStore, UnknownStore
from monitor.stages.unknowns import Resolved, UnknownSearch
from monitor.stages.windows import WindowGrid

log = logging.getLogger(__name__)
CLAIM_POLL_SECONDS = 0.2  # how often to look again at events another process is publishing
CONFLICT_LOG_SECONDS = 600.0  # while two ingest runs publish a stream, it is said again after this much of its air time


def use_threads(threads: int) -> None:
    """Embed and search on `threads` CPU threads in this process (torch's pool and FAISS's), not on every core
    of the machine as both would by default: see monitor.options.THREADS."""
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def content_count(encoder: Encoder) -> ContentCount | None:
    """The shipped content classifier trained on `encoder`'s weights, riding on its pass, or None (said
    once) where no shipped classifier was: streams are then tracked without content classes."""
    try:
        classifier = ContentClassifier.for_encoder(encoder)
    except EncoderError as exc:
        log.info("no content classes for this catalog's encoder: %s", exc)
        return None
    return ContentCount(classifier, WindowGrid.for_encoder(encoder))


class LiveCatalog:
    """The catalog a running monitor searches: reloaded when another process commits a generation, its
    size and whether it can be searched shown in metrics, and what the state machine needs of it in `info`."""

    def __init__(self, catalog: Catalog, metrics: Metrics | None = None, k: int = DEFAULT_K):
        self.catalog, self.metrics, self.k = catalog, metrics, k  # k: neighbours searched a window, calibrated for
        self.info = CatalogInfo.of(catalog, k)  # raises CatalogError for a catalog that cannot calibrate (empty)
        self.content = content_count(catalog.encoder)
        self.searchable = True
        self._gauges()

    def search(self, windows: Sequence[AudioWindow]) -> list[WindowHits] | None:
        """The windows' `k` nearest hits, or None while the catalog cannot be searched: those windows are not heard."""
        try:
            hits = hits_for(windows, self.catalog.encoder, self.catalog, self.k, self.metrics, self.content)
        except CatalogError as exc:
            if self.searchable:
                log.error("cannot search the catalog (%s); windows go unheard, no play ends or opens, until it is fixed", exc)
            self._set_searchable(False)
            if self.metrics:
                self.metrics.windows_unheard.inc(len(windows))
            return None
        if not self.searchable and windows:
            log.info("the catalog can be searched again (generation %d)", self.catalog.generation)
        self._set_searchable(True)
        return hits

    def reload(self) -> bool:
        """Pick up a changed catalog; a broken one is reported and the loaded one's `info` kept."""
        try:
            if not self.catalog.reload_if_changed():
                return False
            self.info = CatalogInfo.of(self.catalog, self.k)
            self.content = content_count(self.catalog.encoder)
        except (CatalogError, OSError) as exc:
            log.error("cannot reload the catalog (%s); still tracking with generation %d's calibration", exc, self.catalog.generation)
            return False
        log.info("catalog changed on disk; reloaded (generation %d)", self.catalog.generation)
        self._gauges()
        return True

    def _set_searchable(self, searchable: bool) -> None:
        self.searchable = searchable
        if self.metrics:
            self.metrics.catalog_outage.set(int(not searchable))

    def _gauges(self) -> None:
        if self.metrics:
            stats = self.catalog.stats()
            self.metrics.catalog_tracks.set(stats["tracks"])
            self.metrics.catalog_windows.set(stats["windows"])
            self.metrics.index_bytes.set(stats["index_bytes"])
            self.metrics.catalog_outage.set(int(not self.searchable))


@dataclass(frozen=True)
class Unpublished:
    """Events claimed for publishing. `maybe_out`: those a process that then died had claimed, by event id,
    with when it claimed them (Unix seconds): it may have sent them and died before marking them published."""

    events: list[Event]
    maybe_out: dict[str, float] = field(default_factory=dict)


class TrackingStep:
    """The play state machine, and after it the airing tracker (unknown stretches, hourly airtime), over
    batches of hits and stream ends from many streams, state in a StateStore.

    One step is `advance` (new states and the events they caused, unknown stretches searched among the
    kept ones; nothing saved), `unpublished` (the events no one published yet, claimed: a replay re-derives
    published ones with the same ids), `renew` (a fleet's worker, just before it sends), publishing them
    (`release` if that fails), then `commit`. A process that dies before `commit`
    redoes the step from the same saved states. Unknown stretches are kept in `unknowns`, which every
    tracking process must share for repeats across them to be found (a MemoryUnknownStore by default)."""

    def __init__(self, catalog: LiveCatalog, store: StateStore, config: PlayConfig | None = None,
                 unknowns: UnknownStore | None = None, unknown_config: UnknownConfig | None = None, metrics: Metrics | None = None):
        grid = catalog.catalog.grid
        config = replace(config or PlayConfig(), window_seconds=grid.window_seconds, hop_seconds=grid.hop_seconds)  # the streams' grid is the catalog's
        self.tracker = PlayTracker(config)
        unknown_config = unknown_config or UnknownConfig()
        self.airing = AiringTracker(unknown_config, config.window_seconds, config.hop_seconds)
        self.unknowns = UnknownSearch(unknowns or MemoryUnknownStore(), unknown_config, config.window_seconds, config.hop_seconds,
                                      catalog.catalog.encoder.sample_rate)
        self.catalog, self.store, self.metrics = catalog, store, metrics
        self._resolved: dict[str, Resolved] = {}  # by event id: decided stretches to keep once published
        self._aside: dict[str, WindowHits] = {}  # by stream: the latest window of another ingest run set aside
        self._conflict_reported: dict[str, float] = {}  # by stream: the air time of the window whose conflict was last logged

    def advance(self, items: Sequence[WindowHits | EndOfStream]) -> tuple[dict[str, StreamState], list[Event]]:
        by_stream: dict[str, list[WindowHits | EndOfStream]] = defaultdict(list)
        for item in items:
            by_stream[item.stream_id].append(item)
        saved = self.store.load(by_stream)
        states, events = {}, []
        for stream_id, stream_items in by_stream.items():
            state = saved.get(stream_id)
            for item in stream_items:  # in the order published: a stream's items come from one partition (or one reader)
                state, caused = self._step(state, stream_id, item)
                events += caused
            if state is not None:
                states[stream_id] = state
        events = [self._resolve(e) if isinstance(e, UnknownEvent) else e for e in events]
        self.forget(s for s, state in states.items() if state.following.ended)
        return states, events

    def forget(self, stream_ids: Iterable[str]) -> None:
        """Drop what this process holds in memory of streams that ended or went to another worker (their unknown-music
        buffers, about 10 MB a stream); their saved states stay in the store for whoever tracks them next."""
        for stream_id in stream_ids:
            self.unknowns.forget(stream_id)
            self._aside.pop(stream_id, None)
            self._conflict_reported.pop(stream_id, None)

    def _step(self, state: StreamState | None, stream_id: str, item: WindowHits | EndOfStream) -> tuple[StreamState | None, list[Event]]:
        """One window or end of a stream, as monitor.stages.ingest_runs judges it."""
        if state is None and isinstance(item, EndOfStream):  # nothing heard of the stream
            return state, []
        state = state or StreamState(stream_id)
        judged = verdict(state, item, self.tracker.config.switch_run_seconds)
        if judged is Verdict.CONFLICT:
            self._set_aside(state, item)
        elif judged is Verdict.REPLAY:
            self._replayed(state, item)
        if judged in (Verdict.REPLAY, Verdict.CONFLICT):
            return state, []
        position, closed = state.position, []
        if judged is not Verdict.TAKE:  # another run followed from here, or the run's numbering ran ahead: after a gap
            self._switched(state, item, judged)
            if judged is Verdict.SWITCH:  # another run's clock: its plays cannot go on
                state, closed = self._close(state)
            state, item = replace(state, last_seq=-1), replace(item, after_gap=True)
        if isinstance(item, WindowHits):
            self._report_conflict(state, item)
            self.unknowns.hear([item])
            state, plays = self.tracker.update(state, item, self.catalog.info)
            airing, found = self.airing.update(stream_id, state.airing, item, plays_in(plays), _provisional_start(state))
            state, caused = replace(state, airing=airing), [*plays, *found]
        else:
            state, caused = self._close(state)
            state = replace(state, last_seq=item.seq)
        return replace(state, following=followed_after(state, item), progress=max(position + 1, item.seq)), [*closed, *caused]

    def _close(self, state: StreamState) -> tuple[StreamState, list[Event]]:
        """The stream's end: its open play and music stretch end."""
        seen = state.history[-1].offset + self.tracker.config.window_seconds if state.history else state.airing.music_last
        state, plays = self.tracker.close(state, self.catalog.info)
        airing, found = self.airing.close(state.stream_id, state.airing, plays_in(plays), _provisional_start(state), seen)
        return replace(state, airing=airing), [*plays, *found]

    def _set_aside(self, state: StreamState, hits: WindowHits) -> None:
        """Count a window of another ingest run set aside, and hold it until the run followed shows it is live too."""
        if self.metrics:
            self.metrics.ingest_run_conflicts.labels(state.stream_id).inc()
        self._aside[state.stream_id] = hits

    def _replayed(self, state: StreamState, item: WindowHits | EndOfStream) -> None:
        """Say so when the first window of a run other than the one followed is a replay: an earlier run's whole audio is
        passed over (a recording of an earlier hour ingested after a later one), unless a rewind went back that far."""
        followed = state.following
        if isinstance(item, WindowHits) and item.run is not None and item.seq == item.run and item.run != followed.run:
            log.warning("stream %s: %s began before %s, which is followed, and aired before it: its windows are taken as replays "
                        "and heard no more. A recording of an earlier hour ingested after a later one is passed over so: ingest a "
                        "stream's recordings in the order they aired, or give this one a stream id of its own",
                        state.stream_id, describe_run(item.run), describe_run(followed.run))

    def _report_conflict(self, state: StreamState, taken: WindowHits) -> None:
        """A window of the followed run after another run's was set aside: two runs publish the stream. Said once
        per CONFLICT_LOG_SECONDS of air time."""
        aside = self._aside.pop(state.stream_id, None)
        if aside is None or aside.run == taken.run:
            return
        reported = self._conflict_reported.get(state.stream_id)
        if reported is not None and abs(taken.air_time - reported) < CONFLICT_LOG_SECONDS:
            return
        self._conflict_reported[state.stream_id] = taken.air_time
        log.error("stream %s is published by two ingest runs: %s, whose windows are tracked, and %s, whose windows are set aside. "
                  "Two `airtrace ingest` processes read it (its id is in two streams files, or a second ingest was started by hand): "
                  "stop one, or give each stream its own id. Should the tracked run end or fall silent for %g s, the other is tracked.",
                  state.stream_id, describe_run(taken.run), describe_run(aside.run), self.tracker.config.switch_run_seconds)

    def _switched(self, state: StreamState, hits: WindowHits, judged: Verdict) -> None:
        """Say which run the stream's tracking goes on with, and why; count it unless the followed run had ended."""
        followed, stream_id = state.following, state.stream_id
        silent = hits.air_time - (followed.air_time or 0.0)
        if judged is Verdict.FOLLOW:
            after = "the end of" if followed.ended else "a restart of, or beside,"
            log.info("stream %s: tracking %s after %s %s", stream_id, describe_run(hits.run), after, describe_run(followed.run))
            return
        if self.metrics:
            self.metrics.ingest_run_switches.labels(stream_id).inc()
        if judged is Verdict.RESUME:
            log.warning("stream %s: %s numbered a window %d, behind the %d taken, %.1f s of air time after that: a garbled window had "
                        "numbered the run ahead; tracking goes on from this window", stream_id, describe_run(hits.run), hits.seq, state.last_seq, silent)
        else:
            log.warning("stream %s: tracking %s from here: %s, tracked until now, has been silent for %.1f s without an end (its ingest was "
                        "killed?)", stream_id, describe_run(hits.run), describe_run(followed.run), silent)

    def _resolve(self, event: UnknownEvent) -> UnknownEvent:
        resolved = self.unknowns.resolve(event, self.catalog.info.calibration)
        self._resolved[resolved.event.event_id] = resolved
        return resolved.event

    def unpublished(self, events: Sequence[Event]) -> Unpublished:
        """The events this process must publish now, claimed: none published, none another process is
        publishing. While another holds some (it took them a moment ago and lost their stream in a rebalance),
        wait until it has published them or its claim lapsed (it died): they are then this one's to publish,
        once it has looked for them where they go (`Unpublished.maybe_out`)."""
        claims = self.store.claim(e.event_id for e in events)
        mine, lapsed = set(claims.mine), dict(claims.lapsed)
        while claims.held:
            time.sleep(CLAIM_POLL_SECONDS)
            claims = self.store.claim(claims.held)
            mine |= claims.mine
            lapsed.update(claims.lapsed)
        return Unpublished([e for e in events if e.event_id in mine], lapsed)

    def renew(self, states: dict[str, StreamState], events: Sequence[Event]) -> tuple[dict[str, StreamState], list[Event]]:
        """Just before sending: the claimed events this process still holds (their claims made afresh), and the
        states of the streams it lost none of them for. A claim lapses while its process is starved, paused or
        reading the plays topic back for longer than a claim holds; the process that took it over has the
        stream now, publishes its events and saves its state."""
        kept = self.store.renew(e.event_id for e in events)
        lost = {e.stream_id for e in events if e.event_id not in kept}
        if lost:
            log.warning("another worker took over the events of stream(s) %s while this one held them too long; "
                        "it publishes them and keeps the streams' state", ", ".join(sorted(lost)))
        return {s: state for s, state in states.items() if s not in lost}, [e for e in events if e.event_id in kept]

    def release(self, unsent: Iterable[Event], sent: Iterable[Event] = ()) -> None:
        """Publishing failed part-way: give up the claims of the events not sent, so that whoever redoes the step
        (from the saved states: none are saved here) publishes them, and mark those sent as published, so that
        it does not publish them twice."""
        self.store.mark_published(e.event_id for e in sent)
        self.store.release(e.event_id for e in unsent)

    def commit(self, states: dict[str, StreamState], published: Iterable[Event]) -> None:
        """After the events are out: remember them, keep the unknown stretches among them, then save the
        states that caused them."""
        published = list(published)
        self.store.mark_published(e.event_id for e in published)
        self.unknowns.keep(self._resolved[e.event_id] for e in published if e.event_id in self._resolved)
        self._resolved.clear()
        self.store.save(states)


def _provisional_start(state: StreamState) -> float | None:
    """Where the earliest play that is still provisional starts (the open play or a herald): its started
    event, if it comes, is dated there."""
    starts = [p.stream_start for p in (state.play, state.herald) if p is not None and not p.published]
    return min(starts, default=None)
