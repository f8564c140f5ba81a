"""Is this process doing its work? Heartbeats of its loops in metrics, and the check that reads them.

Each loop (a worker's agents, the embedded main loop) beats while it is waiting for work or handling a
batch in time; a loop stuck in one batch stops beating. `check` reads a process's /metrics and says what
is wrong: a heartbeat older than `stale_seconds`, or a catalog that cannot be searched. The container's
health check and the k8s probes run it as `airtrace health`.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client.parser import text_string_to_metric_families

from monitor.metrics import Metrics

# A loop that showed no sign of life for this long is stuck: far above a batch's handling time (about a
# second; a catalog reload takes longer but runs beside the loops) and the beat interval.
STALE_SECONDS = 120.0
BEAT_SECONDS = 5.0  # how often an idle worker's timer beats for its waiting agents


class Heartbeat:
    """The heartbeat of one loop: `beat` when it is alive, `busy` around a batch it handles, `idle` to beat
    only if it is not inside a batch (a timer's view of a loop that waits for messages)."""

    def __init__(self, loop: str, metrics: Metrics | None, clock: Callable[[], float] = time.time):
        self.loop, self.metrics, self.clock = loop, metrics, clock
        self.in_batch = False

    def beat(self) -> None:
        if self.metrics:
            self.metrics.heartbeat.labels(self.loop).set(self.clock())

    @contextmanager
    def busy(self) -> Iterator[None]:
        self.beat()
        self.in_batch = True
        try:
            yield
        finally:
            self.in_batch = False
            self.beat()

    def idle(self) -> None:
        if not self.in_batch:
            self.beat()


def problems(metrics_text: str, now: float, stale_seconds: float = STALE_SECONDS, catalog: bool = True) -> list[str]:
    """What is wrong with the process whose metrics these are (nothing: healthy); `catalog`: also a catalog
    outage, which a restart does not mend. A process without loops (`airtrace ingest`, `plays consume`) is
    judged by answering at all."""
    found = []
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "airtrace_heartbeat_timestamp_seconds":
                age = now - sample.value
                if age > stale_seconds:
                    found.append(f"loop {sample.labels.get('loop')!r} is stuck: no heartbeat for {age:.0f} s (limit {stale_seconds:.0f} s)")
            elif catalog and sample.name == "airtrace_catalog_outage" and sample.value == 1:
                found.append("the catalog cannot be searched: windows go unheard (the log says why; fix or restore the catalog)")
    return found


def check(url: str, stale_seconds: float = STALE_SECONDS, catalog: bool = True, timeout: float = 4.0) -> list[str]:
    """`problems` of the process serving metrics at `url`; one that does not answer is a problem too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        return [f"no metrics at {url}: {exc}"]
    return problems(text, time.time(), stale_seconds, catalog)
