"""What a stream airs beside catalog plays: stretches of unknown music, and seconds of each content class
per UTC hour, decided window by window from the content classifier's labels and the play events.

`AiringTracker.update` is pure, like the play state machine it runs after: the per-stream `Airing` is part
of the stream's saved state, so a replay or another worker decides the same stretches with the same ids.

A music stretch is music or talk over music, holes of talk or silence up to `gap_seconds` inside it. The
part of it that no catalog play covers, from the end of the last play (or the stretch's start) to the
start of the next play (or the stretch's end), is an unknown stretch when it lasts `min_seconds`; it is
decided when the stretch ends, a play starts, a gap cuts the stream, or the stream ends, and in parts of
`part_seconds` while it goes on. A play that is still provisional counts as catalog: its started event
will be dated back to its evidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from encoders import CLASSES
from monitor.events import AirtimeEvent, PlayEvent, UnknownEvent, unknown_id
from monitor.options import UnknownConfig
from monitor.records import WindowHits
from monitor.stages.play_state import Airing
from monitor.stages.search import MUSIC_CLASSES
from monitor.stages.windows import hop_start_in_window

HOUR = 3600.0


class AiringTracker:
    def __init__(self, config: UnknownConfig, window_seconds: float, hop_seconds: float):
        self.config, self.hop, self.window = config, hop_seconds, window_seconds
        self.centre = hop_start_in_window(window_seconds, hop_seconds)

    def update(self, stream_id: str, airing: Airing, hits: WindowHits, plays: Sequence[PlayEvent],
               provisional_start: float | None) -> tuple[Airing, list[UnknownEvent | AirtimeEvent]]:
        """After the play state machine took `hits` (and caused `plays`): the new airing and what it decided."""
        decided = hits.offset + self.window  # what was heard when this window was decided (as in play events)
        airing, events = self._after_plays(stream_id, airing, plays, provisional_start, decided)
        if hits.content is None:  # no classifier for this encoder: nothing is labelled
            return airing, events
        airing, counted = self._count(stream_id, airing, hits, decided)
        events += counted
        ended = hits.after_gap or (airing.music_seq >= 0 and (hits.offset - airing.music_last > self.config.gap_seconds
                                                              or self._part_full(airing, hits, provisional_start)))
        if ended:
            events += self._unknown(stream_id, airing, math.inf, provisional_start, decided)
            airing = replace(airing, music_seq=-1, music_windows=0)
        if hits.content in MUSIC_CLASSES:
            if airing.music_seq < 0:
                airing = replace(airing, music_seq=hits.seq, music_start=hits.offset, air_minus_offset=hits.air_time - hits.offset)
            airing = replace(airing, music_last=hits.offset, music_windows=airing.music_windows + 1)
        return airing, events

    def _part_full(self, airing: Airing, hits: WindowHits, provisional_start: float | None) -> bool:
        """Whether the open stretch's unknown part reached `part_seconds` by this music window, which then starts
        the next part. Not while a play is open or provisional: no unknown part ends inside a play."""
        if hits.content not in MUSIC_CLASSES or airing.catalog_open or provisional_start is not None:
            return False
        start = max(airing.music_start + self.centre, airing.catalog_until)
        return hits.offset + self.centre - start >= self.config.part_seconds

    def close(self, stream_id: str, airing: Airing, plays: Sequence[PlayEvent], provisional_start: float | None,
              decided_offset: float) -> tuple[Airing, list[UnknownEvent | AirtimeEvent]]:
        """The stream ended and the play state machine closed it with `plays`: decide the open stretch and
        send the hour so far."""
        airing, events = self._after_plays(stream_id, airing, plays, provisional_start, decided_offset)
        events += self._unknown(stream_id, airing, math.inf, provisional_start, decided_offset)
        if any(airing.counts):
            events.append(self._airtime(stream_id, airing, decided_offset))
        return Airing(), events

    def _after_plays(self, stream_id: str, airing: Airing, plays: Sequence[PlayEvent], provisional_start: float | None,
                     decided_offset: float) -> tuple[Airing, list[UnknownEvent | AirtimeEvent]]:
        events: list[UnknownEvent | AirtimeEvent] = []
        for play in plays:
            if play.state == "started":
                events += self._unknown(stream_id, airing, play.stream_start, provisional_start, decided_offset)
                airing = replace(airing, catalog_open=True)
            else:
                airing = replace(airing, catalog_open=False, catalog_until=play.stream_end or play.stream_start)
        return airing, events

    def _count(self, stream_id: str, airing: Airing, hits: WindowHits, decided: float) -> tuple[Airing, list[AirtimeEvent]]:
        hour = math.floor(hits.air_time / HOUR) * HOUR
        events = []
        if hour != airing.hour:
            if any(airing.counts):
                events.append(self._airtime(stream_id, airing, decided))
            airing = replace(airing, hour=hour, hour_seq=hits.seq, counts=(0,) * len(CLASSES))
        counts = list(airing.counts)
        counts[CLASSES.index(hits.content)] += 1
        return replace(airing, counts=tuple(counts)), events

    def _airtime(self, stream_id: str, airing: Airing, decided_offset: float) -> AirtimeEvent:
        seconds = {name: count * self.hop for name, count in zip(CLASSES, airing.counts) if count}
        return AirtimeEvent(stream_id, airing.hour, airing.hour_seq, seconds, decided_offset)

    def _unknown(self, stream_id: str, airing: Airing, until: float, provisional_start: float | None,
                 decided_offset: float) -> list[UnknownEvent]:
        """The unknown part of the music stretch, ending by `until`, if it is long enough."""
        if airing.music_seq < 0 or airing.catalog_open:
            return []
        if provisional_start is not None:
            until = min(until, provisional_start)
        start = max(airing.music_start + self.centre, airing.catalog_until)
        end = min(airing.music_last + self.centre + self.hop, until)
        if end - start < self.config.min_seconds:
            return []
        first_seq = airing.music_seq + max(0, round((start - airing.music_start - self.centre) / self.hop))
        return [UnknownEvent(
            unknown_id=unknown_id(stream_id, first_seq), stream_id=stream_id,
            started_at=airing.air_minus_offset + start, ended_at=airing.air_minus_offset + end,
            stream_start=start, stream_end=end, music_seconds=min(airing.music_windows * self.hop, end - start),
            decided_offset=decided_offset,
        )]
