"""The settings of the long-running commands with their defaults, each written once: the option dataclasses
the runners take, and the defaults the CLI shows, read from here (this module loads no model, so neither
does `airtrace --help`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from monitor.constants import DEFAULT_K, SILENCE_DBFS

if TYPE_CHECKING:
    from monitor.stages.play_state import PlayConfig

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_REDIS_PREFIX = "airtrace:"  # every Redis key starts with it: give deployments that share a Redis their own
# CPU threads a monitoring process embeds and searches with. At a live batch's size (8-128 windows) a second
# thread spends 15-37 % more CPU per window on an idle machine and 3-5 times more on a busy one (it spins
# waiting for work, which counts as CPU): one thread per process, and more processes for more cores.
THREADS = 1


@dataclass(frozen=True)
class IngestOptions:
    realtime: bool = False  # pace local files at real time (live streams pace themselves)
    open_timeout: float = 10.0  # seconds to connect
    read_timeout: float = 10.0  # a stream with no data for this long has stalled and is reopened
    backoff_initial: float = 1.0  # first retry delay, doubled per failed attempt
    backoff_max: float = 10.0  # a source back after minutes down is reopened within this (and an open's timeout): at 60 s a
    # station back on air went unheard for up to a minute, a song's start or a whole jingle; a retry every 10 s costs nothing
    silence_dbfs: float = SILENCE_DBFS  # a window quieter than this (RMS, dB full scale) is silent
    dead_air_seconds: float = 5.0  # silence this long is dead air: counted and logged
    gather_seconds: float = 0.5  # a reader at the live edge sleeps this long, then takes what came in one go
    anchor_memory_seconds: float = 300.0  # a live connection's air times follow its audio when it arrives later than they
    # say for this long (monitor.stages.airtime.StreamClock): a source whose clock runs slow (50 ppm puts them 4 s a day
    # early), audio lost inside a connection, this host's clock stepped forward. Longer than a reader falls behind and
    # catches up (a busy monitor, a network stall), which must move nothing
    decode_turns: int = 0  # readers that may decode at once (monitor.stages.ingest.decode_turns); 0: the process's usable cores


@dataclass(frozen=True)
class UnknownConfig:
    """Settings of unknown stretches and their search; the one place their defaults are written."""

    min_seconds: float = 20.0  # an unknown stretch is reported from this long
    gap_seconds: float = 5.0  # talk or silence this long inside music ends the stretch
    part_seconds: float = 600.0  # a longer stretch (hours of music the catalog lacks) is decided in parts this long:
    # each is searched whole while its windows are held (under `buffer_seconds`), and its airtime is reported within
    # minutes, not when the programme ends
    retention_days: float = 7.0  # kept stretches are searched this long after they aired
    excerpt_seconds: float = 300.0  # audio kept of a stretch, for a person to hear and to promote into the catalog
    buffer_seconds: float = 900.0  # embeddings (and audio) a process holds per stream while a stretch is open
    min_match_windows: int = 8  # windows on one line for a repeat ...
    min_confidence: float = 0.999  # ... at this confidence (the catalog's calibration, stricter than the matcher's)
    neighbours: int = 5  # kept windows searched per window of a new stretch


@dataclass(frozen=True)
class MonitorOptions:
    batch_size: int = 128  # windows per embedding batch, across streams
    max_wait: float = 0.25  # seconds a batch may wait to fill
    queue_windows: int = 4096  # ingest threads block when this many windows wait (files read ahead no further)
    threads: int = THREADS
    reload_seconds: float = 10.0
    ingest: IngestOptions = field(default_factory=IngestOptions)
    plays: PlayConfig | None = None  # None: the defaults; the window and hop are always the catalog's
    unknowns: UnknownConfig = field(default_factory=UnknownConfig)


@dataclass(frozen=True)
class WorkerOptions:
    group: str = "airtrace"  # the Faust app id and Kafka consumer group: workers with the same group share the work
    k: int = DEFAULT_K  # neighbours per window (the matcher is calibrated for as many)
    batch_size: int = 64  # windows per embedding batch, across streams
    batch_wait: float = 0.5  # seconds a batch may wait to fill
    threads: int = THREADS
    hits_batch_size: int = 256
    hits_batch_wait: float = 0.2
    session_timeout: float = 10.0  # seconds without heartbeats before a worker's partitions go to the others
    reload_seconds: float = 10.0  # how often to look for a changed catalog
    lag_seconds: float = 1.0  # how often to update airtrace_consumer_lag_messages
    web_port: int | None = None  # Faust's own web server (None: off)
    web_host: str = "127.0.0.1"
    plays: PlayConfig | None = None  # None: the defaults; the window and hop are always the catalog's
    unknowns: UnknownConfig = field(default_factory=UnknownConfig)
