"""The small frozen records that stages hand each other: ingest -> windows -> hits -> plays.

Times are seconds. A window's `offset` is where it starts in its stream (or query clip); a neighbour's
`ref_time` is where its reference window starts in the track. `air_time` is UTC epoch seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class AudioWindow:
    """One window of a stream at the encoder's rate, stamped where and when it was on air."""

    stream_id: str
    seq: int  # window number since ingest of this stream began; never reused, also across reconnects
    offset: float  # stream time of the window start
    air_time: float  # UTC epoch seconds of the window start
    samples: np.ndarray = field(repr=False)
    after_gap: bool = False  # the stream dropped or stalled just before: no play may span this point


@dataclass(frozen=True)
class Neighbour:
    """A reference window near a query window in embedding space."""

    track_id: str
    ref_time: float
    similarity: float


@dataclass(frozen=True)
class WindowHits:
    """The catalog's nearest reference windows for one query window."""

    stream_id: str
    seq: int
    offset: float
    air_time: float
    neighbours: tuple[Neighbour, ...]
    after_gap: bool = False
