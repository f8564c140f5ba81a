"""Times a user writes without an offset, read on a time zone's clocks: the one rule for them, used by the play log's
--from/--to and by recordings' file names (--air-start-from).

A time the clocks never showed (02:30 the night Paris goes to summer time) is refused: zoneinfo reads it an hour off,
as 03:30, without a word. A time they showed twice (02:30 the night they go back) is its first, as zoneinfo reads it
(fold=0), and as a person reading the clock first saw it; the second needs its offset.
"""

from __future__ import annotations

from datetime import datetime, timezone, tzinfo


class SkippedTime(ValueError):
    """A wall-clock time the zone's clocks skipped; `before` and `after` are the offsets either side of the gap
    (+01:00, +02:00), the ways of writing it that name an instant."""

    def __init__(self, moment: datetime, zone: tzinfo) -> None:
        self.before, self.after = (moment.replace(tzinfo=zone, fold=fold).isoformat()[-6:] for fold in (0, 1))
        super().__init__(f"{moment:%Y-%m-%dT%H:%M:%S} is no time in {zone}: its clocks skipped it, going from UTC{self.before} to UTC{self.after}")


def instant(moment: datetime, zone: tzinfo) -> datetime:
    """`moment` if it has its offset, else the instant `zone`'s clocks showed it (the first, if they showed it twice).
    Raises SkippedTime for a time they never showed."""
    if moment.tzinfo is not None:
        return moment
    local = moment.replace(tzinfo=zone)
    if local.astimezone(timezone.utc).astimezone(zone).replace(tzinfo=None) != moment:
        raise SkippedTime(moment, zone)
    return local
