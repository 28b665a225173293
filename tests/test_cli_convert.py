"""`vcstream convert` end to end through the real command: GStreamer decode/encode, streaming path,
exit codes and clear errors for bad input, nothing written half."""

import subprocess
import sys
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import median_f0, snr_db, write_wav
from vcstream.media import decode_file

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run() -> Run:
    def invoke(*args: str | Path) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "vcstream.cli", "convert", *map(str, args)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    return invoke


def test_passthrough_file_matches_source(run: Run, flite_wav: Callable[..., Path], tmp_path: Path) -> None:
    source, reference = flite_wav("slt", 16000), flite_wav("awb", 16000)
    out = tmp_path / "out.wav"
    result = run(source, "-r", reference, "-o", out, "--engine", "passthrough", "--block-time", "0.1")
    assert result.returncode == 0, result.stderr
    x = decode_file(source, 48000)
    y = decode_file(out, 48000)
    assert y.shape == x.shape
    assert snr_db(x, y) > 35  # 16-bit wav and two band-limited rate conversions


def test_world_conversion_moves_pitch_and_writes_opus(
    run: Run, flite_wav: Callable[..., Path], tmp_path: Path
) -> None:
    source, reference = flite_wav("slt", 16000), flite_wav("kal16", 16000)
    out = tmp_path / "out.ogg"
    result = run(source, "-r", reference, "-o", out, "--engine", "world")
    assert result.returncode == 0, result.stderr
    y = decode_file(out, 16000)
    target = median_f0(decode_file(reference, 16000), 16000)
    assert abs(median_f0(y, 16000) - target) / target < 0.10


def nan_wav(path: Path) -> Path:
    """A 32-bit float WAV (format tag 3) holding NaNs, written by hand."""
    data = np.sin(np.arange(16000) * 0.1).astype("<f4")
    data[100:200] = np.nan
    payload = data.tobytes()
    header = b"RIFF" + (36 + len(payload)).to_bytes(4, "little") + b"WAVEfmt "
    header += (16).to_bytes(4, "little") + (3).to_bytes(2, "little") + (1).to_bytes(2, "little")
    header += (16000).to_bytes(4, "little") + (64000).to_bytes(4, "little")
    header += (4).to_bytes(2, "little") + (32).to_bytes(2, "little")
    path.write_bytes(header + b"data" + len(payload).to_bytes(4, "little") + payload)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing source", "not found"),
        ("text file as source", "could not be decoded"),
        ("empty source", "holds no audio"),
        ("silent reference", "silent"),
        ("short reference", "at least 1 s"),
        ("nan source", "NaN"),
        ("nan reference", "NaN"),
    ],
)
def test_bad_input_fails_clearly_and_writes_nothing(
    run: Run, flite_wav: Callable[..., Path], tmp_path: Path, case: str, message: str
) -> None:
    source, reference = flite_wav("slt", 16000), flite_wav("awb", 16000)
    if case == "missing source":
        source = tmp_path / "nope.wav"
    elif case == "text file as source":
        source = tmp_path / "notes.wav"
        source.write_text("this is not audio\n" * 100)
    elif case == "empty source":
        source = tmp_path / "empty.wav"
        source.write_bytes(b"")
    elif case == "silent reference":
        reference = write_wav(tmp_path / "silent.wav", np.zeros(3 * 16000), 16000)
    elif case == "short reference":
        with wave.open(str(reference)) as w:
            frames = np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32768
        clip = np.concatenate([np.zeros(8000), frames[8000:17000], np.zeros(8000)])
        reference = write_wav(tmp_path / "short.wav", clip, 16000)
    elif case == "nan source":
        source = nan_wav(tmp_path / "nan.wav")
    elif case == "nan reference":
        reference = nan_wav(tmp_path / "nanref.wav")
    out = tmp_path / "out.wav"
    result = run(source, "-r", reference, "-o", out, "--engine", "world")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.glob("out*")) == []


def test_long_reference_is_trimmed_with_a_warning(
    run: Run,
    flite_speech: Callable[..., tuple[np.ndarray, int]],
    flite_wav: Callable[..., Path],
    tmp_path: Path,
) -> None:
    speech, _ = flite_speech("awb", rate=16000)
    long = write_wav(tmp_path / "long.wav", np.tile(speech, 9), 16000)  # ~40 s
    out = tmp_path / "out.wav"
    result = run(flite_wav("slt", 16000), "-r", long, "-o", out, "--engine", "passthrough")
    assert result.returncode == 0, result.stderr
    assert "only the first 30 s" in result.stderr
    assert out.exists()


def test_unknown_output_format_is_refused(run: Run, flite_wav: Callable[..., Path], tmp_path: Path) -> None:
    result = run(
        flite_wav("slt"), "-r", flite_wav("awb"), "-o", tmp_path / "out.xyz", "--engine", "passthrough"
    )
    assert result.returncode == 1
    assert "xyz" in result.stderr
    assert not (tmp_path / "out.xyz").exists()
