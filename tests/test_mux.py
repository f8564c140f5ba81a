"""TV inputs made here with ffmpeg from the shipped excerpts: an MPEG-TS multiplex of three programs (two
audio tracks each, languages and dispositions set, one AC-3 5.1 mix) sent over UDP and HTTP on loopback,
and an HLS stream with two audio renditions; each program's plays must land on its own stream only."""

from __future__ import annotations

import functools
import json
import http.server
import logging
import re
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import av
import jsonschema
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monitor.bench import servers
from encoders.audio import downmix_surround
from monitor import metrics as metrics_module
from monitor.catalog import Catalog
from monitor.embedded import EmbeddedMonitor
from monitor.options import MonitorOptions
from monitor.events import Event, PlayEvent, plays_in, read_event, schema
from monitor.options import IngestOptions
from monitor.stages.ingest import load_sources, read_windows
from monitor.stages.sources import ConfigError, StreamSource
from monitor.stages.mux import (
    PROGRAM_CHECK_SECONDS,
    AudioSelection,
    AudioTrack,
    MuxProgram,
    MuxSource,
    SelectionError,
    StreamStarted,
    check_unique_ids,
    command_line_sources,
    parse_dump,
    probe,
    read_mux,
)
from monitor.records import AudioWindow, EndOfStream
from monitor.stages.windows import WindowGrid
from tv_fixtures import ffmpeg, television, without_audio

MUSIC = Path(__file__).parents[1] / "monitor" / "demo" / "music"
GRID = WindowGrid(sample_rate=8000, window=8000, hop=4000)
# The main mix of each program plays a catalog track; the other tracks play music the wrong choice would
# report (area2-game, in the catalog, is program 101's audio description) or music not in the catalog.
EXPECTED = {"tv-101": "area1-game", "tv-202": "gardien-go", "tv-303": "over-theme"}
LIVE = IngestOptions(open_timeout=5.0, read_timeout=3.0, backoff_initial=0.2, backoff_max=1.0)


@pytest.fixture(scope="module")
def multiplex(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Programs 101 'Alpha' (French main, French audio description), 202 'Beta' (English, German) and
    303 'Gamma' (English AC-3 5.1 whose centre carries other music as loud as the fronts and whose
    surrounds are in opposite phase, and an English description track)."""
    path = tmp_path_factory.mktemp("tv") / "tv.ts"
    inputs = [arg for name in ("over-theme", "area3-game", "area1-game", "area2-game", "gardien-go", "termigator_reg-zbb")
              for arg in ("-i", str(MUSIC / f"{name}.opus"))]
    surround = ("[0:a]asplit=4[fl][fr][sl][s2];[s2]aeval=-val(0):c=same[sr];[1:a]asplit=2[fc][l0];[l0]volume=0[lfe];"
                "[fl][fr][fc][lfe][sl][sr]join=inputs=6:channel_layout=5.1(side)[g51]")
    ffmpeg(*inputs, "-filter_complex", surround,
           "-map", "2:a", "-map", "3:a", "-map", "4:a", "-map", "5:a", "-map", "[g51]", "-map", "1:a",
           "-c:a", "mp2", "-b:a", "96k", "-c:a:4", "ac3", "-b:a:4", "384k", "-ar", "48000",
           "-metadata:s:a:0", "language=fra", "-metadata:s:a:1", "language=fra", "-disposition:a:1", "visual_impaired",
           "-metadata:s:a:2", "language=eng", "-metadata:s:a:3", "language=deu",
           "-metadata:s:a:4", "language=eng", "-metadata:s:a:5", "language=eng", "-disposition:a:5", "visual_impaired",
           "-program", "program_num=101:title=Alpha:st=0:st=1", "-program", "program_num=202:title=Beta:st=2:st=3",
           "-program", "program_num=303:title=Gamma:st=4:st=5",
           *(arg for i in range(3) for arg in (f"-metadata:p:{i}", "service_provider=Airtrace TV")),
           "-f", "mpegts", str(path))
    return path


@pytest.fixture()
def registry_metrics() -> tuple[CollectorRegistry, metrics_module.Metrics]:
    registry = CollectorRegistry()
    return registry, metrics_module.create(registry)


def test_probe_lists_programs_services_and_audio_tracks(multiplex: Path) -> None:
    programs = probe(str(multiplex))
    assert [(p.number, p.service_name, p.service_provider) for p in programs] == [
        (101, "Alpha", "Airtrace TV"), (202, "Beta", "Airtrace TV"), (303, "Gamma", "Airtrace TV")]
    tracks = {t.index: t for p in programs for t in p.tracks}
    assert [(t.language, t.is_main, t.is_description) for t in tracks.values()] == [
        ("fra", True, False), ("fra", False, True), ("eng", True, False), ("deu", True, False), ("eng", True, False), ("eng", False, True)]
    assert (tracks[4].codec, tracks[4].channels) == ("ac3", 6)


def test_ffmpegs_dump_is_read_into_programs_with_their_streams() -> None:
    dump = """Input #0, mpegts, from '':
  Duration: 00:00:50.02, start: 1.400000, bitrate: 998 kb/s
  Program 101 
    Metadata:
      service_name    : Télé Alpha
      service_provider: Airtrace TV
  Stream #0:0[0x100](fra): Audio: mp2, 48000 Hz, mono, fltp, 128 kb/s
    Metadata:
      comment         : not the program's
  Program 202 
  Stream #0:1[0x101]: Audio: ac3, 48000 Hz, 5.1(side), fltp, 384 kb/s (visual impaired) (descriptions)
  No Program
  Stream #0:2[0x102]: Audio: mp2, 48000 Hz, stereo, fltp, 128 kb/s
"""
    programs, tracks = parse_dump(dump)
    assert programs == [(101, {"service_name": "Télé Alpha", "service_provider": "Airtrace TV"}, [0]), (202, {}, [1]), (None, {}, [2])]
    assert tracks[1] == AudioTrack(1, 0x101, "ac3", 0, "5.1(side)", None, ("visual_impaired", "descriptions"))
    assert (tracks[0].language, tracks[0].is_main, tracks[2].layout) == ("fra", True, "stereo")
    assert parse_dump("Input #0, mp3, from '':\n  Stream #0:0: Audio: mp3, 44100 Hz, stereo\n")[0] == [(None, {}, [0])]


def test_selection_by_program_language_index_and_disposition(multiplex: Path) -> None:
    programs = probe(str(multiplex))

    def chosen(**fields: object) -> tuple[int | None, int]:
        program, track = AudioSelection.parse(fields, "test").choose(programs, "tv.ts")
        return program.number, track.index

    assert chosen(program=101) == (101, 0)  # the main mix before the description
    assert chosen(program="alpha", disposition="description") == (101, 1)  # by service name, any case
    assert chosen(program=202, language="deu") == (202, 3)
    assert chosen(language="eng") == (202, 2)
    assert chosen(program="Gamma") == (303, 4)
    assert chosen(index=5) == (303, 5)
    assert AudioSelection.parse("program=303,disposition=main", "--audio") == AudioSelection(303, None, None, "main")

    with pytest.raises(SelectionError) as error:
        AudioSelection.parse({"program": 101, "language": "eng"}, "test").choose(programs, "tv.ts")
    message = str(error.value)
    assert "no audio track matches program=101,language=eng" in message
    assert "program 202 'Beta' from 'Airtrace TV'" in message and "stream 4 (pid 260): ac3 5.1(side), language eng, main" in message
    with pytest.raises(ConfigError, match="disposition 'commentary' is not one of main, description"):
        AudioSelection.parse({"disposition": "commentary"}, "test")


def test_streams_file_declares_multiplexes_and_audio_choices(tmp_path: Path) -> None:
    config = tmp_path / "streams.yaml"
    config.write_text(
        "- {id: radio, url: 'http://radio/live'}\n"
        "- {id: news, url: 'http://tv/hls.m3u8', audio: {language: eng}}\n"
        "- mux: dvb\n"
        "  url: 'udp://127.0.0.1:5000'\n"
        "  audio: {language: fra}\n"
        "  programs: [101, {program: Beta, id: beta, audio: {language: deu}}]\n"
        "- {mux: iptv, url: 'http://tv/mux.ts'}\n")
    radio, news, dvb, iptv = load_sources(config)
    assert isinstance(radio, StreamSource)
    assert news == MuxSource.single(StreamSource("news", "http://tv/hls.m3u8"), AudioSelection(language="eng"))
    assert [(p.audio, p.id) for p in dvb.programs] == [(AudioSelection(101, "fra"), None), (AudioSelection("Beta", "deu"), "beta")]
    assert iptv.programs is None

    config.write_text("- {mux: dvb, url: 'udp://x', programs: [{program: 101, lang: fra}]}\n")
    with pytest.raises(ConfigError, match=r"stream #1, program #1: unknown field 'lang'"):
        load_sources(config)
    config.write_text("- {mux: dvb, url: 'udp://x', audio: {program: 101}}\n")
    with pytest.raises(ConfigError, match="name programs under 'programs'"):
        load_sources(config)
    cli = command_line_sources([StreamSource("tv", "udp://x")], "language=fra", "101,Beta")
    assert [p.audio for p in cli[0].programs] == [AudioSelection(101, "fra"), AudioSelection("Beta", "fra")]
    assert cli[0].stream_ids == ["tv-101", "tv-Beta"] and dvb.stream_ids == ["dvb-101", "beta"] and iptv.stream_ids is None
    with pytest.raises(ConfigError, match="stream id 'beta' appears twice"):
        check_unique_ids([dvb, StreamSource("beta", "http://radio/beta")], "streams.yaml")


def test_the_command_line_probes_and_monitors_a_multiplex(multiplex: Path, service_catalog: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from monitor.cli import main

    runner = CliRunner()
    probed = runner.invoke(main, ["streams", "probe", str(multiplex)])
    assert probed.exit_code == 0, probed.output
    assert "program 303 'Gamma' from 'Airtrace TV'\n  stream 4 (pid 260): ac3 5.1(side), language eng, main" in probed.output
    bad = runner.invoke(main, ["monitor", "--catalog", str(service_catalog), "--audio", "language", str(multiplex)])
    assert bad.exit_code == 2 and "--audio: audio selection 'language' is not KEY=VALUE" in bad.output
    events, log = tmp_path / "plays.jsonl", tmp_path / "monitor.log"  # its own process: monitor registers the global metrics
    process = servers.airtrace(["monitor", "--catalog", str(service_catalog), "--programs", "101,Beta", "--audio", "disposition=main",
                                "--events", str(events), str(multiplex)], log)
    try:
        assert process.wait(120) == 0, log.read_text()
    finally:
        servers.stop(process)
    found = plays_in(read_event(json.loads(line)) for line in events.read_text().splitlines())
    assert plays_on(found) == {"tv-101": {"area1-game"}, "tv-Beta": {"gardien-go"}}
    assert f"{sum(e.state == 'ended' for e in found)} plays on 2 stream(s)" in log.read_text()  # it counted the input: "on 1 stream(s)"
    assert {e.stream["service_name"] for e in found if e.stream_id == "tv-Beta"} == {"Beta"}


def test_surround_downmix_keeps_music_beside_a_loud_centre_and_antiphase_surrounds() -> None:
    rng = np.random.default_rng(0)
    music, dialogue = rng.standard_normal((2, 8000)).astype(np.float32)
    names = ["FL", "FR", "FC", "LFE", "SL", "SR"]
    zero = np.zeros_like(music)
    mono = downmix_surround(np.stack([music, music, dialogue, dialogue, zero, zero]), names)
    music_part, dialogue_part = np.linalg.lstsq(np.stack([music, dialogue], 1), mono, rcond=None)[0]
    assert music_part > 1.9 * dialogue_part > 0  # fronts twice the centre (FFmpeg's ITU fold: 1.41 times); no LFE
    only_surrounds = downmix_surround(np.stack([zero, zero, zero, zero, music, -music]), names)
    assert np.dot(only_surrounds, only_surrounds) > 0.4 * np.dot(music, music)  # opposite phase does not cancel


def test_a_track_that_goes_from_stereo_to_surround_midway_is_read_to_the_end(tmp_path: Path) -> None:
    """Program 1's AC-3 goes from stereo to 5.1 at 10 s (adverts, then a film), program 2 stays MP2 stereo.
    The resampler refused the first 5.1 frame and the whole multiplex was skipped from there: both programs
    lost everything after 10 s."""
    parts = []
    for n, channels in enumerate((2, 6)):
        parts.append(tmp_path / f"part{n}.ts")
        ffmpeg("-ss", str(10 * n), "-t", "10", "-i", str(MUSIC / "area1-game.opus"), "-ss", str(10 * n), "-t", "10", "-i", str(MUSIC / "gardien-go.opus"),
               "-map", "0:a", "-map", "1:a", "-c:a:0", "ac3", "-ac:a:0", str(channels), "-c:a:1", "mp2", "-ar", "48000",
               "-program", "program_num=1:st=0", "-program", "program_num=2:st=1", "-output_ts_offset", str(10 * n), "-f", "mpegts", str(parts[-1]))
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(part.read_bytes() for part in parts))

    windows = [item for item in read_mux(MuxSource("tv", str(joined)), GRID) if isinstance(item, AudioWindow)]
    for stream_id in ("tv-1", "tv-2"):
        offsets = [w.offset for w in windows if w.stream_id == stream_id]
        assert len(offsets) >= GRID.count(19 * GRID.sample_rate) and offsets == [i * GRID.hop_seconds for i in range(len(offsets))], stream_id
    surround = [w.samples for w in windows if w.stream_id == "tv-1" and w.offset >= 11]
    assert min(np.sqrt(np.mean(np.square(s))) for s in surround) > 0.01  # the 5.1 part is heard, not silence


@pytest.fixture(scope="module")
def service_change(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s of programs 101 and 202, then 20 s of 202 and a new 303 on a new PID (a service change)."""
    directory = tmp_path_factory.mktemp("change")
    parts = []
    for n, (first, second, start, programs) in enumerate([("area1-game", "gardien-go", "0", (101, 202)), ("gardien-go", "over-theme", "20", (202, 303))]):
        part = directory / f"part{n}.ts"
        ffmpeg("-i", str(MUSIC / f"{first}.opus"), "-i", str(MUSIC / f"{second}.opus"), "-ss", start, "-t", "20", "-map", "0:a", "-map", "1:a",
               "-c:a", "mp2", "-ar", "48000", "-streamid", f"0:{256 + n}", "-streamid", f"1:{257 + n}",
               "-program", f"program_num={programs[0]}:st=0", "-program", f"program_num={programs[1]}:st=1",
               "-output_ts_offset", str(1.4 + 21 * n), "-f", "mpegts", str(part))
        parts.append(part.read_bytes())
    changing = directory / "change.ts"
    changing.write_bytes(b"".join(parts))
    return changing


def test_a_program_that_leaves_is_reported_and_the_others_go_on(service_change: Path, registry_metrics, caplog) -> None:
    changing = service_change
    registry, metrics = registry_metrics
    caplog.set_level(logging.INFO, "monitor.stages.mux")
    items = list(read_mux(MuxSource("tv", str(changing)), GRID, IngestOptions(read_timeout=2.0), metrics))

    windows = Counter(item.stream_id for item in items if not isinstance(item, (StreamStarted, EndOfStream)))
    assert windows["tv-202"] == GRID.count(41 * 8000)  # the second part starts 21 s after the first: 1 s without audio, heard as silence
    assert GRID.count(18 * 8000) <= windows["tv-101"] <= GRID.count(20 * 8000)
    assert "tv-101 left the multiplex" in caplog.text
    assert "program 303 'Service02' from 'FFmpeg' appeared as tv-303" in caplog.text
    assert [item.stream_id for item in items if isinstance(item, EndOfStream)] == ["tv-101", "tv-202"]
    assert all(item.seq == windows[item.stream_id] for item in items if isinstance(item, EndOfStream)), "an end takes the seq after its stream's last window"
    assert registry.get_sample_value("airtrace_stream_up", {"stream": "tv-101"}) == 0


@pytest.mark.parametrize("name", ["take.ac3", "take.flac"])
def test_a_chosen_track_of_a_file_gives_the_windows_of_the_file_to_its_end(tmp_path: Path, name: str) -> None:
    """A stream with an audio selection is read through the multiplex path, which kept what its decoder and
    resampler still held at the end of the input: its last window was lost."""
    path = tmp_path / name
    ffmpeg("-t", "12", "-i", str(MUSIC / "area1-game.opus"), "-ac", "6" if name.endswith("ac3") else "2", str(path))
    plain = StreamSource("take", str(path))
    chosen = [w.offset for w in read_mux(MuxSource.single(plain, AudioSelection(index=0)), GRID) if isinstance(w, AudioWindow)]
    assert chosen == [w.offset for w in read_windows(plain, GRID)] == [i * GRID.hop_seconds for i in range(GRID.count(12 * GRID.sample_rate))]


def test_a_program_that_returns_to_a_file_resumes_at_its_time_after_a_gap(tmp_path: Path) -> None:
    """Program 1 airs for 8 s, is off the multiplex for 8 s while program 2 goes on, and returns: its stream
    resumed at 8 s (where its audio had ended), so all its later plays were placed 8 s early; a file is read
    faster than real time, so only the input's own time tells how long it was gone."""
    parts = []
    for n, programs in enumerate(((1, 2), (2,), (1, 2))):
        parts.append(tmp_path / f"part{n}.ts")
        tracks = [("area1-game", 256, 1), ("gardien-go", 257, 2)][2 - len(programs):]
        ffmpeg(*(arg for name, _, _ in tracks for arg in ("-ss", str(8 * n), "-t", "8", "-i", str(MUSIC / f"{name}.opus"))),
               *(arg for i, (_, pid, number) in enumerate(tracks) for arg in ("-map", f"{i}:a", "-streamid", f"{i}:{pid}", "-program", f"program_num={number}:st={i}")),
               "-c:a", "mp2", "-ar", "48000", "-output_ts_offset", str(8 * n), "-f", "mpegts", str(parts[-1]))
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(part.read_bytes() for part in parts))

    windows = [item for item in read_mux(MuxSource("tv", str(joined)), GRID, IngestOptions(read_timeout=2.0)) if isinstance(item, AudioWindow)]
    back = [w for w in windows if w.stream_id == "tv-1" and w.offset > 7.5]
    assert back[0].after_gap and not any(w.after_gap for w in back[1:])
    assert back[0].offset == pytest.approx(16.0, abs=0.2)  # the last packet heard before it left, and interleaving: within a tenth or two
    assert back[-1].offset == pytest.approx(max(w.offset for w in windows if w.stream_id == "tv-2"), abs=0.2)


@pytest.mark.parametrize("read_timeout", [10.0, 30.0])
def test_an_audio_pid_absent_while_the_video_goes_on_is_a_gap_in_its_time(tmp_path: Path, read_timeout: float) -> None:
    """40 s of a channel whose audio PID is missing from 10 s to 25 s while its video goes on: its timestamps jumped
    15 s, which read as timestamps starting again, so the audio after the absence came 15 s early and no gap was
    marked. The video's timestamps say that time went on: the stream resumes at 25 s after a gap, whether the
    absence outlasted `read_timeout` (the stream left) or not (its timestamps' jump alone tells)."""
    path = tmp_path / "absent.ts"
    path.write_bytes(without_audio(television(tmp_path / "channel.ts", 40.0), 10.0, 25.0))
    source = MuxSource.single(StreamSource("tv", str(path)), AudioSelection())
    windows = [item for item in read_mux(source, GRID, IngestOptions(read_timeout=read_timeout)) if isinstance(item, AudioWindow)]

    before = [w for w in windows if w.offset < 20.0]
    after = windows[len(before):]
    assert [w.offset for w in before] == [i * GRID.hop_seconds for i in range(len(before))] and before[-1].offset <= 9.0
    assert after[0].after_gap and not any(w.after_gap for w in [*before, *after[1:]])
    # The video's decode times run a tenth behind the audio (the clock that measured the absence), and the last
    # tenth the resampler held before it is lost: within two tenths and a packet.
    assert after[0].offset == pytest.approx(25.0, abs=0.25)
    assert after[-1].offset == pytest.approx(39.0, abs=0.25)


def test_a_transport_stream_read_as_a_plain_stream_keeps_an_absent_audio_pids_time(tmp_path: Path) -> None:
    """The same channel named without an audio selection (`airtrace monitor channel.ts`, a streams entry with only
    a url) was read as a plain stream, by its audio's timestamps alone: the audio after the absence came 15 s early,
    unmarked. A transport stream is read as its main audio track of a multiplex, on the input's clock; a recording
    with an air start keeps it, after the gap too."""
    path = tmp_path / "absent.ts"
    path.write_bytes(without_audio(television(tmp_path / "channel.ts", 30.0), 5.0, 20.0))
    aired = 1_796_464_800.0  # 2026-12-05T10:00:00Z
    windows = list(read_windows(StreamSource("tv", str(path), air_start=aired), GRID))

    assert all(isinstance(w, AudioWindow) and w.stream_id == "tv" for w in windows)
    before = [w for w in windows if w.offset < 10.0]
    after = windows[len(before):]
    assert [w.offset for w in before] == [i * GRID.hop_seconds for i in range(len(before))] and before[-1].offset <= 4.0
    assert after[0].after_gap and not any(w.after_gap for w in [*before, *after[1:]])
    assert after[0].offset == pytest.approx(20.0, abs=0.25)  # within two tenths and a packet, as on the TV path
    assert [w.offset for w in after] == pytest.approx([after[0].offset + i * GRID.hop_seconds for i in range(len(after))])
    assert 30.0 - GRID.hop_seconds - 0.25 <= after[-1].offset + GRID.window_seconds <= 30.0  # the audio to its end, less what the resampler held
    assert [w.air_time for w in windows] == pytest.approx([aired + w.offset for w in windows], abs=1e-6)


def test_a_tv_channels_hls_keeps_an_absent_audio_pids_time(tmp_path: Path) -> None:
    """The channel as HLS (2 s transport-stream segments, as TV channels publish it), its audio PID absent from the
    segments of 5-20 s while the video goes on: read as a plain stream, the audio after the absence came 14 s early
    (the last window at 14.5 s of a 30 s channel) with no gap marked. An HLS that carries video is read as a multiplex
    is, on the input's clock: a gap, and the audio after it where it aired."""
    television(tmp_path / "channel.ts", 30.0)
    ffmpeg("-i", str(tmp_path / "channel.ts"), "-map", "0", "-c", "copy", "-f", "hls", "-hls_time", "2", "-hls_list_size", "0",
           "-hls_segment_filename", str(tmp_path / "seg%d.ts"), str(tmp_path / "channel.m3u8"))
    playlist = (tmp_path / "channel.m3u8").read_text().splitlines()
    starts = np.cumsum([0.0] + [float(line[8:].rstrip(",")) for line in playlist if line.startswith("#EXTINF:")])
    segments = [line for line in playlist if line.endswith(".ts")]
    absent = [i for i, segment in enumerate(segments) if 5.0 <= starts[i] and starts[i + 1] <= 20.5]
    for i in absent:  # every packet of the audio PID out of those segments
        data = (tmp_path / segments[i]).read_bytes()
        (tmp_path / segments[i]).write_bytes(b"".join(data[at : at + 188] for at in range(0, len(data), 188)
                                                       if ((data[at + 1] & 0x1F) << 8 | data[at + 2]) != 257))
    with servers.FileServer(tmp_path) as web:
        windows = list(read_windows(StreamSource("tv", web.url("channel.m3u8")), GRID))

    def first_audio(segment: str) -> float:  # audio runs a little ahead of the video its segments are cut by
        with av.open(str(tmp_path / segment)) as container:
            return next(float(p.pts * p.time_base) for p in container.demux(audio=0) if p.pts is not None)

    back = first_audio(segments[absent[-1] + 1]) - first_audio(segments[0])
    (gap,) = [w for w in windows if w.after_gap]
    assert windows[gap.seq - 1].offset + GRID.window_seconds <= starts[absent[0]] + 0.25
    assert gap.offset == pytest.approx(back, abs=0.25)  # within two tenths and a packet, as for the channel's TS
    assert 30.0 - GRID.hop_seconds - 0.25 <= windows[-1].offset + GRID.window_seconds <= 30.0 + 0.25  # the audio to its end


def test_a_transport_stream_file_served_over_http_is_read_once(tmp_path: Path) -> None:
    """A TS file a web server gives with its length ends, whether it is read as a plain stream or with an audio
    selection: the multiplex reader took every input but a local file for a live one and played it again and again."""
    from itertools import islice

    channel = television(tmp_path / "channel.ts", 6.0)
    retry = IngestOptions(backoff_initial=0.05, backoff_max=0.1)
    expected = GRID.count(6 * GRID.sample_rate)
    with servers.FileServer(tmp_path) as web:
        plain = StreamSource("tv", web.url(channel.name))
        # Read as a plain stream, it is opened twice: once to find that it is a transport stream.
        for read, requests in ((read_windows(plain, GRID, retry), 2), (read_mux(MuxSource.single(plain, AudioSelection()), GRID, retry), 1)):
            before = web.requests
            windows = [item for item in islice(read, 3 * expected) if isinstance(item, AudioWindow)]
            assert len(windows) in (expected - 1, expected) and not any(w.after_gap for w in windows)  # less the resampler's last tenth
            assert web.requests - before == requests


@pytest.mark.parametrize("second_part_at", [60.0, 0.0])
def test_a_multiplex_whose_timestamps_all_jump_goes_on_without_a_gap(tmp_path: Path, second_part_at: float) -> None:
    """Two 10 s recordings of a channel joined, the second's timestamps a minute on, or starting again (a new
    encoder session, a looped file): every stream's timestamps jump, so it is a restart, not an absence."""
    parts = [television(tmp_path / f"part{n}.ts", 10.0, 10.0 * n, offset) for n, offset in enumerate((0.0, second_part_at))]
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(part.read_bytes() for part in parts))
    source = MuxSource.single(StreamSource("tv", str(joined)), AudioSelection())
    windows = [item for item in read_mux(source, GRID) if isinstance(item, AudioWindow)]
    assert [w.offset for w in windows] == [i * GRID.hop_seconds for i in range(len(windows))]
    assert not any(w.after_gap for w in windows) and len(windows) >= GRID.count(round(19.5 * GRID.sample_rate))


def test_a_program_that_appears_on_a_live_input_is_added(service_change: Path, registry_metrics, caplog) -> None:
    """The service change looped over HTTP: 303 appears on a PID the open connection does not know, so the
    input is reopened and 303 monitored; 202, on air throughout, resumes after a gap."""
    from monitor.bench.servers import LiveAudioServer

    registry, metrics = registry_metrics
    caplog.set_level(logging.INFO, "monitor.stages.mux")
    stop = threading.Event()
    seen: Counter[tuple[str, bool]] = Counter()
    with LiveAudioServer(service_change.read_bytes(), 40.0, speed=4.0) as server:
        timer = threading.Timer(60.0, stop.set)  # a guard against a hang, not a measurement
        timer.start()
        try:
            for item in read_mux(MuxSource("tv", server.url("change.ts")), GRID, LIVE, metrics, stop):
                if isinstance(item, AudioWindow):
                    seen[item.stream_id, item.after_gap] += 1
                if seen["tv-303", False] >= 2 * GRID.sample_rate * PROGRAM_CHECK_SECONDS / GRID.hop:  # past two looks at the tables
                    stop.set()
        finally:
            timer.cancel()
    assert "appeared as tv-303; reopening the input to add it" in caplog.text
    # 101 is reported either at the reopen, or, when FFmpeg's probe of the reopened input read across the
    # server's loop back to the start (where 101 still airs), when it leaves again: which, the load decides.
    assert ("tv-101 is not in the multiplex; its stream stays down until it returns" in caplog.text
            or "tv-101 left the multiplex" in caplog.text)
    assert seen["tv-202", True] >= 1 and seen["tv-202", False] > seen["tv-303", False]
    assert registry.get_sample_value("airtrace_stream_info", {"stream": "tv-303", "program": "303", "service_name": "Service02",
                                                              "service_provider": "FFmpeg", "language": ""}) == 1


def plays_on(events: list[PlayEvent]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for event in events:
        found.setdefault(event.stream_id, set()).add(event.track_id)
    return found


def monitor_until_found(catalog_dir: Path, sources: list, expected: dict[str, str], start_input=None, timeout: float = 90.0,
                        metrics: metrics_module.Metrics | None = None) -> list[PlayEvent]:
    """Embedded mode on live inputs until every expected play has started (or `timeout`), then stopped."""
    stop = threading.Event()
    seen: set[str] = set()

    def on_event(event: Event) -> None:
        if isinstance(event, PlayEvent) and expected.get(event.stream_id) == event.track_id:
            seen.add(event.stream_id)
        if seen == set(expected):
            stop.set()

    monitor = EmbeddedMonitor(Catalog.open(catalog_dir), sources, MonitorOptions(batch_size=16, max_wait=0.1, ingest=LIVE), metrics, on_event)
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    try:
        if start_input:
            threading.Timer(1.0, start_input).start()  # once the reader listens
        return plays_in(monitor.run(stop))
    finally:
        timer.cancel()


def assert_each_program_on_its_own_stream(events: list[PlayEvent], expected: dict[str, str]) -> None:
    assert plays_on(events) == {stream: {track} for stream, track in expected.items()}
    validator = jsonschema.Draft202012Validator(schema())
    for event in events:
        validator.validate(event.to_json())


def send_udp(data: bytes, port: int, seconds: float, speed: float, stop: threading.Event) -> None:
    """Send a transport stream to a loopback UDP port as a head-end does: 7 TS packets per datagram, paced."""
    chunk = 7 * 188
    rate = len(data) / seconds * speed
    began = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for sent in range(0, len(data), chunk):
            if stop.is_set():
                return
            sender.sendto(data[sent : sent + chunk], ("127.0.0.1", port))
            ahead = began + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)


def test_multiplex_over_udp_finds_each_programs_plays_on_its_own_stream(multiplex: Path, service_catalog: Path, registry_metrics) -> None:
    port = servers.free_port()
    url = f"udp://127.0.0.1:{port}?overrun_nonfatal=1&fifo_size=100000&buffer_size=4194304"
    done = threading.Event()
    data = multiplex.read_bytes()
    sender = threading.Thread(target=send_udp, args=(data, port, 50.0, 3.0, done), daemon=True)
    registry, metrics = registry_metrics
    sources = [MuxSource("tv", url, metadata={"country": "FR"})]
    try:
        events = monitor_until_found(service_catalog, sources, EXPECTED, sender.start, metrics=metrics)
    finally:
        done.set()
        sender.join()
    assert_each_program_on_its_own_stream(events, EXPECTED)
    gamma = next(e for e in events if e.stream_id == "tv-303")
    assert gamma.stream == {"country": "FR", "program": 303, "service_name": "Gamma", "service_provider": "Airtrace TV", "language": "eng", "audio_stream": 4}
    assert registry.get_sample_value("airtrace_stream_info", {"stream": "tv-101", "program": "101", "service_name": "Alpha",
                                                              "service_provider": "Airtrace TV", "language": "fra"}) == 1
    assert registry.get_sample_value("airtrace_windows_ingested_total", {"stream": "tv-202"}) > 0


def test_multiplex_over_http_with_chosen_programs_and_tracks(multiplex: Path, service_catalog: Path) -> None:
    """Two programs by number and name; program 202's German track plays music that is not in the catalog."""
    from monitor.bench.servers import LiveAudioServer

    config_programs = [{"program": 101, "id": "alpha"}, {"program": "Gamma", "id": "gamma", "audio": {"disposition": "main"}}]
    with LiveAudioServer(multiplex.read_bytes(), 50.0, speed=3.0) as server:
        from monitor.stages.mux import source_from_entry

        source = source_from_entry({"mux": "tv", "url": server.url("tv.ts"), "programs": config_programs + [{"program": 202, "id": "beta", "audio": {"language": "deu"}}]}, "test")
        expected = {"alpha": "area1-game", "gamma": "over-theme"}
        events = monitor_until_found(service_catalog, [source], expected)
    found = plays_on(events)
    assert found.pop("beta", set()) == set()
    assert found == {stream: {track} for stream, track in expected.items()}


@pytest.fixture(scope="module")
def hls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A master playlist with two AAC audio renditions: French (area2-game) and English (over-theme)."""
    directory = tmp_path_factory.mktemp("hls")
    ffmpeg("-i", str(MUSIC / "area2-game.opus"), "-i", str(MUSIC / "over-theme.opus"), "-map", "0:a", "-map", "1:a", "-c:a", "aac", "-b:a", "64k",
           "-f", "hls", "-hls_time", "4", "-hls_playlist_type", "vod", "-master_pl_name", "master.m3u8",
           "-var_stream_map", "a:0,agroup:aud,language:fra,default:yes a:1,agroup:aud,language:eng", str(directory / "audio_%v.m3u8"))
    return directory


def test_hls_audio_renditions_by_language(hls: Path, service_catalog: Path) -> None:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(hls))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/master.m3u8"
        sources = command_line_sources([StreamSource("french", url)], "language=fra", None)
        sources += command_line_sources([StreamSource("english", url)], "language=eng", None)
        expected = {"french": "area2-game", "english": "over-theme"}
        events = monitor_until_found(service_catalog, sources, expected)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert_each_program_on_its_own_stream(events, expected)
    assert next(e for e in events if e.stream_id == "english").stream["language"] == "eng"


def test_a_selection_that_matches_nothing_is_reported_with_the_inventory(multiplex: Path, caplog) -> None:
    caplog.set_level(logging.ERROR, "monitor.stages.mux")
    source = MuxSource.single(StreamSource("tv", str(multiplex)), AudioSelection(language="spa"))
    assert list(read_mux(source, GRID)) == []
    assert "no audio track matches language=spa" in caplog.text and "program 101 'Alpha'" in caplog.text



def test_ingest_publishes_each_program_as_its_own_stream(multiplex: Path, kafka_broker: servers.ServerProcess) -> None:
    """`airtrace ingest` reads the multiplex once and publishes one keyed stream per program, each ended."""
    import asyncio

    from monitor.fleet.broker import KafkaSettings, Topics
    from monitor.fleet.kafka_records import EndOfStream, decode_window
    from monitor.fleet.publish import publish_windows

    topics = Topics.with_prefix("tv-ingest", partitions=2)
    sources = [MuxSource("tv", str(multiplex), (MuxProgram(AudioSelection(101)), MuxProgram(AudioSelection("Gamma"), "gamma")))]
    asyncio.run(publish_windows(sources, GRID, KafkaSettings(f"127.0.0.1:{kafka_broker.port}"), topics))
    records = [decode_window(r.value, GRID.sample_rate, GRID.window) for r in servers.read_topic(kafka_broker.port, topics.windows)]
    windows = Counter(r.stream_id for r in records if not isinstance(r, EndOfStream))
    assert windows == {"tv-101": GRID.count(50 * 8000), "gamma": GRID.count(50 * 8000)}
    assert sorted(r.stream_id for r in records if isinstance(r, EndOfStream)) == ["gamma", "tv-101"]


def test_bench_mux_reads_every_program_of_every_multiplex_once_and_reports_cpu(tmp_path: Path) -> None:
    from monitor.bench.mux import SECONDS, run_mux

    printed: list[str] = []
    result = run_mux(3, GRID.sample_rate, GRID.window, GRID.hop, str(tmp_path / "mux.json"), printed.append, multiplexes=2, decode_turns=1)
    assert result["windows"] == 2 * 3 * GRID.count(int(SECONDS * GRID.sample_rate))
    assert result["cpu_seconds"] > 0 and "2 x 3 programs" in printed[0] and "decode turns 1" in printed[0]
    audio_seconds, rounding = 2 * 3 * SECONDS, 0.0005  # both figures are rounded to 3 decimals
    assert abs(result["cpu_per_program_percent_of_a_core"] - 100 * result["cpu_seconds"] / audio_seconds) <= 100 * rounding / audio_seconds + rounding
    assert json.loads((tmp_path / "mux.json").read_text()) == result


def test_a_missing_multiplex_file_is_reported_and_skipped(tmp_path: Path, registry_metrics, caplog) -> None:
    registry, metrics = registry_metrics
    caplog.set_level(logging.ERROR, "monitor.stages.mux")
    assert list(read_mux(MuxSource("tv", str(tmp_path / "missing.ts")), GRID, metrics=metrics)) == []
    assert "multiplex tv:" in caplog.text and "skipping this input" in caplog.text
    assert registry.get_sample_value("airtrace_decode_errors_total", {"stream": "tv"}) == 1


class WatchedTurn:
    """A decode turn that says whether a reader holds it (readers take turns as context managers)."""

    def __init__(self) -> None:
        self.held, self.holds = False, 0

    def __enter__(self) -> None:
        self.held, self.holds = True, self.holds + 1

    def __exit__(self, *exc: object) -> None:
        self.held = False


def test_a_multiplex_decodes_only_in_the_turns_it_is_given(multiplex: Path) -> None:
    """Multiplex readers take the decode turns single-stream readers take (monitor.stages.ingest.decode_turns):
    every call into FFmpeg's decoder and resampler (seen by a profiler) comes while the turn is held, a turn
    covers a batch of packets, and the windows are those read without turns."""
    import sys

    source = MuxSource("tv", str(multiplex), (MuxProgram(AudioSelection(101)), MuxProgram(AudioSelection("Gamma"), "gamma")))
    turn, held_at_calls = WatchedTurn(), []

    def profile(frame: object, event: str, arg: object) -> None:
        if event == "c_call" and (name := getattr(arg, "__qualname__", None)) in ("Packet.decode", "AudioResampler.resample"):
            held_at_calls.append((name, turn.held))

    sys.setprofile(profile)
    try:
        in_turns = [item for item in read_mux(source, GRID, turns=turn) if isinstance(item, AudioWindow)]
    finally:
        sys.setprofile(None)
    alone = [item for item in read_mux(source, GRID) if isinstance(item, AudioWindow)]
    assert {name for name, _ in held_at_calls} == {"Packet.decode", "AudioResampler.resample"}
    assert all(held for _, held in held_at_calls), "FFmpeg decoded or resampled outside the turn"
    assert turn.holds * 4 < Counter(name for name, _ in held_at_calls)["Packet.decode"]  # a turn per batch of packets, not per packet
    assert len(in_turns) == len(alone) == 2 * GRID.count(50 * 8000)
    assert all(a.stream_id == b.stream_id and a.seq == b.seq and np.array_equal(a.samples, b.samples) for a, b in zip(in_turns, alone))


@pytest.mark.parametrize("command", ["monitor", "ingest"])
def test_the_streams_option_names_every_field_a_streams_file_takes(command: str) -> None:
    """Its help named a plain stream's fields only: id, url, name, metadata, options; no audio, no mux."""
    from monitor.cli import main
    from monitor.stages.mux import MUX_FIELDS
    from monitor.stages.sources import SOURCE_FIELDS

    [streams] = [param for param in main.commands[command].params if param.name == "streams"]
    assert set(re.findall(r"\w+", streams.help)) >= {*SOURCE_FIELDS, *MUX_FIELDS}


@pytest.mark.parametrize("field", ["audo: {language: eng}", "programs: [101]"])
def test_an_unknown_field_of_a_stream_entry_names_the_audio_and_mux_fields(tmp_path: Path, field: str) -> None:
    """The error listed id, url, name, metadata, options: not the audio a stream entry takes too, nor that a
    multiplex's programs go in a mux entry."""
    config = tmp_path / "streams.yaml"
    config.write_text(f"- {{id: news, url: 'http://tv/live', {field}}}\n")
    with pytest.raises(ConfigError, match=r"stream #1: unknown field .*audio.*mux"):
        load_sources(config)


@pytest.mark.parametrize(("option", "error"), [("bogus_opt=1", "FFmpeg knows no input option 'bogus_opt'"),
                                               ("rtsp_transport", "'rtsp_transport' is not KEY=VALUE")])
def test_probe_refuses_an_ffmpeg_option_it_would_ignore(multiplex: Path, option: str, error: str) -> None:
    """A misspelt option, or one without its value, was dropped without a word (FFmpeg ignores options it does not
    know), where a streams file's options are checked."""
    from click.testing import CliRunner

    from monitor.cli import main

    probed = CliRunner().invoke(main, ["streams", "probe", "--option", option, str(multiplex)])
    assert probed.exit_code == 2 and error in probed.output
