"""Bad input and faults a new user meets: each gets one clear line naming the problem and the fix, loses
nothing, and never a traceback. Servers are real, on loopback ports (a silent socket, redis-server, HTTP)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml
from click.testing import CliRunner

from monitor.bench import servers
from catalog_fixtures import CATALOG_TRACKS, MUSIC, SAMPLE_RATE, music
from encoders import load_audio
from monitor.catalog import Catalog
from monitor.cli import main
from monitor.stages.ingest import load_sources, read_windows
from monitor.stages.sources import ConfigError, StreamSource, sources_from_urls
from monitor.stages.identify import identify_file
from monitor.stages.windows import WindowGrid


def run(*args: str) -> tuple[int, str]:
    """An airtrace command in this process (commands that serve metrics need a process of their own: `command`)."""
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def command(*args: str, cwd: Path | None = None) -> tuple[int, str]:
    """An airtrace command in its own process, as a user runs it; its exit code and output."""
    done = subprocess.run([sys.executable, "-m", "monitor", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout + done.stderr


# ---- anti-phase stereo: the mono downmix must not cancel --------------------------------------------


def anti_phase(tmp_path: Path, name: str, seconds: slice = slice(None)) -> Path:
    """A demo track as stereo with one channel inverted (and a little quieter: L close to -R, as on air)."""
    mono = load_audio(MUSIC / f"{name}.opus", 22050)[seconds]
    path = tmp_path / f"{name}-anti-phase.flac"
    soundfile.write(path, np.stack([mono, -0.9 * mono], axis=1), 22050)
    return path


def test_anti_phase_stereo_is_heard_by_catalog_identify_and_streams(built_catalog: Path, tmp_path: Path, encoder_dir: Path) -> None:
    track = CATALOG_TRACKS[1]
    original = music(track)
    heard = load_audio(anti_phase(tmp_path, track), SAMPLE_RATE)
    level = np.sqrt(np.mean(np.square(heard))) / np.sqrt(np.mean(np.square(original)))
    assert level == pytest.approx(1.9 * np.sqrt(0.5), rel=0.02)  # the channels' difference, not their -26 dB residue
    assert np.corrcoef(heard[: len(original)], original[: len(heard)])[0, 1] > 0.99

    catalog = Catalog.create(tmp_path / "catalog", Catalog.open(built_catalog).encoder)
    assert catalog.add([anti_phase(tmp_path, "gardien-go")], progress=False).added == ["gardien-go-anti-phase"]

    excerpt = anti_phase(tmp_path, track, slice(22050 * 17, 22050 * 27))
    match = identify_file(Catalog.open(built_catalog), excerpt)["matches"][0]
    assert match["track_id"] == track and match["ref_start"] == pytest.approx(17.0, abs=0.5)

    windows = list(read_windows(StreamSource("reversed-wire", str(excerpt)), WindowGrid(SAMPLE_RATE, SAMPLE_RATE, SAMPLE_RATE // 2)))
    rms = np.sqrt(np.mean(np.square(np.stack([w.samples for w in windows])), axis=1))
    assert len(windows) == 19 and rms.min() > 0.01  # a stream carrying it is audible too


def test_ordinary_stereo_downmixes_as_ffmpeg_does(tmp_path: Path) -> None:
    import av

    left, right = load_audio(MUSIC / "area1-game.opus", 22050), load_audio(MUSIC / "over-theme.opus", 22050)
    n = min(len(left), len(right))
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left[:n], 0.5 * right[:n]], axis=1), 22050)
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        frames = [*(f for frame in container.decode(audio=0) for f in resampler.resample(frame)), *resampler.resample(None)]
    ffmpeg = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    ours = load_audio(path, SAMPLE_RATE)
    assert ours.shape == ffmpeg.shape
    np.testing.assert_allclose(ours, ffmpeg, atol=8 * np.finfo(np.float32).eps)  # two float32 roundings of a sum of two


# ---- stream ids and the streams file --------------------------------------------------------------


@pytest.mark.parametrize("stream_id, problem", [
    ("one\ttwo", "U+0009"), ("line\nbreak", "U+000A"), ("x" * 10_000, "10000 bytes long"), ("", "empty"), (" padded", "leading or trailing"),
])
def test_stream_ids_follow_the_one_id_rule(tmp_path: Path, stream_id: str, problem: str) -> None:
    config = tmp_path / "streams.yaml"
    config.write_text(yaml.safe_dump([{"id": "fine", "url": "a.mp3"}, {"id": stream_id, "url": "b.mp3"}]))
    with pytest.raises(ConfigError, match=f"stream #2: stream id .*{re.escape(problem)}"):
        load_sources(config)
    with pytest.raises(ValueError, match=re.escape(problem)):
        StreamSource(stream_id, "c.mp3")


def test_a_url_whose_name_is_no_valid_id_is_refused() -> None:
    with pytest.raises(ConfigError, match=re.escape("(U+0007)") + ".*--streams file"):
        sources_from_urls(["music/odd\x07name.mp3"])


@pytest.mark.parametrize("entry, typo, good", [
    ("{id: radio, url: 'rtsp://cam/live'", {"reconect": 1}, {"rtsp_transport": "tcp", "user_agent": "airtrace"}),
    # a multiplex's: a UDP FIFO misspelt is never set up, so a busy reader overruns and loses packets
    ("{mux: dvb, url: 'udp://239.1.1.1:1234'", {"fifo_sise": 100000}, {"overrun_nonfatal": "1", "fifo_size": "100000"}),
])
def test_unknown_ffmpeg_options_in_the_streams_file_are_named(tmp_path: Path, entry: str, typo: dict, good: dict) -> None:
    """FFmpeg ignores an option it does not know without a word."""
    config = tmp_path / "streams.yaml"
    (name, value), = typo.items()
    config.write_text(f"- {entry}, options: {{{name}: {value}}}}}\n")
    with pytest.raises(ConfigError, match=f"stream #1: FFmpeg knows no input option '{name}'"):
        load_sources(config)
    config.write_text(f"- {entry}, options: {{{', '.join(f'{k}: {v}' for k, v in good.items())}}}}}\n")
    assert load_sources(config)[0].options == good


def test_a_streams_file_that_is_not_utf8_says_how_to_save_it(tmp_path: Path) -> None:
    config = tmp_path / "streams.yaml"
    config.write_bytes("- id: radio-café\n  url: http://radio.example/live\n".encode("cp1252"))
    with pytest.raises(ConfigError, match="streams.yaml: the streams config is not UTF-8 text .*; save it as UTF-8"):
        load_sources(config)


# ---- monitor: every input failed, --events, --metrics-* --------------------------------------------


def test_monitor_exits_non_zero_when_every_input_failed(built_catalog: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    code, output = command("monitor", "--catalog", str(built_catalog), str(empty), str(tmp_path / "missing.wav"))
    assert code == 1 and "none of the 2 input(s) delivered audio" in output


@pytest.mark.parametrize("song", ["song.mp3", "area2-game.opus"])
def test_monitor_hears_a_file_served_over_http_as_one_play(service_catalog: Path, tmp_path: Path, song: str) -> None:
    """Once reopened every second, each reopening a new play: 74 plays of one 10 s clip in 60 s. An Ogg file
    from a server without byte ranges has no duration FFmpeg can find, only a length: one play of 2,053 s."""
    from monitor.bench.servers import encode_mp3

    clip = tmp_path / "clip.flac"
    soundfile.write(clip, load_audio(MUSIC / "area2-game.opus", 22050)[22050 * 10 : 22050 * 30], 22050)
    encode_mp3(clip, tmp_path / "song.mp3")
    shutil.copy(MUSIC / "area2-game.opus", tmp_path)
    with servers.FileServer(tmp_path) as web:
        code, output = command("monitor", "--catalog", str(service_catalog), web.url(song))
        assert web.requests == 1
    assert code == 0 and "1 plays on 1 stream(s)" in output and output.count("ended") == 1


# A burst repeated on reconnecting is also read in the default suite, by test_ingest.py's live-stream tests; with one
# here the run takes 20 s more (real time), so that case runs with the slow ones.
@pytest.mark.parametrize("burst", [pytest.param(3.0, marks=pytest.mark.slow), 0.0])
def test_a_play_on_air_across_a_short_drop_stays_one_play(service_catalog: Path, tmp_path: Path, burst: float) -> None:
    """The stream drops mid-track. On reconnecting the server repeats its last seconds (Icecast's burst), so
    nothing was lost; or it does not, and the seconds of the reconnect are lost. Either way the station played
    on, and the airing is one play, not one before the drop and another after it."""
    import threading

    from monitor.bench.servers import LiveAudioServer, encode_mp3
    from monitor.embedded import EmbeddedMonitor
    from monitor.events import plays_in
    from monitor.options import IngestOptions, MonitorOptions

    mp3 = encode_mp3(MUSIC / "area2-game.opus", tmp_path / "area2.mp3").read_bytes()
    options = MonitorOptions(ingest=IngestOptions(open_timeout=2.0, read_timeout=1.0, backoff_initial=0.1, backoff_max=0.5))
    with LiveAudioServer(mp3, 50.0, speed=2.0) as live:
        source = StreamSource("radio", live.url(drop=8.0, burst=burst))  # drops 16 s into the 50 s track
        stop = threading.Event()
        threading.Timer(20.0, stop.set).start()  # 40 s of the track, past the drop
        events = plays_in(EmbeddedMonitor(Catalog.open(service_catalog), [source], options).run(stop))
        assert live.connections["/live.mp3"] == 2
    assert [(e.state, e.track_id) for e in events] == [("started", "area2-game"), ("ended", "area2-game")]
    assert events[1].duration > 25.0


@pytest.mark.parametrize("args, env", [
    (["monitor", "--read-timeout", "nan", "--catalog", "CATALOG", "a.mp3"], {}),  # a live stream that stalled then hung for good: no reconnect
    (["ingest", "a.mp3"], {"AIRTRACE_READ_TIMEOUT": "inf"}),
    (["monitor", "--min-unknown-seconds", "nan", "--catalog", "CATALOG", "a.mp3"], {}),  # a traceback from the metrics at the first stretch
    (["plays", "list", "--min-confidence", "nan"], {}),  # an empty list, as if nothing had played
])
def test_numbers_that_are_not_finite_are_refused_by_name(args: list[str], env: dict[str, str], built_catalog: Path) -> None:
    """click's FloatRange lets nan through every bound (it compares false) and inf through an open one."""
    result = CliRunner().invoke(main, [str(built_catalog) if arg == "CATALOG" else arg for arg in args], env=env)
    option = next(arg for arg in args if arg.startswith("--")) if not env else "--read-timeout"
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output and "is not a finite number" in result.output, result.output


def test_monitor_events_in_a_missing_folder_is_a_usage_error(built_catalog: Path, tmp_path: Path) -> None:
    code, output = command("monitor", "--catalog", str(built_catalog), "--events", str(tmp_path / "no" / "plays.jsonl"), str(MUSIC / "area1-game.opus"))
    assert code == 2 and "No such file or directory; give a file in an existing folder" in output
    assert not (tmp_path / "no").exists()


def test_monitor_refuses_events_in_a_sqlite_file_before_it_is_overwritten(built_catalog: Path, tmp_path: Path) -> None:
    """--events plays.sqlite (the name of the play log the README shows) made the events file and the play log one
    file: the events went between the database's pages and were overwritten by the next ones. An existing play log
    given as --events was appended to as well."""
    from monitor.playlog.store import PlayLog

    song = str(MUSIC / "area1-game.opus")
    code, output = command("monitor", "--catalog", str(built_catalog), "--events", str(tmp_path / "plays.sqlite"), song)
    assert code == 2 and f"--events {tmp_path / 'plays.sqlite'} is the play log's file too" in output and "plays.jsonl" in output, output
    assert not (tmp_path / "plays.sqlite").exists()
    PlayLog.open(tmp_path / "old.sqlite", migrate=True).close()
    kept = (tmp_path / "old.sqlite").read_bytes()
    code, output = command("monitor", "--catalog", str(built_catalog), "--events", str(tmp_path / "old.sqlite"), "--playlog", str(tmp_path / "new.sqlite"), song)
    assert code == 2 and f"--events {tmp_path / 'old.sqlite'} is a SQLite database" in output, output
    assert (tmp_path / "old.sqlite").read_bytes() == kept


def test_monitor_on_a_full_disk_keeps_its_plays_in_the_play_log_and_fails(built_catalog: Path, tmp_path: Path) -> None:
    """The events file's disk is full: one line says so, the plays still reach the play log and the console,
    and the run ends with the count of events lost to the file and a non-zero exit code."""
    playlog = tmp_path / "plays.sqlite"
    code, output = command("monitor", "--catalog", str(built_catalog), "--events", "/dev/full", "--playlog", str(playlog),
                           str(MUSIC / "area1-game.opus"))
    assert code == 1 and output.count("cannot write events to /dev/full") == 1, output
    assert "1 plays on 1 stream(s)" in output and "event(s) could not be written to the events file or the play log" in output
    code, listed = command("plays", "list", "--playlog", str(playlog))
    assert code == 0 and "area1-game" in listed


def test_metrics_port_in_use_and_bad_metrics_hosts_are_usage_errors(built_catalog: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        code, output = command("monitor", "--catalog", str(built_catalog), "--metrics-port", port, str(MUSIC / "area1-game.opus"))
        assert code == 2 and f"cannot serve metrics on 127.0.0.1:{port}: Address already in use; give a free --metrics-port" in output
    free = str(servers.free_port())
    for host in ("no-such-host.invalid", "192.0.2.1"):  # unresolvable; TEST-NET-1, an address of no machine here
        code, output = command("monitor", "--catalog", str(built_catalog), "--metrics-port", free, "--metrics-host", host, str(MUSIC / "area1-game.opus"))
        assert code == 2 and f"cannot serve metrics on {host}:{free}" in output and "an address of this machine" in output


# ---- Kafka and Redis settings, and a broker that never answers -------------------------------------


def test_bad_broker_addresses_and_tls_files_are_usage_errors(tmp_path: Path) -> None:
    code, output = run("ingest", "a.mp3", "--broker", "127.0.0.1:abc")
    assert code == 2 and "Kafka broker '127.0.0.1:abc' is not host:port" in output
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("this is not a certificate\n")
    code, output = run("ingest", "a.mp3", "--tls-ca-file", str(not_pem))
    assert code == 2 and f"TLS CA file {not_pem} cannot be loaded" in output and "PEM" in output


def test_the_startup_timeout_help_names_the_default_in_use() -> None:
    from monitor.fleet.broker import STARTUP_TIMEOUT_SECONDS

    for name in ("ingest", "worker"):
        assert f"[default: {STARTUP_TIMEOUT_SECONDS:g}]" in " ".join(run(name, "--help")[1].split())


def test_a_redis_url_with_a_database_that_is_not_a_number_is_a_usage_error(built_catalog: Path) -> None:
    code, output = run("worker", "--catalog", str(built_catalog), "--redis-url", "redis://127.0.0.1:6379/abc")
    assert code == 2 and "database 'abc' is not a number" in output


@pytest.mark.parametrize("name", ["ingest", "worker"])
def test_a_broker_that_never_answers_stops_ingest_and_worker_in_the_startup_timeout(
        name: str, built_catalog: Path, redis_server: servers.ServerProcess, tmp_path: Path) -> None:
    work = tmp_path / "work"  # the current folder, where Faust would leave its airtrace-data folder
    work.mkdir()
    args = {"ingest": [str(MUSIC / "area1-game.opus")],
            "worker": ["--catalog", str(built_catalog), "--redis-url", f"redis://127.0.0.1:{redis_server.port}/0"]}[name]
    with servers.SilentServer() as silent:
        code, output = command(name, *args, "--broker", f"127.0.0.1:{silent.port}", "--startup-timeout", "1", cwd=work)
        assert silent.accepted  # it did connect: the socket accepts, and never answers
    assert code == 1
    assert output.strip().splitlines()[-1] == (f"Error: Kafka at 127.0.0.1:{silent.port} did not answer within 1 s; check that --broker "
                                               "names a running Kafka broker and the SASL and TLS settings (--startup-timeout waits longer)")
    assert list(work.iterdir()) == []


def test_a_worker_refuses_windows_and_hits_topics_of_different_partition_counts(
        built_catalog: Path, redis_server: servers.ServerProcess, kafka_broker: servers.ServerProcess, tmp_path: Path) -> None:
    """ingest made the windows topic with 3 partitions, the worker was given 2 for the hits topic it creates: a
    stream's windows and hits then land on different partition numbers, which its unknown music relies on."""
    import asyncio

    from monitor.fleet.broker import KafkaSettings, Topics, ensure_topics

    kafka = KafkaSettings(f"127.0.0.1:{kafka_broker.port}")
    asyncio.run(ensure_topics(kafka, ["split.windows"], Topics.with_prefix("split", 3)))
    code, output = command("worker", "--catalog", str(built_catalog), "--redis-url", f"redis://127.0.0.1:{redis_server.port}/0",
                           "--broker", kafka.bootstrap, "--topic-prefix", "split", "--partitions", "2", cwd=tmp_path)
    assert code == 1 and "split.windows has 3 partitions and split.hits 2" in output.strip().splitlines()[-1]


def test_a_worker_web_port_in_use_is_a_usage_error_before_faust_starts(built_catalog: Path, redis_server: servers.ServerProcess) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        code, output = run("worker", "--catalog", str(built_catalog), "--redis-url", f"redis://127.0.0.1:{redis_server.port}/0", "--web-port", port)
    assert code == 2 and f"cannot serve on 127.0.0.1:{port}: Address already in use" in output and "give a free --web-port" in output


# ---- training configs ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("data: music\nsteps: [1, 2\n", "is not valid YAML"),
    ("data: music\nsteps: many\n", "`steps: 'many'` must be a whole number"),
    ("data: music\nlr: fast\n", "`lr: 'fast'` must be a number"),
    ("data: music\nfrozen: 3\n", "`frozen: 3` must be true or false"),
    ("data: music\nsteps: true\n", "`steps: True` must be a whole number"),
    ("data: musique café\n", "is not UTF-8 text"),  # written in a code page below
])
def test_a_training_config_is_checked_before_training_starts(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "train.yaml"
    config.write_bytes(text.encode("cp1252"))
    code, output = run("train", str(config), "--run-dir", str(tmp_path / "run"))
    assert code == 2 and message in output
    assert not (tmp_path / "run").exists()
