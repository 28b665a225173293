"""The streaming path itself (resampling + framing), measured with the identity engine."""

from collections.abc import Callable

import numpy as np
import pytest

from conftest import snr_db
from vcstream.audio.resample import resample
from vcstream.engines.passthrough import PassthroughEngine
from vcstream.streaming.converter import StreamConverter, convert_stream


def run_passthrough(x: np.ndarray, io_rate: int, block_time: float) -> tuple[np.ndarray, StreamConverter]:
    engine = PassthroughEngine()
    voice = engine.prepare_voice(x, io_rate)
    converter = StreamConverter(engine, voice, io_rate, engine.settings(block_time=block_time))
    return convert_stream(converter, x), converter


def max_jump(x: np.ndarray) -> float:
    return float(np.max(np.abs(np.diff(x))))


def band_limit(x: np.ndarray, rate: int) -> np.ndarray:
    # The reference for comparison: the input as it looks after crossing 22.05 kHz (content above
    # ~10 kHz cannot survive that rate in any implementation).
    if rate <= 22050:
        return x
    y = resample(resample(x, rate, 22050), 22050, rate)
    y = y[: x.shape[0]]
    return np.pad(y, (0, x.shape[0] - y.shape[0]))


@pytest.mark.parametrize("io_rate", [16000, 44100, 48000])
@pytest.mark.parametrize("block_time", [0.02, 0.1, 0.18])
def test_tone_through_streaming_path(io_rate: int, block_time: float) -> None:
    t = np.arange(int(io_rate * 1.5)) / io_rate
    x = (0.6 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 2500 * t)).astype(np.float32)
    y, _ = run_passthrough(x, io_rate, block_time)
    assert y.shape == x.shape
    core = slice(200, -200)
    assert snr_db(x[core], y[core]) >= 40
    # No clicks at block joins: the output never jumps more than the input does.
    assert max_jump(y[core]) <= 1.05 * max_jump(x[core])


@pytest.mark.parametrize(("io_rate", "block_time"), [(16000, 0.05), (48000, 0.1), (48000, 0.3), (8000, 0.1)])
def test_speech_through_streaming_path(
    flite_speech: Callable[..., tuple[np.ndarray, int]], io_rate: int, block_time: float
) -> None:
    x, _ = flite_speech("slt", rate=io_rate)
    y, _ = run_passthrough(x, io_rate, block_time)
    assert y.shape == x.shape
    ref = band_limit(x, io_rate)
    assert snr_db(ref, y) >= 40
    assert max_jump(y) <= 1.05 * max_jump(ref) + 1e-4


def test_latency_accounts_for_block_and_resamplers() -> None:
    engine = PassthroughEngine()
    x = np.zeros(4800, np.float32)
    voice = engine.prepare_voice(x, 48000)
    converter = StreamConverter(engine, voice, 48000, engine.settings(block_time=0.1))
    assert converter.delay_samples == 0
    # block (100 ms) + under 3 ms held by the two resamplers
    assert 0.1 < converter.algorithmic_latency_s < 0.103
    # Output appears only once a whole block is in, and then all of it at once (minus resampler hold).
    assert converter.push(np.zeros(4000, np.float32)).shape[0] == 0
    out = converter.push(np.zeros(1000, np.float32))
    assert 4800 - 60 <= out.shape[0] <= 4800
