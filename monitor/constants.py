"""Defaults and helpers that more than one module reads, each written once.

Option dataclasses (IngestOptions, MonitorOptions, WorkerOptions, ...) hold each setting's default, and the
CLI's options read them from there; what several modules share lives here.
"""

from __future__ import annotations

import random
import time

DEFAULT_HOP_SECONDS = 0.5  # reference hop of a new catalog (and of the benchmarks' catalogs)
DEFAULT_K = 10  # catalog neighbours searched per window; the matcher's calibration is computed for as many
# Calibrated confidence at which a stream's play is first noticed (a provisional event, withdrawn if its evidence
# stops short); its started event waits for the sure one (PlayConfig.min_confidence), which this default equals.
# 0.99 notices sooner, with more notices withdrawn and some started on a line one loop away (README, "Notices").
NOTICE_CONFIDENCE = 0.999
SCALE_WINDOWS = 40_000_000  # the large catalog the benchmarks size for: 100,000 tracks of ~3.3 min at a 0.5 s hop
# A window quieter than this (RMS, dB full scale) is silence: never indexed or searched for (all silence looks
# alike to an encoder), and dead air on a stream when it lasts.
SILENCE_DBFS = -60.0
SILENCE_RMS = 10 ** (SILENCE_DBFS / 20)


# A failure that keeps coming for the same reason is logged again at most this often (Backoff.failed).
REPEAT_LOG_SECONDS = 600.0


class Backoff:
    """Exponential backoff with equal jitter: delay_n = d/2 + U(0, d/2) with d = min(max, initial * 2^n).
    Every wait on something that is down (a stream, Kafka, Redis, the play log's database) uses it.

    It also says which failures to log (`failed`): one for a new reason at once, the same reason again at most every
    REPEAT_LOG_SECONDS, with how often it came meanwhile. A station off air overnight was retried every 10 s with two
    lines each time, 17,000 lines a day for one stream. `told` says whether the last failure was logged. Streams,
    Redis and the play log's database say their failures through it."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None):
        self.initial, self.maximum, self.attempt = initial, maximum, 0
        self.rng = rng or random.Random()
        self.reason: str | None = None
        self.told_at, self.unsaid, self.told = 0.0, 0, True

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * 2**self.attempt)
        self.attempt += 1
        return delay / 2 + self.rng.uniform(0, delay / 2)

    def failed(self, reason: str) -> str | None:
        """What to log of a failure for `reason`, or None to say nothing of it now."""
        now = time.monotonic()
        self.told = reason != self.reason or now - self.told_at >= REPEAT_LOG_SECONDS
        if not self.told:
            self.unsaid += 1
            return None
        repeated = f" ({self.unsaid + 1} times since this was last logged)" if reason == self.reason and self.unsaid else ""
        self.reason, self.told_at, self.unsaid = reason, now, 0
        return reason + repeated

    def reset(self) -> None:
        """It works again: waits start short, and its next failure is news."""
        self.attempt, self.reason, self.unsaid, self.told = 0, None, 0, True

