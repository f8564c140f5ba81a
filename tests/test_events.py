"""Events: deterministic ids, UTC times, and the published JSON Schemas of plays (v1) and the kinds beside them (v2)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from monitor.events import (KINDS_SCHEMA_PATH, SCHEMA_PATH, AirtimeEvent, PlayEvent, UnknownEvent, WithdrawnEvent, cluster_id, describe, iso_utc, kinds_schema,
                            play_id, plays_in, read_event, schema, unknown_id)
from test_playlog import heard_before

VALIDATOR = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())
KINDS_VALIDATOR = jsonschema.Draft202012Validator(kinds_schema(), format_checker=jsonschema.FormatChecker())


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


def unknown(**changes) -> UnknownEvent:
    fields = dict(unknown_id=unknown_id("radio-1", 400), stream_id="radio-1", started_at=1_795_000_200.0, ended_at=1_795_000_380.5,
                  stream_start=200.0, stream_end=380.5, music_seconds=171.0, decided_offset=392.0)
    return UnknownEvent(**{**fields, **changes})


def test_kinds_beside_plays_follow_their_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(json.loads(KINDS_SCHEMA_PATH.read_text()))
    first = unknown()
    repeat = unknown(unknown_id=unknown_id("radio-2", 77), stream_id="radio-2", cluster_id=cluster_id(first.unknown_id),
                     matched_unknown_id=first.unknown_id, ref_start=3.5, speed=1.05, score=40.2)
    hour = AirtimeEvent("radio-1", 1_794_999_600.0, 0, {"music": 2400.0, "speech": 1100.5, "silence": 99.5}, 3601.0)
    for event in (first, repeat, hour):
        data = event.to_json()
        KINDS_VALIDATOR.validate(data)
        assert data["schema_version"] == 2 and data["kind"] == event.kind
        assert not VALIDATOR.is_valid(data)  # a consumer of play events (v1) cannot take them for plays
    assert first.to_json()["duration"] == first.stream_end - first.stream_start
    assert hour.to_json()["hour"] == "2026-11-18T11:00:00.000Z"


def test_kinds_beside_plays_have_deterministic_ids() -> None:
    assert unknown().event_id == unknown().event_id != unknown(unknown_id=unknown_id("radio-1", 401)).event_id
    assert cluster_id(unknown_id("radio-1", 400)) == cluster_id(unknown_id("radio-1", 400)) != cluster_id(unknown_id("radio-1", 401))
    assert AirtimeEvent("a", 0.0, 5, {}, 1.0).event_id != AirtimeEvent("a", 0.0, 6, {}, 1.0).event_id


def test_a_kind_beside_plays_with_a_missing_field_is_invalid() -> None:
    data = unknown().to_json()
    del data["stream_end"]
    assert not KINDS_VALIDATOR.is_valid(data)


def test_every_kind_reads_back_and_reads_as_one_line() -> None:
    first = unknown()
    repeat = unknown(unknown_id=unknown_id("radio-2", 77), cluster_id=cluster_id(first.unknown_id), matched_unknown_id=first.unknown_id,
                     ref_start=3.5, speed=1.05, score=40.2)
    hour = AirtimeEvent("radio-1", 1_794_999_600.0, 0, {"music": 2400.0, "speech": 1100.5}, 3601.0)
    play = started()
    heard = heard_before(play)
    withdrawn = WithdrawnEvent(**{**vars(heard), "decided_offset": heard.decided_offset + 15.0})
    for event in (play, ended(), first, repeat, hour, heard, withdrawn):
        assert KINDS_VALIDATOR.is_valid(event.to_json()) or isinstance(event, PlayEvent)
        assert read_event(json.loads(event.to_line())) == event
        assert "\n" not in describe(event) and event.stream_id in describe(event)
    assert "3:20.0-6:20.5 (180.5 s)" in describe(first) and f"cluster {repeat.cluster_id}" in describe(repeat)
    assert describe(hour) == "radio-1  airtime  hour of 2026-11-18T11:00:00.000Z: music 2400 s, speech 1100 s"
    assert "maybe" in describe(heard) and "not sure yet" in describe(heard) and "it was not this track" in describe(withdrawn)
    assert heard.event_id != withdrawn.event_id != play.event_id
    with pytest.raises(ValueError, match="kind 'chart'"):
        read_event({**hour.to_json(), "kind": "chart"})
    assert plays_in([started(), first, hour, ended()]) == [started(), ended()]
