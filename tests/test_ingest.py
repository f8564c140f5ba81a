"""Ingest against real inputs: a live HTTP audio stream that drops and stalls, an unreachable URL, files."""

from __future__ import annotations

import io
import logging
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
from prometheus_client import CollectorRegistry

from monitor import metrics as metrics_module
from monitor.options import IngestOptions
from monitor.stages import ingest
from monitor.stages.airtime import SETTLE_MAX_SECONDS
from monitor.stages.ingest import _gathered, _paced, decode_turns, load_sources, read_windows, start_readers, usable_cores
from monitor.stages.mux import AudioSelection, MuxSource, read_mux
from monitor.stages.resumption import Resumption
from monitor.stages.sources import ConfigError, StreamSource, sources_from_urls
from monitor.records import AudioWindow, EndOfStream
from monitor.stages.windows import WindowGrid

MUSIC = Path(__file__).parents[1] / "monitor" / "demo" / "music"
GRID = WindowGrid(sample_rate=8000, window=8000, hop=4000)
FAST_RETRY = IngestOptions(open_timeout=2.0, read_timeout=1.0, backoff_initial=0.1, backoff_max=0.5)


@pytest.fixture(scope="module")
def mp3(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, float]:
    from monitor.bench.servers import encode_mp3

    path = encode_mp3(MUSIC / "area1-game.opus", tmp_path_factory.mktemp("live") / "area1.mp3")
    return path.read_bytes(), 50.0


@pytest.fixture()
def server(mp3: tuple[bytes, float]):
    from monitor.bench.servers import LiveAudioServer

    with LiveAudioServer(*mp3, speed=2.0) as live:
        yield live


@pytest.fixture()
def registry_metrics() -> tuple[CollectorRegistry, metrics_module.Metrics]:
    registry = CollectorRegistry()
    return registry, metrics_module.create(registry)


def take(windows, count: int, seconds: float) -> list:
    """The first `count` windows, or fewer if `seconds` pass first."""
    out, deadline = [], time.monotonic() + seconds
    for window in windows:
        out.append(window)
        if len(out) >= count or time.monotonic() > deadline:
            break
    return out


def assert_ordered(windows: list) -> None:
    assert [w.seq for w in windows] == list(range(len(windows)))
    offsets = np.array([w.offset for w in windows])
    assert np.all(np.diff(offsets) > 0)


def test_config_file_reads_streams_and_names_a_typo(tmp_path: Path) -> None:
    good = tmp_path / "streams.yaml"
    good.write_text("- {id: one, url: 'http://radio/one', name: One, metadata: {country: FR}}\n- {id: two, url: b.mp3}\n")
    sources = load_sources(good)
    assert sources[0] == StreamSource("one", "http://radio/one", "One", {"country": "FR"})
    assert sources[1].id == "two" and not sources[1].metadata

    typo = tmp_path / "typo.yaml"
    typo.write_text("- {id: one, ulr: 'http://radio/one'}\n")
    with pytest.raises(ConfigError, match=r"stream #1: unknown field 'ulr'"):
        load_sources(typo)
    twice = tmp_path / "twice.yaml"
    twice.write_text("- {id: one, url: a}\n- {id: one, url: b}\n")
    with pytest.raises(ConfigError, match="'one' appears twice"):
        load_sources(twice)


def test_urls_get_unique_ids() -> None:
    ids = [s.id for s in sources_from_urls(["a/x.mp3", "b/x.mp3", "http://host:8000/live"])]
    assert ids == ["x", "x-2", "live"]


def test_live_stream_drop_reconnects_and_marks_the_gap(server, registry_metrics) -> None:
    registry, metrics = registry_metrics
    source = StreamSource("radio", server.url(drop=2.0))
    tuned_in = time.time()
    windows = take(read_windows(source, GRID, FAST_RETRY, metrics), count=16, seconds=20)
    assert len(windows) == 16
    assert_ordered(windows)
    gaps = [i for i, w in enumerate(windows) if w.after_gap]
    assert len(gaps) == 1 and gaps[0] >= 2
    before, after = windows[gaps[0] - 1], windows[gaps[0]]
    assert after.offset - before.offset > GRID.hop_seconds  # the lost air time shows in the offsets
    assert registry.get_sample_value("airtrace_stream_reconnects_total", {"stream": "radio"}) == 1
    assert registry.get_sample_value("airtrace_windows_ingested_total", {"stream": "radio"}) == 16
    assert server.connections["/live.mp3"] == 2
    # Wall-clock air time, not offsets. A server at twice real time says its audio aired earlier the longer it is heard: a
    # connection is placed once its clock settles, at most SETTLE_MAX_SECONDS in, by then 2 s ahead.
    assert all(tuned_in - SETTLE_MAX_SECONDS - 1.0 <= w.air_time <= time.time() for w in windows)


@pytest.mark.parametrize("as_multiplex", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["plain", "multiplexed"])
def test_a_live_stream_that_says_how_long_it_is_goes_on_after_a_drop(server, as_multiplex: bool) -> None:
    """A live stream served with a Content-Length (2 GB, as some servers say of one) and no Icecast headers was taken for
    a file served over HTTP: at its first drop the station was skipped for good ("skipping the rest of this file"). Its
    audio came as fast as it plays, as no download does: it is reconnected, and monitored on."""
    source = StreamSource("radio", server.url(drop=3.0, length=2**31 - 1))
    items = read_mux(MuxSource.single(source, AudioSelection()), GRID, FAST_RETRY) if as_multiplex else read_windows(source, GRID, FAST_RETRY)
    windows = take((item for item in items if isinstance(item, AudioWindow)), count=16, seconds=20)
    assert len(windows) == 16 and server.connections["/live.mp3"] >= 2
    assert np.all(np.diff([w.offset for w in windows]) > 0)


@pytest.mark.parametrize("as_multiplex", [False, True])
def test_stalled_stream_times_out_and_reconnects(server, registry_metrics, caplog, as_multiplex: bool) -> None:
    """A stall is logged as one (FFmpeg's words for PyAV's timeout were "Immediate exit requested", and the
    single stream's line added that the file may be corrupt or truncated)."""
    from monitor.stages.mux import AudioSelection, MuxSource, read_mux

    registry, metrics = registry_metrics
    source = StreamSource("stalls", server.url("stall.mp3", stall=1.5))
    items = read_mux(MuxSource.single(source, AudioSelection()), GRID, FAST_RETRY, metrics) if as_multiplex else read_windows(source, GRID, FAST_RETRY, metrics)
    windows = take((item for item in items if isinstance(item, AudioWindow)), count=8, seconds=20)
    assert len(windows) == 8
    assert_ordered(windows)
    assert sum(w.after_gap for w in windows) == 1
    assert registry.get_sample_value("airtrace_decode_errors_total", {"stream": "stalls"}) == 1
    assert "no data for 1 s" in caplog.text and "stalled" in caplog.text
    assert "Immediate exit" not in caplog.text and "corrupt" not in caplog.text


def test_unreachable_url_is_retried_without_holding_up_other_streams(server, registry_metrics, caplog) -> None:
    """And says so once: the same failure again is logged at most every REPEAT_LOG_SECONDS (a station off air overnight
    wrote two lines every 10 s)."""
    registry, metrics = registry_metrics
    caplog.set_level(logging.INFO, logger="monitor.stages.ingest")
    sources = [StreamSource("dead", "http://127.0.0.1:9/nothing.mp3"), StreamSource("alive", server.url())]
    received: queue.Queue = queue.Queue()
    stop = threading.Event()
    threads = start_readers(sources, GRID, received.put, FAST_RETRY, metrics, stop)
    alive = []
    deadline = time.monotonic() + 15
    while len(alive) < 6 and time.monotonic() < deadline:
        item = received.get(timeout=5)
        assert not isinstance(item, EndOfStream), "no stream may end while retrying"
        assert item.stream_id == "alive"
        alive.append(item)
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    assert len(alive) == 6
    assert registry.get_sample_value("airtrace_decode_errors_total", {"stream": "dead"}) >= 2
    assert registry.get_sample_value("airtrace_stream_reconnects_total", {"stream": "dead"}) >= 1
    assert registry.get_sample_value("airtrace_stream_up", {"stream": "dead"}) == 0
    told = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stream dead:") and r.levelno >= logging.INFO]
    assert len(told) == 2 and "Connection refused" in told[0] and "reconnecting in" in told[1], told


def test_a_failure_that_keeps_coming_is_logged_again_only_now_and_then(monkeypatch: pytest.MonkeyPatch) -> None:
    from monitor import constants
    from monitor.constants import REPEAT_LOG_SECONDS, Backoff

    now = [1000.0]
    monkeypatch.setattr(constants.time, "monotonic", lambda: now[0])
    backoff = Backoff(1.0, 10.0)
    assert backoff.failed("refused") == "refused" and backoff.told
    for _ in range(5):
        now[0] += 10
        assert backoff.failed("refused") is None and not backoff.told
    assert backoff.failed("timed out") == "timed out"  # a new reason is news
    now[0] += REPEAT_LOG_SECONDS
    assert backoff.failed("timed out") == "timed out"  # nothing unsaid since
    now[0] += 10
    assert backoff.failed("timed out") is None
    now[0] += REPEAT_LOG_SECONDS
    assert backoff.failed("timed out") == "timed out (2 times since this was last logged)"
    backoff.reset()  # it worked again: its next failure is news
    assert backoff.failed("timed out") == "timed out"


def test_file_is_read_once_and_dead_air_is_counted(tmp_path: Path, registry_metrics) -> None:
    registry, metrics = registry_metrics
    rng = np.random.default_rng(0)
    audio = np.concatenate([rng.normal(0, 0.1, 24000), np.zeros(8 * 8000), rng.normal(0, 0.1, 24000)])
    path = tmp_path / "dead-air.wav"
    soundfile.write(path, audio.astype(np.float32), 8000)
    windows = list(read_windows(StreamSource("file", str(path)), GRID, IngestOptions(dead_air_seconds=5.0), metrics))
    assert len(windows) == GRID.count(len(audio))
    assert_ordered(windows)
    assert not any(w.after_gap for w in windows)
    silent_windows = 8 * 2 - 1  # whole windows inside the 8 s of silence
    assert registry.get_sample_value("airtrace_silence_seconds_total", {"stream": "file"}) == silent_windows * 0.5


@pytest.mark.parametrize(("second_part_at", "hole"), [(15.0, 5.0), (0.0, 0.0), (60.0, 0.0)])
def test_a_hole_in_a_transport_streams_audio_keeps_the_time_after_it(tmp_path: Path, second_part_at: float, hole: float) -> None:
    """10 s of audio, then the next 10 s at timestamps 15 s on (5 s of packets lost over UDP, or a damaged stretch
    the demuxer skipped): the hole is silence and the audio after it keeps its time; it came 5 s early, and a
    UDP stream drifted by all it lost. Timestamps that start again (back to 0, or a minute ahead) add nothing."""
    import subprocess

    parts = []
    for n, start in enumerate((0.0, second_part_at)):
        parts.append(tmp_path / f"part{n}.ts")
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-ss", str(10 * n), "-t", "10", "-i", str(MUSIC / "area1-game.opus"),
                        "-c:a", "mp2", "-ar", "48000", "-output_ts_offset", str(start), "-f", "mpegts", str(parts[-1])], check=True)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(part.read_bytes() for part in parts))
    windows = list(read_windows(StreamSource("tv", str(joined)), GRID))
    assert_ordered(windows)
    seconds = len(windows) * GRID.hop_seconds + GRID.window_seconds - GRID.hop_seconds
    assert 20 + hole - 0.5 <= seconds <= 20 + hole + 0.5  # the encoder's frames end a few milliseconds either side of 10 s
    level = {w.offset: float(np.sqrt(np.mean(np.square(w.samples)))) for w in windows}
    # the parts' frames end a few milliseconds either side of 10 s: windows 0.1 s clear of the hole's edges
    in_hole = [offset for offset in level if 10.1 <= offset and offset + GRID.window_seconds <= 9.9 + hole]
    assert len(in_hole) == (7 if hole else 0) and all(level[offset] == 0 for offset in in_hole)
    assert all(level[offset] > 0.01 for offset in level if offset + GRID.window_seconds <= 9.9 or offset >= 10.1 + hole)


def garble_audio_frames(transport_stream: bytes, count: int) -> bytes:
    """`count` audio frames from the middle of a one-track transport stream garbled (the payload after each PES
    header), its TS headers intact: what a damaged recording or a corrupted UDP datagram gives a decoder."""
    data, garbled = bytearray(transport_stream), 0
    for start in range(len(data) // 2 // 188 * 188, len(data), 188):
        packet = data[start : start + 188]
        if ((packet[1] & 0x1F) << 8 | packet[2]) != 0x100 or not packet[1] & 0x40:  # the audio's PID, a PES starting here
            continue
        pes = 4 + (1 + packet[4] if packet[3] & 0x20 else 0)  # past the adaptation field, if any
        payload = pes + 9 + packet[pes + 8]
        data[start + payload : start + 188] = bytes(b ^ 0x5A for b in packet[payload:])
        garbled += 1
        if garbled == count:
            return bytes(data)
    raise AssertionError("too few audio frames")


@pytest.mark.parametrize("as_multiplex", [False, True])
def test_damaged_audio_frames_are_skipped_and_the_rest_is_read(tmp_path: Path, as_multiplex: bool) -> None:
    """Three MP2 frames garbled 10 s into 21 s: the decoder's first refusal ended the file there (and made a
    live stream reconnect, losing seconds, for every corrupted datagram); the rest is read, in its time."""
    import subprocess

    from monitor.stages.mux import MuxSource, read_mux

    path = tmp_path / "damaged.ts"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-t", "21", "-i", str(MUSIC / "area1-game.opus"), "-c:a", "mp2", "-ar", "48000",
                    "-f", "mpegts", str(path)], check=True)
    path.write_bytes(garble_audio_frames(path.read_bytes(), 3))
    items = read_mux(MuxSource("tv", str(path)), GRID) if as_multiplex else read_windows(StreamSource("tv", str(path)), GRID)
    windows = [item for item in items if isinstance(item, AudioWindow)]
    assert_ordered(windows)
    assert [w.offset for w in windows] == [i * GRID.hop_seconds for i in range(len(windows))]
    assert len(windows) >= GRID.count(round(20.5 * GRID.sample_rate))  # MP2's frames end a few milliseconds either side of 21 s


MP3_BYTES_PER_SECOND = 64_000 // 8  # the `mp3` fixture's constant bit rate


def level(windows: list) -> dict[float, float]:
    return {w.offset: float(np.sqrt(np.mean(np.square(w.samples)))) for w in windows}


@pytest.mark.parametrize("damage", ["garbled", "zeroed"])
def test_a_damaged_stretch_of_a_constant_bitrate_mp3_is_silence_and_the_audio_after_it_keeps_its_time(
        mp3: tuple[bytes, float], tmp_path: Path, damage: str) -> None:
    """5 s of a 50 s MP3's bytes overwritten 20 s in (a damaged disk or download): MP3 carries no timestamps and
    FFmpeg counts the frames it reads, so the 25 s after the damage came 5 s early. At a constant bit rate a
    frame's byte position is its time: the damage is silence and the audio after it is where it was."""
    data, seconds = mp3
    intact, damaged = tmp_path / "intact.mp3", tmp_path / "damaged.mp3"
    intact.write_bytes(data)
    start, end = 20 * MP3_BYTES_PER_SECOND, 25 * MP3_BYTES_PER_SECOND
    damaged.write_bytes(data[:start] + bytes(b ^ 0x5A if damage == "garbled" else 0 for b in data[start:end]) + data[end:])
    expected = list(read_windows(StreamSource("intact", str(intact)), GRID))
    windows = list(read_windows(StreamSource("damaged", str(damaged)), GRID))

    assert_ordered(windows)
    assert len(windows) == len(expected)
    # The damage ends frames a few hundredths either side of 20 s and 25 s: windows a tenth clear of its edges.
    loudness = level(windows)
    in_damage = [offset for offset in loudness if 20.1 <= offset and offset + GRID.window_seconds <= 24.9]
    assert len(in_damage) == 7 and all(loudness[offset] == 0 for offset in in_damage)
    assert all(rms > 0.01 for offset, rms in loudness.items() if offset + GRID.window_seconds <= 19.9 or offset >= 25.1)
    # The audio after it lines up with the intact file's to within a sample (a new resampler starts after the hole).
    rate, after = GRID.sample_rate, 26.0
    heard, meant = (np.concatenate([w.samples[: GRID.hop] for w in ws if w.offset >= after]) for ws in (windows, expected))
    span = heard[rate // 10 : 10 * rate]
    lag = max(range(-rate // 10, rate // 10 + 1), key=lambda lag: float(np.dot(span, meant[rate // 10 + lag : 10 * rate + lag])))
    assert abs(lag) <= 1


@pytest.mark.parametrize("join", ["tagged", "cut"])
def test_bytes_an_mp3_skips_with_no_audio_lost_in_them_add_no_time(mp3: tuple[bytes, float], tmp_path: Path, join: str) -> None:
    """Two MP3s joined into one file, the second's ID3 tag (16 KB: 2 s of bytes at the bit rate) between their
    audio: the decoder refuses the tag, which is no lost audio, so its bytes add no silence. Bytes cut out of a
    file leave no trace of how much was lost (the positions after the cut are the shortened file's): it reads
    as the audio left, as FFmpeg counts it, with no time put back (README, "Damaged and lossy inputs")."""
    from monitor.bench.servers import encode_mp3

    data, seconds = mp3
    if join == "tagged":
        second, tagged = encode_mp3(MUSIC / "area2-game.opus", tmp_path / "second.mp3"), tmp_path / "tagged.mp3"
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(second), "-t", "10", "-c", "copy", "-metadata", f"comment={'x' * 16000}",
                        str(tagged)], check=True)
        joined, audio_seconds = data + tagged.read_bytes(), seconds + 10.0
    else:
        start = 20 * MP3_BYTES_PER_SECOND
        joined, audio_seconds = data[:start] + data[start + 5 * MP3_BYTES_PER_SECOND :], seconds - 5.0
    path = tmp_path / "joined.mp3"
    path.write_bytes(joined)
    windows = list(read_windows(StreamSource("joined", str(path)), GRID))
    assert_ordered(windows)
    assert abs(len(windows) - GRID.count(round(audio_seconds * GRID.sample_rate))) <= 1  # the files' last frames, less a few ms
    assert not [offset for offset, rms in level(windows).items() if rms == 0]


def test_a_file_shorter_than_a_window_says_so(tmp_path: Path, caplog) -> None:
    """`monitor` ended such a file with "none of the 1 stream(s) delivered audio; the errors above say why", and
    there was no error above: the file was read, there was just too little of it."""
    path = tmp_path / "jingle.wav"
    soundfile.write(path, np.random.default_rng(0).normal(0, 0.1, 4800).astype(np.float32), 8000)
    assert list(read_windows(StreamSource("jingle", str(path)), GRID)) == []
    assert "holds 0.60 s of audio, less than one window (1 s): nothing to monitor" in caplog.text


def test_a_recording_named_by_its_time_is_a_file_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loggers name recordings by their time: rec-2026-12-05T10:00:00.ts was a live stream of scheme
    'rec-2026-12-05t10' (FFmpeg: "Protocol not found"), retried forever, and a WAV of such a name, which
    libsndfile read instead, was monitored again and again, each time as new plays."""
    import subprocess

    from encoders import load_audio
    from monitor.stages.mux import AudioSelection, MuxSource, read_mux

    monkeypatch.chdir(tmp_path)
    name = "rec-2026-12-05T10:00:00.ts"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-t", "3", "-i", str(MUSIC / "area1-game.opus"), "-c:a", "mp2", f"file:{name}"], check=True)
    [source] = sources_from_urls([name])
    assert source.id == "rec-2026-12-05T10:00:00" and source.is_file
    assert len(list(read_windows(source, GRID))) == GRID.count(3 * GRID.sample_rate)
    chosen = [item for item in read_mux(MuxSource.single(source, AudioSelection(index=0)), GRID) if isinstance(item, AudioWindow)]
    assert len(chosen) == GRID.count(3 * GRID.sample_rate)
    assert len(load_audio(name, GRID.sample_rate)) == pytest.approx(3 * GRID.sample_rate, abs=0.05 * GRID.sample_rate)


class StopAtFirstWait(threading.Event):
    """A stop event that a reader's first wait to reconnect sets: counts whether a reader would have retried."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        self.set()
        return True


def test_a_missing_recording_named_by_its_time_ends_its_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """With no file of that name, rec-2026-12-05T10:00:00.wav was a URL of scheme 'rec-2026-12-05t10', for which
    FFmpeg has no protocol: `monitor` retried it forever, alone or with --audio, where a missing file without a colon
    ends its stream at once; then it ended with "Protocol not found", as stream "00:00". It names a file, which is not
    there: its stream is named after it, and ends saying so."""
    from monitor.stages.mux import AudioSelection, MuxSource, read_mux

    monkeypatch.chdir(tmp_path)
    [source] = sources_from_urls(["rec-2026-12-05T10:00:00.wav"])
    assert source.id == "rec-2026-12-05T10:00:00" and source.is_file
    for read in (lambda stop: read_windows(source, GRID, stop=stop),
                 lambda stop: read_mux(MuxSource.single(source, AudioSelection(index=0)), GRID, stop=stop)):
        stop = StopAtFirstWait()
        assert [item for item in read(stop) if isinstance(item, AudioWindow)] == []
        assert stop.waits == 0
    assert "No such file or directory" in caplog.text and "Protocol not found" not in caplog.text


def test_what_answers_a_stream_url_but_is_no_stream_is_named_with_the_fix(tmp_path: Path) -> None:
    """What a station's site links to (.pls, .m3u, .xspf: tests/test_icecast.py gives one to the reader) names the stream
    to monitor; an MPEG-DASH manifest is one the FFmpeg that PyAV ships cannot read (the reader retried it for ever,
    "not in any audio or video format FFmpeg recognises"); an HLS playlist (FFmpeg's to read), a web page or a missing
    file is none of these."""
    from monitor.bench.servers import FileServer
    from monitor.stages.sources import not_a_stream

    (tmp_path / "radio.pls").write_text("[playlist]\nNumberOfEntries=2\nFile1=http://a.example/live\nTitle1=A\nFile2=http://b.example/live\n")
    (tmp_path / "radio.m3u").write_text("#EXTM3U\n#EXTINF:-1,Radio\nhttp://b.example/live\n")
    (tmp_path / "live.m3u8").write_text("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nhttp://a.example/seg1.ts\n")
    (tmp_path / "index.html").write_text("<p>\nhttp://a.example/live\n</p>\n")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(MUSIC / "area1-game.opus"), "-t", "4", "-c:a", "aac", "-f", "dash",
                    "-seg_duration", "2", str(tmp_path / "live.mpd")], check=True)
    (tmp_path / "manifest").write_bytes((tmp_path / "live.mpd").read_bytes())  # served without its type
    with FileServer(tmp_path) as web:
        assert "the stream it lists, http://a.example/live," in not_a_stream(web.url("radio.pls"), timeout=2.0)
        assert "the stream it lists, http://b.example/live," in not_a_stream(web.url("radio.m3u"), timeout=2.0)
        for name in ("live.mpd", "manifest"):
            assert "MPEG-DASH manifest" in not_a_stream(web.url(name), timeout=2.0)
        for name in ("live.m3u8", "index.html", "gone.m3u"):
            assert not_a_stream(web.url(name), timeout=2.0) is None
        dash = StreamSource("dash", web.url("live.mpd"))
        windows = list(read_windows(dash, GRID, FAST_RETRY))  # it ends: no retrying for ever
        windows += [item for item in read_mux(MuxSource.single(dash, AudioSelection()), GRID, FAST_RETRY) if isinstance(item, AudioWindow)]
    assert windows == []


def test_missing_file_ends_its_stream_with_an_error(registry_metrics) -> None:
    registry, metrics = registry_metrics
    assert list(read_windows(StreamSource("gone", "/nonexistent/file.mp3"), GRID, metrics=metrics)) == []
    assert registry.get_sample_value("airtrace_decode_errors_total", {"stream": "gone"}) == 1


class FakeClock:
    """`time` for the pacing code: sleeping moves the clock, and the test reads every wake."""

    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeStop(threading.Event):
    """A stop event that is never set; waiting on it moves the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def wait(self, timeout: float | None = None) -> bool:
        self.clock.sleep(timeout or 0.0)
        return False


def test_a_paced_file_is_released_in_bursts_and_never_early(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader wakes once per gather_seconds, not once per 0.1 s chunk (a wake costs more than the chunk's
    decoding), and releases no chunk more than the lead before it would air."""
    clock = FakeClock()
    monkeypatch.setattr(ingest, "time", clock)
    chunk, lead, gather = np.zeros(800, np.float32), 0.2, 0.5  # 0.1 s at 8 kHz
    released = [clock.now for _ in _paced(iter([chunk] * 100), 8000, gather, lead)]  # 10 s of audio
    due = np.arange(100) * 0.1 - lead
    assert np.all(np.array(released) >= due - 1e-9)
    assert np.max(np.array(released) - due) <= gather + 0.1 + 1e-9
    assert len(clock.sleeps) <= 10 / gather + 1


def test_a_live_reader_at_the_live_edge_gathers_audio_between_wakes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A live stream's connect burst is read at once; past it, every read that had to wait for the network
    is followed by one gather_seconds sleep, after which the audio that came meanwhile is read in one go."""
    clock = FakeClock()
    monkeypatch.setattr(ingest, "time", clock)
    burst, gather = 10, 0.5

    def network():  # 3 s of audio in 0.1 s chunks: the first `burst` waiting at connect, then as it airs
        for i in range(30):
            clock.now = max(clock.now, (i - burst) * 0.1)  # a read blocks until its chunk has aired
            yield np.full(800, i, np.float32)

    stop = FakeStop(clock)
    read = []
    for chunk in _gathered(network(), 8000, gather, stop):
        read.append((int(chunk[0]), len(clock.sleeps)))
    assert [i for i, _ in read] == list(range(30))
    assert all(wakes == 0 for i, wakes in read if i <= burst)  # the connect burst: no sleeping
    assert 1 <= len(clock.sleeps) <= 2.0 / gather + 1  # 2 s aired after the burst: 1 wake per gather_seconds
    assert set(clock.sleeps) == {gather}


def test_a_live_reader_on_a_busy_machine_never_falls_behind_by_more_than_two_gathers(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the machine gets busy every read is slow (here 50 ms for 0.1 s of audio) even with audio waiting,
    so every read looks like one at the live edge. A reader that slept after each would fall further behind
    with every sleep; it reads on instead whenever it is more than a gather behind the furthest it got."""
    clock = FakeClock()
    monkeypatch.setattr(ingest, "time", clock)
    burst, gather = 4.0, 0.5
    lags = []

    def network():  # 0.1 s chunks, `burst` seconds waiting at connect; from chunk 100 on a read takes 50 ms
        for i in range(600):
            clock.now = max(clock.now + (0.05 if i >= 100 else 0.001), i * 0.1 - burst)
            yield np.zeros(800, np.float32)

    for i, _ in enumerate(_gathered(network(), 8000, gather, FakeStop(clock))):
        lags.append(clock.now + burst - (i + 1) * 0.1)  # seconds of audio on the server not yet read
    assert max(lags[100:]) <= min(lags[:100]) + 2 * gather + 0.05 + 1e-9
    assert len(clock.sleeps) >= 20  # and it still gathers: about once per gather and a half of stream time


def test_realtime_paces_a_file(tmp_path: Path) -> None:
    path = tmp_path / "three.wav"
    soundfile.write(path, np.random.default_rng(1).normal(0, 0.1, 3 * 8000).astype(np.float32), 8000)
    begun = time.monotonic()
    windows = list(read_windows(StreamSource("paced", str(path)), GRID, IngestOptions(realtime=True)))
    assert len(windows) == 5
    assert time.monotonic() - begun >= 2.5
    assert windows[-1].air_time - windows[0].air_time == pytest.approx(2.0, abs=0.05)


def test_a_file_served_over_http_is_read_once_and_ends(mp3: tuple[bytes, float], tmp_path: Path, registry_metrics) -> None:
    """A web server gives the file's length: the source ended, and reopening it would play it again."""
    from monitor.bench import servers

    registry, metrics = registry_metrics
    (tmp_path / "song.mp3").write_bytes(mp3[0])
    with servers.FileServer(tmp_path) as web:
        begun = time.time()
        windows = take(read_windows(StreamSource("song", web.url("song.mp3")), GRID, FAST_RETRY, metrics), count=10_000, seconds=30)
        assert web.requests == 1
    assert len(windows) == GRID.count(int(mp3[1] * 8000)) and not any(w.after_gap for w in windows)
    assert_ordered(windows)
    assert windows[-1].offset == pytest.approx(mp3[1] - 1.0, abs=0.1)
    assert windows[0].air_time >= begun - 1.0  # it airs from when it was opened, not from before
    assert registry.get_sample_value("airtrace_stream_reconnects_total", {"stream": "song"}) is None



def multiplexed(source: StreamSource, grid: WindowGrid, options: IngestOptions) -> Iterator[AudioWindow]:
    """The stream read with an audio selection: the multiplex reader's path (TV, a transport stream over HTTP, HLS renditions)."""
    return (item for item in read_mux(MuxSource.single(source, AudioSelection()), grid, options) if isinstance(item, AudioWindow))


@pytest.mark.parametrize("read", [read_windows, multiplexed])
def test_a_live_stream_that_repeats_audio_on_reconnecting_goes_on_without_a_gap(server, mp3: tuple[bytes, float], read) -> None:
    """Icecast sends a new listener its last seconds (burst-on-connect): after a short drop the stream
    repeats what was heard, nothing was lost, and stream time and audio go on as if it had never broken. The multiplex
    reader's path (a stream with an audio selection, a transport stream over HTTP) marked a gap and heard the repeat
    twice (5.6 s of it here)."""
    from encoders import load_audio

    windows = take(read(StreamSource("radio", server.url(drop=3.0, burst=3.0)), GRID, FAST_RETRY), count=24, seconds=30)
    assert len(windows) == 24 and server.connections["/live.mp3"] == 2
    assert_ordered(windows)
    assert not any(w.after_gap for w in windows)
    assert np.allclose(np.diff([w.offset for w in windows]), GRID.hop_seconds)
    programme = load_audio(io.BytesIO(mp3[0]), 8000)  # window 0 holds the encoder's priming: start from window 1
    energy = np.sqrt(np.convolve(programme[: 8000 * 10] ** 2, np.ones(GRID.window), mode="valid"))
    start = int(np.argmax(np.correlate(programme[: 8000 * 10], windows[1].samples, mode="valid") / np.maximum(energy, 1e-9))) - GRID.hop
    for i, window in enumerate(windows[1:], start=1):  # each window is the programme's audio where continuity puts it
        expected = programme[start + i * GRID.hop : start + i * GRID.hop + GRID.window]
        assert np.corrcoef(window.samples, expected)[0, 1] > 0.95, i


def test_a_burst_longer_than_the_audio_kept_by_default_is_still_recognised_as_a_repeat() -> None:
    """A server's burst is bytes (Icecast's 64 KiB is 22 s of a 24 kb/s stream): a reconnection that repeats 25 s began
    before the 20 s of delivered audio kept, was not recognised, and was heard twice after a gap (a real Icecast:
    tests/test_icecast.py). The first connection's burst, as long, now makes the reader keep enough."""
    from encoders import load_audio

    rate = GRID.sample_rate
    audio = load_audio(MUSIC / "area1-game.opus", rate)
    resumption = Resumption(rate)
    for chunk in np.split(audio[: 40 * rate], 400):  # heard: 40 s, of which the first connection's first 25 s came at once
        resumption.delivered(chunk)
        resumption.keep_bursts_of(25.0)
    resumption.reconnected()
    chunks = np.split(audio[15 * rate : 45 * rate], 300)  # the last 25 s again, then 5 s new
    verdicts = (resumption.judge(chunk) for chunk in chunks)
    continues, audio_after = next(verdict for verdict in verdicts if verdict is not None)  # as soon as the whole repeat has come
    assert continues and not resumption.judging
    assert np.array_equal(audio_after, audio[40 * rate : 40 * rate + len(audio_after)]) and len(audio_after) < len(chunks[0])


def test_looped_music_that_resumes_at_the_live_position_is_a_gap_not_a_repeat(tmp_path: Path) -> None:
    """area2-game loops: a second of it heard after reconnecting (the server sends no burst, the seconds of the
    drop are lost) also lies in the last 20 s delivered, a loop earlier. Taken for a repeat, that skipped the
    new connection's audio to a wrong place and hid the gap: stream time went on as if nothing was lost."""
    from monitor.bench.servers import LiveAudioServer, encode_mp3

    mp3 = encode_mp3(MUSIC / "area2-game.opus", tmp_path / "area2.mp3").read_bytes()
    with LiveAudioServer(mp3, 50.0, speed=2.0) as live:
        windows = take(read_windows(StreamSource("radio", live.url(drop=8.0)), GRID, FAST_RETRY), count=40, seconds=30)
        assert len(windows) == 40 and live.connections["/live.mp3"] == 2
    (gap,) = [w for w in windows if w.after_gap]
    assert gap.offset - windows[gap.seq - 1].offset > GRID.hop_seconds


def test_a_file_only_libsndfile_reads_is_monitored_like_the_same_audio_ffmpeg_reads(tmp_path: Path, registry_metrics) -> None:
    """`catalog add` and `identify` read such files (some Ogg Vorbis headers FFmpeg rejects); a stream of one
    must not be skipped as unreadable."""
    registry, metrics = registry_metrics
    audio = np.random.default_rng(2).normal(0, 0.1, 5 * 22050).astype(np.float32)
    soundfile.write(tmp_path / "take.mat", audio, 22050, format="MAT5", subtype="FLOAT")
    soundfile.write(tmp_path / "take.wav", audio, 22050, subtype="FLOAT")
    refused = list(read_windows(StreamSource("refused", str(tmp_path / "take.mat")), GRID, metrics=metrics))
    taken = list(read_windows(StreamSource("taken", str(tmp_path / "take.wav")), GRID))
    assert len(refused) == len(taken) == GRID.count(5 * 8000)
    assert all(np.array_equal(a.samples, b.samples) for a, b in zip(refused, taken))
    assert registry.get_sample_value("airtrace_decode_errors_total", {"stream": "refused"}) is None


def test_a_reader_waiting_for_a_stalled_stream_holds_no_turn(server) -> None:
    """Readers take turns only to decode (decode_turns): one that waits for the network must not hold up the
    others. With a single turn, it is free while a reader waits on a stream that stalled."""
    turns, received, stop = decode_turns(1), queue.Queue(), threading.Event()
    source = StreamSource("stalls", server.url("stall.mp3", stall=1.0))
    options = IngestOptions(read_timeout=6.0, backoff_initial=0.1)

    def read() -> None:
        for window in read_windows(source, GRID, options, stop=stop, turns=turns):
            received.put(window)

    threading.Thread(target=read, daemon=True).start()
    assert received.get(timeout=20).seq == 0  # the audio sent before the stall has been decoded
    time.sleep(1.5)  # the reader has read all there was and waits in the stalled connection
    assert turns.acquire(timeout=3.0)
    turns.release()
    stop.set()


def test_a_file_read_in_turns_gives_the_windows_it_gives_alone() -> None:
    source = StreamSource("file", str(MUSIC / "area1-game.opus"))
    alone = list(read_windows(source, GRID))
    in_turns = list(read_windows(source, GRID, turns=decode_turns(1)))
    assert len(in_turns) == len(alone) > 40
    assert all(np.array_equal(a.samples, b.samples) and a.offset == b.offset for a, b in zip(alone, in_turns))


def test_decode_turns_follow_a_containers_cpu_limit(tmp_path: Path) -> None:
    """CPU affinity shows a container every core of its node; its cgroup's cpu.max says what it may use."""
    import os

    affinity, limit = len(os.sched_getaffinity(0)), tmp_path / "cpu.max"
    limit.write_text("50000 100000\n")  # half a core
    assert usable_cores(limit) == 1
    limit.write_text(f"{100000 * (affinity + 3)} 100000\n")  # more than the affinity allows
    assert usable_cores(limit) == affinity
    limit.write_text("max 100000\n")
    assert usable_cores(limit) == affinity
    assert usable_cores(tmp_path / "absent") == affinity


def test_the_decode_turns_setting_is_how_many_readers_decode_at_once() -> None:
    """IngestOptions.decode_turns (--decode-turns) sizes start_readers' turns, which a multiplex reader takes as a
    single stream's does: with one turn, a profiler never sees two readers in FFmpeg's decoder at once."""
    from monitor.stages.mux import AudioSelection, MuxSource

    turns = decode_turns(3)
    assert [turns.acquire(blocking=False) for _ in range(4)] == [True, True, True, False]
    turns = decode_turns(IngestOptions().decode_turns)
    assert sum(turns.acquire(blocking=False) for _ in range(usable_cores() + 1)) == usable_cores()

    decoding: set[int] = set()
    at_once: list[int] = []  # how many readers were decoding, at each call into the decoder
    readers: set[str] = set()

    def profile(frame: object, event: str, arg: object) -> None:
        if getattr(arg, "__qualname__", None) != "Packet.decode":
            return
        if event == "c_call":
            decoding.add(threading.get_ident())
            at_once.append(len(decoding))
            readers.add(threading.current_thread().name)
        elif event in ("c_return", "c_exception"):
            decoding.discard(threading.get_ident())

    sources = [StreamSource("single", str(MUSIC / "area1-game.opus")),
               MuxSource.single(StreamSource("mux", str(MUSIC / "gardien-go.opus")), AudioSelection())]
    received: queue.Queue = queue.Queue()
    threading.setprofile(profile)  # for the threads start_readers starts
    try:
        threads = start_readers(sources, GRID, received.put, IngestOptions(decode_turns=1))
        for thread in threads:
            thread.join(timeout=120)  # a guard against a hang, not a measurement
    finally:
        threading.setprofile(None)
    assert not any(thread.is_alive() for thread in threads)
    assert readers == {"ingest-single", "ingest-mux"} and max(at_once) == 1


def test_a_negative_decode_turns_setting_is_refused_naming_the_option(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from monitor.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["monitor", "--catalog", str(tmp_path), "--decode-turns", "-1", "x.wav"])
    assert result.exit_code == 2 and "Invalid value for '--decode-turns'" in result.output and "-1 is not in the range x>=0" in result.output
    result = runner.invoke(main, ["ingest", "x.wav"], env={"AIRTRACE_DECODE_TURNS": "-2"})
    assert result.exit_code == 2 and "AIRTRACE_DECODE_TURNS" in result.output and "-2 is not in the range x>=0" in result.output
    assert "--decode-turns" in runner.invoke(main, ["ingest", "--help"]).output


def test_the_read_timeout_is_an_option_of_the_monitor(server, service_catalog: Path, tmp_path: Path) -> None:
    """A live HLS playlist whose segments last about as long as the read timeout is reopened every few segments (README,
    "Sources"): the timeout is the user's to raise, on `monitor` and `ingest` alike (they share the option)."""
    from click.testing import CliRunner

    from monitor.bench import servers
    from monitor.cli import main

    log = tmp_path / "monitor.log"
    process = servers.airtrace(["monitor", "--catalog", str(service_catalog), "--read-timeout", "2", "--no-playlog",
                                server.url("stall.mp3", stall=1.0)], log)
    try:
        servers.wait_until(lambda: "stalled" in log.read_text(), 60, "the monitor reports the stall")
    finally:
        servers.stop(process)
    assert "no data for 2 s" in log.read_text()
    result = CliRunner().invoke(main, ["ingest", "x.wav"], env={"AIRTRACE_READ_TIMEOUT": "0.5"})
    assert result.exit_code == 2 and "AIRTRACE_READ_TIMEOUT" in result.output and "0.5 is not in the range x>=1" in result.output
