"""Where the tracking step keeps each stream's play state: the StateStore interface, and its in-memory form.

The play state machine keeps all it knows of a stream in one `StreamState`. A store holds it per stream
id and remembers which play events were already published, so that a replay after a crash or a rebalance
republishes none of them. Before publishing, a process claims the events: two workers that derive the same
event at once (one of them about to learn in a rebalance that it lost the stream) cannot both publish it.
Embedded mode uses MemoryStateStore; workers share monitor.fleet.redis_state's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from monitor.stages.play_state import StreamState


@dataclass(frozen=True)
class Claims:
    """What a claim on event keys found: `mine` to publish now, `held` by another process that is publishing
    them (each until its claim lapses, if that process dies first); the other keys were published. Of
    `mine`, `lapsed` are those whose claim by another process lapsed, with when that one claimed them (Unix
    seconds): it may have sent them before it died, so they may already be out."""

    mine: set[str] = field(default_factory=set)
    held: set[str] = field(default_factory=set)
    lapsed: dict[str, float] = field(default_factory=dict)


class StateStore(Protocol):
    """Where the play state machine's per-stream state and the published event keys live."""

    def load(self, stream_ids: Iterable[str]) -> dict[str, StreamState]:
        """The saved state of each stream; streams never saved (or saved unreadably) are absent."""

    def save(self, states: Mapping[str, StreamState]) -> None:
        """Replace the saved state of these streams, unless a newer one (a higher `position`) is saved: a
        worker that lost its streams in a rebalance while still working on them must not move them back,
        or their next windows would apply to a state that misses the windows in between."""

    def claim(self, event_keys: Iterable[str]) -> Claims:
        """Claim the keys that are neither published nor claimed by another live process."""

    def renew(self, event_keys: Iterable[str]) -> set[str]:
        """The keys this process still holds the claims of, each claim made afresh, just before it sends them.
        A process can be starved, paused or reading the plays topic back for longer than a claim holds; another
        may then have taken the lapsed claim over and sent the event: the keys it lost are not its to send."""

    def release(self, event_keys: Iterable[str]) -> None:
        """Give up this process's claims (publishing failed): another may publish them at once."""

    def mark_published(self, event_keys: Iterable[str]) -> None:
        """Remember that these events are on the plays topic (which ends their claims)."""


class MemoryStateStore:
    """A StateStore in this process's memory, for embedded mode and tests; it ends with the process.
    It remembers the latest `keep_published` event keys: a process replays nothing older than that. It has
    no other process to share with: every key not published is this process's to publish."""

    def __init__(self, keep_published: int = 100_000) -> None:
        self._states: dict[str, StreamState] = {}
        self._published: dict[str, None] = {}  # insertion-ordered: the oldest go first
        self._keep = keep_published

    def load(self, stream_ids: Iterable[str]) -> dict[str, StreamState]:
        return {s: self._states[s] for s in stream_ids if s in self._states}

    def save(self, states: Mapping[str, StreamState]) -> None:
        self._states.update({s: v for s, v in states.items() if s not in self._states or self._states[s].position <= v.position})

    def claim(self, event_keys: Iterable[str]) -> Claims:
        return Claims(mine={k for k in event_keys if k not in self._published})

    def renew(self, event_keys: Iterable[str]) -> set[str]:
        return {k for k in event_keys if k not in self._published}

    def release(self, event_keys: Iterable[str]) -> None:
        """Nothing to give up: claims of one process are never held against it."""

    def mark_published(self, event_keys: Iterable[str]) -> None:
        self._published.update(dict.fromkeys(event_keys))
        while len(self._published) > self._keep:
            del self._published[next(iter(self._published))]
