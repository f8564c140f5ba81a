"""`airtrace unknowns promote`: a cluster of repeated unknown music, named by a person, becomes a catalog
track, and every airing of it the play log holds becomes a play of that track, retroactively.

The cluster's saved excerpt (or a recording the person gives) is added to the catalog, so monitors find
the track from their next catalog reload on. Each airing becomes a play with a deterministic id
(`promoted_play_id`), dated where the unknown stretch was, placed in the recording by composing the
matches that linked the airings (each stretch knows where it lies on the one it matched, and at which
speed), with `track.promoted_from_cluster` saying where it came from; its unknown stretch names the play,
so reports count those seconds once, as catalog music. Promoting the same cluster again changes nothing
but the airings heard since; promoting it as another track is refused.
"""

from __future__ import annotations

import io
from collections import defaultdict, deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from encoders import AudioError, load_audio
from monitor.catalog import Catalog, CatalogError
from monitor.events import PROMOTED_FROM, PlayEvent, promoted_play_id
from monitor.playlog.schema import cluster_excerpts, unknowns
from monitor.playlog.schema import plays as plays_table
from monitor.playlog.store import EventRow, MalformedEvent, PlayLog, PlayLogError, play_row
from monitor.playlog.unknowns import parse_cluster_id


@dataclass(frozen=True)
class Airing:
    unknown_id: str
    stream_id: str
    started_at: float
    stream_start: float
    stream_end: float
    matched_unknown_id: str | None
    ref_start: float | None
    speed: float | None
    score: float | None
    stream: dict[str, Any]
    promoted_play_id: str | None


@dataclass(frozen=True)
class Promotion:
    track_id: str
    added: bool  # False: the track was already in the catalog from an earlier promotion of this cluster
    plays: list[PlayEvent]  # started and ended event of each airing
    new_plays: list[PlayEvent]  # those of the airings that were not plays of the track yet (an earlier promotion made them)

    @property
    def new_airings(self) -> int:
        return len(self.new_plays) // 2

    @property
    def promoted_before(self) -> int:
        return (len(self.plays) - len(self.new_plays)) // 2


def promote(log: PlayLog, catalog: Catalog, cluster: str, track_id: str, metadata: dict[str, str], audio_file: Path | None = None) -> Promotion:
    """Add the cluster's audio to `catalog` as `track_id` and its airings to `log` as plays. Raises PlayLogError
    or CatalogError, having changed nothing, for a cluster that does not exist or was promoted as another track,
    audio that cannot be had, or a track id the catalog holds for something else."""
    cluster = parse_cluster_id(cluster)
    airings = _airings(log, cluster)
    if not airings:
        raise PlayLogError(f"no cluster {cluster} in the play log at {log.where}; `airtrace unknowns list` shows the cluster ids")
    _refuse_another_track(log, cluster, airings, track_id)
    source, audio = _audio(log, cluster, audio_file, catalog.encoder.sample_rate)
    metadata = {**metadata, PROMOTED_FROM: cluster}
    plays = _plays(airings, source, len(audio) / catalog.encoder.sample_rate, track_id, metadata)
    rows = _rows(airings, plays)
    added = _add_track(catalog, track_id, audio, metadata)
    log.write(rows)  # which also has each stretch name its play, in the same transaction
    new_plays = [event for airing, started, ended in zip(airings, plays[::2], plays[1::2]) if airing.promoted_play_id is None
                 for event in (started, ended)]
    return Promotion(track_id, added, plays, new_plays)


def _airings(log: PlayLog, cluster: str) -> list[Airing]:
    columns = [unknowns.c[name] for name in ("unknown_id", "stream_id", "started_at", "stream_start", "stream_end", "matched_unknown_id",
                                             "ref_start", "speed", "score", "stream", "promoted_play_id")]
    with log.connect() as connection:
        rows = connection.execute(select(*columns).where(unknowns.c.cluster_id == cluster).order_by(unknowns.c.started_at)).all()
    return [Airing(r.unknown_id, r.stream_id, r.started_at.timestamp(), r.stream_start, r.stream_end, r.matched_unknown_id,
                   r.ref_start, r.speed, r.score, r.stream or {}, r.promoted_play_id) for r in rows]


def _refuse_another_track(log: PlayLog, cluster: str, airings: list[Airing], track_id: str) -> None:
    """A cluster becomes one track: promoted again as another, its music would be in the catalog twice and
    each airing two plays, counted twice in every report."""
    promoted = [a.promoted_play_id for a in airings if a.promoted_play_id is not None]
    if not promoted:
        return
    with log.connect() as connection:
        earlier = set(connection.execute(select(plays_table.c.track_id).where(plays_table.c.play_id.in_(promoted))).scalars()) - {track_id}
    if earlier:
        first = min(earlier)
        raise PlayLogError(f"cluster {cluster} was promoted already, as track {first!r}; as {track_id!r} too, its airings would be "
                           f"counted twice. Give --track-id {first} (which adds the airings heard since)")


def _rows(airings: list[Airing], plays: list[PlayEvent]) -> list[EventRow]:
    """The play log's rows of the new plays, checked before the catalog changes: an airing the log cannot take
    as a play (a stretch longer than any play, of a station that aired music non-stop) stops the promotion."""
    rows = []
    for airing, started, ended in zip(airings, plays[::2], plays[1::2]):
        try:
            rows += [("play", play_row(started.to_json())), ("play", play_row(ended.to_json()))]
        except MalformedEvent as exc:
            raise PlayLogError(f"cannot make a play of airing {airing.unknown_id} ({exc}); nothing was changed") from None
    return rows


def _audio(log: PlayLog, cluster: str, audio_file: Path | None, sample_rate: int) -> tuple[str | None, np.ndarray]:
    """(the stretch the audio is of, None for a person's recording; the samples)."""
    try:
        if audio_file is not None:
            return None, load_audio(audio_file, sample_rate)
        with log.connect() as connection:
            saved = connection.execute(select(cluster_excerpts.c.unknown_id, cluster_excerpts.c.excerpt)
                                       .where(cluster_excerpts.c.cluster_id == cluster)).first()
        if saved is None:
            raise PlayLogError(f"cluster {cluster} has no saved audio (the process that heard its repeat did not hold it: a restart "
                               f"or a rebalance); give --audio FILE with a recording of it")
        return saved.unknown_id, load_audio(io.BytesIO(saved.excerpt), sample_rate)
    except AudioError as exc:
        raise PlayLogError(f"cannot read the audio for cluster {cluster}: {exc}; give --audio FILE with a readable recording") from None


def _add_track(catalog: Catalog, track_id: str, audio: np.ndarray, metadata: dict[str, str]) -> bool:
    """Add the track; False when an earlier promotion of this cluster added it already."""
    try:
        known = catalog.track(track_id)
    except CatalogError:
        catalog.add_audio(track_id, audio, metadata)
        return True
    if known.metadata.get(PROMOTED_FROM) != metadata[PROMOTED_FROM]:
        raise CatalogError(f"track id {track_id!r} is already in the catalog for other audio; give another --track-id")
    return False


def _plays(airings: list[Airing], source: str | None, seconds: float, track_id: str, metadata: dict[str, str]) -> list[PlayEvent]:
    placed = _placements(airings, source, seconds)
    plays = []
    for a in airings:
        speed, ref_start = placed.get(a.unknown_id, (1.0, 0.0))
        duration = a.stream_end - a.stream_start
        ended = PlayEvent(
            play_id=promoted_play_id(a.unknown_id, track_id), state="ended", stream_id=a.stream_id, track_id=track_id,
            started_at=a.started_at, stream_start=a.stream_start, ref_start=max(0.0, ref_start), speed=speed, score=a.score or 0.0,
            confidence=1.0, decided_offset=a.stream_end, ended_at=a.started_at + duration, stream_end=a.stream_end,
            ref_end=max(0.0, ref_start + speed * duration), track=metadata, stream=a.stream,
        )
        started = replace(ended, state="started", ended_at=None, stream_end=None, ref_end=None)
        plays += [started, ended]
    return plays


def _placements(airings: list[Airing], source: str | None, seconds: float) -> dict[str, tuple[float, float]]:
    """(speed, position in the recording at the airing's start) of each airing the matches link to the
    stretch the recording is of; the recording is that stretch's latest `seconds` (how excerpts are cut).
    A person's recording is taken to start where the earliest airing does."""
    by_id = {a.unknown_id: a for a in airings}
    links: dict[str, list[tuple[str, float, float]]] = defaultdict(list)  # id -> (other, a, b): other's time = a * own time + b
    for a in airings:
        if a.matched_unknown_id in by_id and a.speed and a.ref_start is not None:
            links[a.unknown_id].append((a.matched_unknown_id, a.speed, a.ref_start))
            links[a.matched_unknown_id].append((a.unknown_id, 1.0 / a.speed, -a.ref_start / a.speed))
    root = source if source in by_id else airings[0].unknown_id
    root_start = max(0.0, by_id[root].stream_end - by_id[root].stream_start - seconds) if source in by_id else 0.0
    to_root = {root: (1.0, -root_start)}  # own time -> recording time
    queue = deque([root])
    while queue:
        here = queue.popleft()
        a_here, b_here = to_root[here]
        for other, a, b in links[here]:  # here = (t_other - b) / a, so recording = a_here * (t_other - b) / a + b_here
            if other not in to_root:
                to_root[other] = (a_here / a, b_here - a_here * b / a)
                queue.append(other)
    return to_root
