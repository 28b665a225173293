import numpy as np
import pytest

from vcstream.audio.resample import StreamingResampler, resample

RATE_PAIRS = [(48000, 22050), (22050, 48000), (48000, 16000), (16000, 48000), (8000, 16000), (44100, 22050)]


def two_tones(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_streaming_output_is_the_band_limited_signal_at_the_new_rate(in_rate: int, out_rate: int) -> None:
    x = two_tones(in_rate, 1.0)
    r = StreamingResampler(in_rate, out_rate)
    y = np.concatenate([r.process(x[i : i + 317]) for i in range(0, x.shape[0], 317)])  # odd chunks
    expected = two_tones(out_rate, 1.0)[: y.shape[0]]
    skip = 100  # the zero history at the start is not part of the signal
    err = y[skip:] - expected[skip:]
    snr = 10 * np.log10(np.sum(expected[skip:] ** 2) / np.sum(err**2))
    assert snr > 70
    # It holds back no more than it says.
    assert x.shape[0] * out_rate / in_rate - y.shape[0] <= r.latency_samples + 1


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS[:3])
def test_chunking_does_not_change_the_output(in_rate: int, out_rate: int) -> None:
    x = np.random.default_rng(0).standard_normal(in_rate // 2).astype(np.float32) * 0.1
    whole = StreamingResampler(in_rate, out_rate).process(x)
    r = StreamingResampler(in_rate, out_rate)
    sizes = [1, 7, 160, 441, 2000, 13]
    parts, i = [], 0
    for s in sizes * 100:
        if i >= x.shape[0]:
            break
        parts.append(r.process(x[i : i + s]))
        i += s
    chunked = np.concatenate(parts)
    np.testing.assert_allclose(chunked, whole[: chunked.shape[0]], atol=1e-6)


def test_whole_signal_resample_has_exact_length_and_keeps_frequency() -> None:
    rate_in, rate_out = 44100, 16000
    t = np.arange(rate_in) / rate_in
    x = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    y = resample(x, rate_in, rate_out)
    assert y.shape[0] == rate_out
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.shape[0])))
    assert abs(np.argmax(spectrum) * rate_out / y.shape[0] - 1000) < 2


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="positive"):
        StreamingResampler(0, 16000)
    with pytest.raises(ValueError, match="mono"):
        StreamingResampler(16000, 8000).process(np.zeros((10, 2), np.float32))
