"""TV inputs: choose the audio track of a stream, and monitor every channel (program) of a multiplex from
one connection.

An MPEG-TS from a DVB/ATSC receiver or an IPTV head-end carries several programs (services), each with
audio tracks in several languages, an audio description (visual-impaired) track, a stereo and a 5.1 mix;
HLS and DASH carry audio renditions by language. This module
- lists what an input carries (`inventory`: programs with their service name and provider as FFmpeg
  reads them from the transport stream's tables, and each program's audio tracks), for
  `airtrace streams probe` and for error messages;
- picks one track by an `AudioSelection` (program number or service name, language, stream index,
  disposition main or description), failing with a message that lists the input's tracks;
- reads a `MuxSource` (a `mux` entry of a streams file, a stream with an `audio` selection, or a plain stream
  that opened as a transport stream: monitor.stages.ingest.read_windows) from one
  connection into windows of one stream per program, each with its own id, clock, seq, gap and dead-air
  handling as monitor.stages.ingest gives a single stream (monitor.stages.airtime.ClockedWindows), and a live input's
  reconnection that repeats what it delivered goes on unbroken (monitor.stages.resumption). A program that leaves the multiplex (its audio stops
  while the others go on) is reported and its stream goes down alone; when it comes back its stream
  resumes after a gap, its time moved on by the absence, as the input's other streams (video too) measured it.
  A program that appears is reported; on a live input the connection is reopened to
  add it (PyAV cannot demux streams that appear after opening), the others marked `after_gap` there.
  A recorded file with an air start (a TV channel recorded off air: `air_start`, as a plain recording's,
  monitor.stages.sources) airs from it, every program's stream alike, after an absence too.
  It decodes in the turns of monitor.stages.ingest's readers (`decode_turns`), in batches of packets as
  encoders.decode_chunks does: demuxed outside the turn, decoded, resampled and folded to mono inside it.

PyAV has no API for programs, so `inventory` reads FFmpeg's own dump of the input (av_dump_format),
which lists each program, its metadata and its streams.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlparse

import av
import av.logging
import numpy as np

from encoders.audio import TIMESTAMP_JUMP_SECONDS, Chunker, decode_batches, ffmpeg_url
from monitor.constants import Backoff
from monitor.options import IngestOptions
from monitor.stages.airtime import ClockedWindows
from monitor.stages.sources import (
    ConfigError,
    StreamSource,
    air_start_of,
    check_air_start,
    declares_its_end,
    ffmpeg_options,
    never_opens,
    not_a_stream,
    read_timeout_for,
    stream_from_entry,
)
from monitor.metrics import Metrics
from monitor.records import AudioWindow, EndOfStream, check_id
from monitor.stages.windows import WindowGrid

log = logging.getLogger(__name__)

DESCRIPTION_FLAGS = ("visual_impaired", "descriptions")  # audio description for the blind: never the main mix
SECONDARY_FLAGS = (*DESCRIPTION_FLAGS, "hearing_impaired", "comment")
DISPOSITIONS = ("main", "description")
PROGRAM_CHECK_SECONDS = 5.0  # how often a live multiplex's program list is read again for service changes
# An audio track whose timestamps jumped (see InputClock) while the input's clock went on by more than this was
# absent, not restarted: a restart shows only the skew between streams (a muxer sends one up to a second or two
# ahead of another), an absence long enough to jump at least TIMESTAMP_JUMP_SECONDS less that skew.
ABSENT_SECONDS = TIMESTAMP_JUMP_SECONDS / 2
# A program whose first audio comes this far into the input (by its own timestamps) came on air there, as a program
# that starts during a recording does; under it, the muxer's start (a track's first packet a few tenths of a second
# after the video's), which is taken as the input's start.
FIRST_HEARD_SECONDS = 1.0
# FFmpeg's UDP reader ended the input when its FIFO filled (a reader held up 6 s, a FIFO of 2.2 s: "Input/output error"),
# and the reconnect lost 4.5 s and marked a gap. With overrun_nonfatal it drops the datagrams that do not fit: a hole
# in the timestamps, which the audio after keeps its time over (encoders.audio.Chunker), 3.5 s of silence there.
UDP_OPTIONS = {"overrun_nonfatal": "1"}


class SelectionError(ValueError):
    """No audio track of an input matches a selection; the message lists what the input carries."""


@dataclass(frozen=True)
class AudioTrack:
    """One audio stream of an input, as FFmpeg describes it."""

    index: int  # the container's stream index
    pid: int  # the transport stream's PID (MPEG-TS), or the demuxer's stream id
    codec: str
    channels: int
    layout: str
    language: str | None
    dispositions: tuple[str, ...]

    @property
    def is_description(self) -> bool:
        return any(flag in self.dispositions for flag in DESCRIPTION_FLAGS)

    @property
    def is_main(self) -> bool:
        return not any(flag in self.dispositions for flag in SECONDARY_FLAGS)

    def describe(self) -> str:
        kind = "main" if self.is_main else "description" if self.is_description else "/".join(self.dispositions)
        return f"stream {self.index} (pid {self.pid}): {self.codec} {self.layout}, language {self.language or '-'}, {kind}"


@dataclass(frozen=True)
class Program:
    """A program (service) of a multiplex; an input without programs is one program numbered None."""

    number: int | None
    service_name: str | None
    service_provider: str | None
    tracks: tuple[AudioTrack, ...]

    def describe(self) -> str:
        if self.number is None:
            return "the input"
        name = f" {self.service_name!r}" if self.service_name else ""
        provider = f" from {self.service_provider!r}" if self.service_provider else ""
        return f"program {self.number}{name}{provider}"

    def metadata(self) -> dict[str, Any]:
        """What events and metrics carry about the program (service name and provider from the tables)."""
        fields = {"program": self.number, "service_name": self.service_name, "service_provider": self.service_provider}
        return {k: v for k, v in fields.items() if v is not None}


def describe_inventory(programs: Sequence[Program]) -> str:
    """Every program and audio track, one per line, as `airtrace streams probe` prints them."""
    lines = []
    for program in programs:
        lines.append(program.describe())
        lines += [f"  {track.describe()}" for track in program.tracks] or ["  no audio"]
    return "\n".join(lines) if lines else "no programs"


@dataclass(frozen=True)
class AudioSelection:
    """Which audio track to monitor; every field left None matches anything. Among the tracks that match,
    a main mix comes before a description or commentary, then FFmpeg's default track, then the lowest index."""

    program: int | str | None = None  # program number, or service name (case-insensitive)
    language: str | None = None  # as the input tags it (ISO 639-2: fra, eng, deu, ...)
    index: int | None = None  # the container's stream index (see `airtrace streams probe`)
    disposition: str | None = None  # "main" or "description" (visual impaired)

    FIELDS = ("program", "language", "index", "disposition")

    @classmethod
    def parse(cls, value: Any, where: str) -> "AudioSelection":
        """From a mapping ({program: 101, language: fra}) or a command-line string (program=101,language=fra)."""
        if value is None:
            return cls()
        if isinstance(value, str):
            try:
                value = dict(part.split("=", 1) for part in value.split(",") if part.strip())
            except ValueError:
                raise ConfigError(f"{where}: audio selection {value!r} is not KEY=VALUE[,KEY=VALUE]; keys: {', '.join(cls.FIELDS)}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: audio must be a mapping of {', '.join(cls.FIELDS)}")
        value = {str(k).strip(): v for k, v in value.items()}
        unknown = sorted(set(value) - set(cls.FIELDS))
        if unknown:
            raise ConfigError(f"{where}: unknown audio field {', '.join(map(repr, unknown))}; the fields are {', '.join(cls.FIELDS)}")
        program = value.get("program")
        if isinstance(program, str) and program.strip().isdigit():
            program = int(program)
        index = value.get("index")
        try:
            index = None if index is None else int(index)
        except ValueError:
            raise ConfigError(f"{where}: audio index {index!r} is not a stream index; `airtrace streams probe URL` lists them") from None
        disposition = value.get("disposition")
        if disposition is not None and disposition not in DISPOSITIONS:
            raise ConfigError(f"{where}: audio disposition {disposition!r} is not one of {', '.join(DISPOSITIONS)}")
        language = value.get("language")
        return cls(program, None if language is None else str(language).strip().lower(), index, disposition)

    def describe(self) -> str:
        chosen = [f"{name}={getattr(self, name)}" for name in self.FIELDS if getattr(self, name) is not None]
        return ",".join(chosen) or "any audio"

    def programs(self, programs: Sequence[Program]) -> list[Program]:
        """The programs this selection's `program` names (all of them when it names none)."""
        if self.program is None:
            return list(programs)
        if isinstance(self.program, int):
            return [p for p in programs if p.number == self.program]
        name = self.program.casefold()
        return [p for p in programs if (p.service_name or "").casefold() == name]

    def matches(self, track: AudioTrack) -> bool:
        return ((self.language is None or (track.language or "").lower() == self.language)
                and (self.index is None or track.index == self.index)
                and (self.disposition is None or (track.is_main if self.disposition == "main" else track.is_description)))

    def choose(self, programs: Sequence[Program], source: str) -> tuple[Program, AudioTrack]:
        """The program and track to monitor; SelectionError lists what `source` carries if none matches."""
        candidates = [(p, t) for p in self.programs(programs) for t in p.tracks if self.matches(t)]
        if not candidates:
            raise SelectionError(f"{source}: no audio track matches {self.describe()}; it carries:\n{describe_inventory(programs)}\n"
                                 "choose by program, language, index or disposition (main or description) among these")
        return min(candidates, key=lambda pt: (not pt[1].is_main, "default" not in pt[1].dispositions, pt[1].index))


# ---- what an input carries --------------------------------------------------------------------------

_DUMP_LOCK = threading.Lock()
_PROGRAM_LINE = re.compile(r"^\s*(?:Program (\d+)|No Program)")  # FFmpeg lists streams of no program after "No Program"
# Stream #0:4[0x104](eng): Audio: ac3 (AC-3 / 0x332D4341), 48000 Hz, 5.1(side), fltp, 384 kb/s (visual impaired) (descriptions)
_STREAM_LINE = re.compile(r"^\s*Stream #\d+:(\d+)(?:\[0x([0-9a-fA-F]+)\])?(?:\((\w+)\))?: (\w+): (\w+)(.*)$")
_DUMP_FLAGS = {"default": "default", "visual impaired": "visual_impaired", "descriptions": "descriptions",
               "hearing impaired": "hearing_impaired", "comment": "comment"}
_METADATA_LINE = re.compile(r"^\s+(\w+)\s*:\s?(.*)$")


def _dump(container: av.container.InputContainer) -> str:
    """FFmpeg's description of the input (it logs it at INFO, so logging is raised while it is captured)."""
    with _DUMP_LOCK:
        previous = av.logging.get_level()
        av.logging.set_level(av.logging.INFO)
        try:
            return container.dumps_format()
        finally:
            av.logging.set_level(previous)


def inventory(container: av.container.InputContainer) -> list[Program]:
    """The input's programs and their audio tracks (one program numbered None when it declares none).
    A track that appeared after the input was opened is described from FFmpeg's dump alone."""
    programs, dumped = parse_dump(_dump(container))
    tracks = {**dumped, **{s.index: _track(s) for s in container.streams.audio}}
    programs = programs or [(None, {}, list(tracks))]
    return [Program(number, meta.get("service_name"), meta.get("service_provider"), tuple(tracks[i] for i in indexes if i in tracks))
            for number, meta, indexes in programs]


def parse_dump(dump: str) -> tuple[list[tuple[int | None, dict[str, str], list[int]]], dict[int, AudioTrack]]:
    """From FFmpeg's dump of an input: (program number, its metadata, its stream indexes) in its order,
    streams of no program (listed after "No Program", or with no program at all) under number None;
    and the audio tracks as the dump describes them (channels unknown: 0)."""
    programs: list[tuple[int | None, dict[str, str], list[int]]] = []
    tracks: dict[int, AudioTrack] = {}
    in_header = False  # between a Program line and its first Stream line: the program's own metadata
    for line in dump.splitlines():
        if match := _PROGRAM_LINE.match(line):
            programs.append((int(match.group(1)) if match.group(1) else None, {}, []))
            in_header = True
        elif match := _STREAM_LINE.match(line):
            index, pid, language, kind, codec, rest = match.groups()
            if not programs:
                programs.append((None, {}, []))
            programs[-1][2].append(int(index))
            if kind == "Audio":
                flags = tuple(flag for text, flag in _DUMP_FLAGS.items() if f"({text})" in rest)
                layout = rest.split(",")[2].strip() if rest.count(",") >= 2 else "unknown"
                tracks[int(index)] = AudioTrack(int(index), int(pid or "0", 16), codec, 0, layout, language, flags)
            in_header = False
        elif in_header and (match := _METADATA_LINE.match(line)) and match.group(1) != "Metadata":
            programs[-1][1][match.group(1)] = match.group(2).strip()
    return programs, tracks


def _track(stream: av.audio.stream.AudioStream) -> AudioTrack:
    context = stream.codec_context
    flags = tuple(flag.name for flag in type(stream.disposition) if flag and flag in stream.disposition)
    return AudioTrack(stream.index, stream.id, context.name, context.layout.nb_channels, context.layout.name,
                      stream.language or stream.metadata.get("language"), flags)


def is_transport_stream(container: av.container.InputContainer) -> bool:
    """Whether an input is an MPEG transport stream, or HLS that carries video beside its audio (a TV channel's: its
    segments are transport streams as a rule), whose audio PID can go missing while the rest of it goes on: only the
    input's other streams (InputClock) tell that absence from timestamps that start again. Read as a plain stream,
    a TV channel's HLS whose audio was absent for 15 s put all the audio after it 15 s early, with no gap."""
    name = container.format.name
    return "mpegts" in name or ("hls" in name.split(",") and bool(container.streams.video))


def open_input(url: str, options: dict[str, str], ingest: IngestOptions) -> av.container.InputContainer:
    """The input, with UDP_OPTIONS under the entry's own options (and its URL's query, which FFmpeg reads last)."""
    defaults = UDP_OPTIONS if urlparse(url).scheme == "udp" else {}
    return av.open(ffmpeg_url(url), options={**defaults, **options}, timeout=(ingest.open_timeout, ingest.read_timeout), metadata_errors="replace")


def probe(url: str, options: dict[str, str] | None = None, ingest: IngestOptions = IngestOptions()) -> list[Program]:
    """What `url` carries, for `airtrace streams probe`."""
    with open_input(url, options or {}, ingest) as container:
        return inventory(container)


# ---- sources ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MuxProgram:
    """One wanted program of a multiplex: which one, the stream id it gets, its audio choice and metadata."""

    audio: AudioSelection  # its `program` names the program
    id: str | None = None  # None: the multiplex id, a dash and the program (number or service name) as given
    name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MuxSource:
    """An input read over one connection into one stream per wanted program. `programs` None: every
    program it carries, each with `audio` (a language, say) as its selection. A recorded file's `air_start` holds for
    each of its streams: they air from it, and start_readers numbers their windows from it (ingest.numbered_from)."""

    id: str
    url: str
    programs: tuple[MuxProgram, ...] | None = None
    audio: AudioSelection = AudioSelection()
    metadata: dict[str, Any] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    air_start: float | None = None  # as StreamSource's: UTC epoch seconds, a local file's only; None: it airs as it is read

    is_file = StreamSource.is_file

    def __post_init__(self) -> None:
        check_id(self.id, "multiplex id")
        check_air_start(self.url, self.air_start)
        for wanted in self.programs or ():
            self.stream_id(wanted)

    @classmethod
    def single(cls, source: StreamSource, audio: AudioSelection) -> "MuxSource":
        """A plain stream with an audio selection: the one chosen track, under the stream's own id."""
        return cls(source.id, source.url, (MuxProgram(audio, source.id, source.name, source.metadata),), options=source.options,
                   air_start=source.air_start)

    def stream_id(self, wanted: MuxProgram) -> str:
        """The program's own id, or the multiplex id, a dash and the program as the entry names it; held to the
        one id rule (records.check_id)."""
        return check_id(wanted.id or f"{self.id}-{wanted.audio.program}", "stream id")

    @property
    def stream_ids(self) -> list[str] | None:
        """The ids of its streams, known before reading unless every program is wanted (None)."""
        return None if self.programs is None else [self.stream_id(p) for p in self.programs]

    def wanted(self, programs: Sequence[Program]) -> tuple[list[tuple[str, MuxProgram, Program, AudioTrack]], list[str]]:
        """(stream id, wanted, program, track) for every wanted program found, and why others were not."""
        found, missing = [], []
        for wanted in self.programs if self.programs is not None else self._every(programs):
            try:
                program, track = wanted.audio.choose(programs, self.url)
            except SelectionError as exc:
                missing.append(f"{self.stream_id(wanted)}: {exc}")
                continue
            found.append((self.stream_id(wanted), wanted, program, track))
        return found, missing

    def _every(self, programs: Sequence[Program]) -> list[MuxProgram]:
        numbered = [p for p in programs if p.number is not None and p.tracks]
        if not numbered:  # not a multiplex: the input as one program
            return [MuxProgram(self.audio, self.id)]
        return [MuxProgram(AudioSelection(p.number, self.audio.language, self.audio.index, self.audio.disposition)) for p in numbered]


def check_unique_ids(sources: Sequence[StreamSource | MuxSource], where: str) -> None:
    """Every stream id known before reading appears once (a multiplex of every program adds ID-NUMBER ids)."""
    seen: set[str] = set()
    for source in sources:
        ids = source.stream_ids if isinstance(source, MuxSource) else [source.id]
        for stream_id in ids or []:
            if stream_id in seen:
                raise ConfigError(f"{where}: stream id {stream_id!r} appears twice; ids must be unique (give a program its own id)")
            seen.add(stream_id)


MUX_FIELDS = ("mux", "url", "programs", "audio", "metadata", "options", "air_start")
PROGRAM_FIELDS = ("program", "id", "name", "audio", "metadata")


def source_from_entry(entry: dict[str, Any], where: str) -> MuxSource:
    """A streams-file entry with `mux` (a multiplex) or with `audio` (one stream's track) as a MuxSource."""
    if "mux" not in entry:
        plain = {k: v for k, v in entry.items() if k != "audio"}
        return MuxSource.single(stream_from_entry(plain, where), AudioSelection.parse(entry["audio"], where))
    unknown = sorted(set(entry) - set(MUX_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field {', '.join(map(repr, unknown))}; a mux has {', '.join(MUX_FIELDS)}")
    for name in ("mux", "url"):
        if not isinstance(entry.get(name), str) or not entry[name].strip():
            raise ConfigError(f"{where}: field {name!r} is missing or not a string")
    for name in ("metadata", "options"):
        if not isinstance(entry.get(name, {}), dict):
            raise ConfigError(f"{where}: field {name!r} must be a mapping")
    audio = AudioSelection.parse(entry.get("audio"), where)
    if audio.program is not None:
        raise ConfigError(f"{where}: a mux's audio applies to every program; name programs under 'programs'")
    programs = entry.get("programs", "all")
    if programs == "all":
        chosen = None
    elif isinstance(programs, list) and programs:
        chosen = tuple(_program_from_entry(p, audio, f"{where}, program #{i + 1}") for i, p in enumerate(programs))
    else:
        raise ConfigError(f"{where}: programs must be 'all' or a list of program numbers, service names or mappings with 'program'")
    options = ffmpeg_options(entry, where)
    try:
        return MuxSource(entry["mux"], entry["url"], chosen, audio, dict(entry.get("metadata", {})), options, air_start_of(entry, where))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _program_from_entry(entry: Any, audio: AudioSelection, where: str) -> MuxProgram:
    if isinstance(entry, (int, str)):
        entry = {"program": entry}
    if not isinstance(entry, dict) or "program" not in entry:
        raise ConfigError(f"{where}: give a program number, a service name, or a mapping with 'program'")
    unknown = sorted(set(entry) - set(PROGRAM_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field {', '.join(map(repr, unknown))}; a program has {', '.join(PROGRAM_FIELDS)}")
    own = AudioSelection.parse(entry.get("audio"), where)
    merged = {name: getattr(own, name) if getattr(own, name) is not None else getattr(audio, name) for name in AudioSelection.FIELDS}
    selection = AudioSelection.parse({**{k: v for k, v in merged.items() if v is not None}, "program": entry["program"]}, where)
    if not isinstance(entry.get("metadata", {}), dict):
        raise ConfigError(f"{where}: field 'metadata' must be a mapping")
    return MuxProgram(selection, entry.get("id"), entry.get("name"), dict(entry.get("metadata", {})))


# ---- reading --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamStarted:
    """Sent to the sink when a stream of a multiplex starts (or restarts) on a track: what events carry."""

    stream_id: str
    metadata: dict[str, Any]


class _ProgramStream:
    """One program's stream: lives across reconnects like a single stream's read_windows state."""

    def __init__(self, stream_id: str, grid: WindowGrid, options: IngestOptions, metrics: Metrics | None, live: bool,
                 air_start: float | None = None, resumable: bool = False):
        self.id, self.metrics = stream_id, metrics
        self.timed = ClockedWindows(stream_id, grid, options, metrics, live=live, air_start=air_start, resumable=resumable)
        self.up = False
        self.chunker = Chunker(grid.sample_rate, stream_id, surround=True)
        self.last_heard = 0.0  # input time (s) of its latest packet

    @property
    def seq(self) -> int:
        return self.timed.seq

    def connect(self, heard: float, unheard: float = 0.0, resumable: bool = False) -> None:
        """A new connection (`resumable`: one that may repeat what a live input delivered, ClockedWindows.connect), or the
        program's return after `unheard` seconds of the input without it: a fresh cut, a gap if audio came before."""
        self.chunker = Chunker(self.timed.grid.sample_rate, self.id, surround=True)
        self.timed.connect(unheard, resumable)
        self.last_heard = heard

    def down(self) -> None:
        """Off air or disconnected: its windows so far are placed (`timed.take` gives them)."""
        if self.up and self.metrics:
            self.metrics.stream_up.labels(self.id).set(0)
        self.up = False
        self.timed.end()

    def chunks(self, frame: av.AudioFrame | None) -> list[np.ndarray]:
        """`frame` resampled and folded to mono (None: what is still held, at the end); a change of rate or
        channels midway (an AC-3 track going from stereo to 5.1 for a film) is followed, not fatal to the whole
        multiplex."""
        return self.chunker.chunks(frame)

    def push(self, chunk: np.ndarray) -> None:
        """`chunk` arrived: its windows are cut, and placed once the clock allows (`timed.take` gives them)."""
        if not self.up and self.metrics:
            self.metrics.stream_up.labels(self.id).set(1)
        self.up = True
        self.timed.push(chunk)


def read_mux(
    mux: MuxSource,
    grid: WindowGrid,
    options: IngestOptions = IngestOptions(),
    metrics: Metrics | None = None,
    stop: threading.Event | None = None,
    turns: AbstractContextManager = nullcontext(),
) -> Iterator[AudioWindow | StreamStarted | EndOfStream]:
    """Windows of every wanted program of `mux`, from one connection at a time, reopened as
    monitor.stages.ingest reopens a single stream; an EndOfStream for each program stream once it is done.
    Decoding holds `turns` (see monitor.stages.ingest.decode_turns)."""
    streams: dict[str, _ProgramStream] = {}
    try:
        yield from _read_connections(mux, grid, options, metrics, stop or threading.Event(), streams, turns)
    except Exception:  # a bug must end this multiplex's streams cleanly, not leave their plays open
        log.exception("multiplex %s stopped on an unexpected error", mux.id)
    for stream_id, stream in streams.items():
        yield from stream.timed.take()  # placed as its input ended (_read_connections's last connection)
        yield EndOfStream(stream_id, stream.seq)


def _read_connections(mux: MuxSource, grid: WindowGrid, options: IngestOptions, metrics: Metrics | None, stop: threading.Event,
                      streams: dict[str, _ProgramStream], turns: AbstractContextManager) -> Iterator[AudioWindow | StreamStarted]:
    live = not mux.is_file
    backoff = Backoff(options.backoff_initial, options.backoff_max)
    announcer = _Announcer(mux, metrics)
    while not stop.is_set():
        reopen, ends = False, not live
        try:
            with open_input(mux.url, mux.options, options) as container:
                ends = ends or declares_its_end(mux.url, container)  # a file served over HTTP is read once, as a local one
                if (live and not ends and not streams  # a playlist's target duration, read once: not at every reconnection
                        and (needed := read_timeout_for(mux.url, container, options.read_timeout, options.open_timeout)) > options.read_timeout):
                    log.info("multiplex %s: a live HLS playlist whose segments need a read timeout of %g s: reopening it with that", mux.id, needed)
                    options = replace(options, read_timeout=needed)
                    continue
                reopen = yield from _read_connection(container, mux, grid, options, metrics, stop, streams, announcer, backoff, not ends, turns)
            if ends or stop.is_set():
                return
            if not reopen:
                log.warning("multiplex %s dropped (end of data); reopening", mux.id)
        except SelectionError as exc:
            if (line := backoff.failed(str(exc))) is not None:
                log.error("multiplex %s: %s", mux.id, line)
            if ends:
                return
        except (av.FFmpegError, OSError, ValueError) as exc:  # ValueError: format changed mid-stream
            if metrics:
                for stream_id in streams or mux.stream_ids or [mux.id]:
                    metrics.decode_errors.labels(stream_id).inc()
            reason = (f"nothing came in time (no answer in {options.open_timeout:g} s, or no data for {options.read_timeout:g} s: stalled)"
                      if isinstance(exc, av.ExitError) else exc)  # PyAV's timeout, which FFmpeg calls "Immediate exit requested"
            if ends and live and any(stream.timed.clock.came_as_it_plays() for stream in streams.values()):
                log.info("multiplex %s: %s said how long it is but came as fast as it plays: a live input, broken off", mux.id, mux.url)
            elif ends or never_opens(exc):
                log.error("multiplex %s: %s; skipping this input", mux.id, reason)
                return
            if not streams and (why := not_a_stream(mux.url, options.open_timeout)):
                log.error("multiplex %s: %s %s; skipping this input", mux.id, mux.url, why)
                return
            if (line := backoff.failed(str(reason))) is not None:
                log.warning("multiplex %s: %s", mux.id, line)
        finally:
            for stream in streams.values():
                stream.down()
        for stream in streams.values():
            yield from stream.timed.take()
        if reopen:
            continue
        delay = backoff.next_delay()
        log.log(logging.INFO if backoff.told else logging.DEBUG, "multiplex %s: reconnecting in %.1f s", mux.id, delay)
        if stop.wait(delay):
            return
        if metrics:
            for stream in streams.values():
                metrics.stream_reconnects.labels(stream.id).inc()


class _Announcer:
    """Tells what each stream monitors, once per change (a service named late by its tables, a new track):
    a log line, airtrace_stream_info, and a StreamStarted that gives events the stream's metadata."""

    def __init__(self, mux: MuxSource, metrics: Metrics | None):
        self.mux, self.metrics = mux, metrics
        self.told: dict[str, dict[str, Any]] = {}

    def changed(self, stream_id: str, wanted: MuxProgram, program: Program, track: AudioTrack) -> StreamStarted | None:
        before = self.told.get(stream_id, {})
        # A reconnect may read the program map before the service table: keep the names already read.
        named = {k: before[k] for k in ("service_name", "service_provider") if k in before} if before.get("program") == program.number else {}
        metadata = {**self.mux.metadata, **wanted.metadata, **named, **program.metadata(), "language": track.language, "audio_stream": track.index}
        metadata = {k: v for k, v in metadata.items() if v is not None} | ({"name": wanted.name} if wanted.name else {})
        if before == metadata:
            return None
        log.info("multiplex %s: %s is %s, %s", self.mux.id, stream_id, program.describe(), track.describe())
        if self.metrics:
            _set_info(self.metrics, stream_id, metadata, self.told.get(stream_id))
        self.told[stream_id] = metadata
        return StreamStarted(stream_id, metadata)


def _read_connection(container: av.container.InputContainer, mux: MuxSource, grid: WindowGrid, options: IngestOptions,
                     metrics: Metrics | None, stop: threading.Event, streams: dict[str, _ProgramStream], announcer: _Announcer,
                     backoff: Backoff, live: bool, turns: AbstractContextManager) -> Iterator[AudioWindow | StreamStarted]:
    """One connection's windows; returns True when a service change needs the input reopened."""
    programs = inventory(container)
    found, missing = mux.wanted(programs)
    if not found:
        raise SelectionError("\n".join(missing) or f"no program carries audio:\n{describe_inventory(programs)}")
    for reason in missing:
        log.warning("multiplex %s: %s", mux.id, reason)
    for stream_id in set(streams) - {stream_id for stream_id, *_ in found}:
        log.warning("multiplex %s: %s is not in the multiplex; its stream stays down until it returns", mux.id, stream_id)
    by_index: dict[int, list[_ProgramStream]] = {}
    decoding: dict[str, int] = {}  # stream id -> the track index it decodes on this connection
    for stream_id, wanted, program, track in found:
        stream = streams.get(stream_id) or streams.setdefault(stream_id, _ProgramStream(stream_id, grid, options, metrics, live or options.realtime,
                                                                                        mux.air_start, resumable=live))
        stream.connect(0.0, resumable=True)
        by_index.setdefault(track.index, []).append(stream)
        decoding[stream_id] = track.index
        if started := announcer.changed(stream_id, wanted, program, track):
            yield started
    listener = _Listener(mux.id, by_index, options.read_timeout)
    tracks = [container.streams[i] for i in by_index]
    began, next_check, reported = time.monotonic(), PROGRAM_CHECK_SECONDS, set()
    # Every stream is demuxed (video, other programs' audio), so that the listener hears the multiplex's own clock.
    for decoded in decode_batches(container.demux(), tracks, listener.decode, mux.id, turns, skip_damaged=True):
        if stop.is_set():
            return False
        for stream, chunk in decoded:
            stream.push(chunk)
        for stream in listener.every:  # a stream's windows are placed as its audio comes, or as it connects or leaves
            for window in stream.timed.take():
                yield window
                backoff.reset()
        if options.realtime and not live and (ahead := began + listener.heard - 0.2 - time.monotonic()) > 0:
            time.sleep(ahead)
        if listener.heard >= next_check:
            next_check = listener.heard + PROGRAM_CHECK_SECONDS
            now, _ = mux.wanted(inventory(container))
            change = _service_change(now, decoding)
            if change and live:
                log.warning("multiplex %s: %s; reopening the input to add it", mux.id, change)
                return True
            if change and change not in reported:
                log.warning("multiplex %s: %s; a file is read once, so it is not monitored", mux.id, change)
                reported.add(change)
            for stream_id, wanted, program, track in now:
                if decoding.get(stream_id) == track.index and (started := announcer.changed(stream_id, wanted, program, track)):
                    yield started
    return False


class InputClock:
    """A connection's own time (s, from its first packet), heard in the timestamps of all its streams: it goes on
    while any of them flows. A stream whose timestamps jump back, or ahead by more than TIMESTAMP_JUMP_SECONDS
    (timestamps that start again: a new encoder session, a looped file), carries on from the clock's time: a
    multiplex whose every timestamp jumps does not move it, and a stream heard again after an absence rejoins
    it where the others have brought it."""

    def __init__(self) -> None:
        self.now = 0.0
        self._streams: dict[int, tuple[float, float]] = {}  # stream index -> (its latest timestamp, its clock time less that)
        self._first: float | None = None  # the connection's first timestamp: the clock's 0

    def hear(self, index: int, timestamp: float) -> bool:
        """Move the clock by a packet of stream `index` at `timestamp` (s); whether that stream's timestamps jumped."""
        if self._first is None:
            self._first = timestamp
        if index in self._streams:
            latest, shift = self._streams[index]
            jumped = not 0 <= timestamp - latest <= TIMESTAMP_JUMP_SECONDS
        else:  # a stream's first packet, placed by the connection's first timestamp unless far from the clock
            shift = -self._first
            jumped = abs(timestamp + shift - self.now) > TIMESTAMP_JUMP_SECONDS
        if jumped:
            shift = self.now - timestamp
        self._streams[index] = (timestamp, shift)
        self.now = max(self.now, timestamp + shift)
        return jumped

    def time_of(self, index: int) -> float:
        """Where on the clock the latest packet of stream `index` lies: its own time, which the clock may run ahead of
        (a muxer sends one stream up to a second or two ahead of another)."""
        latest, shift = self._streams[index]
        return latest + shift


class _Listener:
    """One connection's packets, every stream's, as they are decoded: the input's time they reach (`heard`, an
    InputClock over every stream of the input, video and unwanted programs too), what it says of each program's
    stream (first heard well after the input began, back on air after it left, or gone while the others go on), and the wanted tracks' audio. An audio
    track whose timestamps jump after the input's clock went on without it was absent, not restarted (its
    timestamps alone cannot tell): its stream comes back after a gap, its time moved on by the absence. On a live input,
    one whose timestamps jump with no absence heard is a new encoder session (a sender that stopped and restarted
    within the read timeout): the input's clock cannot tell how long it was off, so its stream goes on after a gap at
    the wall clock's time (StreamClock), as after a reconnect; its audio came early by all the pause."""

    def __init__(self, mux_id: str, by_index: dict[int, list[_ProgramStream]], read_timeout: float):
        self.mux_id, self.by_index, self.read_timeout = mux_id, by_index, read_timeout
        self.every = [stream for group in by_index.values() for stream in group]
        self.clock = InputClock()

    @property
    def heard(self) -> float:
        return self.clock.now

    def hear(self, packet: av.Packet) -> None:
        timestamp = packet.pts if packet.dts is None else packet.dts  # a video's pts go back and forth (B-frames), its dts do not
        stamped = timestamp is not None and packet.time_base is not None
        jumped = stamped and self.clock.hear(packet.stream.index, float(timestamp * packet.time_base))
        if packet.size:
            for stream in self.by_index.get(packet.stream.index, []):
                unheard = self.heard - stream.last_heard
                if stream.seq > 0 and jumped and stream.timed.clock.live and unheard <= ABSENT_SECONDS:
                    # a new session of a live input's encoder: the wall clock, not its timestamps, tells the time it was off
                    log.warning("multiplex %s: %s's timestamps start again (a new encoder session): it goes on at the wall clock's time",
                                self.mux_id, stream.id)
                    stream.connect(self.heard)
                elif stream.seq > 0 and (jumped and unheard > ABSENT_SECONDS or not stream.up and unheard > self.read_timeout):
                    log.warning("multiplex %s: %s is back on air after %.1f s without audio", self.mux_id, stream.id, unheard)
                    stream.connect(self.heard, unheard=unheard)
                elif stream.seq == 0 and stream.last_heard == 0.0 and stamped and (came_on := self.clock.time_of(packet.stream.index)) > FIRST_HEARD_SECONDS:
                    # its first audio, after the input's start (a program that came on air during a recording): it airs there
                    log.info("multiplex %s: %s is first heard %.1f s into the input", self.mux_id, stream.id, came_on)
                    stream.connect(self.heard, unheard=came_on)
                stream.last_heard = self.heard
        for stream in self.every:
            if stream.up and self.heard - stream.last_heard > self.read_timeout:
                log.warning("multiplex %s: %s left the multiplex (no audio for %.0f s while the others go on)", self.mux_id, stream.id,
                            self.heard - stream.last_heard)
                stream.down()

    def decode(self, packet: av.Packet) -> list[tuple[_ProgramStream, np.ndarray]]:
        """`packet` heard, and decoded once if it is of a wanted track, its audio resampled and folded for each
        stream of its track (in the decode turn); the end's flush packet is not decoded for a program that left,
        and gives the others what their decoder and resampler still hold (up to a tenth of a second, which was
        lost, and a window with it)."""
        self.hear(packet)
        streams = [stream for stream in self.by_index.get(packet.stream.index, []) if packet.size or stream.up]
        if not streams:
            return []
        frames: list[av.AudioFrame | None] = [*packet.decode(), *([] if packet.size else [None])]
        return [(stream, chunk) for frame in frames for stream in streams for chunk in stream.chunks(frame)]


def _service_change(now: list[tuple[str, MuxProgram, Program, AudioTrack]], decoding: dict[str, int]) -> str | None:
    """A change that needs a reopen: a wanted program that was not there, or one whose chosen track moved."""
    for stream_id, _, program, track in now:
        if stream_id not in decoding:
            return f"{program.describe()} appeared as {stream_id}"
        if track.index != decoding[stream_id]:
            return f"{program.describe()} moved {stream_id} to {track.describe()}"
    return None


def _set_info(metrics: Metrics, stream_id: str, metadata: dict[str, Any], previous: dict[str, Any] | None) -> None:
    """airtrace_stream_info for the stream's program and track, replacing the series of its previous one."""
    def labels(meta: dict[str, Any]) -> list[str]:
        return [stream_id, *(str(meta.get(k, "")) for k in INFO_LABELS)]

    if previous is not None:
        try:
            metrics.stream_info.remove(*labels(previous))
        except KeyError:
            pass
    metrics.stream_info.labels(*labels(metadata)).set(1)


INFO_LABELS = ("program", "service_name", "service_provider", "language")



def command_line_sources(sources: Sequence[StreamSource], audio: str | None, programs: str | None) -> list[StreamSource | MuxSource]:
    """Streams named on the command line, with `--audio` (a selection) and `--programs` (all, or numbers and
    service names separated by commas: each URL is then a multiplex whose streams are ID-PROGRAM)."""
    selection = AudioSelection.parse(audio, "--audio")
    if programs is None:
        return [MuxSource.single(s, selection) if audio else s for s in sources]
    if selection.program is not None:
        raise ConfigError("--audio: with --programs, choose programs there and leave program out of --audio")
    names = None if programs.strip() == "all" else [p.strip() for p in programs.split(",") if p.strip()]
    if names == []:
        raise ConfigError("--programs: give 'all' or program numbers and service names separated by commas")
    fields = {name: getattr(selection, name) for name in AudioSelection.FIELDS if getattr(selection, name) is not None}
    return [MuxSource(s.id, s.url, None if names is None else tuple(MuxProgram(AudioSelection.parse({**fields, "program": n}, "--programs")) for n in names),
                      selection, options=s.options, air_start=s.air_start) for s in sources]
