"""The live paths of ``vcstream bench quality``: audio converted the way a caller hears it.

``convert_over_rtp``: ``vcstream rtp-receive`` and ``vcstream rtp-send`` on the caller's side, the
``vcstream rtp`` relay with the engine on the other. ``convert_over_webrtc``: ``vcstream serve`` with the
engine on one side; on the caller's side ``vcstream.bench.quality_call`` uploads the reference as a
voice through the REST API and calls it. Both stream the source in real time and return what came
back, cut so that it starts where the converted source does (found by energy-envelope correlation,
which survives a voice change) and is at most the source's length: shorter only when the path
delivered less.

With ``loss_pct`` 0 every process runs on this host's loopback. Otherwise the caller's side runs in
one network namespace and the converting side in another, joined by a veth pair, and nftables drops
``loss_pct`` % of the media packets at random in each direction (STUN and DTLS set-up is spared).
That needs root: ``NamespacesUnavailable`` says so otherwise. Every process is stopped and the
namespaces removed whatever happens.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vcstream.audio.types import Audio
from vcstream.bench import process_events
from vcstream.bench.calls import end_process, serve_command
from vcstream.bench.latency import global_offset
from vcstream.bench.netns import NamespacesUnavailable, NetnsPair, netns_pair, netns_unavailable_reason
from vcstream.errors import MediaError
from vcstream.media import decode_file
from vcstream.media.rtp import OPUS_RATE

log = logging.getLogger(__name__)

#: an engine load (model weights) may take this long before the converting side listens
START_WITHIN_S = 180.0
#: the RTP receiver stops this long after the last audio came
IDLE_TIMEOUT_S = 1.5
#: the longest delay of converted audio behind its source that alignment looks for
MAX_DELAY_S = 5.0
#: the most the received audio may start after the source's beginning (its first packets lost)
MAX_LEAD_S = 0.1
#: inside the converting side's own namespace nothing else holds ports
NAMESPACE_HTTP_PORT = 8080
NAMESPACE_ICE_PORTS = (40000, 40009)


class PathFailed(MediaError):
    """A process of the live path failed; the message holds the end of its output."""


# -- where the processes run ------------------------------------------------------------------------


@dataclass
class Sides:
    """The caller's side and the converting side: how to start a process on each, and the address
    each is reached at from the other."""

    caller_address: str
    converter_address: str
    pair: NetnsPair | None = None
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def argv(self, side: str, argv: Sequence[str]) -> list[str]:
        if self.pair is None:
            return list(argv)
        return self.pair.command(self.pair.a if side == "caller" else self.pair.b, argv)

    def start(
        self, side: str, argv: Sequence[str], log_path: Path, *, read_stdout: bool = True, **options: Any
    ) -> subprocess.Popen[str]:
        """A process on ``side`` (stdout piped as text, or to ``log_path`` when nobody reads it, so that
        it can never fill the pipe; stderr to ``log_path``), ended with the sides."""
        with log_path.open("w") as log_file:
            stdout: Any = subprocess.PIPE if read_stdout else log_file
            process = subprocess.Popen(
                self.argv(side, argv), stdout=stdout, stderr=log_file, text=True, **options
            )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            end_process(process)
        self.processes.clear()


@contextmanager
def sides(loss_pct: float) -> Iterator[Sides]:
    """Both sides on loopback (no loss), or in a namespace pair (``loss_pct`` > 0; the caller to
    apply the loss rules, which depend on its ports)."""
    if loss_pct <= 0:
        here = Sides("127.0.0.1", "127.0.0.1")
        try:
            yield here
        finally:
            here.stop()
        return
    reason = netns_unavailable_reason()
    if reason is not None:
        raise NamespacesUnavailable(
            f"a {loss_pct:g} % loss run needs two network namespaces, which cannot be made here: {reason}"
        )
    with netns_pair() as pair:
        apart = Sides(pair.address_a, pair.address_b, pair)
        try:
            yield apart
        finally:
            apart.stop()


def vcstream_argv(*args: object) -> list[str]:
    return [sys.executable, "-m", "vcstream.cli", *map(str, args)]


def read_event(
    process: subprocess.Popen[str], event: str, timeout_s: float, log_path: Path
) -> dict[str, Any]:
    """The first JSON line on ``process``'s stdout whose "event" is ``event`` (a bounded wait); a
    PathFailed with the end of the process's log if it does not come."""
    try:
        return process_events.read_event(process, event, timeout_s)
    except process_events.EventNotSeenError as exc:
        raise PathFailed(f"{_name(process)} {exc}: {_tail(log_path)}") from exc


def _name(process: subprocess.Popen[str]) -> str:
    argv = [str(a) for a in process.args] if isinstance(process.args, list) else [str(process.args)]
    words = argv[argv.index("-m") + 1 :] if "-m" in argv else argv
    return " ".join(words[:2])


def _tail(log_path: Path, chars: int = 1500) -> str:
    return log_path.read_text(errors="replace")[-chars:] if log_path.exists() else ""


def _finish(process: subprocess.Popen[str], timeout_s: float, log_path: Path) -> str:
    """Wait for ``process`` to end by itself with success; its remaining stdout."""
    try:
        out, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise PathFailed(
            f"{_name(process)} did not finish within {timeout_s:g} s: {_tail(log_path)}"
        ) from None
    if process.returncode != 0:
        raise PathFailed(f"{_name(process)} failed (exit {process.returncode}): {_tail(log_path)}")
    return out


def _last_json(stdout: str) -> dict[str, Any]:
    """The last JSON line a command printed (its ``final`` statistics)."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise PathFailed(f"no statistics in the output: {stdout[-500:]}")
    return dict(json.loads(lines[-1]))


def _dropped(where: Sides) -> dict[str, int]:
    """Media packets the kernel dropped on their way to the converting side and back."""
    if where.pair is None:
        return {"dropped_to_converter": 0, "dropped_to_caller": 0}
    return {
        "dropped_to_converter": where.pair.dropped_packets(where.pair.a),
        "dropped_to_caller": where.pair.dropped_packets(where.pair.b),
    }


# -- alignment ----------------------------------------------------------------------------------------


def align_to_source(received: Audio, source: Audio, rate: int) -> Audio:
    """``received`` from where the converted ``source`` starts in it, at most ``source``'s length.
    Where the stream's first packets were lost, the received audio starts after the source's
    beginning: silence stands in for what never came, so that the rest stays in place."""
    lead = round(MAX_LEAD_S * rate)
    padded = np.concatenate([np.zeros(lead, np.float32), received])
    lag = global_offset(padded, source, rate, max_lag_s=MAX_DELAY_S + MAX_LEAD_S)
    aligned: Audio = padded[lag : lag + source.shape[0]].astype(np.float32)
    log.info("converted audio %.0f ms behind its source", 1000 * (lag - lead) / rate)
    return aligned


# -- RTP ----------------------------------------------------------------------------------------------


def convert_over_rtp(
    engine: str, source: Path, reference: Path, loss_pct: float, workdir: Path
) -> tuple[np.ndarray, int]:
    """``source`` sent as Opus/RTP in real time through the ``vcstream rtp`` relay (``engine``,
    voice from ``reference``) and received back; float32 mono at 48 kHz."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "rtp-received.wav"
    logs = {name: workdir / f"rtp-{name}.log" for name in ("receiver", "relay", "sender")}
    seconds = decode_file(source, OPUS_RATE).shape[0] / OPUS_RATE
    lifetime = seconds + START_WITHIN_S + 60  # a bound on every process, should anything hang
    started = time.monotonic()
    with sides(loss_pct) as where:
        receiver = where.start(
            "caller",
            vcstream_argv("rtp-receive", "--listen", f"{where.caller_address}:0", "-o", out,
                          "--idle-timeout", IDLE_TIMEOUT_S, "--duration", lifetime),
            logs["receiver"],
        )  # fmt: skip
        receiving = read_event(receiver, "listening", 30, logs["receiver"])
        receiver_port = int(receiving["listen"].rsplit(":", 1)[1])
        relay = where.start(
            "converter",
            vcstream_argv("rtp", "--listen", f"{where.converter_address}:0", "--send",
                          f"{where.caller_address}:{receiver_port}", "-r", reference, "--engine", engine,
                          "--duration", lifetime),
            logs["relay"],
        )  # fmt: skip
        relaying = read_event(relay, "listening", START_WITHIN_S, logs["relay"])
        relay_port = int(relaying["listen"].rsplit(":", 1)[1])
        if where.pair is not None:  # the RTP (not RTCP) of each leg, as it leaves its sender's side
            where.pair.random_loss(where.pair.a, relay_port, loss_pct)
            where.pair.random_loss(where.pair.b, receiver_port, loss_pct)
        listening = time.monotonic()
        sender = where.start(
            "caller",
            vcstream_argv("rtp-send", source, "--to", f"{where.converter_address}:{relay_port}"),
            logs["sender"],
        )
        _finish(sender, seconds + 60, logs["sender"])
        received_stats = _last_json(_finish(receiver, 30 + IDLE_TIMEOUT_S, logs["receiver"]))
        relay.send_signal(signal.SIGTERM)
        relay_stats = _last_json(_finish(relay, 30, logs["relay"]))
        dropped = _dropped(where)
    received = decode_file(out, OPUS_RATE)
    observed = {
        "seconds": seconds,
        "to_listen_s": listening - started,
        "to_stream_s": time.monotonic() - listening,
        "loss_pct": loss_pct,
        **dropped,
        # what each leg's receiver counted lost (Opus FEC and concealment fill the holes)
        "lost_pct_to_relay": 100 * float(relay_stats["input"]["loss_fraction"]),
        "lost_pct_from_relay": 100 * float(received_stats["loss_fraction"]),
        # input the engine fell too far behind on and dropped (a starved CPU): the timeline breaks
        "relay_dropped_ms": float(relay_stats["session"]["dropped_ms"]),
        "relay_late_blocks": int(relay_stats["session"]["late_blocks"]),
    }
    (workdir / "rtp-path.json").write_text(json.dumps(observed, indent=1))
    log.info("rtp path: %s", observed)
    if observed["relay_dropped_ms"] > 0:
        log.warning(
            "the relay dropped %.0f ms of input (its engine fell behind: a slow engine or a starved "
            "CPU): the converted audio lacks it",
            observed["relay_dropped_ms"],
        )
    return align_to_source(received, decode_file(source, OPUS_RATE), OPUS_RATE), OPUS_RATE


# -- WebRTC -------------------------------------------------------------------------------------------


def convert_over_webrtc(
    engine: str, source: Path, reference: Path, loss_pct: float, workdir: Path
) -> tuple[np.ndarray, int]:
    """``source`` talked into a WebRTC call to a ``vcstream serve`` process (``engine``), calling a
    voice uploaded from ``reference``, and what the call sent back; float32 mono at 48 kHz."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "webrtc-received.npy"
    logs = {name: workdir / f"webrtc-{name}.log" for name in ("server", "caller")}
    seconds = decode_file(source, OPUS_RATE).shape[0] / OPUS_RATE
    started = time.monotonic()
    with sides(loss_pct) as where:
        env: dict[str, str] = {}
        port = NAMESPACE_HTTP_PORT
        if where.pair is not None:
            first, last = NAMESPACE_ICE_PORTS
            env["VCSTREAM_ICE_PORT_RANGE"] = f"{first}-{last}"
            # the server's media ports are known: its packets out, and the caller's packets to it
            where.pair.random_loss(where.pair.a, f"{first}-{last}", loss_pct, rtp_only=True)
            where.pair.random_loss(where.pair.b, None, loss_pct, udp_sport=f"{first}-{last}", rtp_only=True)
        else:
            port = _free_tcp_port()
        data_dir = workdir / "server-data"
        command = serve_command(engine, where.converter_address, port, data_dir, max_sessions=1)
        server = where.start(
            "converter", command, logs["server"], read_stdout=False, env={**os.environ, **env}
        )
        caller = where.start(
            "caller",
            [sys.executable, "-m", "vcstream.bench.quality_call", "--base",
             f"http://{where.converter_address}:{port}", "--reference", str(reference), "--source",
             str(source), "--out", str(out), "--ready-within", str(START_WITHIN_S)],
            logs["caller"],
        )  # fmt: skip
        # the caller ends by itself; the server only when told, unless it failed
        deadline = time.monotonic() + START_WITHIN_S + seconds + 60
        while caller.poll() is None:
            if server.poll() is not None:
                raise PathFailed(f"vcstream serve ended (exit {server.returncode}): {_tail(logs['server'])}")
            if time.monotonic() > deadline:
                raise PathFailed(f"the call did not finish in time: {_tail(logs['caller'])}")
            time.sleep(0.1)
        report = _last_json(_finish(caller, 5, logs["caller"]))
        hung_up = time.monotonic()
        dropped = _dropped(where)
    received = np.load(out)
    observed = {
        "seconds": seconds,
        "loss_pct": loss_pct,
        **{key: value for key, value in report.items() if key != "event"},
        **dropped,
        "caller_total_s": hung_up - started,
        "stop_s": time.monotonic() - hung_up,
    }
    (workdir / "webrtc-path.json").write_text(json.dumps(observed, indent=1))
    log.info("webrtc path: %s", observed)
    return align_to_source(received, decode_file(source, OPUS_RATE), OPUS_RATE), OPUS_RATE


def _free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
