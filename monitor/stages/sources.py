"""What to monitor: a stream's id, URL, metadata and FFmpeg input options, from a streams config entry
or a command line's URLs, checked so that a bad entry is named with its fix (monitor.stages.ingest reads
whole configs, monitor.stages.mux the multiplex entries); and what a source says of itself as it opens
(whether it ends, how long a live HLS playlist's reads wait), for both readers."""

from __future__ import annotations

import ctypes
import functools
import logging
import re
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

import av
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from encoders.audio import names_a_file
from monitor.local_time import SkippedTime, instant
from monitor.records import check_id

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A streams config that cannot be used; the message names the file, the entry and the field."""


@dataclass(frozen=True)
class StreamSource:
    """One stream to monitor. `options` are FFmpeg input options (e.g. {"rtsp_transport": "tcp"}). `air_start`: when a
    recorded file's first sample aired (UTC epoch seconds); None: it airs as it is read (monitor.stages.airtime)."""

    id: str
    url: str
    name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    air_start: float | None = None

    def __post_init__(self) -> None:
        check_id(self.id, "stream id")
        check_air_start(self.url, self.air_start)

    @property
    def is_file(self) -> bool:
        """A local file is read once to its end; everything else is a live stream, reopened forever."""
        return is_local(self.url)


FUTURE_SLACK_SECONDS = 300.0  # how far the recorder's clock may run ahead of this machine's


@dataclass(frozen=True)
class Recordings:
    """One stream's recordings (a logger's hourly files), read one after another as one stream, in the order they aired
    when their air starts are known (monitor.stages.ingest.read_recordings). Monitored as streams of their own, each file was a
    station of its own, and a song cut by the hour was two plays, one in each file."""

    id: str
    parts: tuple[StreamSource, ...]

    @classmethod
    def of(cls, stream_id: str, parts: Sequence[StreamSource]) -> "Recordings":
        """`parts` as recordings of `stream_id`, in air order (in the order given where an air start is not known)."""
        check_id(stream_id, "stream id")
        if not parts:
            raise ConfigError(f"--stream {stream_id}: no recording to monitor as it")
        for part in parts:
            if not part.is_file:
                raise ConfigError(f"--stream {stream_id}: {part.url} is not a local file; --stream joins recordings (files) into one stream: "
                                  "monitor a live stream without it")
        if all(part.air_start is not None for part in parts):
            parts = sorted(parts, key=lambda part: part.air_start)
        return cls(stream_id, tuple(StreamSource(stream_id, part.url, part.name, part.metadata, part.options, part.air_start) for part in parts))

    @property
    def url(self) -> str:
        return self.parts[0].url

    @property
    def is_file(self) -> bool:
        return True

    @property
    def air_start(self) -> float | None:
        return self.parts[0].air_start

    @property
    def metadata(self) -> dict[str, Any]:
        return self.parts[0].metadata


def check_air_start(url: str, air_start: float | None) -> None:
    """An air start holds for a recorded file only, a plain stream's or a multiplex's: a live input airs as it arrives.
    And it is past: a recording aired before it is read (a typo in the year put every play where no report finds it)."""
    if air_start is None:
        return
    if not is_local(url):
        raise ValueError(f"air_start is for recorded files, and {url!r} is not a local file (a live stream airs as it "
                         "arrives): remove air_start, or correct the file's path")
    if air_start > time.time() + FUTURE_SLACK_SECONDS:
        aired = datetime.fromtimestamp(air_start, timezone.utc).isoformat().replace("+00:00", "Z")
        raise ValueError(f"air_start {aired} is in the future, and a recording aired before it is read: correct its date and time, "
                         "or the time zone they are read in")


def is_local(url: str) -> bool:
    """Whether `url` is a local file: no scheme, a Windows drive letter, `file:`, or a file of that name (one with
    a colon, rec-2026-12-05T10:00:00.mp3, was a live stream of scheme 'rec-2026-12-05t10': read again and again,
    each time as new plays)."""
    return names_a_file(url) or Path(url).is_file()


def sent_once(url: str) -> bool:
    """Whether a source sends its data once, to whoever is there to receive it: datagrams (UDP, RTP, SRT: a receiver's
    or head-end's transport stream). An input that is opened twice (read_windows looking for a transport stream) loses
    what came to the first open: 2.1 s of a channel over UDP."""
    return urlparse(url).scheme in ("udp", "rtp", "srt")


def never_opens(exc: BaseException) -> bool:
    """Whether opening a source failed for good: FFmpeg has no protocol for its scheme, which is what a missing file
    whose name holds a colon (rec-2026-12-05T10:00:00.mp3) reads as. No retry mends that; it was retried forever."""
    return any(isinstance(error, av.error.ProtocolNotFoundError) for error in (exc, exc.__cause__))


# What a playlist that lists streams (not HLS) is served as: .m3u, .pls, .xspf (Icecast serves each mount's; a station's
# site links to them), or as plain text by a web server.
PLAYLIST_CONTENT_TYPES = ("mpegurl", "scpls", "pls+xml", "xspf", "text/plain")
TEXT_CONTENT_TYPES = (*PLAYLIST_CONTENT_TYPES, "xml", "octet-stream")  # answers whose start is read to tell what they are
PLAYLIST_ENTRIES = (
    re.compile(r"<location>\s*([^<\s]+)\s*</location>"),  # XSPF
    re.compile(r"^File\d+\s*=\s*(\S+)", re.MULTILINE | re.IGNORECASE),  # PLS
    re.compile(r"^\s*([a-z][a-z0-9+.-]*://\S+)", re.MULTILINE | re.IGNORECASE),  # M3U: a line that is a whole URL (a text is no playlist)
)


def not_a_stream(url: str, timeout: float) -> str | None:
    """Why `url` is no stream to monitor, with the fix; None if it answers nothing of the kind. Asked only once FFmpeg has
    failed to open `url`, which the reader then retried for ever:
    - a playlist (Icecast's live.mp3.m3u, a station's .pls or .xspf) lists a stream: it names the first (an HLS playlist
      is FFmpeg's to read);
    - an MPEG-DASH manifest (.mpd): the FFmpeg that PyAV ships has no DASH reader (it is built without libxml2)."""
    if urlparse(url).scheme not in ("http", "https"):
        return None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            kind = response.headers.get_content_type()
            text = response.read(1 << 16).decode("utf-8", "replace") if any(k in kind for k in TEXT_CONTENT_TYPES) else ""
    except (OSError, ValueError):
        return None
    if "dash+xml" in kind or "<MPD" in text:
        return ("is an MPEG-DASH manifest, which the FFmpeg airtrace decodes with (PyAV's) cannot read; give the station's HLS "
                "playlist (.m3u8), Icecast or other stream URL, which stations publish beside it")
    if "#EXT-X-" in text or not any(k in kind for k in PLAYLIST_CONTENT_TYPES):
        return None
    for entry in PLAYLIST_ENTRIES:
        if found := entry.search(text):
            return f"is a playlist, not a stream: give the stream it lists, {urljoin(url, found[1])}, as the stream's url"
    return None


def declares_its_end(url: str, container: av.container.InputContainer) -> bool:
    """Whether a network source says that it ends: an HTTP(S) response with a length and without Icecast/
    Shoutcast `icy-*` headers, which mark a live stream whatever else it says. An HLS playlist has a length
    of its own, so there only a duration (a playlist that lists its end) says so. Not the duration alone:
    FFmpeg finds an Ogg file's by reading its end, which a server without byte ranges does not allow.
    Reopening a source that ended would play it again from its start, and every reopening would be a new
    play of the same audio. (Some servers give a live stream a length too: one that breaks off having come as fast as
    it plays is reconnected all the same, StreamClock.came_as_it_plays.)"""
    if urlparse(url).scheme not in ("http", "https"):
        return False
    if "hls" in container.format.name.split(","):
        return container.duration is not None
    icecast = any(key.lower().startswith("icy-") for key in container.metadata)
    return container.size > 0 and not icecast


# A read at a live HLS playlist's edge waits for the next segment inside FFmpeg (a target duration, half of one more
# when a reload finds nothing new, and a missing segment's own length): a stall is this many target durations without audio.
HLS_STALL_SEGMENTS = 3


def read_timeout_for(url: str, container: av.container.InputContainer, read_timeout: float, open_timeout: float) -> float:
    """The read timeout `container` needs: `read_timeout`, or for a live HLS playlist at least HLS_STALL_SEGMENTS of its
    target duration. PyAV's read timeout counts FFmpeg's wait for the next segment, so a timeout under about 1.5
    segments took every wait at the live edge for a stall: 2 s segments with a 2 s timeout were reopened 13 times in
    30 s, and a reopening whose repeat was not recognised heard 3 s twice; with the default 10 s, any station of 10 s
    segments. The target duration is read from the playlist (FFmpeg does not tell it); one that cannot be read (a
    playlist behind headers FFmpeg's options add) keeps `read_timeout`."""
    if urlparse(url).scheme not in ("http", "https") or "hls" not in container.format.name.split(",") or container.duration is not None:
        return read_timeout
    try:
        target = hls_target_duration(url, open_timeout)
    except (OSError, ValueError) as exc:
        log.info("%s: cannot read its playlist's target duration (%s); its read timeout stays %g s", url, exc, read_timeout)
        return read_timeout
    return max(read_timeout, HLS_STALL_SEGMENTS * target) if target else read_timeout


def hls_target_duration(url: str, timeout: float) -> float | None:
    """A media playlist's EXT-X-TARGETDURATION (s), or for a master playlist its first variant's; None if it gives none."""
    for _ in range(2):  # a master playlist, then its variant
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read(1 << 20).decode("utf-8", "replace")
        if found := re.search(r"^#EXT-X-TARGETDURATION:\s*([0-9.]+)", text, re.MULTILINE):
            return float(found[1])
        variant = re.search(r"^#EXT-X-STREAM-INF:.*\n\s*([^#\s][^\n]*)", text, re.MULTILINE)
        if variant is None:
            return None
        url = urljoin(url, variant[1].strip())
    return None


SOURCE_FIELDS = ("id", "url", "name", "metadata", "options", "air_start")


def stream_from_entry(entry: Any, where: str) -> StreamSource:
    """A plain stream entry of a streams config, checked field by field."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping with id and url, got {entry!r}")
    unknown = sorted(set(entry) - set(SOURCE_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field {', '.join(map(repr, unknown))}; a stream has {', '.join(SOURCE_FIELDS)} and audio "
                          "(an audio track's choice), a multiplex is a mux entry with its programs")
    for name in ("id", "url"):  # what makes a good id is StreamSource's to say
        if not isinstance(entry.get(name), str) or (name == "url" and not entry[name].strip()):
            raise ConfigError(f"{where}: field {name!r} is missing or not a string")
    for name in ("metadata", "options"):
        if not isinstance(entry.get(name, {}), dict):
            raise ConfigError(f"{where}: field {name!r} must be a mapping")
    options = ffmpeg_options(entry, where)
    air_start = air_start_of(entry, where)
    try:
        return StreamSource(entry["id"], entry["url"], entry.get("name"), dict(entry.get("metadata", {})), options, air_start)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def air_start_of(entry: dict[str, Any], where: str) -> float | None:
    """A streams config entry's `air_start` (a plain stream's, or a multiplex's), None where it has none: an ISO 8601 time
    with its UTC offset or Z (YAML reads an unquoted one as a datetime already). One without an offset is refused: which
    zone it meant cannot be told."""
    if "air_start" not in entry:
        return None
    value = parsed = entry["air_start"]
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    if not isinstance(parsed, datetime) or parsed.tzinfo is None or parsed.timestamp() < 0:
        raise ConfigError(f"{where}: air_start '{value}' is not a time with its UTC offset; give when the file's first sample aired, "
                          "in ISO 8601 with an offset or Z, e.g. air_start: 2026-12-05T10:00:00+01:00")
    return parsed.timestamp()


def ffmpeg_options(entry: dict[str, Any], where: str) -> dict[str, str]:
    """An entry's `options` (a mapping, checked before) as FFmpeg takes them, each one FFmpeg knows."""
    options = {str(k): str(v) for k, v in entry.get("options", {}).items()}
    unknown = unknown_ffmpeg_options(options)
    if unknown:
        raise ConfigError(f"{where}: FFmpeg knows no input option {', '.join(map(repr, unknown))} and would ignore it; see the "
                          "protocol and format options in https://ffmpeg.org/ffmpeg-protocols.html and ffmpeg-formats.html")
    return options


def unknown_ffmpeg_options(names: Iterable[str]) -> list[str]:
    """Those of `names` that no part of FFmpeg's input side (format context, demuxers, protocols) knows.
    FFmpeg ignores such options without a word, so a typo would silently change nothing. Asks the FFmpeg
    that PyAV loaded, as the ffmpeg tool does: av_opt_find over the format context's class and its children."""
    found = _ffmpeg_option_finder()
    return [name for name in names if found is not None and not found(name)]


@functools.cache
def _ffmpeg_option_finder() -> Callable[[str], bool] | None:
    """None where the loaded libavformat cannot be located (not Linux): options then go unchecked."""
    try:
        maps = Path("/proc/self/maps").read_text().split("\n")
        paths = {lib: next(line.split()[-1] for line in maps if f"/lib{lib}" in line and ".so" in line) for lib in ("avformat", "avutil")}
    except (OSError, StopIteration):
        return None
    avformat, avutil = ctypes.CDLL(paths["avformat"]), ctypes.CDLL(paths["avutil"])
    avformat.avformat_get_class.restype = ctypes.c_void_p
    avutil.av_opt_find.restype = ctypes.c_void_p
    avutil.av_opt_find.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    format_class = ctypes.c_void_p(avformat.avformat_get_class())
    search_children_of_fake_object = 1 | 2  # AV_OPT_SEARCH_CHILDREN | AV_OPT_SEARCH_FAKE_OBJ
    return lambda name: bool(avutil.av_opt_find(ctypes.byref(format_class), name.encode(), None, 0, search_children_of_fake_object))


@dataclass(frozen=True)
class AirStartFromName:
    """When a recorded file (a logger's air check) aired, read from its name: `format`, strptime's, matches the whole file
    name without its extension (radio1-%Y-%m-%dT%H-%M-%S for radio1-2026-12-05T10-00-00.mp3); a format without %z reads
    the time in `zone`, as monitor.local_time reads a time without an offset. Checked once by formatting a time and reading it back, so a bad directive or a format that
    loses the date or the hour is named before any file is read."""

    format: str
    zone: tzinfo = timezone.utc

    OPTION = "--air-start-from"
    SAMPLE = datetime(2026, 12, 5, 22, 20, 30, tzinfo=timezone.utc)  # an hour past noon: %I without %p loses it

    @classmethod
    def parse(cls, spec: str, zone: str = "UTC") -> AirStartFromName:
        kind, _, name_format = spec.partition(":")
        if kind != "name" or not name_format:
            raise ConfigError(f"{cls.OPTION} {spec!r}: give name:FORMAT, a strptime format of the whole file name without its "
                              "extension, e.g. name:radio1-%Y-%m-%dT%H-%M-%S or name:%Y%m%d_%H%M")
        try:
            read_back = datetime.strptime(cls.SAMPLE.strftime(name_format), name_format)
        except ValueError as exc:
            raise ConfigError(f"{cls.OPTION} {spec!r}: {exc}; see the format codes of Python's strptime") from None
        if read_back.date() != cls.SAMPLE.date() or read_back.hour != cls.SAMPLE.hour:
            raise ConfigError(f"{cls.OPTION} {spec!r}: the format must hold the date and the hour (%Y or %y, %m, %d, %H)")
        try:
            return cls(name_format, ZoneInfo(zone))
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"--air-start-zone {zone!r}: no such time zone; give an IANA name such as Europe/Paris, or UTC") from None

    def air_start(self, path: str) -> float:
        """UTC epoch seconds; ValueError (saying why) when the name does not match or names a time `zone`'s clocks skipped
        (monitor.local_time's rule: one they showed twice is its first)."""
        aired = datetime.strptime(Path(path.removeprefix("file:")).stem, self.format)
        try:
            air_start = instant(aired, self.zone).timestamp()
        except SkippedTime as exc:
            raise ValueError(f"{exc}; rename the file with a time its clocks showed, or with its offset ({exc.before} or {exc.after}) "
                             f"read by %z in {self.OPTION}") from None
        check_air_start(path, air_start)
        return air_start


def sources_from_urls(urls: Sequence[str], air_start: AirStartFromName | None = None) -> list[StreamSource]:
    """Streams named on the command line; each id is the file or path name, made unique with a suffix. With `air_start`,
    every URL must be a local file whose name gives its air start: one whose name does not match is reported and skipped."""
    sources: list[StreamSource] = []
    taken: set[str] = set()
    for url in urls:
        parsed = urlparse(url)
        base = Path(url if is_local(url) else parsed.path).stem or parsed.netloc or "stream"
        if air_start is not None and not is_local(url):
            raise ConfigError(f"{air_start.OPTION}: {url} is not a local file; a live stream airs as it arrives: monitor it in a run "
                              f"without {air_start.OPTION}, or correct the file's path")
        try:
            aired = air_start.air_start(url) if air_start else None
        except ValueError as exc:
            log.error("%s: its name gives no air start (%s); skipping it: check %s or rename the file", url, exc, air_start.OPTION)
            continue
        stream_id, n = base, 2
        while stream_id in taken:
            stream_id, n = f"{base}-{n}", n + 1
        taken.add(stream_id)
        try:
            sources.append(StreamSource(stream_id, url, air_start=aired))
        except ValueError as exc:
            raise ConfigError(f"{url}: {exc}; put the stream in a --streams file with an id of its own") from None
    return sources


def check_unique(sources: Sequence[StreamSource | Recordings], where: str) -> None:
    seen: set[str] = set()
    for source in sources:
        if source.id in seen:
            raise ConfigError(f"{where}: stream id {source.id!r} appears twice; ids must be unique, unless every entry of the id is "
                              "a recording (a local file) with its air_start: one station's logger files, read as one stream")
        seen.add(source.id)
