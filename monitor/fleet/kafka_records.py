"""The wire format of windows and hits on Kafka: compact, versioned and size-checked; a bad message is a dead letter.

A window is binary: a fixed little-endian header, the stream id, then the samples as int16 (default)
or float16, 16 KB for one second at 8 kHz. Hits are compact JSON, small and readable with any Kafka tool;
they carry the window's content class and, for music, its embedding (float16, base64), which unknown
stretches are searched and kept with (the audio stays with the process that has it).
Both topics also carry an `EndOfStream` after a stream's last window (a file's end, or ingest stopping),
so that the play it leaves open is closed, as embedded mode does at a stream's end. Windows and ends carry
their ingest run in a Kafka header, hits and ends on the hits topic in their JSON (monitor.stages.ingest_runs);
messages from a release before have none.
Decoding never trusts the bytes: any message that is too big, of another version, cut short, or not for
this encoder raises `BadMessage` with a `reason`, which names the dead-letter counter's label.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import replace
from enum import Enum
from typing import Any

import numpy as np

from monitor.records import MAX_ID_BYTES, AudioWindow, EndOfStream, Neighbour, WindowHits

WIRE_VERSION = 1
# Kafka's default broker limit (message.max.bytes) is about 1 MB; a window is far below it.
MAX_MESSAGE_BYTES = 1_000_000
# A dead letter keeps this much of the original message: enough to inspect, never too big to publish.
DEAD_LETTER_KEEP_BYTES = 64 * 1024
MAX_STREAM_ID_BYTES = MAX_ID_BYTES  # a window header gives the stream id's length in one byte

WINDOW_MAGIC = b"ATW"
# magic, version, flags, seq, offset (s), air_time (UTC epoch s), sample_rate (Hz), stream id length (bytes)
WINDOW_HEADER = struct.Struct("<3sBBqddIB")
END_MAGIC = b"ATE"
# magic, version, seq (one past the stream's last window), stream id length (bytes)
END_HEADER = struct.Struct("<3sBqB")
FLAG_AFTER_GAP = 1
FLAG_FLOAT16 = 2
INT16_SCALE = 32767.0


class SampleFormat(str, Enum):
    """How window samples travel: int16 (96 dB of range for audio in [-1, 1]) or float16."""

    INT16 = "int16"
    FLOAT16 = "float16"


class Reason(str, Enum):
    """Why a message went to the dead-letter topic (the `reason` label of airtrace_dead_letters_total)."""

    OVERSIZED = "oversized"
    MALFORMED = "malformed"
    VERSION = "unsupported_version"
    MISMATCH = "encoder_mismatch"


class BadMessage(ValueError):
    """A message that cannot be used; `reason` says which kind of fault it is."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(detail)
        self.reason = reason


def _check_size(data: bytes) -> None:
    if len(data) > MAX_MESSAGE_BYTES:
        raise BadMessage(Reason.OVERSIZED, f"message of {len(data)} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")


def _stream_id_bytes(stream_id: str) -> bytes:
    encoded = stream_id.encode()
    if not 0 < len(encoded) <= MAX_STREAM_ID_BYTES:
        raise ValueError(f"stream id {stream_id!r} must be 1 to {MAX_STREAM_ID_BYTES} bytes of UTF-8")
    return encoded


def encode_window(window: AudioWindow, sample_rate: int, sample_format: SampleFormat = SampleFormat.INT16) -> bytes:
    """One window as bytes; raises ValueError for a stream id or window that cannot travel."""
    stream_id = _stream_id_bytes(window.stream_id)
    samples = np.asarray(window.samples, dtype=np.float32)
    if sample_format is SampleFormat.INT16:
        payload = np.round(np.clip(samples, -1.0, 1.0) * INT16_SCALE).astype("<i2").tobytes()
        flags = 0
    else:
        payload = samples.astype("<f2").tobytes()
        flags = FLAG_FLOAT16
    flags |= FLAG_AFTER_GAP if window.after_gap else 0
    header = WINDOW_HEADER.pack(WINDOW_MAGIC, WIRE_VERSION, flags, window.seq, window.offset, window.air_time, sample_rate, len(stream_id))
    data = header + stream_id + payload
    _check_size(data)
    return data


def encode_end(end: EndOfStream) -> bytes:
    """An end-of-stream marker for the windows topic."""
    stream_id = _stream_id_bytes(end.stream_id)
    return END_HEADER.pack(END_MAGIC, WIRE_VERSION, end.seq, len(stream_id)) + stream_id


MAX_SEQ = 2**53  # window numbers any JSON reader holds exactly: about 140 million years of windows
MAX_AIR_TIME = 253402300799.0  # the end of year 9999, as play events write times
# Ingest numbers a window from its run's start in milliseconds and counts a few windows a second, so a window's
# number never runs ahead of its air time in milliseconds by more than the audio a stream delivers ahead of the
# clock when it connects (seconds): one ahead by more than this is garbled or foreign. A stream's later windows
# would all read as replays of it.
MAX_SEQ_LEAD_MS = 3_600_000


def _check_stamps(seq: int, offset: float, air_time: float) -> None:
    """A window's numbers as the tracking step needs them: a NaN or a year-10000 time stopped the worker's
    track agent and lost the whole batch, other streams' events included."""
    if not 0 <= seq < MAX_SEQ:
        raise BadMessage(Reason.MALFORMED, f"window number {seq} is outside 0 to 2^53")
    if not (math.isfinite(offset) and offset >= 0 and math.isfinite(air_time) and 0 <= air_time <= MAX_AIR_TIME):
        raise BadMessage(Reason.MALFORMED, f"stream offset {offset!r} or air time {air_time!r} is not a time (finite, not negative, before the year 10000)")
    if seq > air_time * 1000 + MAX_SEQ_LEAD_MS:
        raise BadMessage(Reason.MALFORMED, f"window number {seq} is more than an hour ahead of its air time {air_time:.3f} in milliseconds, "
                                           f"which ingest's numbering never is: a garbled or foreign window")


def decode_window(data: bytes, sample_rate: int, window_samples: int, run: int | None = None) -> AudioWindow | EndOfStream:
    """Bytes from `encode_window` (or `encode_end`) -> AudioWindow with float32 samples, checked against
    the worker's encoder (or the EndOfStream), of ingest run `run` (its message's header)."""
    _check_size(data)
    if data[:3] == END_MAGIC:
        return replace(_decode_end(data), run=run)
    if len(data) < WINDOW_HEADER.size or data[:3] != WINDOW_MAGIC:
        raise BadMessage(Reason.MALFORMED, "not an airtrace window (bad magic or shorter than its header)")
    _, version, flags, seq, offset, air_time, rate, id_length = WINDOW_HEADER.unpack_from(data)
    if version != WIRE_VERSION:
        raise BadMessage(Reason.VERSION, f"window wire version {version}; this worker reads version {WIRE_VERSION}")
    id_end = WINDOW_HEADER.size + id_length
    payload = memoryview(data)[id_end:]
    if id_length == 0 or len(payload) != 2 * window_samples:
        raise BadMessage(Reason.MALFORMED, f"window holds {len(payload)} sample bytes, expected {2 * window_samples}")
    if rate != sample_rate:
        raise BadMessage(Reason.MISMATCH, f"window at {rate} Hz, the encoder needs {sample_rate} Hz; ingest with the same encoder")
    try:
        stream_id = bytes(data[WINDOW_HEADER.size : id_end]).decode()
    except UnicodeDecodeError as exc:
        raise BadMessage(Reason.MALFORMED, f"stream id is not UTF-8: {exc}") from None
    if flags & FLAG_FLOAT16:
        samples = np.frombuffer(payload, dtype="<f2").astype(np.float32)
    else:
        samples = np.frombuffer(payload, dtype="<i2").astype(np.float32) / INT16_SCALE
    if not np.isfinite(samples).all():
        raise BadMessage(Reason.MALFORMED, "window samples hold NaN or infinity")
    _check_stamps(seq, offset, air_time)
    return AudioWindow(stream_id, seq, offset, air_time, samples, after_gap=bool(flags & FLAG_AFTER_GAP), run=run)


def _decode_end(data: bytes) -> EndOfStream:
    if len(data) < END_HEADER.size:
        raise BadMessage(Reason.MALFORMED, "end-of-stream marker shorter than its header")
    _, version, seq, id_length = END_HEADER.unpack_from(data)
    if version != WIRE_VERSION:
        raise BadMessage(Reason.VERSION, f"end-of-stream wire version {version}; this worker reads version {WIRE_VERSION}")
    if id_length == 0 or len(data) != END_HEADER.size + id_length:
        raise BadMessage(Reason.MALFORMED, "end-of-stream marker with a stream id of the wrong length")
    try:
        return EndOfStream(bytes(data[END_HEADER.size :]).decode(), seq)
    except UnicodeDecodeError as exc:
        raise BadMessage(Reason.MALFORMED, f"stream id is not UTF-8: {exc}") from None


def encode_hits(hits: WindowHits | EndOfStream) -> bytes:
    """One window's neighbours (or a stream's end) as compact JSON."""
    run = {} if hits.run is None else {"r": hits.run}
    if isinstance(hits, EndOfStream):
        return json.dumps({"v": WIRE_VERSION, "stream": hits.stream_id, "seq": hits.seq, "end": True, **run}, separators=(",", ":")).encode()
    record = {
        **run,
        "v": WIRE_VERSION,
        "stream": hits.stream_id,
        "seq": hits.seq,
        "offset": hits.offset,
        "air_time": hits.air_time,
        "gap": hits.after_gap,
        "n": [[n.track_id, round(n.ref_time, 4), round(n.similarity, 5)] for n in hits.neighbours],
        "b": round(hits.background, 5),
    }
    if hits.content is not None:
        record["c"] = hits.content
    if hits.embedding is not None:
        record["e"] = base64.b64encode(np.asarray(hits.embedding, "<f2").tobytes()).decode()
    return json.dumps(record, separators=(",", ":")).encode()


def decode_hits(data: bytes) -> WindowHits | EndOfStream:
    """Bytes from `encode_hits` -> WindowHits or EndOfStream."""
    _check_size(data)
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested deeper than a parser goes
        raise BadMessage(Reason.MALFORMED, f"hits are not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise BadMessage(Reason.MALFORMED, "hits must be a JSON object")
    if record.get("v") != WIRE_VERSION:
        raise BadMessage(Reason.VERSION, f"hits wire version {record.get('v')!r}; this worker reads version {WIRE_VERSION}")
    try:
        run = None if record.get("r") is None else int(record["r"])  # none from a release before it
        if record.get("end") is True:
            return EndOfStream(str(record["stream"]), int(record["seq"]), run)
        neighbours = tuple(Neighbour(str(track), float(ref_time), float(similarity)) for track, ref_time, similarity in record["n"])
        content = None if record.get("c") is None else str(record["c"])
        hits = WindowHits(
            str(record["stream"]), int(record["seq"]), float(record["offset"]), float(record["air_time"]), neighbours, bool(record["gap"]),
            content, _embedding(record.get("e")), background=float(record.get("b", 0.0)), run=run,  # no "b" from a release before it
        )
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise BadMessage(Reason.MALFORMED, f"hits record lacks or garbles a field: {exc!r}") from None
    if not all(math.isfinite(n.ref_time) and math.isfinite(n.similarity) for n in hits.neighbours) or not math.isfinite(hits.background):
        raise BadMessage(Reason.MALFORMED, "hits hold a neighbour time, similarity or background that is NaN or infinite")
    _check_stamps(hits.seq, hits.offset, hits.air_time)
    return hits


def _embedding(text: str | None) -> np.ndarray | None:
    if text is None:
        return None
    vector = np.frombuffer(base64.b64decode(text, validate=True), "<f2").astype(np.float32)
    if not np.isfinite(vector).all():
        raise ValueError("embedding holds NaN or infinity")
    return vector


STREAM_HEADER = "airtrace-stream"  # a window's (and its hits') stream metadata as JSON: what play events carry in `stream`
RUN_HEADER = "airtrace-run"  # a window's (or end's) ingest run, in decimal


def stream_headers(metadata: dict[str, Any] | None, run: int | None = None) -> list[tuple[str, bytes]]:
    """Kafka headers that carry a stream's metadata (a TV program's service name and provider, ...) and the
    ingest run of the message."""
    headers = [(STREAM_HEADER, json.dumps(metadata, separators=(",", ":"), sort_keys=True).encode())] if metadata else []
    return headers + ([(RUN_HEADER, str(run).encode())] if run is not None else [])


def read_run_header(headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None) -> int | None:
    """The ingest run in a message's headers; None when there is none (a release before) or it is not a number."""
    value = (headers if isinstance(headers, Mapping) else dict(headers or ())).get(RUN_HEADER)
    try:
        return int(value) if value else None
    except ValueError:
        return None


def read_stream_headers(headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None) -> dict[str, Any] | None:
    """The stream metadata in a message's headers; None when there is none or it is unreadable (the
    window itself is still good, so it is used without the metadata rather than set aside)."""
    value = (headers if isinstance(headers, Mapping) else dict(headers or ())).get(STREAM_HEADER)
    try:
        metadata = json.loads(value) if value else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return metadata if isinstance(metadata, dict) else None


def dead_letter_headers(reason: Reason, error: str, topic: str, partition: int, offset: int, size: int) -> list[tuple[str, bytes]]:
    """Kafka headers that say where a dead letter came from and why it was set aside."""
    fields = {"reason": reason.value, "error": error, "topic": topic, "partition": partition, "offset": offset, "size": size}
    return [(name, str(value).encode()) for name, value in fields.items()]
