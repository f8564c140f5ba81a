"""Events: the product's output, as versioned JSON lines on one topic, one events file and one play log.

Play events (one `started` and one `ended` per play) keep schema version 1, documented by
monitor/schemas/play_event.v1.json, so every consumer written for them reads them unchanged. Version 2
(monitor/schemas/event.v2.json) adds kinds beside plays, told apart by `kind`: `unknown` (a stretch of
music no catalog play covered), `airtime` (seconds of each content class a stream aired in one UTC
hour), and `provisional` / `withdrawn` (a play heard before it is sure, and its withdrawal if it never
becomes one: the play's `started` event confirms it). A consumer skips a schema version it does not know.

Ids are deterministic: a play's id is a UUID5 of (stream id, track id, the seq of the play's first
window), and an event's id is a UUID5 of (play id, state); unknowns and airtime are keyed by their
stream and first window the same way. Reprocessing the same windows (a replay, a restarted or rebalanced
worker) yields the very same ids, and consumers drop the duplicate instead of counting it twice.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any, Literal

SCHEMA_VERSION = 1  # play events
SCHEMA_PATH = Path(__file__).parent / "schemas" / f"play_event.v{SCHEMA_VERSION}.json"
KINDS_SCHEMA_VERSION = 2  # the kinds beside plays
KINDS_SCHEMA_PATH = Path(__file__).parent / "schemas" / f"event.v{KINDS_SCHEMA_VERSION}.json"
ID_NAMESPACE = uuid.UUID("5d9e1c43-5b8e-4f0a-9a55-2f6a8e0c7b31")  # fixed forever: ids must never change

State = Literal["started", "ended"]


log = logging.getLogger(__name__)


class EventsFile:
    """Appends events as JSON lines to a file others read (`plays import`, a tail). Each event starts on a
    line of its own, also after a run that was cut off mid-line (glued to that half line, the next event
    was lost to `plays import`); a write that fails (a full disk) is reported and counted, never fatal:
    the events still reach the console and the play log. Unbuffered, so no event waits in memory."""

    def __init__(self, path: str | Path):
        self.path, self.unwritten, self._failing = Path(path), 0, False
        self._mid_line = _ends_mid_line(self.path)
        if self._mid_line:
            log.warning("%s ends in a cut-off line (an earlier run stopped while writing); it is kept as it is and "
                        "new events start on the next line", self.path)
        self._out = self.path.open("ab", buffering=0)

    def write(self, events: Iterable["Event"]) -> None:
        fresh_line = b"\n" if self._mid_line else b""
        data = fresh_line + "".join(event.to_line() + "\n" for event in events).encode()
        done = 0
        try:
            while done < len(data):
                done += self._out.write(data[done:])
        except OSError as exc:
            if not self._failing:
                log.error("cannot write events to %s (%s); they still go to the console and the play log, and "
                          "each next event is tried again", self.path, exc)
            self.unwritten += data[max(done, len(fresh_line)) :].count(b"\n")  # events whose line did not end
            self._failing = True
            if done:
                self._mid_line = data[done - 1 : done] != b"\n"
            return
        self._failing = self._mid_line = False

    def close(self) -> None:
        self._out.close()

    def __enter__(self) -> "EventsFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_mid_line(path: Path) -> bool:
    """Whether a file of events ends without its line's end (a device or a pipe has no end to look at)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1) != b"\n"


def play_id(stream_id: str, track_id: str, start_seq: int) -> str:
    """The id shared by a play's started and ended events."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{stream_id}\x1f{track_id}\x1f{start_seq}"))


def iso_utc(epoch: float) -> str:
    """UTC ISO 8601 with milliseconds and a Z: 2026-11-24T23:31:03.250Z."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class PlayEvent:
    """One state change of one play. Times in seconds; `started_at`/`ended_at` are UTC epoch seconds here
    and ISO 8601 strings in JSON. A started event has no end yet (`ended_at`, `stream_end`, `ref_end`,
    `duration` are None)."""

    play_id: str
    state: State
    stream_id: str
    track_id: str
    started_at: float
    stream_start: float  # stream offset where the play starts
    ref_start: float  # position in the track that plays at stream_start
    speed: float  # content speed against the reference (1.05: 5 % fast)
    score: float
    confidence: float
    decided_offset: float  # stream offset when this event was decided; minus stream_start: detection delay
    ended_at: float | None = None
    stream_end: float | None = None
    ref_end: float | None = None
    track: dict[str, Any] = field(default_factory=dict)  # the catalog's metadata for the track
    stream: dict[str, Any] = field(default_factory=dict)  # the stream's metadata (a TV program's service name and provider, ...)

    kind = "play"

    @property
    def event_id(self) -> str:
        return str(uuid.uuid5(uuid.UUID(self.play_id), self.state))

    @property
    def duration(self) -> float | None:
        return None if self.stream_end is None else self.stream_end - self.stream_start

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = iso_utc(self.started_at)
        data["ended_at"] = None if self.ended_at is None else iso_utc(self.ended_at)
        return {"schema_version": SCHEMA_VERSION, "event_id": self.event_id, **data, "duration": self.duration}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PlayEvent":
        """Read an event back; raises ValueError for a schema version this code does not know."""
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"play event schema_version {data.get('schema_version')!r} is not {SCHEMA_VERSION}")
        data = {k: v for k, v in data.items() if k not in ("schema_version", "event_id", "duration")}
        data["started_at"] = from_iso(data["started_at"])
        data["ended_at"] = None if data["ended_at"] is None else from_iso(data["ended_at"])
        return cls(**data)

    def to_line(self) -> str:
        """One JSON line, as written to an events file or a Kafka topic."""
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)


class KindEvent:
    """JSON for the kinds of schema version 2: their fields, `TIMES` among them as UTC ISO 8601, and `derived`."""

    TIMES: tuple[str, ...] = ()
    kind: str
    event_id: str

    def derived(self) -> dict[str, Any]:
        """Values computed from the fields that the JSON carries too."""
        return {}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)  # type: ignore[call-overload]
        data.update((name, iso_utc(data[name])) for name in self.TIMES)
        return {"schema_version": KINDS_SCHEMA_VERSION, "kind": self.kind, "event_id": self.event_id, **data, **self.derived()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Any:
        data = _fields(cls, data)
        data.update((name, from_iso(data[name])) for name in cls.TIMES)
        return cls(**data)

    def to_line(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)


def unknown_id(stream_id: str, start_seq: int) -> str:
    """The id of the unknown stretch of a stream that begins at window `start_seq`."""
    return str(uuid.uuid5(ID_NAMESPACE, f"unknown\x1f{stream_id}\x1f{start_seq}"))


def cluster_id(first_unknown_id: str) -> str:
    """A cluster's id, named after its earliest occurrence: workers that find the same repeat at once agree on it."""
    return str(uuid.uuid5(ID_NAMESPACE, f"cluster\x1f{first_unknown_id}"))


# The track metadata key of a play `airtrace unknowns promote` made: the cluster it was.
PROMOTED_FROM = "promoted_from_cluster"


def promoted_play_id(unknown_id: str, track_id: str) -> str:
    """The play an unknown stretch becomes when its cluster is promoted to `track_id`."""
    return str(uuid.uuid5(ID_NAMESPACE, f"promoted\x1f{unknown_id}\x1f{track_id}"))


@dataclass(frozen=True)
class UnknownEvent(KindEvent):
    """A stretch of music on a stream that no catalog play covered, decided once it ended (one event, no
    started/ended pair: it is only known to be unknown afterwards). Talk over the music counts as music;
    pauses of talk or silence up to the tracker's tolerance are inside the stretch. When the same content
    aired before (on any stream, within the retention window), `matched_unknown_id` names that earlier
    stretch and `cluster_id` the repeated content both belong to; `ref_start` and `speed` place this
    airing on the earlier one (its position heard at stream_start, and the speed against it)."""

    unknown_id: str
    stream_id: str
    started_at: float
    ended_at: float
    stream_start: float
    stream_end: float
    music_seconds: float  # seconds labelled music (or talk over music) within the stretch
    decided_offset: float
    cluster_id: str | None = None
    matched_unknown_id: str | None = None
    ref_start: float | None = None
    speed: float | None = None
    score: float | None = None
    stream: dict[str, Any] = field(default_factory=dict)

    kind = "unknown"
    TIMES = ("started_at", "ended_at")

    @property
    def event_id(self) -> str:
        return str(uuid.uuid5(uuid.UUID(self.unknown_id), self.kind))

    @property
    def duration(self) -> float:
        return self.stream_end - self.stream_start

    def derived(self) -> dict[str, Any]:
        return {"duration": self.duration}


@dataclass(frozen=True)
class AirtimeEvent(KindEvent):
    """Seconds of each content class (encoders.CLASSES) one stream aired in one UTC hour, counted from the
    window `first_seq`: an hour a stream aired whole is one event, sent once the next hour begins; a stream
    that ends or restarts within an hour gives one event per part, and reports add them up."""

    stream_id: str
    hour: float  # UTC epoch seconds of the hour's start
    first_seq: int
    seconds: dict[str, float]
    decided_offset: float
    stream: dict[str, Any] = field(default_factory=dict)

    kind = "airtime"
    TIMES = ("hour",)

    @property
    def event_id(self) -> str:
        return str(uuid.uuid5(ID_NAMESPACE, f"airtime\x1f{self.stream_id}\x1f{self.first_seq}"))


@dataclass(frozen=True)
class ProvisionalEvent(KindEvent):
    """A play heard but not yet sure: published the moment the state machine opens it, seconds before its
    evidence rules out a phantom (when the play's `started` event comes). Exactly one of the two follows it,
    with the same play_id: that `started` event, or a WithdrawnEvent. Times as in PlayEvent."""

    play_id: str
    stream_id: str
    track_id: str
    started_at: float
    stream_start: float
    ref_start: float
    speed: float
    score: float
    confidence: float
    decided_offset: float
    track: dict[str, Any] = field(default_factory=dict)
    stream: dict[str, Any] = field(default_factory=dict)

    kind = "provisional"
    TIMES = ("started_at",)

    @property
    def event_id(self) -> str:
        return str(uuid.uuid5(uuid.UUID(self.play_id), self.kind))


@dataclass(frozen=True)
class WithdrawnEvent(ProvisionalEvent):
    """A provisional play that never became one (its evidence stopped short: talk or other music resembling
    the track for a few seconds); `decided_offset` is when it was withdrawn. It was never started, so it
    never ends: nothing about it is left open."""

    kind = "withdrawn"


Event = PlayEvent | UnknownEvent | AirtimeEvent | ProvisionalEvent
PlayNotice = PlayEvent | ProvisionalEvent  # what the play state machine emits (a WithdrawnEvent is a ProvisionalEvent)
KINDS: dict[str, type[UnknownEvent] | type[AirtimeEvent] | type[ProvisionalEvent]] = {
    "unknown": UnknownEvent, "airtime": AirtimeEvent, "provisional": ProvisionalEvent, "withdrawn": WithdrawnEvent}


def read_event(data: dict[str, Any]) -> Event:
    """Any event back from its JSON object; raises ValueError for a schema version or kind this code does not know."""
    if data.get("schema_version") == KINDS_SCHEMA_VERSION:
        kind = KINDS.get(data.get("kind"))  # type: ignore[arg-type]
        if kind is None:
            raise ValueError(f"event kind {data.get('kind')!r} is not one of {', '.join(KINDS)}")
        return kind.from_json(data)
    return PlayEvent.from_json(data)


def plays_in(events: Iterable[Event]) -> list[PlayEvent]:
    """The play events among events of every kind."""
    return [e for e in events if isinstance(e, PlayEvent)]


def _fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def describe(event: Event) -> str:
    """One human line per event, as `airtrace monitor` prints them."""
    if isinstance(event, UnknownEvent):
        repeat = f"  repeats {event.matched_unknown_id} (cluster {event.cluster_id}) at speed {event.speed:.3f}" if event.cluster_id else ""
        return (f"{event.stream_id}  unknown  music not in the catalog at {_clock(event.stream_start)}-{_clock(event.stream_end)} "
                f"({event.duration:.1f} s)  id {event.unknown_id}{repeat}")
    if isinstance(event, AirtimeEvent):
        seconds = ", ".join(f"{name} {value:.0f} s" for name, value in sorted(event.seconds.items(), key=lambda kv: -kv[1]))
        return f"{event.stream_id}  airtime  hour of {iso_utc(event.hour)}: {seconds}"
    if isinstance(event, ProvisionalEvent):
        title = event.track.get("title") or event.track_id
        state = "maybe" if event.kind == "provisional" else "not"
        return (f"{event.stream_id}  {state:<7}  {title}  at {_clock(event.stream_start)}  ({event.kind}: "
                f"{'not sure yet' if event.kind == 'provisional' else 'it was not this track'})")
    title = event.track.get("title") or event.track_id
    where = f"{_clock(event.stream_start)}"
    if event.state == "ended":
        where += f"-{_clock(event.stream_end or 0.0)} ({event.duration:.1f} s)"
    return (f"{event.stream_id}  {event.state:<7}  {title}  at {where}  ref {event.ref_start:.1f} s  "
            f"speed {event.speed:.3f}  confidence {event.confidence:.2f}")


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}:{rest:04.1f}"


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema of play events, for validating them in tests and consumers."""
    return json.loads(SCHEMA_PATH.read_text())


@cache
def kinds_schema() -> dict[str, Any]:
    """The JSON Schema of the events beside plays (schema version 2)."""
    return json.loads(KINDS_SCHEMA_PATH.read_text())
