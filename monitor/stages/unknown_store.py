"""Where unknown stretches are kept so that their content can be found again: the UnknownStore interface,
and its in-memory form for tests.

A stretch of music no catalog play covered is kept (its window embeddings, their offsets, and an audio
excerpt where the runner has audio) for a retention window, so that each new stretch is searched against
the kept ones of every stream. One store is shared by every process that tracks streams (embedded mode
and all workers), so that a repeat is found whichever worker hears each airing; the play log's database
holds it (monitor.playlog), because both modes have one, it is durable, and clusters are reported from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class KeptStretch:
    """One kept unknown stretch. `offsets[i]` is where window i starts, in seconds from the stretch's
    stream_start; `embeddings` are float16, one row per window. `row` is the store's order of arrival."""

    unknown_id: str
    stream_id: str
    started_at: float  # UTC epoch seconds
    duration: float
    offsets: np.ndarray = field(repr=False)
    embeddings: np.ndarray = field(repr=False)
    cluster_id: str | None = None
    excerpt: bytes | None = field(default=None, repr=False)  # Ogg/Opus audio of the stretch, for a person to hear
    row: int = 0


class UnknownStore(Protocol):
    def keep(self, stretch: KeptStretch) -> None:
        """Keep a stretch; keeping one already kept (a replay) changes nothing."""

    def added_since(self, row: int, aired_after: float) -> list[KeptStretch]:
        """Stretches with a row above `row` that started on air after `aired_after`, in row order, without
        their excerpts: what a process adds to its search index since it last looked."""

    def join(self, unknown_id: str, cluster_id: str) -> None:
        """Put a kept stretch that has no cluster yet into `cluster_id` (it just proved to be repeated)."""

    def clusters_of(self, unknown_ids: Iterable[str]) -> dict[str, str]:
        """The cluster of each of these stretches that has one."""

    def expire(self, aired_before: float) -> int:
        """Forget the embeddings and excerpts of stretches aired before; returns how many. A cluster keeps
        its saved excerpt (the play log's unknowns keep their rows)."""


class MemoryUnknownStore:
    """An UnknownStore in this process's memory: tests, and a monitor run without a play log."""

    def __init__(self) -> None:
        self._kept: dict[str, KeptStretch] = {}
        self._rows = 0

    def keep(self, stretch: KeptStretch) -> None:
        if stretch.unknown_id not in self._kept:
            self._rows += 1
            self._kept[stretch.unknown_id] = replace(stretch, row=self._rows)

    def added_since(self, row: int, aired_after: float) -> list[KeptStretch]:
        return sorted((replace(s, excerpt=None) for s in self._kept.values() if s.row > row and s.started_at > aired_after), key=lambda s: s.row)

    def join(self, unknown_id: str, cluster_id: str) -> None:
        kept = self._kept.get(unknown_id)
        if kept is not None and kept.cluster_id is None:
            self._kept[unknown_id] = replace(kept, cluster_id=cluster_id)

    def clusters_of(self, unknown_ids: Iterable[str]) -> dict[str, str]:
        return {u: self._kept[u].cluster_id for u in unknown_ids if u in self._kept and self._kept[u].cluster_id is not None}

    def expire(self, aired_before: float) -> int:
        old = [u for u, s in self._kept.items() if s.started_at < aired_before]
        for u in old:
            del self._kept[u]
        return len(old)
