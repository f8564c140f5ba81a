"""The Kafka wire format: windows and hits survive the round trip; every kind of bad message is named."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from monitor.fleet.kafka_records import (
    MAX_MESSAGE_BYTES,
    WINDOW_HEADER,
    BadMessage,
    EndOfStream,
    Reason,
    SampleFormat,
    decode_hits,
    decode_window,
    encode_end,
    encode_hits,
    encode_window,
)
from monitor.records import AudioWindow, Neighbour, WindowHits

RATE, SAMPLES = 8000, 8000


def window(seq: int = 7, after_gap: bool = False, stream_id: str = "radio-ü") -> AudioWindow:
    samples = np.random.default_rng(seq).uniform(-1, 1, SAMPLES).astype(np.float32)
    return AudioWindow(stream_id, seq, seq * 0.5, 1_790_000_000.25 + seq, samples, after_gap)


@pytest.mark.parametrize(("fmt", "tolerance"), [(SampleFormat.INT16, 1 / 32767), (SampleFormat.FLOAT16, 1e-3)])
@pytest.mark.parametrize("after_gap", [False, True])
def test_window_round_trip(fmt: SampleFormat, tolerance: float, after_gap: bool) -> None:
    sent = window(after_gap=after_gap)
    data = encode_window(sent, RATE, fmt)
    assert len(data) == WINDOW_HEADER.size + len(sent.stream_id.encode()) + 2 * SAMPLES
    got = decode_window(data, RATE, SAMPLES)
    assert (got.stream_id, got.seq, got.offset, got.air_time, got.after_gap) == (sent.stream_id, sent.seq, sent.offset, sent.air_time, after_gap)
    assert got.samples.dtype == np.float32
    np.testing.assert_allclose(got.samples, sent.samples, atol=tolerance)


def test_int16_clips_out_of_range_samples() -> None:
    loud = AudioWindow("s", 0, 0.0, 0.0, np.full(SAMPLES, 3.0, dtype=np.float32))
    assert decode_window(encode_window(loud, RATE), RATE, SAMPLES).samples.max() == pytest.approx(1.0)


def expect(reason: Reason, data: bytes, samples: int = SAMPLES) -> str:
    with pytest.raises(BadMessage) as caught:
        decode_window(data, RATE, samples)
    assert caught.value.reason is reason
    return str(caught.value)


def test_bad_windows_are_named() -> None:
    good = encode_window(window(), RATE)
    expect(Reason.MALFORMED, b"")
    expect(Reason.MALFORMED, b"not a window at all, just some text that is long enough")
    expect(Reason.MALFORMED, good[:-1])
    expect(Reason.MALFORMED, good + b"\0\0")
    expect(Reason.VERSION, good[:3] + bytes([99]) + good[4:])
    assert "16000 Hz" in expect(Reason.MISMATCH, encode_window(window(), 16000))
    assert str(MAX_MESSAGE_BYTES) in expect(Reason.OVERSIZED, good + bytes(MAX_MESSAGE_BYTES))
    nan = AudioWindow("s", 0, 0.0, 0.0, np.full(SAMPLES, np.nan, dtype=np.float32))
    expect(Reason.MALFORMED, encode_window(nan, RATE, SampleFormat.FLOAT16))
    # stamps the tracking step cannot use: they stopped the worker's track agent and lost its whole batch
    for seq, offset, air_time in ((7, float("nan"), 0.0), (7, 0.0, 1e20), (7, -3.0, 0.0), (2**60, 0.0, 0.0)):
        message = expect(Reason.MALFORMED, encode_window(AudioWindow("s", seq, offset, air_time, window().samples), RATE))
        assert "window number" in message or "is not a time" in message


def test_unsendable_windows_are_refused_at_the_source() -> None:
    with pytest.raises(ValueError, match="stream id"):
        encode_window(window(stream_id="x" * 300), RATE)
    huge = AudioWindow("s", 0, 0.0, 0.0, np.zeros(MAX_MESSAGE_BYTES, dtype=np.float32))
    with pytest.raises(BadMessage, match="exceeds"):
        encode_window(huge, RATE)


def test_hits_round_trip() -> None:
    sent = WindowHits("radio", 12, 6.0, 1_790_000_006.0, (Neighbour("t1", 31.5, 0.91234), Neighbour("t2", 2.0, 0.5)), after_gap=True)
    assert decode_hits(encode_hits(sent)) == sent
    empty = WindowHits("radio", 13, 6.5, 1_790_000_006.5, ())
    assert decode_hits(encode_hits(empty)) == empty


def test_hits_carry_the_content_class_and_a_music_window_s_embedding() -> None:
    embedding = np.random.default_rng(0).standard_normal(128).astype(np.float32)
    embedding /= np.linalg.norm(embedding)
    sent = WindowHits("radio", 14, 7.0, 1_790_000_007.0, (Neighbour("t1", 1.0, 0.5),), False, "music", embedding, np.ones(4, np.int16))
    got = decode_hits(encode_hits(sent))
    assert got == sent and got.content == "music" and got.audio is None  # audio stays in the process that has it
    np.testing.assert_allclose(got.embedding, embedding, atol=float(np.finfo(np.float16).eps) * np.abs(embedding).max())
    talk = WindowHits("radio", 15, 7.5, 1_790_000_007.5, (), False, "speech")
    assert decode_hits(encode_hits(talk)).content == "speech" and decode_hits(encode_hits(talk)).embedding is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe", Reason.MALFORMED),
        (b"[1, 2]", Reason.MALFORMED),
        (json.dumps({"v": 2}).encode(), Reason.VERSION),
        (json.dumps({"v": 1, "stream": "s", "seq": 1}).encode(), Reason.MALFORMED),
        (json.dumps({"v": 1, "stream": "s", "seq": "x", "offset": 0, "air_time": 0, "gap": False, "n": []}).encode(), Reason.MALFORMED),
        (json.dumps({"v": 1, "stream": "s", "seq": 1, "offset": 0, "air_time": 0, "gap": False, "n": [["t", 1]]}).encode(), Reason.MALFORMED),
        (json.dumps({"v": 1, "stream": "s", "seq": 1, "offset": 0, "air_time": 0, "gap": False, "n": [], "e": "not base64!"}).encode(), Reason.MALFORMED),
        (json.dumps({"v": 1, "stream": "s", "seq": 1, "offset": 0, "air_time": 0, "gap": False, "n": [], "e": "AHw="}).encode(), Reason.MALFORMED),
        (json.dumps({"v": 1, "stream": "s", "seq": 1, "offset": float("nan"), "air_time": 0, "gap": False, "n": []}).encode(), Reason.MALFORMED),
        (json.dumps({"v": 1, "stream": "s", "seq": 1, "offset": 0, "air_time": 1e20, "gap": False, "n": []}).encode(), Reason.MALFORMED),
        (json.dumps({"v": 1, "stream": "s", "seq": 1, "offset": 0, "air_time": 0, "gap": False, "n": [["t", 1.0, float("inf")]]}).encode(),
         Reason.MALFORMED),
        (b"[" * 100_000 + b"]" * 100_000, Reason.MALFORMED),  # deeper than the parser goes: it raised RecursionError
    ],
)
def test_bad_hits_are_named(data: bytes, reason: Reason) -> None:
    with pytest.raises(BadMessage) as caught:
        decode_hits(data)
    assert caught.value.reason is reason


def test_end_of_stream_travels_on_both_topics() -> None:
    end = EndOfStream("radio-ü", 1_790_000_000_123)
    assert decode_window(encode_end(end), RATE, SAMPLES) == end
    assert decode_hits(encode_hits(end)) == end
    expect(Reason.MALFORMED, encode_end(end)[:-1])
    expect(Reason.MALFORMED, encode_end(end) + b"x")
    expect(Reason.VERSION, encode_end(end)[:3] + bytes([7]) + encode_end(end)[4:])


def test_stream_metadata_travels_in_a_header_and_a_bad_one_is_ignored() -> None:
    from monitor.fleet.kafka_records import STREAM_HEADER, read_stream_headers, stream_headers

    metadata = {"program": 101, "service_name": "Télé Alpha", "service_provider": "Airtrace TV"}
    assert read_stream_headers(stream_headers(metadata)) == metadata
    assert read_stream_headers(dict(stream_headers(metadata))) == metadata  # Faust may hand headers as a mapping
    assert stream_headers({}) == [] and read_stream_headers(None) is None
    for bad in (b"{not json", b"\xff", b"[1, 2]"):
        assert read_stream_headers([(STREAM_HEADER, bad)]) is None


def test_the_ingest_run_travels_in_a_header_with_windows_and_ends_and_in_the_hits() -> None:
    from monitor.fleet.kafka_records import RUN_HEADER, read_run_header, read_stream_headers, stream_headers

    run = 1_790_000_000_000
    headers = stream_headers({"program": 101}, run)
    assert read_run_header(headers) == run and read_stream_headers(headers) == {"program": 101}
    assert read_run_header(stream_headers(None)) is None and read_run_header([(RUN_HEADER, b"x")]) is None
    sent = AudioWindow("radio", run + 7, 3.5, run / 1000 + 3.5, np.zeros(SAMPLES, np.float32), run=run)
    assert decode_window(encode_window(sent, RATE), RATE, SAMPLES, read_run_header(headers)).run == run
    end = EndOfStream("radio", run + 8, run)
    assert decode_window(encode_end(end), RATE, SAMPLES, run) == end and decode_hits(encode_hits(end)) == end
    hits = WindowHits("radio", run + 7, 3.5, run / 1000 + 3.5, (Neighbour("t1", 1.0, 0.9),), run=run)
    assert decode_hits(encode_hits(hits)).run == run
    assert decode_hits(encode_hits(replace(hits, run=None))).run is None  # hits of a release before runs


def test_a_window_numbered_more_than_an_hour_ahead_of_its_air_time_is_a_dead_letter() -> None:
    """Ingest numbers windows from its start in milliseconds plus a few a second: a window numbered further ahead of
    its air time than an hour is garbled or foreign, and would make all the stream's later windows read as replays."""
    on_air = replace(window(), seq=1_790_000_000_000 + 7)
    ok = replace(on_air, seq=round(on_air.air_time * 1000) + 3_500_000)  # a stream that delivered up to an hour ahead on connecting
    assert decode_window(encode_window(ok, RATE), RATE, SAMPLES).seq == ok.seq
    ahead = replace(on_air, seq=on_air.seq + 2**40)
    assert "ahead of its air time" in expect(Reason.MALFORMED, encode_window(ahead, RATE))
    with pytest.raises(BadMessage, match="ahead of its air time"):
        decode_hits(encode_hits(WindowHits("radio", ahead.seq, ahead.offset, ahead.air_time, ())))
