"""decode_file / encode_file through real GStreamer pipelines: round trips per format, rate and
channel count, frequency preservation across rate changes, browser/video containers, and every
bad-input case."""

from __future__ import annotations

import math
import os
import stat
import struct
import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy.fft import next_fast_len
from scipy.signal import correlate

from vcstream.errors import ConfigurationError, InvalidAudioError, MediaError
from vcstream.media import SUPPORTED_FORMATS, decode_file, encode_file
from vcstream.media.gst import Gst, ensure_gst, require_elements, run_to_eos

RATES = (8000, 16000, 22050, 44100, 48000)
LSB = 1.0 / 32768.0
#: LAME prepends 576 + 529 samples of encoder delay and pads the end to whole frames; GStreamer 1.22
#: does not trim them (no gapless support for mp3), so mp3 decodes longer by delay + < 2 frames
MP3_DELAY = 1105


def mp3_frame(rate: int) -> int:
    return 1152 if rate >= 32000 else 576


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    """Frequency of the strongest FFT bin (Hann window, parabolic interpolation)."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.shape[0])))
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
    offset = 0.5 * (a - c) / (a - 2 * b + c)
    return float((k + offset) * rate / samples.shape[0])


def fractional_shift(samples: np.ndarray, delay: float) -> np.ndarray:
    """``samples`` delayed by ``delay`` samples (may be fractional), by FFT phase shift."""
    size = next_fast_len(samples.shape[0] + 64)  # zero padding: no wrap-around, fast FFT size
    spectrum = np.fft.rfft(samples.astype(np.float64), size)
    phase = np.exp(-2j * np.pi * np.fft.rfftfreq(size) * delay)
    return np.fft.irfft(spectrum * phase, size)[: samples.shape[0]]


def aligned_correlation(reference: np.ndarray, decoded: np.ndarray, max_lag: int) -> tuple[float, int]:
    """Best Pearson correlation of ``decoded`` against ``reference`` over lags 0..max_lag (codecs
    only delay) refined to a tenth of a sample, and the whole-sample lag. The sub-sample step
    matters: resampling to Opus's 48 kHz and back leaves fractions of a sample of delay (about 0.3 at
    22.05 kHz), which alone costs several points of correlation on speech with strong sibilants."""
    xc = correlate(decoded[: reference.shape[0] + max_lag], reference, mode="valid", method="fft")
    lag = int(np.argmax(xc[: max_lag + 1]))
    n = min(reference.shape[0], decoded.shape[0] - lag)
    ref, dec = reference[:n], decoded[lag : lag + n]
    best = max(
        float(np.corrcoef(fractional_shift(ref, frac), dec)[0, 1]) for frac in np.arange(-0.5, 0.51, 0.1)
    )
    return best, lag


def gst_launch(description: str) -> None:
    """Run a gst-launch style pipeline to EOS (to make test media GStreamer can read)."""
    ensure_gst()
    run_to_eos(Gst.parse_launch(description), timeout_s=30)


def write_float_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """Mono IEEE-float wav (format tag 3), which the wave module cannot write."""
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    body = (
        b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    )
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


@pytest.fixture(scope="module")
def signals(flite_speech: Callable[..., tuple[np.ndarray, int]]) -> Callable[[int, int], np.ndarray]:
    """``signals(rate, channels)``: ~2.5 s of speech, scaled to leave headroom; stereo puts another
    voice on the right so the channels are clearly distinct."""

    def make(rate: int, channels: int) -> np.ndarray:
        left = 0.7 * flite_speech("slt", None, rate)[0]
        if channels == 1:
            return left.astype(np.float32)
        right = 0.7 * flite_speech("rms", None, rate)[0]
        n = min(left.shape[0], right.shape[0])
        return np.stack([left[:n], right[:n]], axis=1).astype(np.float32)

    return make


def test_supported_formats() -> None:
    assert set(SUPPORTED_FORMATS) == {"wav", "flac", "ogg", "opus", "mp3"}


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_round_trip(
    tmp_path: Path, signals: Callable[[int, int], np.ndarray], fmt: str, rate: int, channels: int
) -> None:
    x = signals(rate, channels)
    path = encode_file(tmp_path / f"out.{fmt}", x, rate)
    assert path == tmp_path / f"out.{fmt}" and path.stat().st_size > 0
    y = decode_file(path, rate, channels)
    assert y.dtype == np.float32
    assert y.shape[1:] == x.shape[1:]
    extra = y.shape[0] - x.shape[0]

    if fmt in ("wav", "flac"):
        # lossless at 16 bits: every sample is the nearest 16-bit value of the input
        assert extra == 0
        assert np.max(np.abs(y - x)) <= 0.5 * LSB + 1e-9
        assert np.array_equal(y * 32768, np.round(y * 32768))
        return

    if fmt == "ogg":
        # Ogg granule positions carry Opus pre-skip and end trimming: exact but for resampling to
        # and from 48 kHz (a sample either way)
        assert abs(extra) <= 2, extra
    else:
        assert 0 <= extra <= MP3_DELAY + 2 * mp3_frame(rate), extra
    left, right = (x, None) if channels == 1 else (x[:, 0], x[:, 1])
    y_left = y if channels == 1 else y[:, 0]
    max_lag = MP3_DELAY + 64 if fmt == "mp3" else 64
    corr, lag = aligned_correlation(left, y_left, max_lag)
    assert corr > 0.9, (corr, lag)
    if fmt == "mp3":
        assert abs(lag - MP3_DELAY) <= 2, lag
    if right is not None:
        corr_right, _ = aligned_correlation(right, y[:, 1], max_lag)
        assert corr_right > 0.9
        # the channels stayed apart: the left decode does not look like the right input
        cross, _ = aligned_correlation(right, y_left, max_lag)
        assert abs(cross) < 0.3, cross


@pytest.mark.parametrize(
    ("fmt", "rate_in", "rate_out"),
    [("wav", 16000, 48000), ("flac", 44100, 16000), ("ogg", 22050, 8000), ("mp3", 48000, 22050)],
)
def test_tone_keeps_frequency_across_rates(tmp_path: Path, fmt: str, rate_in: int, rate_out: int) -> None:
    for freq in (440.0, 3000.0):
        path = encode_file(tmp_path / f"tone.{fmt}", tone(freq, rate_in, 1.0), rate_in)
        y = decode_file(path, rate_out)
        assert peak_hz(y, rate_out) == pytest.approx(freq, rel=0.01)
        expected = rate_out * 1.0
        slack = (MP3_DELAY + 2 * 1152) * rate_out / rate_in if fmt == "mp3" else 4
        assert expected - 4 <= y.shape[0] <= expected + slack


@pytest.mark.parametrize("fmt", ["wav", "ogg", "mp3"])
def test_stereo_channels_stay_distinct(tmp_path: Path, fmt: str) -> None:
    rate = 44100
    x = np.stack([tone(440, rate, 1.0), tone(3000, rate, 1.0)], axis=1)
    y = decode_file(encode_file(tmp_path / f"st.{fmt}", x, rate), 16000, channels=2)
    assert y.shape[1] == 2
    assert peak_hz(y[:, 0], 16000) == pytest.approx(440, rel=0.01)
    assert peak_hz(y[:, 1], 16000) == pytest.approx(3000, rel=0.01)


def test_channel_mixing(tmp_path: Path) -> None:
    rate = 16000
    stereo = np.stack([tone(440, rate, 0.5), np.zeros(rate // 2, np.float32)], axis=1)
    path = encode_file(tmp_path / "mix.wav", stereo, rate)
    mono = decode_file(path, rate)  # downmix averages the channels
    assert mono.ndim == 1
    assert np.max(np.abs(mono - stereo[:, 0] / 2)) < 2 * LSB
    up = decode_file(encode_file(tmp_path / "mono.wav", stereo[:, 0], rate), rate, channels=2)
    assert up.shape == (rate // 2, 2)
    assert np.array_equal(up[:, 0], up[:, 1])
    assert np.corrcoef(up[:, 0], stereo[:, 0])[0, 1] > 0.999


def test_encode_format_argument_and_2d_mono(tmp_path: Path) -> None:
    x = tone(440, 16000, 0.5)
    path = encode_file(tmp_path / "audio.bin", x[:, None], 16000, fmt="flac")
    assert path.read_bytes()[:4] == b"fLaC"
    assert decode_file(path, 16000).shape == x.shape
    opus = encode_file(tmp_path / "voice.OPUS", x, 16000)
    assert opus.read_bytes()[:4] == b"OggS"
    assert b"OpusHead" in opus.read_bytes()[:100]


def test_encode_replaces_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "out.wav"
    target.write_bytes(b"old contents")
    encode_file(target, tone(440, 16000, 0.25), 16000)
    assert decode_file(target, 16000).shape == (4000,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]
    # the temporary file is created like any other file (mkstemp would have made it 0600)
    plain = tmp_path / "plain"
    plain.touch()
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_decode_ogg_vorbis(tmp_path: Path) -> None:
    path = tmp_path / "v.ogg"
    gst_launch(
        "audiotestsrc freq=440 num-buffers=50 samplesperbuffer=882 ! audio/x-raw,rate=44100,channels=1"
        f" ! audioconvert ! vorbisenc ! oggmux ! filesink location={path}"
    )
    y = decode_file(path, 16000)
    assert y.shape[0] == pytest.approx(16000, abs=16)
    assert peak_hz(y, 16000) == pytest.approx(440, rel=0.01)


def test_decode_webm_opus_like_a_browser(tmp_path: Path) -> None:
    path = tmp_path / "rec.webm"
    gst_launch(
        "audiotestsrc freq=440 num-buffers=50 samplesperbuffer=960 ! audio/x-raw,rate=48000,channels=2"
        f" ! audioconvert ! opusenc ! webmmux ! filesink location={path}"
    )
    y = decode_file(path, 16000)
    # webm has no end trimming: up to one 20 ms Opus frame of padding may remain
    assert 16000 - 16 <= y.shape[0] <= 16000 + 16000 * 0.0265
    assert peak_hz(y, 16000) == pytest.approx(440, rel=0.01)


def test_decode_audio_track_of_a_video(tmp_path: Path) -> None:
    path = tmp_path / "clip.webm"
    gst_launch(
        "webmmux name=mux ! filesink location=" + str(path) + " "
        "videotestsrc num-buffers=30 ! video/x-raw,width=160,height=120,framerate=30/1 ! vp8enc ! mux. "
        "audiotestsrc freq=3000 num-buffers=50 samplesperbuffer=960 ! audio/x-raw,rate=48000 "
        "! audioconvert ! opusenc ! mux."
    )
    y = decode_file(path, 22050)
    assert y.shape[0] > 0.9 * 22050
    assert peak_hz(y, 22050) == pytest.approx(3000, rel=0.01)


def test_decode_takes_the_first_of_two_audio_tracks(tmp_path: Path) -> None:
    path = tmp_path / "two-tracks.mkv"
    gst_launch(
        "matroskamux name=mux ! filesink location=" + str(path) + " "
        "audiotestsrc freq=440 num-buffers=20 samplesperbuffer=1600 ! audio/x-raw,rate=16000,channels=1 "
        "! audioconvert ! flacenc ! mux. "
        "audiotestsrc freq=3000 num-buffers=20 samplesperbuffer=1600 ! audio/x-raw,rate=16000,channels=1 "
        "! audioconvert ! flacenc ! mux."
    )
    y = decode_file(path, 16000)
    assert y.shape[0] == 32000
    assert peak_hz(y, 16000) == pytest.approx(440, rel=0.01)


@pytest.mark.parametrize("channels", [1, 2])
def test_decode_other_channel_layouts_of_a_speech_wav(flite_wav: Callable[..., Path], channels: int) -> None:
    y = decode_file(flite_wav("kal16", 16000), 16000, channels)
    assert y.ndim == channels


# --- bad input -----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidAudioError, match=r"nope\.wav.* not found"):
        decode_file(tmp_path / "nope.wav", 16000)


def test_directory_is_not_audio(tmp_path: Path) -> None:
    with pytest.raises(InvalidAudioError, match="not a regular file"):
        decode_file(tmp_path, 16000)


def test_text_file_is_not_audio(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("these are meeting notes, not a recording\n" * 20)
    with pytest.raises(InvalidAudioError, match=r"notes\.wav.*could not be decoded as audio"):
        decode_file(path, 16000)


def test_image_is_not_audio(tmp_path: Path) -> None:
    path = tmp_path / "picture.png"
    gst_launch(f"videotestsrc num-buffers=1 ! pngenc ! filesink location={path}")
    with pytest.raises(InvalidAudioError, match=r"could not be decoded as audio(.|\n)*PNG"):
        decode_file(path, 16000)


def test_video_without_audio_is_not_audio(tmp_path: Path) -> None:
    path = tmp_path / "silent-film.webm"
    gst_launch(f"videotestsrc num-buffers=10 ! vp8enc ! webmmux ! filesink location={path}")
    with pytest.raises(InvalidAudioError, match="could not be decoded as audio"):
        decode_file(path, 16000)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp3"
    path.touch()
    with pytest.raises(InvalidAudioError, match="holds no audio"):
        decode_file(path, 16000)


def test_wav_without_samples(tmp_path: Path) -> None:
    path = tmp_path / "header-only.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    with pytest.raises(InvalidAudioError, match="holds no audio"):
        decode_file(path, 16000)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("rate_out", [16000, 48000])
def test_float_wav_with_non_finite_samples(tmp_path: Path, bad: float, rate_out: int) -> None:
    x = tone(440, 16000, 0.2)
    x[500] = bad
    path = write_float_wav(tmp_path / "float.wav", x, 16000)
    with pytest.raises(InvalidAudioError, match="NaN or infinite"):
        decode_file(path, rate_out)


def test_float_wav_decodes(tmp_path: Path) -> None:
    x = tone(440, 16000, 0.2)
    assert np.array_equal(decode_file(write_float_wav(tmp_path / "f.wav", x, 16000), 16000), x)


def test_stalled_pipeline_times_out() -> None:
    """A pipeline that never reaches EOS (a live test source) ends in MediaError, stopped."""
    ensure_gst()
    pipeline = Gst.parse_launch("audiotestsrc is-live=true ! fakesink")
    started = time.monotonic()
    with pytest.raises(MediaError, match="stalled"):
        run_to_eos(pipeline, timeout_s=0.3)
    assert time.monotonic() - started < 5
    assert pipeline.get_state(0)[1] == Gst.State.NULL


def test_fifo_is_refused(tmp_path: Path) -> None:
    """Only regular files: a pipe could block the decoder forever."""
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    with pytest.raises(InvalidAudioError, match="not a regular file"):
        decode_file(fifo, 16000)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_encode_refuses_non_finite(tmp_path: Path, bad: float) -> None:
    x = tone(440, 16000, 0.2)
    x[10] = bad
    with pytest.raises(InvalidAudioError, match="NaN or infinite"):
        encode_file(tmp_path / "bad.wav", x, 16000)
    assert list(tmp_path.iterdir()) == []


def test_encode_refuses_empty_and_odd_shapes(tmp_path: Path) -> None:
    with pytest.raises(InvalidAudioError, match="0 samples"):
        encode_file(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(ConfigurationError, match="shape"):
        encode_file(tmp_path / "surround.wav", np.zeros((100, 6), np.float32), 16000)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["out.aac", "out", "out.webm"])
def test_encode_unsupported_extension(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigurationError, match="supported formats are wav, flac, ogg, opus, mp3"):
        encode_file(tmp_path / name, tone(440, 16000, 0.1), 16000)
    assert list(tmp_path.iterdir()) == []


def test_encode_unsupported_format_argument(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="'m4a'"):
        encode_file(tmp_path / "out.wav", tone(440, 16000, 0.1), 16000, fmt="m4a")


def test_encode_failure_after_writing_leaves_nothing(tmp_path: Path) -> None:
    """The target is a directory: encoding to the temporary file works, the final rename fails, and
    the temporary file is removed."""
    (tmp_path / "taken.wav").mkdir()
    with pytest.raises(OSError):
        encode_file(tmp_path / "taken.wav", tone(440, 16000, 0.1), 16000)
    assert [p.name for p in tmp_path.iterdir()] == ["taken.wav"]
    assert list((tmp_path / "taken.wav").iterdir()) == []


def test_encode_into_missing_directory_is_a_media_error(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="filesink"):
        encode_file(tmp_path / "no" / "such" / "dir.wav", tone(440, 16000, 0.1), 16000)
    assert list(tmp_path.iterdir()) == []


def test_require_elements_names_missing() -> None:
    require_elements("audioconvert", "opusenc")
    with pytest.raises(MediaError, match="no-such-element-a, no-such-element-b"):
        require_elements("audioconvert", "no-such-element-a", "no-such-element-b")
