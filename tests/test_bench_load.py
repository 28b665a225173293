"""``vcstream bench load`` against a real server process (passthrough engine, loopback): real WebRTC
calls from client processes, markers found again by the clock, refusals when the server is full."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import vcstream_argv
from ports import free_port
from vcstream.bench.calls import end_process
from vcstream.bench.load import LoadPlan, LoadTestError, run_load_bench, signalling_url
from vcstream.bench.signals import flite_speech
from vcstream.bench.talk_markers import MarkerLocator, talk_track
from vcstream.cli import build_parser, main
from waiting import wait_until

RATE, CHUNK = 48000, 960


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False


@pytest.fixture
def passthrough_server(tmp_path: Path) -> Iterator[Callable[[int], tuple[str, int]]]:
    """Starts ``vcstream serve`` (passthrough) with VCSTREAM_MAX_SESSIONS; yields its URL and pid."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(max_sessions: int) -> tuple[str, int]:
        port = free_port()
        env = dict(os.environ, VCSTREAM_MAX_SESSIONS=str(max_sessions))
        command = vcstream_argv("serve", "--engine", "passthrough", "--host", "127.0.0.1", "--port", port)
        command += ["--data-dir", str(tmp_path / f"data-{port}")]
        log = (tmp_path / f"server-{port}.log").open("wb")
        processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(url), 60, "the server answers /readyz 200")
        return url, processes[-1].pid

    yield start
    for process in processes:
        end_process(process)


def test_markers_survive_a_changed_waveform_and_are_timed_by_arrival() -> None:
    """The locator finds each burst by its energy envelope, even when the waveform is not the one
    sent (a carrier multiplies it, as a pitch change would alter it), and times it by arrival."""
    track = talk_track(flite_speech("slt", RATE), RATE, chunk=CHUNK)
    pushes = [100.0 + i / 50 for i in range(20 * 50)]
    sent = np.tile(track.samples, 2)[: len(pushes) * CHUNK]
    carrier = np.sin(2 * np.pi * 170 * np.arange(sent.size) / RATE)
    heard = (sent * carrier).astype(np.float32)
    lag = 0.31
    arrivals = [(100.0 + lag + (k + 1) * CHUNK / RATE, CHUNK) for k in range(heard.size // CHUNK)]
    found = MarkerLocator(track, CHUNK, pushes).latencies(heard, arrivals, 101.0, 117.0, 2.0)
    assert len(found) >= 15
    # each marker arrives with the buffer holding its first sample: lag + up to one buffer
    assert all(latency is not None and lag <= latency <= lag + 0.03 for _, latency in found), found
    # audio that is not the track (noise) holds no marker
    noise = np.random.default_rng(1).normal(0, 0.1, heard.size).astype(np.float32)
    missing = MarkerLocator(track, CHUNK, pushes).latencies(noise, arrivals, 101.0, 117.0, 2.0)
    assert sum(latency is not None for _, latency in missing) <= 2


def test_the_signalling_url_is_derived_as_the_page_does() -> None:
    assert signalling_url("http://host:8080") == "ws://host:8080/ws"
    assert signalling_url("https://vc.example.org") == "wss://vc.example.org/ws"
    with pytest.raises(LoadTestError, match="http"):
        signalling_url("ftp://host")


def test_an_unreachable_url_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["bench", "load", "--url", url, "--calls", "1"]) == 1
    assert f"cannot reach {url}" in capsys.readouterr().err


def test_calls_on_a_passthrough_server_are_plausible_and_written(
    passthrough_server: Callable[[int], tuple[str, int]], tmp_path: Path
) -> None:
    url, pid = passthrough_server(3)
    report, plot = tmp_path / "load.json", tmp_path / "load.png"
    argv = ["bench", "load", "--url", url, "--calls", "2", "--seconds", "8", "--server-pid", pid]
    argv += ["--json", report, "--plot", plot]
    # as a person runs it: its own process. Not only realism: in this test process GStreamer is loaded
    # (libunwind with it), and matplotlib's ft2font then aborts on its first C++ exception
    done = subprocess.run(vcstream_argv(*argv), check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout
    assert "lat_p50" in printed and "passthrough" in printed
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads(report.read_text())
    assert result["engine"] == "passthrough"
    (step,) = result["steps"]
    assert (step["dialled"], step["converting"], step["refusals"], step["failures"]) == (2, 2, 0, 0)
    for call in result["calls"]:
        assert call["first_audio_at"] is not None and call["failure"] is None
        latencies = [lag for _, lag in call["markers"]]
        assert latencies and all(lag is not None for lag in latencies), call["markers"]
        # loopback, no conversion: well under a second, and never before the push
        assert all(0 < lag < 1.0 for lag in latencies)
    assert 0 < step["latency_ms_p50"] <= step["latency_ms_p95"] < 1000
    assert 0 < step["first_audio_ms_p50"] < 10_000
    assert 0 < step["server_cpu_pct"] < 200  # two calls of a server on two cores


def test_a_full_server_refuses_exactly_one_of_two_calls(
    passthrough_server: Callable[[int], tuple[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = passthrough_server(1)
    result = run_load_bench(url, LoadPlan(calls=2, ramp_s=0.0, seconds=4.0, step=2))
    (step,) = result.steps
    assert (step.refusals, step.failures, step.converting) == (1, 0, 1)
    (refused,) = [call for call in result.calls if call["refused"]]
    assert refused["refused"] == "server_full" and refused["retry_after_s"] > 0
    assert "refused" in capsys.readouterr().out


def test_the_command_is_registered() -> None:
    args = build_parser().parse_args(
        ["bench", "load", "--url", "http://h:1", "--calls", "8", "--ramp", "16", "--step", "2"]
    )
    assert (args.url, args.calls, args.ramp, args.step, args.seconds) == ("http://h:1", 8, 16.0, 2, 10.0)


def test_server_pids_repeat_for_every_replica_and_the_plot_takes_a_title() -> None:
    argv = ["bench", "load", "--url", "http://h:1", "--calls", "2"]
    pids = ["--server-pid", "11", "--server-pid", "12"]
    args = build_parser().parse_args([*argv, *pids, "--title", "3 replicas"])
    assert (args.server_pid, args.title) == ([11, 12], "3 replicas")
    assert build_parser().parse_args(argv).server_pid is None
