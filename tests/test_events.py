"""Play events: deterministic ids, UTC times, and the published JSON Schema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from monitor.events import SCHEMA_PATH, PlayEvent, iso_utc, play_id, schema

VALIDATOR = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())


def started(**changes) -> PlayEvent:
    fields = dict(
        play_id=play_id("radio-1", "track-9", 1234), state="started", stream_id="radio-1", track_id="track-9",
        started_at=1_795_000_000.25, stream_start=617.0, ref_start=0.0, speed=1.04, score=12.5, confidence=0.99,
        decided_offset=620.5, track={"title": "Nine", "artist": "Somebody"},
    )
    return PlayEvent(**{**fields, **changes})


def ended() -> PlayEvent:
    return started(state="ended", ended_at=1_795_000_180.25, stream_end=797.0, ref_end=187.2, decided_offset=801.0)


def test_ids_are_deterministic_per_play_and_state() -> None:
    assert play_id("radio-1", "track-9", 1234) == play_id("radio-1", "track-9", 1234)
    assert len({play_id("radio-1", "track-9", 1234), play_id("radio-2", "track-9", 1234),
                play_id("radio-1", "track-8", 1234), play_id("radio-1", "track-9", 1235)}) == 4
    assert started().event_id == started(score=99.0).event_id  # the id names the play and state, not the numbers
    assert started().event_id != ended().event_id
    assert started().play_id == ended().play_id


def test_times_are_utc_iso_8601() -> None:
    assert iso_utc(0.5) == "1970-01-01T00:00:00.500Z"
    data = ended().to_json()
    assert data["started_at"] == "2026-11-18T11:06:40.250Z"
    assert data["duration"] == pytest.approx(180.0)


@pytest.mark.parametrize("event", [started(), ended()], ids=["started", "ended"])
def test_events_validate_and_round_trip(event: PlayEvent) -> None:
    data = json.loads(event.to_line())
    VALIDATOR.validate(data)
    assert data["schema_version"] == 1 and data["event_id"] == event.event_id
    assert PlayEvent.from_json(data) == event


@pytest.mark.parametrize(
    "change",
    [{"state": "playing"}, {"stream_end": 10.0}, {"confidence": 1.5}, {"started_at": "yesterday"}, {"extra": 1}, {"schema_version": 2}],
    ids=["state", "started-with-end", "confidence", "time", "unknown-field", "version"],
)
def test_the_schema_rejects_malformed_events(change: dict) -> None:
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate({**started().to_json(), **change})


def test_an_ended_event_needs_its_end() -> None:
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate({**ended().to_json(), "ended_at": None})


def test_unknown_schema_version_is_refused_when_read() -> None:
    with pytest.raises(ValueError, match="schema_version 2"):
        PlayEvent.from_json({**started().to_json(), "schema_version": 2})


def test_the_schema_file_is_itself_valid() -> None:
    jsonschema.Draft202012Validator.check_schema(json.loads(SCHEMA_PATH.read_text()))
