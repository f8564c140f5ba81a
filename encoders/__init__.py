"""airtrace's encoders: audio windows in, L2-normalised fingerprint embeddings (and content classes) out.

This package knows audio and models and nothing of streams; `monitor` uses it through these names.
"""

from encoders.audio import AUDIO_SUFFIXES, AudioError, audio_files, decode_chunks, encode_ogg, load_audio
from encoders.augment import Chain, Distortion, Sources, coloured_noise, parse_chain, random_chain, resample, synthesize_speech
from encoders.classes import CLASSES, ContentClassifier
from encoders.model import DEFAULT_ENCODER, Encoder, EncoderConfig, EncoderError, load_encoder

__all__ = [
    "AUDIO_SUFFIXES",
    "AudioError",
    "CLASSES",
    "Chain",
    "ContentClassifier",
    "DEFAULT_ENCODER",
    "Distortion",
    "Encoder",
    "EncoderConfig",
    "EncoderError",
    "Sources",
    "audio_files",
    "coloured_noise",
    "decode_chunks",
    "encode_ogg",
    "load_audio",
    "load_encoder",
    "parse_chain",
    "random_chain",
    "resample",
    "synthesize_speech",
]
