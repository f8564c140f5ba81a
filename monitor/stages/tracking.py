"""The tracking step of both modes: windows searched in the catalog, then hits and stream ends of many
streams turned into play events, each stream's state kept in a StateStore.

Embedded mode runs it in its main loop over a MemoryStateStore; a worker runs its search half in the
`embed` agent and its play half in the `track` agent, over Redis. The one rule for a catalog that cannot
be searched (emptied, its files damaged) lives here too: its windows are not heard at all, so no play ends
or opens on them; `airtrace_catalog_outage` is 1, which the health check and an alert report.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace

from encoders import ContentClassifier, Encoder, EncoderError
from monitor.catalog import Catalog, CatalogError
from monitor.events import PlayEvent
from monitor.metrics import Metrics
from monitor.stages.search import ContentCount, hits_for
from monitor.stages.play_state import CatalogInfo, PlayConfig, StreamState
from monitor.stages.plays import PlayTracker
from monitor.records import AudioWindow, EndOfStream, WindowHits
from monitor.stages.state import StateStore
from monitor.stages.windows import WindowGrid

log = logging.getLogger(__name__)


def content_count(encoder: Encoder) -> ContentCount | None:
    """The shipped content classifier on `encoder`'s pass, or None (said once) where it was trained on
    other encoder weights: streams are then tracked without content classes."""
    try:
        classifier = ContentClassifier.load(encoder=encoder)
    except EncoderError as exc:
        log.info("no content classes for this catalog's encoder: %s", exc)
        return None
    return ContentCount(classifier, WindowGrid.for_encoder(encoder).hop_seconds)


class LiveCatalog:
    """The catalog a running monitor searches: reloaded when another process commits a generation, its
    size and whether it can be searched shown in metrics, and what the state machine needs of it in `info`."""

    def __init__(self, catalog: Catalog, metrics: Metrics | None = None):
        self.catalog, self.metrics = catalog, metrics
        self.info = CatalogInfo.of(catalog)  # raises CatalogError for a catalog that cannot calibrate (empty)
        self.content = content_count(catalog.encoder)
        self.searchable = True
        self._gauges()

    def search(self, windows: Sequence[AudioWindow], k: int) -> list[WindowHits] | None:
        """The windows' hits, or None while the catalog cannot be searched: those windows are not heard."""
        try:
            hits = hits_for(windows, self.catalog.encoder, self.catalog, k, self.metrics, self.content)
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
            self.info = CatalogInfo.of(self.catalog)
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


class TrackingStep:
    """The play state machine over batches of hits and stream ends from many streams, state in a StateStore.

    One step is `advance` (new states and the events they caused; nothing saved), `unpublished` (the events
    no one published yet: a replay re-derives published ones with the same ids), publishing them, then
    `commit`. A process that dies before `commit` redoes the step from the same saved states."""

    def __init__(self, catalog: LiveCatalog, store: StateStore, config: PlayConfig | None = None):
        grid = catalog.catalog.grid
        self.tracker = PlayTracker(config or PlayConfig.for_grid(grid.window_seconds, grid.hop_seconds))
        self.catalog, self.store = catalog, store

    def advance(self, items: Sequence[WindowHits | EndOfStream]) -> tuple[dict[str, StreamState], list[PlayEvent]]:
        by_stream: dict[str, list[WindowHits | EndOfStream]] = defaultdict(list)
        for item in items:
            by_stream[item.stream_id].append(item)
        saved = self.store.load(by_stream)
        states, events = {}, []
        for stream_id, stream_items in by_stream.items():
            state = saved.get(stream_id)
            for item in sorted(stream_items, key=lambda h: h.seq):
                state, caused = self._step(state, stream_id, item)
                events += caused
            if state is not None:
                states[stream_id] = state
        return states, events

    def _step(self, state: StreamState | None, stream_id: str, item: WindowHits | EndOfStream) -> tuple[StreamState | None, list[PlayEvent]]:
        info = self.catalog.info
        if isinstance(item, WindowHits):
            return self.tracker.update(state or StreamState(stream_id), item, info)
        if state is None or item.seq <= state.last_seq:  # nothing heard of the stream, or a replayed end
            return state, []
        state, events = self.tracker.close(state, info)
        return replace(state, last_seq=item.seq), events

    def unpublished(self, events: Sequence[PlayEvent]) -> list[PlayEvent]:
        published = self.store.published(e.event_id for e in events)
        return [e for e in events if e.event_id not in published]

    def commit(self, states: dict[str, StreamState], published: Iterable[PlayEvent]) -> None:
        """After the events are out: remember them, then save the states that caused them."""
        self.store.mark_published(e.event_id for e in published)
        self.store.save(states)
