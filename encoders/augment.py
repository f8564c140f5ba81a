"""Broadcast distortions with named strengths, shared by training and the benchmark.

A distortion is written `name:value` (`tempo:1.1`, `pitch:-1`, `mp3:64`, `noise:5`) and a chain joins
them with `+` (`speed:1.05+noise:10+mp3:64`). Each one maps mono float32 audio at any sample rate to
distorted audio at the same rate; `rate` says how much faster the content plays afterwards, so a
caller can find where a moment of the original landed (t_out = t_in / rate).
"""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import av.filter
import numpy as np

from encoders.audio import AudioError, interrupts_held, load_audio
from encoders.speech import babble

Apply = Callable[[np.ndarray, int, float, np.random.Generator, "Sources"], np.ndarray]


@dataclass(frozen=True)
class Sources:
    """Real recordings mixed in by the `speech`, `babble` and `background` distortions, at the working rate.

    `speech`: voice-over clips, one drawn per use; `talkers`: recorded prompts grouped by voice (see
    encoders.speech), from which `babble` builds its crowd; `backgrounds`: other programmes (music, street).
    """

    speech: tuple[np.ndarray, ...] = ()
    talkers: tuple[tuple[np.ndarray, ...], ...] = ()
    backgrounds: tuple[np.ndarray, ...] = ()


def ffmpeg_filter(audio: np.ndarray, sample_rate: int, chain: Sequence[str], out_rate: int | None = None) -> np.ndarray:
    """Run mono audio through FFmpeg filters (`["atempo=1.1", "highpass=f=300"]`) with PyAV."""
    graph = av.filter.Graph()
    previous = graph.add_abuffer(format="flt", sample_rate=sample_rate, layout="mono")
    source = previous
    for spec in chain:
        name, _, args = spec.partition("=")
        node = graph.add(name, args)
        previous.link_to(node)
        previous = node
    sink = graph.add("abuffersink")
    previous.link_to(sink)
    graph.configure()
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio, dtype=np.float32)[None], format="flt", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = sample_rate, 0, Fraction(1, sample_rate)
    out = []
    with interrupts_held():  # a Ctrl-C in a pull would be lost in its EAGAIN or EOF (see interrupts_held)
        source.push(frame)
        source.push(None)
        while True:
            try:
                out.append(sink.pull().to_ndarray().reshape(-1))
            except (av.error.EOFError, av.error.BlockingIOError):
                break
    result = np.concatenate(out) if out else np.zeros(0, np.float32)
    return result.astype(np.float32, copy=False)


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling through FFmpeg's swresample."""
    if rate_in == rate_out:
        return audio
    return ffmpeg_filter(audio, rate_in, [f"aresample={rate_out}"])


def _change_speed(audio: np.ndarray, sr: int, factor: float) -> np.ndarray:
    """Tempo and pitch together, as a turntable or radio automation does: play the samples faster."""
    return ffmpeg_filter(audio, sr, [f"asetrate={round(sr * factor)}", f"aresample={sr}"])


def _tempo(audio: np.ndarray, sr: int, factor: float, rng: np.random.Generator, src: Sources) -> np.ndarray:
    return ffmpeg_filter(audio, sr, [f"atempo={factor:.6f}"])


def _speed(audio: np.ndarray, sr: int, factor: float, rng: np.random.Generator, src: Sources) -> np.ndarray:
    return _change_speed(audio, sr, factor)


def _pitch(audio: np.ndarray, sr: int, semitones: float, rng: np.random.Generator, src: Sources) -> np.ndarray:
    factor = 2.0 ** (semitones / 12.0)
    return ffmpeg_filter(audio, sr, [f"asetrate={round(sr * factor)}", f"aresample={sr}", f"atempo={1.0 / factor:.6f}"])


CODEC_RATES = {"mp3": ("libmp3lame", "mp3", 22050), "aac": ("aac", "adts", 24000), "opus": ("libopus", "ogg", 24000)}


def _codec(name: str) -> Apply:
    codec, container_format, codec_rate = CODEC_RATES[name]

    def apply(audio: np.ndarray, sr: int, kbps: float, rng: np.random.Generator, src: Sources) -> np.ndarray:
        """Encode at `kbps` and decode again, at a rate the codec is normally run at."""
        buffer = io.BytesIO()
        with av.open(buffer, "w", format=container_format) as out:
            stream = out.add_stream(codec, rate=codec_rate, layout="mono")
            stream.bit_rate = int(kbps * 1000)
            wide = resample(audio, sr, codec_rate)
            frame = av.AudioFrame.from_ndarray(wide[None], format="flt", layout="mono")
            frame.sample_rate = codec_rate
            for packet in stream.encode(frame):
                out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        buffer.seek(0)
        decoded = load_audio(buffer, sr) if buffer.getbuffer().nbytes else np.zeros(0, np.float32)
        return _fit_length(decoded, len(audio))

    return apply


def _fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Trim or zero-pad to `length` (codecs add priming samples and padding)."""
    if len(audio) >= length:
        return audio[:length]
    return np.pad(audio, (0, length - len(audio)))


def _highpass(audio: np.ndarray, sr: int, hz: float, rng: np.random.Generator, src: Sources) -> np.ndarray:
    return ffmpeg_filter(audio, sr, [f"highpass=f={hz}:p=2"])


def _lowpass(audio: np.ndarray, sr: int, hz: float, rng: np.random.Generator, src: Sources) -> np.ndarray:
    return ffmpeg_filter(audio, sr, [f"lowpass=f={min(hz, sr * 0.45):.0f}:p=2"])


def _eq(audio: np.ndarray, sr: int, gain_db: float, rng: np.random.Generator, src: Sources) -> np.ndarray:
    """Three peaking bands at random frequencies, each boosted or cut by up to `gain_db`."""
    bands = [
        f"equalizer=f={rng.uniform(100, sr * 0.4):.0f}:t=o:w={rng.uniform(0.5, 2):.2f}:g={rng.uniform(-gain_db, gain_db):.1f}"
        for _ in range(3)
    ]
    return ffmpeg_filter(audio, sr, bands)


def _echo(audio: np.ndarray, sr: int, delay_ms: float, rng: np.random.Generator, src: Sources) -> np.ndarray:
    return _fit_length(ffmpeg_filter(audio, sr, [f"aecho=0.8:0.9:{delay_ms:.0f}:0.4"]), len(audio))


def _reverb(audio: np.ndarray, sr: int, rt60: float, rng: np.random.Generator, src: Sources) -> np.ndarray:
    """Convolve with a synthetic room: exponentially decaying noise with the given RT60 in seconds."""
    n = max(1, int(rt60 * sr))
    t = np.arange(n) / sr
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    ir[0] = 1.0
    ir /= np.sqrt(np.sum(ir**2))
    size = 1 << int(np.ceil(np.log2(len(audio) + n)))
    wet = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(ir, size), size)[: len(audio)]
    return _match_rms(wet.astype(np.float32), audio)


def _match_rms(audio: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return audio * (_rms(reference) / max(_rms(audio), 1e-9))


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0


def coloured_noise(length: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise whose power falls as 1/f**exponent: 0 white, 1 pink, 2 brown."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.maximum(np.arange(len(spectrum)), 1)
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), length)
    return (noise / max(_rms(noise), 1e-9)).astype(np.float32)


def _mix_at_snr(audio: np.ndarray, other: np.ndarray, snr_db: float) -> np.ndarray:
    scale = _rms(audio) / max(_rms(other), 1e-9) / (10 ** (snr_db / 20))
    return (audio + scale * other).astype(np.float32)


def _noise(audio: np.ndarray, sr: int, snr_db: float, rng: np.random.Generator, src: Sources) -> np.ndarray:
    """Coloured noise (white, pink or brown, drawn at random) at `snr_db`."""
    return _mix_at_snr(audio, coloured_noise(len(audio), float(rng.choice([0.0, 1.0, 2.0])), rng), snr_db)


def _excerpt(pool: Sequence[np.ndarray], length: int, rng: np.random.Generator, what: str) -> np.ndarray:
    if not pool:
        raise AudioError(f"the {what} distortion needs recordings; pass a Sources with {what} clips")
    clip = pool[rng.integers(len(pool))]
    reps = int(np.ceil(length / max(len(clip), 1))) + 1
    clip = np.tile(clip, reps)
    start = rng.integers(0, len(clip) - length + 1)
    return clip[start : start + length]


def _speech(audio: np.ndarray, sr: int, snr_db: float, rng: np.random.Generator, src: Sources) -> np.ndarray:
    """A voice over the music, as a DJ talking over an intro, at `snr_db` music-to-voice."""
    return _mix_at_snr(audio, _excerpt(src.speech, len(audio), rng, "speech"), snr_db)


BABBLE_TALKERS = 4


def _babble(audio: np.ndarray, sr: int, snr_db: float, rng: np.random.Generator, src: Sources) -> np.ndarray:
    """BABBLE_TALKERS recorded people talking at once (a studio guest panel, a crowd) at `snr_db` music-to-babble."""
    if not src.talkers:
        raise AudioError("the babble distortion needs recorded voices; pass Sources(talkers=encoders.speech.load_voices(...))")
    return _mix_at_snr(audio, babble(src.talkers, len(audio), sr, BABBLE_TALKERS, rng), snr_db)


def _background(audio: np.ndarray, sr: int, snr_db: float, rng: np.random.Generator, src: Sources) -> np.ndarray:
    """A real recording (another programme, a street) under the music at `snr_db`."""
    return _mix_at_snr(audio, _excerpt(src.backgrounds, len(audio), rng, "backgrounds"), snr_db)


def _gain(audio: np.ndarray, sr: int, db: float, rng: np.random.Generator, src: Sources) -> np.ndarray:
    return audio * np.float32(10 ** (db / 20))


def _compress(audio: np.ndarray, sr: int, ratio: float, rng: np.random.Generator, src: Sources) -> np.ndarray:
    """A broadcast processor: heavy compression with make-up gain, then a limiter."""
    return ffmpeg_filter(audio, sr, [f"acompressor=threshold=0.05:ratio={ratio}:attack=5:release=50:makeup=4", "alimiter=limit=0.9"])


def _clip(audio: np.ndarray, sr: int, fraction: float, rng: np.random.Generator, src: Sources) -> np.ndarray:
    """Hard clipping at `fraction` of the peak."""
    limit = np.float32(fraction * max(float(np.abs(audio).max(initial=0.0)), 1e-9))
    return np.clip(audio, -limit, limit)


DISTORTIONS: dict[str, Apply] = {
    "tempo": _tempo,
    "pitch": _pitch,
    "speed": _speed,
    "mp3": _codec("mp3"),
    "aac": _codec("aac"),
    "opus": _codec("opus"),
    "highpass": _highpass,
    "lowpass": _lowpass,
    "eq": _eq,
    "echo": _echo,
    "reverb": _reverb,
    "noise": _noise,
    "speech": _speech,
    "babble": _babble,
    "background": _background,
    "gain": _gain,
    "compress": _compress,
    "clip": _clip,
}
# Each distortion's unit and the values it takes: FFmpeg's atempo and acompressor refuse values outside
# theirs (an OverflowError deep in PyAV), and others go silently wrong (NaN audio, silence, no effect).
RANGES: dict[str, tuple[str, float, float]] = {
    "tempo": ("factor", 0.5, 4.0), "pitch": ("semitones", -12.0, 12.0), "speed": ("factor", 0.25, 4.0),
    "mp3": ("kbps", 8, 256), "aac": ("kbps", 8, 256), "opus": ("kbps", 8, 256),
    "highpass": ("Hz", 1, 24000), "lowpass": ("Hz", 1, 24000), "eq": ("dB", 0, 30), "echo": ("ms", 1, 5000),
    "reverb": ("RT60 s", 0.01, 10), "noise": ("dB SNR", -60, 100), "speech": ("dB SNR", -60, 100),
    "babble": ("dB SNR", -60, 100), "background": ("dB SNR", -60, 100), "gain": ("dB", -100, 60),
    "compress": ("ratio", 1, 20), "clip": ("fraction of peak", 0.01, 1),
}


@dataclass(frozen=True)
class Distortion:
    """One named distortion at one strength."""

    name: str
    value: float

    def __post_init__(self) -> None:
        if self.name not in RANGES:
            raise ValueError(f"unknown distortion {self.name!r}; choose one of {', '.join(RANGES)}")
        unit, low, high = RANGES[self.name]
        if not low <= self.value <= high:  # NaN fails too
            raise ValueError(f"{self.name} takes {unit} from {low:g} to {high:g}, not {self.value:g}")

    def __str__(self) -> str:
        return f"{self.name}:{self.value:g}"

    @property
    def rate(self) -> float:
        """How much faster the content plays afterwards."""
        return self.value if self.name in ("tempo", "speed") else 1.0

    def apply(self, audio: np.ndarray, sample_rate: int, rng: np.random.Generator, sources: Sources = Sources()) -> np.ndarray:
        return DISTORTIONS[self.name](audio, sample_rate, self.value, rng, sources)


@dataclass(frozen=True)
class Chain:
    """Distortions applied in order; the empty chain is the clean signal."""

    steps: tuple[Distortion, ...] = ()

    def __str__(self) -> str:
        return "+".join(map(str, self.steps)) or "clean"

    @property
    def rate(self) -> float:
        return float(np.prod([d.rate for d in self.steps])) if self.steps else 1.0

    def apply(self, audio: np.ndarray, sample_rate: int, rng: np.random.Generator, sources: Sources = Sources()) -> np.ndarray:
        for step in self.steps:
            audio = step.apply(audio, sample_rate, rng, sources)
        return audio


def parse_chain(text: str) -> Chain:
    """`"speed:1.05+noise:10"` -> Chain; `"clean"` or `""` is the empty chain."""
    if text in ("", "clean"):
        return Chain()
    steps = []
    for part in text.split("+"):
        name, sep, value = part.partition(":")
        if name not in DISTORTIONS or not sep:
            raise ValueError(f"bad distortion {part!r}: write name:value with a name from {', '.join(DISTORTIONS)}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"bad distortion {part!r}: {value!r} is not a number ({RANGES[name][0]})") from None
        try:
            steps.append(Distortion(name, number))
        except ValueError as exc:
            raise ValueError(f"bad distortion {part!r}: {exc}") from None
    return Chain(tuple(steps))


@dataclass(frozen=True)
class Recipe:
    """How far training's distortions go, and whose voices talk over the music.

    Training a little past the ranges we test keeps the middle of the range well inside what the encoder
    has seen. Tempo and speed factors are drawn log-uniformly within their bounds, pitch uniformly within
    +-`pitch` semitones; `voices` names who talks over the music: "espeak" (synthetic voice-over),
    "recorded" (encoders.speech's training voices) or "espeak+recorded" (both, in one pool), `babble`
    is the chance of recorded multi-talker babble at 0-15 dB, and `noise` the SNR range (dB) of coloured noise.
    """

    tempo: tuple[float, float]
    speed: tuple[float, float]
    pitch: float
    voices: str
    babble: float = 0.0
    noise: tuple[float, float] = (-3.0, 15.0)


RECIPES = {
    # the shipped `compact` model's: benchmark ranges +-10-20 %, +-2 semitones, espeak-ng voice-over
    "v1": Recipe(tempo=(0.8, 1.25), speed=(0.85, 1.18), pitch=2.5, voices="espeak"),
    # warps to +-25 % and +-3 semitones (the matcher's speed range is 0.8-1.25), real talk and babble
    "v2": Recipe(tempo=(0.75, 1.33), speed=(0.75, 1.33), pitch=3.5, voices="recorded", babble=0.3),
    # v1's warps and synthetic voice-over (what v2 lost ground on) with the recorded talk and babble of v2
    "v3": Recipe(tempo=(0.8, 1.25), speed=(0.85, 1.18), pitch=2.5, voices="espeak+recorded", babble=0.3),
    # v3 with noise down to -9 dB: a broadcast's noise floor is steady while music is not, so a quiet intro
    # under noise 5-10 dB below the track's level is heard at 0 dB or below
    "v4": Recipe(tempo=(0.8, 1.25), speed=(0.85, 1.18), pitch=2.5, voices="espeak+recorded", babble=0.3, noise=(-9.0, 15.0)),
}


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def random_chain(rng: np.random.Generator, sources: Sources = Sources(), recipe: Recipe = RECIPES["v1"]) -> Chain:
    """A training chain: one time-frequency change, then a few of the rest; voices and recordings only
    where `sources` has them."""
    steps: list[Distortion] = []
    warp = rng.choice(["tempo", "speed", "pitch", "none"], p=[0.3, 0.3, 0.25, 0.15])
    if warp == "tempo":
        steps.append(Distortion("tempo", _log_uniform(rng, recipe.tempo)))
    elif warp == "speed":
        steps.append(Distortion("speed", _log_uniform(rng, recipe.speed)))
    elif warp == "pitch":
        steps.append(Distortion("pitch", float(rng.uniform(-recipe.pitch, recipe.pitch))))
    optional: list[tuple[float, Callable[[], Distortion]]] = [
        (0.3, lambda: Distortion("eq", float(rng.uniform(3, 12)))),
        (0.2, lambda: Distortion("highpass", float(rng.uniform(100, 600)))),
        (0.2, lambda: Distortion("lowpass", float(rng.uniform(1500, 3800)))),
        (0.25, lambda: Distortion("reverb", float(rng.uniform(0.2, 1.2)))),
        (0.15, lambda: Distortion("echo", float(rng.uniform(40, 250)))),
        (0.2, lambda: Distortion("compress", float(rng.uniform(2, 10)))),
        (0.5, lambda: Distortion("noise", float(rng.uniform(*recipe.noise)))),
        (0.1, lambda: Distortion("clip", float(rng.uniform(0.3, 0.8)))),
    ]
    if sources.speech:
        optional.append((0.3, lambda: Distortion("speech", float(rng.uniform(-3, 10)))))
    if sources.backgrounds:
        optional.append((0.2, lambda: Distortion("background", float(rng.uniform(0, 15)))))
    if sources.talkers and recipe.babble:
        optional.append((recipe.babble, lambda: Distortion("babble", float(rng.uniform(0, 15)))))
    steps += [make() for p, make in optional if rng.random() < p]
    if rng.random() < 0.4:
        codec = str(rng.choice(["mp3", "aac", "opus"]))
        steps.append(Distortion(codec, float(rng.choice([24, 32, 48, 64]))))
    return Chain(tuple(steps))


def synthesize_speech(text: str, sample_rate: int, voice: str = "en", words_per_minute: int = 160, pitch: int = 50) -> np.ndarray:
    """Speech from Debian's espeak-ng, for voice-over distortions and demo broadcasts."""
    if shutil.which("espeak-ng") is None:
        raise AudioError("espeak-ng is missing; install it with `apt-get install espeak-ng`")
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-p", str(pitch), "--stdout", text],
        check=True, capture_output=True,
    ).stdout
    return load_audio(io.BytesIO(wav), sample_rate)
