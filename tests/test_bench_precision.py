"""The precision benchmark on a CPU: fp32 only (compared with itself: the run-to-run floor), and half
precision reported as needing CUDA rather than failing."""

import math

import pytest

from vcstream.bench.precision import run_precision_bench
from vcstream.cli import main


@pytest.mark.slow
def test_cpu_run_prints_fp32_and_says_half_precision_needs_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    rows = run_precision_bench(device="cpu", dtypes=("fp32", "bf16"), size="reduced", blocks=1, steps=2)
    assert [r.dtype for r in rows] == ["fp32"]
    row = rows[0]
    assert row.seconds > 0
    assert row.max_abs == 0 and row.rms_rel == 0 and row.mel_l1 == 0  # a session is reproducible
    assert math.isinf(row.snr_db)
    printed = capsys.readouterr().out
    assert "bf16   skipped: half precision needs a CUDA device" in printed
    assert "SNR dB" in printed and "mel L1" in printed


@pytest.mark.slow
def test_command_exits_zero_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--device", "cpu", "--size", "reduced", "--blocks", "1", "--steps", "1"]
    code = main(["bench", "precision", *args])
    assert code == 0
    assert "fp16   skipped" in capsys.readouterr().out
