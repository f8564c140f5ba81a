"""Health: heartbeats tell a stuck loop from a waiting one, and `airtrace health` reads them (the catalog
outage half of the check is tested with the tracking step, in test_embedded.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from monitor import health
from monitor import metrics as metrics_module
from monitor.health import Heartbeat


def test_a_loop_stuck_in_a_batch_stops_beating_and_the_health_check_says_so() -> None:
    registry = CollectorRegistry()
    metrics = metrics_module.create(registry)
    now = [1000.0]
    waiting, stuck = Heartbeat("track", metrics, lambda: now[0]), Heartbeat("embed", metrics, lambda: now[0])
    with stuck.busy():
        for _ in range(30):  # the timer beats every few seconds
            now[0] += health.BEAT_SECONDS
            waiting.idle()
            stuck.idle()
        text = generate_latest(registry).decode()
        assert health.problems(text, now[0], stale_seconds=60.0) == [f"loop 'embed' is stuck: no heartbeat for {30 * health.BEAT_SECONDS:.0f} s (limit 60 s)"]
        assert health.problems(text, now[0], stale_seconds=300.0) == []
    assert health.problems(generate_latest(registry).decode(), now[0], stale_seconds=60.0) == []


def test_the_health_command_fails_on_a_stuck_loop_and_passes_on_a_live_one() -> None:
    from click.testing import CliRunner

    from monitor.bench import servers
    from monitor.cli import main

    registry = CollectorRegistry()
    metrics = metrics_module.create(registry)
    port = servers.free_port()
    server, thread = metrics_module.serve(port, registry=registry)
    try:
        Heartbeat("embedded", metrics).beat()
        result = CliRunner().invoke(main, ["health", "--metrics-port", str(port)])
        assert result.exit_code == 0, result.output
        Heartbeat("embedded", metrics, clock=lambda: 0.0).beat()
        result = CliRunner().invoke(main, ["health", "--metrics-port", str(port)])
        assert result.exit_code == 1 and "loop 'embedded' is stuck" in result.output, result.output
    finally:
        server.shutdown()
    result = CliRunner().invoke(main, ["health", "--metrics-port", str(port)])
    assert result.exit_code == 1 and "no metrics at" in result.output
