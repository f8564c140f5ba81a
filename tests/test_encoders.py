"""Encoders: front end, embedding contract, saving and loading, and the errors users meet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders import AudioError, Encoder, EncoderConfig, EncoderError, load_audio, load_encoder
from encoders.frontend import mel_filterbank

DEMO = Path(__file__).parents[1] / "monitor" / "demo" / "music"


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def encoder() -> Encoder:
    torch.manual_seed(0)
    return Encoder(EncoderConfig.for_backbone("compact", backbone_args={"channels": [8, 16]})).eval()


def test_mel_filters_cover_the_band_and_have_unit_area() -> None:
    filters = mel_filterbank(8000, 512, 64, 300.0, 4000.0)
    assert filters.shape == (64, 257)
    assert torch.allclose(filters.sum(dim=1), torch.ones(64), atol=1e-5)
    hz = torch.linspace(0, 4000, 257)
    assert hz[filters.sum(dim=0) > 0].min() >= 300 - 16


def test_embeddings_are_unit_length_float32(encoder: Encoder) -> None:
    windows = np.random.default_rng(0).standard_normal((5, encoder.window_samples)).astype(np.float32)
    out = encoder.embed(windows)
    assert out.shape == (5, encoder.dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_gain_does_not_move_the_embedding(encoder: Encoder) -> None:
    window = load_audio(DEMO / "area1-game.opus", encoder.sample_rate)[: encoder.window_samples]
    loud, quiet = encoder.embed(window), encoder.embed(window * 0.1)
    assert float((loud @ quiet.T).item()) > 0.99


def test_wrong_window_length_names_the_expected_size(encoder: Encoder) -> None:
    with pytest.raises(EncoderError, match="8000 samples"):
        encoder.embed(np.zeros((2, 4000), np.float32))


def test_save_and_load_give_identical_embeddings(encoder: Encoder, tmp_path: Path) -> None:
    windows = np.random.default_rng(1).standard_normal((3, encoder.window_samples)).astype(np.float32)
    encoder.save(tmp_path / "enc")
    loaded = load_encoder(tmp_path / "enc")
    np.testing.assert_array_equal(encoder.embed(windows), loaded.embed(windows))
    assert loaded.fingerprint() == encoder.fingerprint()
    encoder.save(tmp_path / "enc")  # overwriting an encoder directory replaces it whole
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["config.json", "model.safetensors"]


def test_inference_holds_convolutions_channels_last_and_embeds_as_the_default_layout(encoder: Encoder) -> None:
    """Eval mode switches the layout (faster on CPU), training switches back; only float32 summation order
    differs, so embeddings agree to a few hundred ulps of a unit vector's components."""
    conv = encoder.backbone.convs[1][0].weight  # 8 input channels (with one, both layouts are the same)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    windows = np.random.default_rng(2).standard_normal((4, encoder.window_samples)).astype(np.float32)
    fast = encoder.embed(windows)
    with torch.inference_mode():
        default = torch.nn.functional.normalize(encoder.head(encoder.backbone.to(memory_format=torch.contiguous_format)(torch.from_numpy(windows))), dim=-1)
    np.testing.assert_allclose(fast, default.numpy(), rtol=0, atol=256 * np.finfo(np.float32).eps)
    encoder.train()
    assert encoder.backbone.convs[1][0].weight.is_contiguous()


def test_missing_encoder_directory_lists_shipped_names(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="no encoder directory"):
        load_encoder(tmp_path / "absent")


def test_a_run_folder_named_after_a_shipped_encoder_does_not_hide_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "compact").mkdir()  # what `airtrace train ... --run-dir compact` leaves before it exports
    assert load_encoder("compact").config.backbone == "compact"
    (tmp_path / "compact" / "config.json").write_text("{}")
    with pytest.raises(EncoderError, match="lacks model.safetensors"):  # a model folder is taken as given
        load_encoder("compact")


def test_corrupt_weights_are_reported(encoder: Encoder, tmp_path: Path) -> None:
    encoder.save(tmp_path / "enc")
    (tmp_path / "enc" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(EncoderError, match="corrupt"):
        load_encoder(tmp_path / "enc")


def test_config_that_does_not_match_the_weights_is_reported(encoder: Encoder, tmp_path: Path) -> None:
    encoder.save(tmp_path / "enc")
    config_file = tmp_path / "enc" / "config.json"
    config = json.loads(config_file.read_text())
    config["backbone_args"]["channels"] = [8, 32]
    config_file.write_text(json.dumps(config))
    with pytest.raises(EncoderError, match="does not match"):
        load_encoder(tmp_path / "enc")


def test_unknown_config_field_is_named(encoder: Encoder, tmp_path: Path) -> None:
    encoder.save(tmp_path / "enc")
    config_file = tmp_path / "enc" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "sampel_rate": 8000}))
    with pytest.raises(EncoderError, match="sampel_rate"):
        load_encoder(tmp_path / "enc")


def test_a_backbone_built_for_another_rate_is_fed_audio_at_that_rate() -> None:
    """compact16.yaml's front end: a 16 kHz backbone cuts 16,000-sample windows, with the same spectrogram shape."""
    args = {"channels": [8, 16], "sample_rate": 16000, "n_fft": 1024, "hop": 256, "fmax": 7800.0}
    wide = Encoder(EncoderConfig.for_backbone("compact", backbone_args=args)).eval()
    assert (wide.sample_rate, wide.window_samples, wide.hop_samples) == (16000, 16000, 8000)
    narrow = Encoder(EncoderConfig.for_backbone("compact", backbone_args={"channels": [8, 16]}))
    wave = torch.zeros(1, 16000) + 0.01
    assert wide.backbone.melspec(wave).shape == narrow.backbone.melspec(wave[:, :8000]).shape
    assert wide.embed(np.full((2, 16000), 0.01, np.float32)).shape == (2, 128)


def test_unknown_backbone_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="compact"):
        EncoderConfig.for_backbone("resnet")


def test_undecodable_audio_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.mp3"
    bogus.write_text("this is not audio")
    with pytest.raises(AudioError, match="notes.mp3"):
        load_audio(bogus, 8000)
    with pytest.raises(AudioError, match="cannot open"):
        load_audio(tmp_path / "missing.wav", 8000)


def test_nafp_baseline_builds_and_embeds() -> None:
    nafp = Encoder(EncoderConfig.for_backbone("nafp", head="split", backbone_args={"width": 8, "hidden": 128})).eval()
    out = nafp.embed(np.zeros((2, nafp.window_samples), np.float32) + 0.01)
    assert out.shape == (2, 128)


def test_nafp_hears_each_window_relative_to_its_peak_so_gain_does_not_move_it() -> None:
    """As published: the log-mel is referenced to the window's peak. Weights trained before that load with
    `peak_reference: false` and keep the raw log-mel they learned on."""
    torch.manual_seed(0)
    wave = torch.from_numpy(load_audio(DEMO / "area1-game.opus", 8000)[40_000:56_000].reshape(2, 8000).copy())
    for peak_reference, moves in ((True, False), (False, True)):
        nafp = Encoder(EncoderConfig.for_backbone("nafp", backbone_args={"width": 8, "hidden": 64, "peak_reference": peak_reference})).eval()
        with torch.no_grad():
            loud, quiet = nafp.backbone(wave), nafp.backbone(wave * 0.01)
        # float32: the log-mel's relative error is about 1e-6 after the STFT; a raw log-mel shifts by ln(1e-4)
        assert (not torch.allclose(loud, quiet, rtol=1e-3, atol=1e-3)) == moves


def test_grafprint_builds_its_sizes_and_embeds_on_the_unit_sphere() -> None:
    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig.for_backbone("grafprint", backbone_args={"size": "cpu"})).eval()
    windows = np.random.default_rng(0).standard_normal((3, encoder.window_samples)).astype(np.float32)
    out = encoder.embed(windows)
    assert out.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="unknown GraFPrint size 'huge'"):
        Encoder(EncoderConfig.for_backbone("grafprint", backbone_args={"size": "huge"}))


def test_max_relative_graph_conv_ignores_the_order_of_nodes() -> None:
    """A graph has no node order: permuting the nodes permutes the output the same way."""
    from encoders.backbones.grafprint import MaxRelativeConv

    torch.manual_seed(0)
    conv = MaxRelativeConv(8, k=4).eval()
    nodes = torch.randn(2, 8, 20)
    order = torch.randperm(20)
    with torch.no_grad():
        torch.testing.assert_close(conv(nodes)[..., order], conv(nodes[..., order]))


def test_max_relative_aggregation_is_its_definition_in_value_and_gradient() -> None:
    """The one-gather form equals max_j (x_j - x_i) over each node's k nearest nodes, gradient included."""
    from encoders.backbones.grafprint import nearest_neighbours, strongest_neighbour

    torch.manual_seed(0)
    nodes = torch.randn(3, 8, 25, dtype=torch.float64, requires_grad=True)
    b, c, n = nodes.shape
    index = nearest_neighbours(nodes.detach(), 5).reshape(b, 1, -1).expand(b, c, -1)
    by_definition = (nodes.gather(2, index).reshape(b, c, n, -1) - nodes.unsqueeze(-1)).amax(dim=-1)
    one_gather = nodes.gather(2, strongest_neighbour(nodes, 5)) - nodes
    torch.testing.assert_close(one_gather, by_definition, rtol=0, atol=0)
    weights = torch.randn(b, c, n, dtype=torch.float64)
    (expected,) = torch.autograd.grad((by_definition * weights).sum(), nodes)
    (got,) = torch.autograd.grad((one_gather * weights).sum(), nodes)
    torch.testing.assert_close(got, expected)


def test_decoded_chunks_are_exact_and_each_folded_to_mono_on_its_own(tmp_path: Path) -> None:
    """decode_chunks hands the stream readers chunks of exactly CHUNK_SECONDS (FFmpeg's resampler cuts them),
    each the downmix of its own resampled stereo: stereo that turns to opposite phase every few frames is
    folded chunk by chunk, and no sample is lost, added or changed on the way."""
    import av
    import soundfile

    from encoders.audio import CHUNK_SECONDS, SQRT_HALF, _resampler, decode_chunks, downmix

    rate, rng = 44100, np.random.default_rng(0)
    left = rng.normal(0, 0.1, 2 * rate).astype(np.float32)
    right = left * np.where(np.arange(len(left)) // 4096 % 3 == 2, 1.0, -1.0).astype(np.float32)  # phase turns
    path = tmp_path / "phases.wav"
    soundfile.write(path, np.stack([left, right], axis=1), rate, subtype="FLOAT")
    with av.open(str(path)) as container:
        resampler = _resampler(av.AudioLayout("stereo"), 8000)
        frames = [out.to_ndarray() for frame in container.decode(container.streams.audio[0]) for out in resampler.resample(frame)]
        stereo = np.concatenate(frames + [out.to_ndarray() for out in resampler.resample(None)], axis=1)
    chunks = list(decode_chunks(path, 8000))
    assert [len(c) for c in chunks[:-1]] == [round(CHUNK_SECONDS * 8000)] * (len(chunks) - 1)
    assert sum(map(len, chunks)) == stereo.shape[1]
    pieces = np.split(stereo, np.cumsum([len(c) for c in chunks[:-1]]), axis=1)
    assert all(np.array_equal(chunk, downmix(piece)) for chunk, piece in zip(chunks, pieces))
    assert any(np.array_equal(chunk, (piece[0] - piece[1]) * SQRT_HALF) for chunk, piece in zip(chunks, pieces))  # some in opposite phase


def test_a_source_that_changes_rate_and_channels_midway_is_decoded_to_its_end(tmp_path: Path) -> None:
    """A station switching programmes, or two files joined: 44.1 kHz stereo, then 22.05 kHz mono. FFmpeg's
    resampler refused the first frame of the second part, and the rest of the file was lost."""
    import subprocess

    music = Path(__file__).parents[1] / "monitor" / "demo" / "music"
    parts = []
    for name, rate, channels in (("area1-game", 44100, 2), ("gardien-go", 22050, 1)):
        parts.append(tmp_path / f"{name}.mp3")
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(music / f"{name}.opus"), "-ar", str(rate), "-ac", str(channels),
                        "-write_xing", "0", "-id3v2_version", "0", str(parts[-1])], check=True)
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    audio = load_audio(joined, 8000)
    assert len(audio) / 8000 == pytest.approx(100.0, abs=0.2)
    level = 20 * np.log10(np.sqrt(np.mean(np.square(audio[: 100 * 8000].reshape(100, 8000)), axis=1)))
    assert (level[2:98] > -50).all()  # the second part is sound, not padding


def _chained_ogg(tmp_path: Path, parts: list[tuple[str, int, int, float]]) -> tuple[Path, list[Path]]:
    """An Ogg Vorbis file that is a chain of streams, one after another (a recorded Icecast station: a new one at each
    change of source), of (demo music, rate, channels, seconds) each; and its parts alone."""
    import subprocess

    music = Path(__file__).parents[1] / "monitor" / "demo" / "music"
    files = []
    for name, rate, channels, seconds in parts:
        files.append(tmp_path / f"{name}-{rate}-{channels}.ogg")
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(music / f"{name}.opus"), "-t", str(seconds), "-ar", str(rate),
                        "-ac", str(channels), "-c:a", "libvorbis", str(files[-1])], check=True)
    chained = tmp_path / "chained.ogg"
    chained.write_bytes(b"".join(f.read_bytes() for f in files))
    return chained, files


def test_a_chained_ogg_file_whose_rate_and_channels_change_is_decoded_whole_as_its_parts_are(tmp_path: Path) -> None:
    """FFmpeg reads on into an Ogg chain of the same rate and channels, and refused one that changes them ("patches
    welcome"): the rest of the file was lost to a monitor, and `catalog add` and `identify` handed the file to
    libsndfile, which read it for ever (the process was killed for memory). Now every part is read, sample for sample
    as it decodes alone, with the stream's skipping of damaged packets and without."""
    from encoders.audio import decode_chunks

    chained, parts = _chained_ogg(tmp_path, [("area1-game", 44100, 2, 6.0), ("gardien-go", 22050, 1, 5.0), ("over-theme", 44100, 2, 4.0)])
    expected = np.concatenate([load_audio(part, 8000) for part in parts])
    assert np.array_equal(load_audio(chained, 8000), expected)
    assert np.array_equal(np.concatenate(list(decode_chunks(chained, 8000, skip_damaged=True))), expected)


def test_a_chained_ogg_stream_whose_rate_and_channels_change_is_decoded_whole_over_http(tmp_path: Path) -> None:
    """The same chain sent as a live stream is (over HTTP, without a Content-Length: an Icecast station whose source
    changes): FFmpeg refused the second part, and the reader failed there (a live source cannot be opened again at a
    byte; test_icecast.py has what that cost with Icecast's burst). Now it is read as bytes and every part is decoded,
    sample for sample as the recorded file is, to the connection's end (which a live stream's is: an error)."""
    import http.server

    from encoders.audio import decode_chunks
    from monitor.bench.servers import LoopbackHttpServer

    chained, _ = _chained_ogg(tmp_path, [("area1-game", 44100, 2, 6.0), ("gardien-go", 22050, 1, 5.0), ("over-theme", 44100, 2, 4.0)])

    class LiveStream(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/ogg")
            self.end_headers()
            self.wfile.write(chained.read_bytes())

    chunks = []
    with LoopbackHttpServer(LiveStream) as server, pytest.raises(AudioError, match="the connection ended while reading"):
        chunks.extend(decode_chunks(f"http://127.0.0.1:{server.port}/live.ogg", 8000, skip_damaged=True, timeout=(5.0, 5.0)))
    decoded, expected = np.concatenate(chunks), load_audio(chained, 8000)
    assert len(decoded) >= len(expected) - 0.2 * 8000  # all but what the end, a live stream's, left in the resampler
    assert np.array_equal(decoded, expected[: len(decoded)])


@pytest.mark.parametrize("channels", [1, 2])
def test_libsndfile_is_not_given_a_chained_ogg_file(tmp_path: Path, channels: int) -> None:
    """libsndfile cannot measure a chained Ogg file: it read a mono one on past its end for ever, and a stereo one only
    to the end of its first stream, without a word. A file FFmpeg fails on is not handed to it then: FFmpeg's reason
    stands."""
    from encoders.audio import _libsndfile_chunks

    chained, _ = _chained_ogg(tmp_path, [("area1-game", 44100, channels, 3.0), ("gardien-go", 44100, channels, 3.0)])
    refused = AudioError("FFmpeg's reason")
    with pytest.raises(AudioError, match="FFmpeg's reason"):
        next(_libsndfile_chunks(chained, 8000, refused))


def test_a_file_ffmpeg_refuses_is_read_with_libsndfile_in_the_same_chunks(tmp_path: Path) -> None:
    """Some Ogg Vorbis headers (old libVorbis) and some formats FFmpeg refuses but libsndfile reads: such a file
    decodes chunk for chunk as the same audio in a format FFmpeg takes, so a stream can carry what the catalog holds."""
    import av
    import soundfile

    from encoders.audio import CHUNK_SECONDS, decode_chunks

    rate, rng = 44100, np.random.default_rng(1)
    stereo = rng.normal(0, 0.1, (3 * rate + 123, 2)).astype(np.float32)
    refused, taken = tmp_path / "take.mat", tmp_path / "take.wav"
    soundfile.write(refused, stereo, rate, format="MAT5", subtype="FLOAT")
    soundfile.write(taken, stereo, rate, subtype="FLOAT")
    with pytest.raises(av.InvalidDataError):
        av.open(str(refused))
    chunks = list(decode_chunks(refused, 8000))
    assert [len(c) for c in chunks[:-1]] == [round(CHUNK_SECONDS * 8000)] * (len(chunks) - 1)
    assert all(np.array_equal(a, b) for a, b in zip(chunks, decode_chunks(taken, 8000), strict=True))
    assert np.array_equal(load_audio(refused, 8000), load_audio(taken, 8000))


def test_a_file_ffmpeg_fails_to_decode_part_way_is_read_whole_by_libsndfile(tmp_path: Path) -> None:
    """An Ogg Vorbis file whose last packet FFmpeg's decoder rejects (the corpus has one, written by VLC) was
    indexed through libsndfile before the fallback moved into decode_chunks, and must still be."""
    import struct

    import soundfile

    from encoders.audio import decode_chunks

    rate = 22050
    path = tmp_path / "damaged.ogg"
    soundfile.write(path, np.random.default_rng(3).normal(0, 0.1, (3 * rate, 2)).astype(np.float32), rate, format="OGG", subtype="VORBIS")
    data = bytearray(path.read_bytes())
    last = data.rfind(b"OggS")  # garble the start of the last page's packet and give the page a valid CRC again
    payload = last + 27 + data[last + 26]
    data[payload : payload + 8] = bytes(b ^ 0xFF for b in data[payload : payload + 8])
    data[last + 22 : last + 26] = b"\0\0\0\0"
    data[last + 22 : last + 26] = struct.pack("<I", _ogg_crc(bytes(data[last:])))
    path.write_bytes(data)
    with pytest.raises(AudioError, match="cannot decode"):
        list(decode_chunks(path, 8000))
    expected = round(soundfile.info(path).frames * 8000 / rate)
    assert abs(len(load_audio(path, 8000)) - expected) <= 1


class CountedLock:
    """A lock that counts how often it was taken (decode_chunks takes its caller's once per batch of packets)."""

    def __init__(self) -> None:
        self.holds = 0

    def __enter__(self) -> None:
        self.holds += 1

    def __exit__(self, *exc: object) -> None:
        pass


def test_decoding_under_a_callers_lock_takes_it_per_batch_and_gives_the_same_chunks(tmp_path: Path) -> None:
    """Stream readers share a few turns to decode (monitor.stages.ingest.decode_turns): FFmpeg decodes about
    DECODE_BATCH_SECONDS of packets per turn (libsndfile a second per turn), and the chunks are those
    decoded without a lock."""
    import soundfile

    from encoders.audio import DECODE_BATCH_SECONDS, decode_chunks

    rate, seconds = 44100, 10
    stereo = np.random.default_rng(4).normal(0, 0.1, (seconds * rate, 2)).astype(np.float32)
    for name, fmt, per_hold in (("take.wav", "WAV", DECODE_BATCH_SECONDS), ("take.mat", "MAT5", 1.0)):  # MAT5: FFmpeg refuses it
        soundfile.write(tmp_path / name, stereo, rate, format=fmt, subtype="FLOAT")
        lock = CountedLock()
        chunks = list(decode_chunks(tmp_path / name, 8000, lock=lock))
        assert all(np.array_equal(a, b) for a, b in zip(chunks, decode_chunks(tmp_path / name, 8000), strict=True))
        assert seconds / per_hold <= lock.holds <= seconds / per_hold + 2  # and the flush, and a short last batch


def test_a_batch_of_packets_ends_at_a_packet_that_had_to_be_waited_for() -> None:
    """A live source at its edge: the packet that came after a wait is decoded at once, not held back until
    a batch's worth has come; packets without a duration are batched DECODE_BATCH_PACKETS at most."""
    import time
    from types import SimpleNamespace

    from encoders.audio import DECODE_BATCH_PACKETS, PACKET_WAIT_SECONDS, _batches

    def packets(durations: list[int | None], waited: int):
        for i, duration in enumerate(durations):
            if i == waited:
                time.sleep(2 * PACKET_WAIT_SECONDS)
            yield SimpleNamespace(index=i, duration=duration)

    tick_seconds = 0.1  # packets of duration 1: 0.1 s each
    batches = [[p.index for p in batch] for batch in _batches(packets([1] * 30, waited=3), tick_seconds)]
    assert sum(batches, []) == list(range(30))
    assert all(len(batch) <= 5 for batch in batches)  # 0.5 s of 0.1 s packets (fewer where a read was slow)
    assert any(batch[-1] == 3 for batch in batches)
    batches = list(_batches(packets([None] * 200, waited=-1), tick_seconds))
    assert sum(map(len, batches)) == 200 and all(len(batch) <= DECODE_BATCH_PACKETS for batch in batches)


def test_packets_read_before_a_read_fails_are_batched_before_it_fails() -> None:
    """A stall, a connection that ended, a demuxer that gives up: the packets read before the failing read aired,
    and a batch collecting them was dropped with the failure (0.17 s of an Ogg chain's end, up to
    DECODE_BATCH_SECONDS of a live stream before it dropped)."""
    import errno
    from types import SimpleNamespace

    import av

    from encoders.audio import _batches

    def packets():
        yield from (SimpleNamespace(index=i, duration=1) for i in range(3))
        raise av.FFmpegError(errno.EIO, "Input/output error")

    batches = _batches(packets(), tick_seconds=0.1)
    assert [p.index for p in next(batches)] == [0, 1, 2]
    with pytest.raises(av.FFmpegError):
        next(batches)


def _ogg_crc(page: bytes) -> int:
    """Ogg's page checksum: CRC-32 with polynomial 0x04C11DB7, no reflection, over the page with its CRC field zeroed."""
    crc = 0
    for byte in page:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


def test_a_wav_file_whose_header_says_its_audio_ends_early_is_read_to_its_end(tmp_path: Path) -> None:
    """A logger's WAV recording whose header was written at its start or now and then (a crash left the rest out of
    it), or one over 4 GB whose sizes wrapped round: FFmpeg read as far as the header says, 1 s of this 10 s file. A
    chunk after the audio (LIST, as FFmpeg writes it) is no such thing, and a size that says "unknown" is read as
    FFmpeg reads it."""
    import struct

    import soundfile

    audio = np.random.default_rng(5).normal(0, 0.1, (10 * 22050, 2)).astype(np.float32)
    whole = tmp_path / "whole.wav"
    soundfile.write(whole, audio, 22050, subtype="PCM_16")
    data = bytearray(whole.read_bytes())
    size_at = data.find(b"data") + 4
    expected = load_audio(whole, 8000)

    def variant(name: str, size: int, tail: bytes = b"") -> Path:
        path = tmp_path / name
        path.write_bytes(data[:size_at] + struct.pack("<I", size) + data[size_at + 4 :] + tail)
        return path

    assert np.array_equal(load_audio(variant("header-a-second-long.wav", 22050 * 4), 8000), expected)
    listed = b"LIST" + struct.pack("<I", 26) + b"INFOISFT" + struct.pack("<I", 14) + b"Lavf-airtrace\0"
    assert np.array_equal(load_audio(variant("a-list-after-the-audio.wav", len(audio) * 4, listed), 8000), expected)
    assert np.array_equal(load_audio(variant("size-unknown.wav", 0xFFFFFFFF), 8000), expected)
