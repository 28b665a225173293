"""The calls benchmark runs a real server process and real WebRTC clients in other processes, and
reports sane figures (the numbers themselves are printed, not asserted against targets)."""

import os

import pytest

from vcstream.bench.calls import cpu_seconds, run_calls_bench, thread_names
from vcstream.cli import build_parser


def test_cpu_and_threads_are_read_from_proc() -> None:
    spent = cpu_seconds(os.getpid())
    sum(i * i for i in range(300_000))  # some CPU time of our own
    assert cpu_seconds(os.getpid()) > spent >= 0
    assert len(thread_names(os.getpid())) >= 1


def test_two_calls_are_measured(capsys: pytest.CaptureFixture[str]) -> None:
    (result,) = run_calls_bench("passthrough", [2], seconds=3.0, warmup_s=1.0)
    assert result.calls == 2 and result.failures == 0
    assert 2.5 < result.window_s < 6
    assert 0 < result.server_cpu_pct < 200  # two cores at most
    # every call holds the peer's streaming threads on the server
    assert result.threads_per_call >= 3
    # each call received about the window's length of audio back
    assert result.expected_s == pytest.approx(2 * result.window_s, rel=0.2)
    assert result.received_s > 0.8 * result.expected_s
    printed = capsys.readouterr().out
    assert "cpu_%/call" in printed and "passthrough" in printed


def test_the_command_is_registered() -> None:
    args = build_parser().parse_args(
        ["bench", "calls", "--engine", "world", "--calls", "1,4", "--seconds", "5"]
    )
    assert (args.engine, args.calls, args.seconds) == ("world", "1,4", 5.0)
