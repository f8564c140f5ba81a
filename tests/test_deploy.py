"""deploy/: the production stack, checked as far as a machine without a container engine allows.

Static checks parse every file of deploy/ and hold it to the contracts it shares with the code: metric
names (monitor/metrics.py), CLI options and their environment variables (monitor/cli.py), the Grafana
data source uid, the compose service names Prometheus discovers. promtool checks both Prometheus configs
and the rules and runs the rules' unit tests.

The live check runs Debian's `prometheus` on a loopback port, scraping a real `airtrace monitor`
(embedded mode) that listens to a live HTTP stream of a catalog track, and evaluates every query of
every dashboard panel and every rule through Prometheus' HTTP API. A query that errors fails the test,
and so does one that returns no series, unless it reads a series that ABSENT_ON_A_CLEAN_RUN or
ABSENT_IN_EMBEDDED_MODE explain. The same run with `airtrace ingest` and `airtrace worker` on a real
Kafka-protocol broker and Redis instead of the embedded monitor is marked slow (`pytest -m slow`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor.bench import servers
from monitor import metrics as metrics_module

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
GRAFANA_DIR = DEPLOY / "grafana"
DASHBOARD_FILES = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
RULE_FILE = PROMETHEUS_DIR / "alerts.yml"
DATASOURCE_UID = "airtrace-prometheus"
PLAYLOG_UID = "airtrace-playlog"  # the play log in PostgreSQL; its SQL runs in tests/test_playlog_grafana.py
PLAYLOG_PANELS = {("stream", "Airtime per hour")}  # panels of the Prometheus dashboards that read the play log
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}

# Series that are rightly absent on a short clean run, with the reason. A query may come back empty only
# if it reads one of them; of the dashboards, only the fleet's Consumer lag panel may be empty, and only
# in embedded mode.
ABSENT_ON_A_CLEAN_RUN = {
    "airtrace_dead_letters_total": "a reason's counter is born with its first dead letter; a clean run has none",
    "airtrace_silence_seconds_total": "a stream's counter is born with its first dead air; the streamed track has none",
    "airtrace_ingest_run_conflicts_total": "a stream's counter is born when a second ingest run publishes it; one ingest runs",
}
ABSENT_IN_EMBEDDED_MODE = ABSENT_ON_A_CLEAN_RUN | {
    "airtrace_consumer_lag_messages": "only workers consume Kafka; embedded mode has no consumer lag",
    "airtrace:consumer_lag_messages:sum": "recorded from airtrace_consumer_lag_messages",
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboards() -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in DASHBOARD_FILES}


def all_panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str
    instant: bool
    legend: str = ""

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id}: {self.expr}"


def panel_queries() -> list[PanelQuery]:
    """Every Prometheus query of every panel (the play log's SQL is not PromQL)."""
    return [
        PanelQuery(name, panel["title"], target["refId"], target["expr"], bool(target.get("instant")) and not target.get("range"),
                   target.get("legendFormat", ""))
        for name, dashboard in dashboards().items()
        for panel in all_panels(dashboard)
        for target in panel.get("targets", [])
        if target["datasource"]["uid"] == DATASOURCE_UID
    ]


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's template variables ($name and ${name}) replaced by values; an unknown one is an error."""

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise KeyError(f"unknown template variable ${name} in {expr}")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def series_names(expr: str) -> set[str]:
    """Metric and recording-rule names an expression reads (airtrace's, process_* and up)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    return set(re.findall(r"\b(?:airtrace[_:][a-z_:]+|process_[a-z_]+|up)\b(?=\s*[{\[)\s]|$)", without_strings))


def exported_series() -> set[str]:
    """Every series name monitor/metrics.py exports, with the suffixes of counters and histograms."""
    registry = CollectorRegistry()
    metrics_module.create(registry)
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"), "gauge": ("",)}
    names = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names | {"up"}


def rules() -> list[dict]:
    return [rule for group in load_yaml(RULE_FILE)["groups"] for rule in group["rules"]]


# ----------------------------------------------------------------------------- dashboards and rules


def test_dashboards_are_complete_grafana_models() -> None:
    boards = dashboards()
    assert set(boards) == {"fleet", "stream", "catalog", "playlog"}
    assert len({board["uid"] for board in boards.values()}) == len(boards)
    for name, board in boards.items():
        assert board["title"] and board["schemaVersion"] >= 36 and board["panels"], name
        ids = [panel["id"] for panel in all_panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        for panel in all_panels(board):
            grid = panel["gridPos"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, f"{name} / {panel['title']} is wider than the grid"
            if panel["type"] == "row":
                continue
            # plays from PostgreSQL, the rest from Prometheus
            uid = PLAYLOG_UID if name == "playlog" or (name, panel["title"]) in PLAYLOG_PANELS else DATASOURCE_UID
            assert panel["datasource"]["uid"] == uid, f"{name} / {panel['title']}"
            assert panel["targets"], f"{name} / {panel['title']} has no query"
            refs = [target["refId"] for target in panel["targets"]]
            assert len(refs) == len(set(refs)), f"{name} / {panel['title']}: refIds repeat"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == uid and target["rawSql" if uid == PLAYLOG_UID else "expr"].strip()


def test_dashboards_show_what_the_issue_asks_for() -> None:
    titles = {name: {panel["title"]: panel for panel in all_panels(board)} for name, board in dashboards().items()}
    for title in ("Streams up", "Streams down", "Reconnects", "Consumer lag", "Detection latency", "Windows per second", "Worker CPU"):
        assert title in titles["fleet"], title
    stream = titles["stream"]
    assert stream["Now playing"]["type"] == "stat"
    assert stream["Plays in the last 24 h"]["type"] == "stat"
    assert stream["Plays timeline"]["type"] == "state-timeline"
    assert "airtrace_now_playing" in stream["Plays timeline"]["targets"][0]["expr"]
    assert {"Silence", "Outages"} <= set(stream)
    assert "FROM airtime" in stream["Airtime per hour"]["targets"][0]["rawSql"]
    for title in ("Tracks", "Reference windows", "Index memory", "Search latency per batch"):
        assert title in titles["catalog"], title
    (variable,) = dashboards()["stream"]["templating"]["list"]
    assert variable["name"] == "stream" and variable["query"]["query"] == "label_values(airtrace_stream_up, stream)"
    playlog = titles["playlog"]
    assert playlog["Plays"]["type"] == "table" and "$__timeFilter(started_at)" in playlog["Plays"]["targets"][0]["rawSql"]
    assert {"Top tracks per station", "Plays per hour", "Music share", "Recent rejected plays"} <= set(playlog)


def test_every_query_uses_known_variables_and_exported_metrics() -> None:
    known = exported_series() | {rule["record"] for rule in rules() if "record" in rule}
    variables = {name: "1m" for name in GRAFANA_BUILTINS} | {"stream": "radio1"}
    expressions = [(str(query), query.expr) for query in panel_queries()] + [(rule.get("alert") or rule["record"], rule["expr"]) for rule in rules()]
    for where, expr in expressions:
        substitute(expr, variables)
        unknown = series_names(expr) - known
        assert not unknown, f"{where} reads {unknown}, which monitor/metrics.py does not export"


def label_names(expr: str) -> set[str]:
    """Label names an expression selects on ({name="..."}) or groups and matches by (by, without, on, ignoring, group_*)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    grouped = re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", without_strings)
    selected = re.findall(r"\{([^}]*)\}", without_strings)
    return {name.strip() for group in grouped for name in group.split(",") if name.strip()} | {
        name for selector in selected for name in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector)}


def test_every_query_and_legend_uses_labels_the_series_have() -> None:
    """A label no series has selects nothing, groups everything into one series, or leaves a legend blank."""
    registry = CollectorRegistry()
    exported = {label for metric in metrics_module.create(registry) for label in metric._labelnames} | {"le"}
    for config in ("prometheus.yml", "prometheus-k8s.yml"):
        (job,) = [job for job in load_yaml(PROMETHEUS_DIR / config)["scrape_configs"] if job["job_name"] == "airtrace"]
        assert [relabel["target_label"] for relabel in job["relabel_configs"]] == ["role"], config
    known = exported | {"instance", "job", "role"}  # the scrape's target labels
    variables = {name: "1m" for name in GRAFANA_BUILTINS} | {"stream": "radio1"}
    uses = [(str(query), label_names(substitute(query.expr, variables))) for query in panel_queries()]
    uses += [(f"{query} legend", set(re.findall(r"\{\{\s*(\w+)\s*\}\}", query.legend))) for query in panel_queries()]
    uses += [(rule.get("alert") or rule["record"], label_names(rule["expr"]) | set(re.findall(r"\$labels\.(\w+)", json.dumps(rule.get("annotations", {})))))
             for rule in rules()]
    for where, labels in uses:
        assert labels <= known, f"{where} uses {sorted(labels - known)}, a label no airtrace series has"


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    (datasource,) = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yaml")["datasources"]
    assert datasource["uid"] == DATASOURCE_UID and datasource["type"] == "prometheus"
    (playlog,) = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "playlog.yaml")["datasources"]
    assert playlog["uid"] == PLAYLOG_UID and playlog["type"] == "grafana-postgresql-datasource"
    services = compose()["services"]
    assert playlog["url"] == "postgres:5432" and playlog["jsonData"]["database"] == services["postgres"]["environment"]["POSTGRES_DB"]
    assert playlog["secureJsonData"]["password"] == "$GRAFANA_DB_PASSWORD" and "GRAFANA_DB_PASSWORD" in services["grafana"]["environment"]
    (provider,) = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "airtrace.yaml")["providers"]
    assert provider["type"] == "file"
    grafana = load_yaml(DEPLOY / "compose.yaml")["services"]["grafana"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in grafana["volumes"]}
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian package prometheus; deploy/install.sh installs it)")
    result = subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-k8s.yml"])
def test_promtool_checks_the_prometheus_configs(config: str) -> None:
    assert "SUCCESS" in promtool("check", "config", config).stdout


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    assert "SUCCESS" in promtool("check", "rules", RULE_FILE.name).stdout
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml").stdout
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS_DIR / "alerts_test.yml").read_text()))
    assert tested == {rule["alert"] for rule in rules() if "alert" in rule}, "every alert needs a unit test"


@pytest.mark.parametrize("panel", ["Now playing", "Plays timeline"])
def test_now_playing_believes_the_worker_that_last_reported_the_stream(panel: str, tmp_path: Path) -> None:
    """Worker a announced track t1, then a rebalance gave the stream to worker b, which ended the play (b's
    `airtrace_now_playing` had no series to remove) and later announced t2. Only a may remove its own series,
    so it stays at 1 until a restarts or starts the stream's next play itself: the panel must show what the process with the stream's latest play
    event says, evaluated by promtool on synthetic series, minute by minute."""
    (query,) = [query for query in panel_queries() if (query.dashboard, query.panel) == ("stream", panel)]
    on_air = {"series": 'airtrace_now_playing{instance="a", stream="radio1", track_id="t1"}', "values": "1x10"}
    next_on_air = {"series": 'airtrace_now_playing{instance="b", stream="radio1", track_id="t2"}', "values": "_x7 1x3"}
    a_last = {"series": 'airtrace_last_play_timestamp_seconds{instance="a", stream="radio1"}', "values": "60x10"}
    b_last = {"series": 'airtrace_last_play_timestamp_seconds{instance="b", stream="radio1"}', "values": "_x4 300x2 480x3"}
    expr = substitute(query.expr, {"stream": "radio1"})
    expected = {"3m": [{"labels": '{track_id="t1"}', "value": 1}], "6m": [], "9m": [{"labels": '{track_id="t2"}', "value": 1}]}
    test = {"interval": "1m", "input_series": [on_air, next_on_air, a_last, b_last],
            "promql_expr_test": [{"expr": expr, "eval_time": at, "exp_samples": samples} for at, samples in expected.items()]}
    (tmp_path / "now_playing_test.yml").write_text(yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m", "tests": [test]}))
    promtool("test", "rules", "now_playing_test.yml", cwd=tmp_path)


# ----------------------------------------------------------------------------- compose, image, secrets

AIRTRACE_SERVICES = ("ingest", "worker", "catalog", "playlog", "playlog-migrate")
METRICS_SERVICES = ("ingest", "worker", "playlog")


def compose() -> dict:
    return load_yaml(DEPLOY / "compose.yaml")


def cli_envvars() -> dict[str, set[str]]:
    """For each `airtrace` command (`catalog add` as "catalog add"), the environment variables it reads."""
    import click

    from monitor.cli import main

    found: dict[str, set[str]] = {}

    def walk(command: click.Command, path: tuple[str, ...], inherited: set[str]) -> None:
        names = set(inherited)
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            names.update([envvar] if isinstance(envvar, str) else envvar or [])
        found[" ".join(path)] = names
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name), names)

    walk(main, (), set())
    return found


def airtrace_command(args: list[str]) -> str:
    """The CLI command a container runs: its leading words that name a (sub)command."""
    commands = cli_envvars()
    words: list[str] = []
    for arg in args:
        if " ".join([*words, arg]) not in commands:
            break
        words.append(arg)
    assert words, f"{args} starts with no airtrace command"
    return " ".join(words)


def check_envvars(command_args: list[str], env: dict[str, Any], where: str) -> None:
    """Every AIRTRACE_* variable given to a command must be one that command reads."""
    command = airtrace_command(command_args)
    unknown = {name for name in env if name.startswith("AIRTRACE_")} - cli_envvars()[command]
    assert not unknown, f"{where}: `airtrace {command}` reads no {sorted(unknown)} (see `airtrace {command} --help`)"


def test_compose_runs_the_stack_the_issue_asks_for() -> None:
    from monitor.fleet.broker import Topics

    services = compose()["services"]
    assert not any("zookeeper" in str(service.get("image", "")) for service in services.values())
    kafka = services["kafka"]["environment"]
    assert services["kafka"]["image"].startswith("apache/kafka:") and "controller" in kafka["KAFKA_PROCESS_ROLES"]
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "SASL" in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    init = services["kafka-init"]
    topics = Topics()
    assert init["environment"]["TOPICS"].split() == [topics.windows, topics.hits, topics.plays, topics.dead_letters]
    assert init["restart"] == "no"
    assert "appendonly yes" in (DEPLOY / "redis" / "redis.conf").read_text()
    assert services["worker"]["deploy"]["replicas"] == 2
    for name in ("ingest", "worker"):
        assert services[name]["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert services["worker"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["playlog"]["command"] == ["plays", "consume"] and services["playlog-migrate"]["command"] == ["plays", "migrate"]
    assert services["playlog"]["depends_on"]["playlog-migrate"]["condition"] == "service_completed_successfully"
    assert services["playlog-migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "/docker-entrypoint-initdb.d/" in " ".join(services["postgres"]["volumes"]), "Grafana's read-only role"
    for name in AIRTRACE_SERVICES:
        service = services[name]
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        args = service.get("entrypoint", [])[1:] + service["command"]
        check_envvars(args, service.get("environment", {}), f"compose service {name}")
    for name in METRICS_SERVICES:
        assert services[name]["environment"]["AIRTRACE_METRICS_HOST"] == "0.0.0.0"  # inside the container only
    worker = services["worker"]
    assert worker["read_only"] and worker["working_dir"] in worker["tmpfs"], "Faust writes its data folder in the working directory"
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host's loopback"
    prometheus = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    (job,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == "airtrace"]
    assert sorted(job["dns_sd_configs"][0]["names"]) == sorted(METRICS_SERVICES)
    assert job["dns_sd_configs"][0]["port"] == int(services["worker"]["environment"]["AIRTRACE_METRICS_PORT"])


def documented_compose_commands() -> Iterator[tuple[str, str, list[str]]]:
    """(file, service, the `airtrace` arguments) of every `docker compose ... run --rm SERVICE ...` and
    `docker compose ... exec SERVICE airtrace ...` that deploy/'s README, compose.yaml and .env.example give."""
    services = compose()["services"]
    for path in (DEPLOY / "README.md", DEPLOY / "compose.yaml", DEPLOY / ".env.example"):
        for match in re.finditer(r"docker compose (?:-f \S+ )?(run --rm|exec) ([\w-]+) ([^`\n]*)", path.read_text()):
            how, service, words = match[1], match[2], match[3].split()
            if how == "run --rm":
                yield path.name, service, services[service].get("entrypoint", ["airtrace"])[1:] + words
            elif words[0] == "airtrace":
                yield path.name, service, words[1:]


def test_the_compose_commands_in_the_docs_give_what_their_command_requires() -> None:
    import click

    from monitor.cli import main

    services = compose()["services"]
    commands = list(documented_compose_commands())
    assert {service for _, service, _ in commands} >= {"catalog", "playlog"}
    for where, service, args in commands:
        command: click.Command = main
        for word in args:
            if not isinstance(command, click.Group) or word not in command.commands:
                break
            command = command.commands[word]
        options = [param for param in command.params if isinstance(param, click.Option)]
        given = {arg.split("=")[0] for arg in args if arg.startswith("--")}
        known = {name for option in options for name in option.opts}
        assert given <= known, f"{where}: `airtrace {' '.join(args)}` has no {sorted(given - known)}"
        environment = services[service].get("environment", {})
        for option in options:
            if option.required and option.envvar not in environment:
                assert given & set(option.opts), f"{where}: `airtrace {' '.join(args)}` lacks the required {option.opts[0]}"


def test_secrets_come_from_the_env_file_and_never_from_git() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    variables = set(re.findall(r"\$\{(\w+)", text))
    example = dict(line.split("=", 1) for line in (DEPLOY / ".env.example").read_text().splitlines() if line and not line.startswith("#"))
    assert variables <= set(example) | {"AIRTRACE_TAG"}, f"undocumented in .env.example: {variables - set(example)}"
    for name, value in example.items():
        if "PASSWORD" in name:
            assert value.startswith("REPLACE"), f"{name} in .env.example looks like a real secret"
            assert re.search(rf"\$\{{{name}:\?", text), f"compose must refuse to start without {name}"
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()
    assert not re.search(r"(?i)password[\"']?\s*[:=]\s*[\"']?(?!\$|REPLACE)\w{6,}", text), "a literal password in compose.yaml"


def compose_client() -> list[str]:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("no Docker Compose client (neither `docker compose` nor Debian's docker-compose) to parse compose.yaml")


def test_docker_compose_parses_the_file_and_requires_the_secrets(tmp_path: Path) -> None:
    client = compose_client()
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("KAFKA_", "REDIS_", "GRAFANA_"))}
    base = [*client, "-f", str(DEPLOY / "compose.yaml"), "--env-file"]
    parsed = subprocess.run([*base, str(DEPLOY / ".env.example"), "config"], capture_output=True, text=True, env=environment, timeout=60)
    assert parsed.returncode == 0, parsed.stderr
    resolved = yaml.safe_load(parsed.stdout)["services"]
    assert resolved["worker"]["environment"]["AIRTRACE_REDIS_PASSWORD"].startswith("REPLACE")  # interpolated from the env file
    empty = tmp_path / "empty.env"
    empty.write_text("")
    refused = subprocess.run([*base, str(empty), "config"], capture_output=True, text=True, env=environment, timeout=60)
    assert refused.returncode != 0 and "PASSWORD" in refused.stderr, refused.stderr


def test_dockerfile_is_multi_stage_cpu_only_and_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(stages) >= 2 and stages[-1].split()[-1] == "runtime"
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in text
    (user,) = [rest for keyword, rest in instructions if keyword == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    assert any(keyword == "HEALTHCHECK" and '["airtrace", "health"]' in rest for keyword, rest in instructions)
    assert ["ENTRYPOINT", '["airtrace"]'] in instructions
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1 :][:4] == ["!pyproject.toml", "!README.md", "!encoders/", "!monitor/"]


def docker_context(target: Path) -> Path:
    """Copy what Dockerfile.dockerignore lets into the build context: its `!` entries, minus its excludes."""
    lines = [line for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*", "the context is a whitelist"
    included = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    excluded = [line.removeprefix("**/") for line in lines[1:] if not line.startswith("!")]
    target.mkdir()
    for name in included:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns(*excluded))
        else:
            shutil.copy2(source, target / name)
    return target


def test_the_docker_build_context_holds_an_installable_airtrace(tmp_path: Path) -> None:
    """What the image's `pip install .` gets: a wheel built from exactly the context has the code and data."""
    import sys
    import zipfile

    context = docker_context(tmp_path / "context")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(context)],
                           capture_output=True, text=True, timeout=240)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheel").glob("airtrace-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"monitor/cli.py", "monitor/fleet/worker.py", "encoders/__init__.py", "monitor/schemas/play_event.v1.json"} <= names
    migrations = {str(path.relative_to(ROOT)) for path in (ROOT / "monitor" / "playlog" / "migrations").rglob("*") if path.suffix in (".py", ".mako")}
    assert migrations <= names, f"play log migrations missing from the image: {migrations - names}"
    shipped = {str(path.relative_to(ROOT)) for path in (ROOT / "encoders" / "models").glob("*/*") if path.suffix in (".json", ".safetensors", ".md")}
    assert shipped <= names, f"shipped models missing from the image: {shipped - names}"
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "airtrace = monitor.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_redis_conf_runs_on_debian_redis_with_auth_and_the_append_only_file(tmp_path: Path) -> None:
    import redis

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (deploy/install.sh installs it)")
    password = "test-only-password"
    auth = tmp_path / "auth.conf"
    auth.write_text(f'requirepass "{password}"\n')
    port = servers.free_port()
    conf = (DEPLOY / "redis" / "redis.conf").read_text()
    assert "dir /data" in conf and "include /tmp/redis-auth.conf" in conf and "bind 0.0.0.0" in conf
    conf = conf.replace("dir /data", f"dir {tmp_path}").replace("/tmp/redis-auth.conf", str(auth)).replace("bind 0.0.0.0", f"bind {servers.HOST}\nport {port}")
    (tmp_path / "redis.conf").write_text(conf)
    server = servers.ServerProcess(["redis-server", str(tmp_path / "redis.conf")], port, tmp_path / "redis.log").start()
    try:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        client = redis.Redis(port=port, password=password)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()
    finally:
        server.stop()


# ----------------------------------------------------------------------------- install script


def run_install_script_on_a_fresh_machine(tmp_path: Path) -> list[list[str]]:
    """deploy/install.sh where no Debian package is installed, with apt-get, sudo, python3.11 and the virtual
    environment's pip and python replaced by commands that only record their arguments: the calls, in order."""
    repo, shims, venv_bin, calls = tmp_path / "repo", tmp_path / "shims", tmp_path / "venv-bin", tmp_path / "calls"
    (repo / "deploy").mkdir(parents=True)
    shutil.copy(DEPLOY / "install.sh", repo / "deploy")
    record = '#!/bin/sh\necho "$(basename "$0") $*" >> "$CALLS"\n'
    scripts = {
        shims / "dpkg-query": "#!/bin/sh\nexit 1\n",
        shims / "apt-get": record,
        shims / "sudo": '#!/bin/sh\nexec "$@"\n',
        shims / "python3.11": f'#!/bin/sh\nmkdir -p "$3" && cp -r "{venv_bin}" "$3/bin"\n',  # python3.11 -m venv .venv
        venv_bin / "pip": record,
        venv_bin / "python": record,
    }
    for path, text in scripts.items():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "CALLS": str(calls)}
    ran = subprocess.run(["bash", str(repo / "deploy" / "install.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    return [line.split() for line in calls.read_text().splitlines()]


def test_install_script_sets_up_a_fresh_debian_machine(tmp_path: Path) -> None:
    """On a fresh machine `python3.11 -m venv` needs Debian's python3.11-venv (ensurepip), and torch must be the CPU
    build the image installs: PyPI's torch for Linux is the CUDA one with its nvidia-* libraries, gigabytes."""
    calls = run_install_script_on_a_fresh_machine(tmp_path)
    (apt_install,) = [call for call in calls if call[:2] == ["apt-get", "install"]]
    assert {"python3.11", "python3.11-venv"} <= set(apt_install), apt_install
    pip = [" ".join(call[1:]) for call in calls if call[0] == "pip"]
    image_torch = re.search(r"pip install (torch==\S+ --index-url \S+)", (DEPLOY / "Dockerfile").read_text())[1]
    torch = [index for index, call in enumerate(pip) if image_torch in call]
    project = [index for index, call in enumerate(pip) if "-e .[test]" in call]
    assert torch and project and torch[0] < project[0], f"install.sh must run `pip install {image_torch}` before the project: {pip}"


# ----------------------------------------------------------------------------- Kubernetes

K8S = DEPLOY / "k8s"


def kustomization(path: Path = K8S) -> dict:
    return load_yaml(path / "kustomization.yaml")


def raw_k8s_objects(path: Path = K8S) -> list[dict]:
    return [doc for name in kustomization(path)["resources"] for doc in yaml.safe_load_all((path / name).read_text()) if doc]


def workloads(objects: list[dict]) -> dict[str, dict]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] in ("Deployment", "StatefulSet", "Job")}


def containers(workload: dict) -> list[dict]:
    return workload["spec"]["template"]["spec"]["containers"]


def secret_keys() -> set[str]:
    secret = load_yaml(K8S / "secret.example.yaml")
    assert secret["metadata"]["name"] == "airtrace-secrets"
    assert all("REPLACE" in value for value in secret["stringData"].values())
    return set(secret["stringData"])


def test_k8s_workloads_are_probed_bounded_and_unprivileged() -> None:
    every = raw_k8s_objects(K8S) + raw_k8s_objects(K8S / "infra") + [catalog_job(name) for name in CATALOG_JOBS]
    assert len(workloads(every)) == 10
    for name, workload in workloads(every).items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        for container in containers(workload):
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            if workload["kind"] != "Job":
                assert "readinessProbe" in container and "livenessProbe" in container, name
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "airtrace-secrets" and ref["key"] in secret_keys(), f"{name}: {ref}"


def test_k8s_runs_workers_as_a_deployment_and_ingestors_by_ordinal() -> None:
    from monitor.stages.ingest import load_sources

    objects = workloads(raw_k8s_objects())
    assert objects["airtrace-worker"]["kind"] == "Deployment"
    ingest = objects["airtrace-ingest"]
    assert ingest["kind"] == "StatefulSet"
    shards = {f"shard-{i}.yaml" for i in range(ingest["spec"]["replicas"])}
    (streams,) = [gen for gen in kustomization()["configMapGenerator"] if gen["name"] == "airtrace-streams"]
    assert {Path(file).name for file in streams["files"]} == shards, "one streams file per ingest pod"
    ids = [source.id for file in streams["files"] for source in load_sources(K8S / file)]
    assert len(ids) == len(set(ids)), "a stream is in two shards"
    (container,) = containers(ingest)
    env = {item["name"]: item for item in container["env"]}
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert env["AIRTRACE_STREAMS"]["value"] == "/etc/airtrace/streams/shard-$(POD_INDEX).yaml"
    assert list(env).index("POD_INDEX") < list(env).index("AIRTRACE_STREAMS"), "$(POD_INDEX) expands only if defined before"
    (worker,) = containers(objects["airtrace-worker"])
    mounts = {mount["mountPath"]: mount["name"] for mount in worker["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in objects["airtrace-worker"]["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts[worker["workingDir"]]], "Faust writes its data folder in the working directory"
    config = dict(line.split("=", 1) for line in (K8S / "airtrace.env").read_text().splitlines() if line and not line.startswith("#"))
    for name in ("airtrace-ingest", "airtrace-worker"):
        (container,) = containers(objects[name])
        check_envvars(container["args"], config | {env["name"]: env for env in container["env"]}, f"k8s {name}")
    dns = load_yaml(PROMETHEUS_DIR / "prometheus-k8s.yml")["scrape_configs"][0]["dns_sd_configs"][0]["names"]
    services = {obj["metadata"]["name"] for obj in raw_k8s_objects() if obj["kind"] == "Service" and obj["spec"].get("clusterIP") == "None"}
    assert {name.split(".")[0] for name in dns} == services == {"airtrace-ingest", "airtrace-worker", "airtrace-playlog"}
    (playlog,) = containers(objects["airtrace-playlog"])
    check_envvars(playlog["args"], config | {env["name"]: env for env in playlog["env"]}, "k8s airtrace-playlog")
    (migrate,) = objects["airtrace-playlog"]["spec"]["template"]["spec"]["initContainers"]
    assert migrate["args"] == ["plays", "migrate"] and migrate["env"] == [env for env in playlog["env"] if env["name"] in ("AIRTRACE_PLAYLOG", "PGPASSWORD")]


def test_k8s_kustomizations_apply_every_manifest_but_the_ones_run_by_hand() -> None:
    """A manifest left out of kustomization.yaml is never applied; only the catalog Jobs (run when the catalog
    changes, their headers say how) and the Secret's example stay out."""
    by_hand = {*CATALOG_JOBS, "secret.example.yaml"}
    for path in (K8S, K8S / "infra"):
        manifests = {file.name for file in path.glob("*.yaml")} - {"kustomization.yaml"}
        assert manifests - by_hand == set(kustomization(path)["resources"]), path


def test_k8s_prometheus_still_finds_the_pods_that_are_not_ready() -> None:
    """A headless Service lists only ready pods in DNS unless told otherwise. A worker whose catalog cannot be
    searched or whose agent is stuck fails its readiness probe, and a process that stops answering fails it
    before `up == 0` lasts 2 minutes: Prometheus would lose the very targets that AirtraceCatalogOutage,
    AirtraceLoopStuck and AirtraceProcessDown are about, and those alerts could never fire."""
    discovered = {name.split(".")[0] for name in load_yaml(PROMETHEUS_DIR / "prometheus-k8s.yml")["scrape_configs"][0]["dns_sd_configs"][0]["names"]}
    services = {obj["metadata"]["name"]: obj["spec"] for obj in raw_k8s_objects() if obj["kind"] == "Service"}
    for name in discovered:
        assert services[name].get("publishNotReadyAddresses") is True, f"Service {name}: set publishNotReadyAddresses: true"


CATALOG_JOBS = ("catalog-job.yaml", "catalog-parts-job.yaml", "catalog-merge-job.yaml")


def catalog_job(name: str) -> dict:
    (job,) = yaml.safe_load_all((K8S / name).read_text())
    return job


@pytest.mark.parametrize("name", CATALOG_JOBS)
def test_k8s_catalog_jobs_write_the_catalog_the_workers_read(name: str) -> None:
    job = catalog_job(name)
    (container,) = containers(job)
    assert airtrace_command(container["args"]) == "catalog add"
    path = container["args"][container["args"].index("--catalog") + 1]
    worker = workloads(raw_k8s_objects())["airtrace-worker"]
    (worker_container,) = containers(worker)
    assert {env["name"]: env.get("value") for env in worker_container["env"]}["AIRTRACE_CATALOG"] == path
    claims = {volume["name"]: volume.get("persistentVolumeClaim", {}).get("claimName") for pod in (job, worker) for volume in pod["spec"]["template"]["spec"]["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert claims[mounts[path]] == "airtrace-catalog"
    assert container["args"][-1] == "/references" and claims[mounts["/references"]] == "airtrace-references"
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (PyPI) checks objects against the API schemas")
    kubernetes_validate.validate(job, "1.32.0", strict=True)


def test_k8s_parallel_catalog_build_gives_each_pod_its_part_and_merges_them_all() -> None:
    from monitor.catalog.parts import parse_part

    parts, merge = catalog_job("catalog-parts-job.yaml"), catalog_job("catalog-merge-job.yaml")
    assert parts["spec"]["completionMode"] == "Indexed" and parts["spec"]["maxFailedIndexes"] == 0
    n = parts["spec"]["completions"]
    (container,) = containers(parts)
    env = {item["name"]: item for item in container["env"]}
    spec = container["args"][container["args"].index("--part") + 1]
    variable = re.fullmatch(r"\$\((\w+)\)/(\d+)", spec)
    assert variable, f"--part {spec} is not $(INDEX)/N"
    assert env[variable[1]]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert [parse_part(spec.replace(f"$({variable[1]})", str(index))) for index in range(n)] == [(index, n) for index in range(n)]
    (merge_container,) = containers(merge)
    merge_args = merge_container["args"]
    assert int(merge_args[merge_args.index("--merge-parts") + 1]) == n, "the merge must wait for every part"
    without_part = [arg for i, arg in enumerate(container["args"]) if "--part" not in container["args"][max(i - 1, 0) : i + 1]]
    without_merge = [arg for i, arg in enumerate(merge_args) if "--merge-parts" not in merge_args[max(i - 1, 0) : i + 1]]
    assert without_part == without_merge, "parts and merge must name the same catalog and references"


@pytest.mark.parametrize("path", [K8S, K8S / "infra"], ids=["airtrace", "infra"])
def test_k8s_kustomize_renders_objects_that_match_the_kubernetes_schemas(path: Path) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (for its built-in kustomize) is not installed")
    rendered = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    objects = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    assert all(obj["metadata"].get("namespace") == "airtrace" for obj in objects if obj["kind"] != "Namespace")
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (PyPI) checks objects against the API schemas")
    for obj in objects:
        kubernetes_validate.validate(obj, "1.32.0", strict=True)


# ----------------------------------------------------------------------------- live: Prometheus against airtrace

PROMETHEUS_INTERVAL = "1s"


@dataclass
class Live:
    prometheus: servers.Prometheus
    mode: str  # "embedded" (airtrace monitor) or "services" (airtrace ingest and airtrace worker)
    stream: str
    track: str
    catalog_tracks: int
    processes: list[tuple[subprocess.Popen, int, str]]  # (process, metrics port, role)
    workdir: Path
    secret: str | None = None  # the Redis password the worker was given, if any

    @property
    def variables(self) -> dict[str, str]:
        """Values for Grafana's template variables, as Grafana would set them on this run."""
        return {"__rate_interval": "15s", "__interval": PROMETHEUS_INTERVAL, "__range": "5m", "stream": self.stream}

    @property
    def absent(self) -> dict[str, str]:
        return ABSENT_IN_EMBEDDED_MODE if self.mode == "embedded" else ABSENT_ON_A_CLEAN_RUN


def evaluate(prometheus: servers.Prometheus, query: PanelQuery, variables: dict[str, str]) -> list[dict]:
    expr = substitute(query.expr, variables)
    return prometheus.query(expr) if query.instant else prometheus.query_range(expr, 60)


def expected_empty(expr: str, absent: dict[str, str]) -> str | None:
    """Why an expression may rightly return nothing on this run (None: it must return data)."""
    return "; ".join(absent[name] for name in sorted(series_names(expr)) if name in absent) or None


def test_dashboards_show_the_play_that_is_on_air(live: Live) -> None:
    """First of the live tests: the play must still be on air (the stream lasts 50 s)."""
    queries = {(query.dashboard, query.panel): query for query in panel_queries()}

    def instant(dashboard: str, panel: str) -> list[dict]:
        return live.prometheus.query(substitute(queries[dashboard, panel].expr, live.variables))

    assert [row["metric"]["track_id"] for row in instant("stream", "Now playing")] == [live.track]
    plays = float(instant("stream", "Plays in the last 24 h")[0]["value"][1])
    assert plays == 1.0, "a play's first count must show although increase() cannot see a counter's birth"
    assert float(instant("fleet", "Plays detected (1 h)")[0]["value"][1]) == 1
    assert float(instant("fleet", "Streams up")[0]["value"][1]) == 1
    assert float(instant("fleet", "Streams down")[0]["value"][1]) == 0
    assert float(instant("catalog", "Tracks")[0]["value"][1]) == live.catalog_tracks


def test_every_dashboard_query_returns_data_from_a_running_airtrace(live: Live) -> None:
    failures, empty = [], []
    for query in panel_queries():
        try:
            result = evaluate(live.prometheus, query, live.variables)
        except AssertionError as exc:
            failures.append(f"{query}\n    error: {exc}")
            continue
        if not result:
            (empty if expected_empty(query.expr, live.absent) else failures).append(f"{query.dashboard} / {query.panel}")
    assert not failures, "queries that failed or returned nothing:\n" + "\n".join(failures)
    assert empty == (["fleet / Consumer lag"] if live.mode == "embedded" else []), empty


def test_every_rule_evaluates_on_a_running_airtrace(live: Live) -> None:
    groups = live.prometheus.api("rules")["data"]["groups"]
    evaluated = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(evaluated) == {rule.get("alert") or rule["record"] for rule in rules()}
    for name, rule in evaluated.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
    for rule in rules():
        live.prometheus.query(rule["expr"])  # asserts success
        for series in series_names(rule["expr"]):
            if series not in live.absent:
                assert live.prometheus.query(series), f"{rule.get('alert') or rule['record']} reads {series}, which the running airtrace does not export"
    firing = [alert["labels"]["alertname"] for alert in live.prometheus.api("alerts")["data"]["alerts"]]
    assert not firing, f"alerts on a healthy stream: {firing}"


def test_no_secret_in_logs_or_metrics(live: Live) -> None:
    if live.secret is None:
        pytest.skip("embedded mode takes no secret")
    for _, port, role in live.processes:
        with urllib.request.urlopen(f"http://{servers.HOST}:{port}/metrics", timeout=5) as response:
            assert live.secret not in response.read().decode(), f"the {role}'s metrics show the Redis password"
        assert live.secret not in (live.workdir / f"{role}.log").read_text(), f"the {role}'s log shows the Redis password"


STREAMED_TRACK = "area1-game"
CATALOG_TRACKS = (STREAMED_TRACK, "over-theme")


@pytest.fixture(scope="module", params=["embedded", pytest.param("services", marks=pytest.mark.slow)])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """Real airtrace processes on a live HTTP stream of a catalog track, scraped by Debian's prometheus."""
    from catalog_fixtures import MUSIC, random_encoder

    from encoders import load_encoder
    from monitor.catalog import Catalog

    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (deploy/install.sh installs Debian's)")
    work = tmp_path_factory.mktemp(f"deploy-{request.param}")
    encoder_dir = random_encoder().save(work / "encoder")
    catalog = Catalog.create(work / "catalog", load_encoder(encoder_dir), encoder_source=str(encoder_dir))
    catalog.add([MUSIC / f"{name}.opus" for name in CATALOG_TRACKS], progress=False)
    stream = servers.LiveAudioServer.of_file(MUSIC / f"{STREAMED_TRACK}.opus", work, once=True).start()
    secret = "redis-secret-for-the-deploy-test"
    redis = servers.redis_server(work, password=secret) if request.param == "services" else None
    processes: list[tuple[subprocess.Popen, int, str]] = []

    def start(role: str, args: list[str]) -> None:
        port = servers.free_port()
        processes.append((servers.airtrace([*args, "--metrics-port", str(port)], work / f"{role}.log"), port, role))

    if redis is None:
        start("monitor", ["monitor", "--catalog", str(work / "catalog"), stream.url()])
    else:
        broker = request.getfixturevalue("kafka_broker")
        kafka = ["--broker", f"{servers.HOST}:{broker.port}", "--topic-prefix", "deploy-test", "--partitions", "2"]
        start("worker", ["worker", *kafka, "--group", "deploy-test", "--catalog", str(work / "catalog"), "--redis-url",
                         f"redis://:{secret}@{servers.HOST}:{redis.port}/0", "--session-timeout", "3", "--batch-wait", "0.2"])
        start("ingest", ["ingest", *kafka, "--encoder", str(encoder_dir), stream.url()])
    prometheus = servers.Prometheus(work, [(f"{servers.HOST}:{port}", role) for _, port, role in processes], PROMETHEUS_INTERVAL)
    try:
        try:
            for process, port, _ in processes:
                servers.wait_for_port(port, process, timeout=120)
            prometheus.start()
            prometheus.wait_for("airtrace_now_playing", 90)
            prometheus.wait_for("count_over_time(airtrace_now_playing[1m]) >= 3", 30)  # enough samples of the play for increase()
        except (TimeoutError, RuntimeError) as exc:
            logs = "\n".join(f"{role}: {(work / f'{role}.log').read_text()[-2000:]}" for _, _, role in processes)
            pytest.fail(f"{exc}\n{logs}")
        stream_id = Path(urllib.parse.urlparse(stream.url()).path).stem
        yield Live(prometheus, request.param, stream_id, STREAMED_TRACK, len(CATALOG_TRACKS), processes, work, secret if redis else None)
    finally:
        prometheus.server.stop()
        for process, _, _ in processes:
            servers.stop(process)
        if redis is not None:
            redis.stop()
        stream.stop()
