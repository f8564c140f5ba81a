"""MERT and MuQ backbones: tiny random-weight models saved the way the Hub ships them, loaded offline,
trained frozen and fine-tuned through `airtrace train`'s code, exported and reloaded."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import HubertConfig, HubertModel

from encoders import EncoderError, load_encoder
from encoders.backbones import published_config
from encoders.backbones.mert import MertBackbone
from encoders.backbones.muq import MelSTFT, MuqBackbone, muq_class
from encoders.frontend import mel_filterbank
from encoders.train import TrainConfig, build_encoder, nt_xent, train

SR = 24000
CONFIGS = Path(__file__).parent.parent / "encoders" / "configs"

# MERT-v1's config.json as the Hub ships it (model_type mert_model, remote-code pointers, MERT-only
# options at their MERT-v1 values), shrunk to two layers of width 32 with MERT's 320-sample frame hop.
MERT_CONFIG = {
    "architectures": ["MERTModel"],
    "auto_map": {"AutoConfig": "configuration_MERT.MERTConfig", "AutoModel": "modeling_MERT.MERTModel"},
    "model_type": "mert_model",
    "feature_extractor_cqt": False,
    "feature_extractor_cqt_bins": 336,
    "deepnorm": False,
    "attention_relax": -1.0,
    "sample_rate": 24000,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [16, 16, 16],
    "conv_stride": [5, 8, 8],
    "conv_kernel": [10, 8, 8],
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "layerdrop": 0.1,
    "mask_time_prob": 0.05,
    "transformers_version": "4.25.1",
}

# MuQ-large's config shape (rotary conformer, dB-mel statistics) at two layers of width 32.
MUQ_CONFIG = {
    "label_rate": 25,
    "codebook_size": 64,
    "features": ["melspec_2048"],
    "hop_length": 240,
    "n_mels": 128,
    "conv_dim": 4,
    "encoder_dim": 32,
    "encoder_depth": 2,
    "is_flash": False,
    "stat": {"melspec_2048_cnt": 14282760192, "melspec_2048_mean": 6.768444971712967, "melspec_2048_std": 18.417922652295623},
    "w2v2_config": {
        "activation_dropout": 0.1,
        "attention_dropout": 0.1,
        "conformer_conv_dropout": 0.1,
        "conv_depthwise_kernel_size": 3,
        "feat_extract_activation": "gelu",
        "hidden_act": "swish",
        "hidden_dropout": 0.1,
        "hidden_size": 1024,
        "intermediate_size": 64,
        "layer_norm_eps": 1e-5,
        "layerdrop": 0.0,
        "num_attention_heads": 4,
        "num_conv_pos_embedding_groups": 4,
        "num_conv_pos_embeddings": 16,
        "num_hidden_layers": 24,
        "position_embeddings_type": "rotary",
        "rotary_embedding_base": 10000,
    },
}


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mert_dir(tmp_path_factory) -> Path:
    """A MERT-v1 download: config.json and pytorch_model.bin with the old weight-norm names."""
    path = tmp_path_factory.mktemp("MERT-v1-tiny")
    torch.manual_seed(1)
    hubert = HubertModel(HubertConfig(**{k: v for k, v in MERT_CONFIG.items() if k in HubertConfig.__annotations__}))
    state = {
        k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v"): v
        for k, v in hubert.state_dict().items()
    }
    assert any(k.endswith("weight_g") for k in state)
    torch.save(state, path / "pytorch_model.bin")
    (path / "config.json").write_text(json.dumps(MERT_CONFIG))
    return path


@pytest.fixture(scope="module")
def muq_dir(tmp_path_factory) -> Path:
    """A MuQ download, written by the muq package's own save_pretrained (config.json + model.safetensors)."""
    path = tmp_path_factory.mktemp("MuQ-tiny")
    torch.manual_seed(2)
    muq_class()(MUQ_CONFIG).save_pretrained(path)
    assert {"config.json", "model.safetensors"} <= {p.name for p in path.iterdir()}
    return path


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    """Three 4 s 'tracks': different chords over noise, as FLAC."""
    path = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    t = np.arange(4 * SR) / SR
    for i, base in enumerate((220.0, 330.0, 495.0)):
        chord = sum(np.sin(2 * np.pi * base * ratio * t + rng.uniform(0, 6)) for ratio in (1.0, 1.25, 1.5))
        sf.write(path / f"track{i}.flac", (0.2 * chord + 0.02 * rng.standard_normal(len(t))).astype(np.float32), SR)
    return path


@pytest.fixture
def weights(request, mert_dir, muq_dir) -> Path:
    return {"mert": mert_dir, "muq": muq_dir}[request.param]


def tiny_run(backbone: str, weights: Path, data: Path, frozen: bool) -> TrainConfig:
    return TrainConfig(
        data=str(data), backbone=backbone, weights=str(weights), frozen=frozen, dim=16, steps=2, batch_size=4,
        lr=0.01, warmup_steps=1, pool_chunks=3, chunk_seconds=3.0, refresh_per_step=1, voice_over=False,
        checkpoint_every=1, seed=3,
    )


def split_state(state: dict[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """(pretrained network, layer weights, head) parts of an encoder state dict."""
    pretrained = {k: v for k, v in state.items() if k.startswith("backbone.") and k != "backbone.layer_weights"}
    head = {k: v for k, v in state.items() if k.startswith("head.")}
    return pretrained, {"layer_weights": state["backbone.layer_weights"]}, head


def changed(before: dict, after: dict) -> list[str]:
    assert before.keys() == after.keys()
    return [k for k in before if not torch.equal(before[k], after[k])]


@pytest.mark.parametrize("backbone, weights", [("mert", "mert"), ("muq", "muq")], indirect=["weights"])
@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "finetuned"])
def test_training_freezes_or_tunes_the_pretrained_network(backbone, weights, frozen, audio_dir, tmp_path):
    cfg = tiny_run(backbone, weights, audio_dir, frozen)
    torch.manual_seed(cfg.seed)  # as train() does, so this is the encoder it starts from
    start = {k: v.clone() for k, v in build_encoder(cfg).state_dict().items()}
    exported = train(cfg, tmp_path / "run")
    trained = load_encoder(exported)

    assert trained.config.frozen is frozen and trained.config.backbone == backbone
    assert json.loads((exported / "config.json").read_text())["training"]["weights"] == weights.name
    pretrained_before, mix_before, head_before = split_state(start)
    pretrained_after, mix_after, head_after = split_state(trained.state_dict())
    assert changed(head_before, head_after) == list(head_before)
    assert changed(mix_before, mix_after) == ["layer_weights"]
    if frozen:
        assert changed(pretrained_before, pretrained_after) == []
    else:
        moved = changed(pretrained_before, pretrained_after)
        assert len(moved) > len(pretrained_before) // 2, f"only {moved} moved"


@pytest.mark.parametrize("backbone, weights", [("mert", "mert"), ("muq", "muq")], indirect=["weights"])
def test_saved_encoder_reloads_to_identical_embeddings(backbone, weights, tmp_path):
    cfg = TrainConfig(data="unused", backbone=backbone, weights=str(weights), backbone_args={"layer": 1}, dim=16)
    encoder = build_encoder(cfg)
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=0.01)
    waves = torch.randn(4, encoder.window_samples) * 0.1
    loss = nt_xent(encoder(waves), encoder(waves + 0.01 * torch.randn_like(waves)), 0.1)
    loss.backward()
    optimizer.step()

    loaded = load_encoder(encoder.save(tmp_path / "encoder"))
    assert loaded.config == encoder.config and loaded.config.backbone_args["layer"] == 1
    assert (loaded.sample_rate, loaded.window_samples, loaded.hop_samples) == (SR, SR, SR // 2)
    windows = np.random.default_rng(0).standard_normal((3, encoder.window_samples)).astype(np.float32) * 0.1
    embedded = encoder.embed(windows)
    assert embedded.shape == (3, 16)
    np.testing.assert_array_equal(loaded.embed(windows), embedded)
    assert loaded.fingerprint() == encoder.fingerprint()


@pytest.mark.parametrize("backbone", ["mert", "muq"])
def test_missing_weights_directory_says_how_to_fetch(backbone, tmp_path):
    with pytest.raises(EncoderError, match="no pretrained weights directory.*hf download"):
        build_encoder(TrainConfig(data="unused", backbone=backbone, weights=str(tmp_path / "nowhere")))
    with pytest.raises(EncoderError, match="set `weights:`"):
        build_encoder(TrainConfig(data="unused", backbone=backbone))


@pytest.mark.parametrize("backbone, weights", [("mert", "mert"), ("muq", "muq")], indirect=["weights"])
def test_weights_that_do_not_fit_their_config_are_refused(backbone, weights, tmp_path):
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    for item in weights.iterdir():
        (mismatched / item.name).write_bytes(item.read_bytes())
    config = json.loads((mismatched / "config.json").read_text())
    config["encoder_depth" if backbone == "muq" else "num_hidden_layers"] = 3
    (mismatched / "config.json").write_text(json.dumps(config))
    with pytest.raises(EncoderError, match="do not fit its config.json"):
        build_encoder(TrainConfig(data="unused", backbone=backbone, weights=str(mismatched)))


def test_mert_options_hubert_lacks_are_refused(mert_dir, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**MERT_CONFIG, "feature_extractor_cqt": True}))
    (tmp_path / "pytorch_model.bin").write_bytes((mert_dir / "pytorch_model.bin").read_bytes())
    with pytest.raises(EncoderError, match="CQT front end"):
        build_encoder(TrainConfig(data="unused", backbone="mert", weights=str(tmp_path)))


def test_layer_must_be_weighted_or_a_hidden_state(mert_dir):
    with pytest.raises(EncoderError, match="layer 3 is neither"):
        build_encoder(TrainConfig(data="unused", backbone="mert", weights=str(mert_dir), backbone_args={"layer": 3}))


def test_mert_standardises_each_window_as_its_processor_does(mert_dir):
    backbone = build_encoder(TrainConfig(data="unused", backbone="mert", weights=str(mert_dir))).backbone.eval()
    wave = torch.randn(2, SR) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(backbone(3.0 * wave + 0.2), backbone(wave), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(backbone(wave.flip(1)), backbone(wave), rtol=1e-4, atol=1e-4)


def test_muq_hidden_states_match_its_conformer(muq_dir):
    backbone = build_encoder(TrainConfig(data="unused", backbone="muq", weights=str(muq_dir))).backbone.eval()
    wave = torch.randn(2, SR) * 0.1
    states = backbone.hidden_states(wave)
    model = backbone.muq.model
    mel = model.normalize(model.preprocessing(wave, features=["melspec_2048"]))["melspec_2048"]
    assert len(states) == MUQ_CONFIG["encoder_depth"] + 1
    assert [s.shape for s in states] == [(2, 25, 32)] * len(states)  # 25 frames/s
    assert torch.equal(states[-1], model.conformer(model.conv(mel)).last_hidden_state)


def htk_corners(n_mels: int) -> np.ndarray:
    """The n_mels + 2 corner frequencies (Hz) of HTK mel triangles from 0 to SR/2, in float64."""
    top = 2595.0 * np.log10(1.0 + SR / 2 / 700.0)
    return 700.0 * (10.0 ** (np.linspace(0.0, top, n_mels + 2) / 2595.0) - 1.0)


def torchaudio_mel_float64(wave: np.ndarray, n_fft: int, hop: int, n_mels: int) -> tuple[np.ndarray, np.ndarray]:
    """torchaudio's MelSpectrogram(SR, n_fft, hop, n_mels) in float64, written from its definition: HTK mel
    triangles of peak height one (melscale_fbanks, norm=None) over centred, reflect-padded frames with a
    periodic Hann window, power 2. Returns the filterbank (bins, mels) and the mel power (frames, mels)."""
    corners = htk_corners(n_mels)
    slopes = corners[None, :] - np.linspace(0.0, SR / 2, n_fft // 2 + 1)[:, None]
    widths = np.diff(corners)
    filters = np.maximum(0.0, np.minimum(-slopes[:, :-2] / widths[:-1], slopes[:, 2:] / widths[1:]))
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(wave, n_fft // 2, mode="reflect"), n_fft)[::hop]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    return filters, (np.abs(np.fft.rfft(frames * window, axis=1)) ** 2) @ filters


def test_muq_mel_front_end_matches_torchaudio():
    """MuQ was trained on torchaudio's MelSpectrogram + AmplitudeToDB: the float32 stand-in must match a float64
    computation of that definition within float32 error, and the float64 one must match values torchaudio 2.9
    printed where float32 can resolve them (bands ~100 dB below a sine's peak are rounding noise in float32)."""
    n_fft, hop, n_mels, eps = 2048, 240, 128, float(np.finfo(np.float32).eps)
    wave = 0.5 * np.sin(2 * math.pi * 1000 * np.arange(SR) / SR)
    filters64, power64 = torchaudio_mel_float64(wave, n_fft, hop, n_mels)

    # Filters: bin frequencies (up to SR/2 Hz) rounded in float32, divided by the narrowest triangle side.
    filter_tol = 2 * eps * (SR / 2) / np.diff(htk_corners(n_mels)).min()
    filters = mel_filterbank(SR, n_fft, n_mels, 0.0, SR // 2, unit_area=False).T.double().numpy()
    np.testing.assert_allclose(filters, filters64, rtol=0, atol=filter_tol)
    bands = [0, 1, 40, 100, 127]
    sum_tol = filter_tol * (filters64[:, bands] > 0).sum(0)
    assert np.all(np.abs(filters64.sum(0)[bands] - [1.2737288, 1.3998230, 3.3354616, 12.988179, 23.811516]) <= sum_tol)
    np.testing.assert_allclose(filters64.max(0)[bands], [0.7367933, 0.8205884, 0.9014441, 0.9987430, 0.9967916], rtol=0, atol=filter_tol)

    # Power: FFT error grows with log2(n_fft), the mel sum with the bins a band adds up; both relative to the peak.
    power = MelSTFT(n_fft=n_fft, hop_length=hop)(torch.from_numpy(wave.astype(np.float32))[None])[0].double().numpy().T
    assert power.shape == power64.shape == (101, n_mels)
    growth = 2 * math.log2(n_fft) + (filters64 > 0).sum(0).max()
    np.testing.assert_allclose(power, power64, rtol=0, atol=growth * eps * power64.max())

    db = MelSTFT(n_fft=n_fft, hop_length=hop, is_db=True)(torch.from_numpy(wave.astype(np.float32))[None])[0, :, 50]
    assert int(db.argmax()) == int(power64[50].argmax()) == 38
    peak_db_tol = 10 * math.log10(1 + growth * eps)
    assert abs(10 * math.log10(power64[50, 38]) - 46.996758) <= peak_db_tol
    assert abs(float(db[38]) - 46.996758) <= peak_db_tol


@pytest.mark.parametrize("name", ["mert", "muq"])
def test_example_configs_train_from_the_directory_the_fetch_hint_names(name):
    cfg = TrainConfig.from_file(CONFIGS / f"{name}.yaml")
    assert (cfg.backbone, cfg.frozen, cfg.backbone_args) == (name, False, {"layer": "weighted"})
    assert f"--local-dir {cfg.weights}`" in importlib.import_module(f"encoders.backbones.{name}").FETCH
    assert f"--local-dir {cfg.weights}\n" in (CONFIGS / f"{name}.yaml").read_text()


def test_bench_backbones_loads_each_model_through_the_pretrained_path(tmp_path):
    """The measurement runs the user's path (a downloaded directory, loaded strictly) in a fresh process."""
    from click.testing import CliRunner

    from monitor.cli import main

    (tmp_path / "mert.json").write_text(json.dumps(MERT_CONFIG))
    (tmp_path / "muq.json").write_text(json.dumps(MUQ_CONFIG))
    out = tmp_path / "backbones.json"
    result = CliRunner().invoke(main, ["bench", "backbones", "--model", f"mert={tmp_path / 'mert.json'}",
                                       "--model", f"muq={tmp_path / 'muq.json'}", "--out", str(out)])
    assert result.exit_code == 0, result.output
    measured = json.loads(out.read_text())["backbones"]
    for name, backbone, config in (("mert", MertBackbone, MERT_CONFIG), ("muq", MuqBackbone, MUQ_CONFIG)):
        figures = measured[f"{name}={tmp_path / f'{name}.json'}"]
        assert figures["parameters"] == sum(p.numel() for p in backbone(config).parameters())
        assert figures["windows_per_cpu_second"] > 0 and figures["frozen_step"]["cpu_seconds"] > 0
        backbone_parameters = figures["parameters"]
        assert figures["finetuned_step"]["trained_parameters"] > backbone_parameters  # the backbone and the head
        assert figures["frozen_step"]["trained_parameters"] < figures["finetuned_step"]["trained_parameters"] - backbone_parameters + 100
        assert figures["peak_resident_gb_training"] >= figures["resident_gb_for_inference"] > 0


def test_published_mert_config_builds_the_95m_model():
    backbone, config = published_config("mert-v1-95m")
    assert backbone == "mert"
    assert 94e6 < sum(p.numel() for p in MertBackbone(config).parameters()) < 96e6
