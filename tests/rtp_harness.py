"""Helpers for the RTP tests: a real sender -> relay -> receiver chain in one process (three separate
pipelines on loopback), and measures of continuity on received audio."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import correlate, resample_poly

from conftest import vcstream_argv
from vcstream.audio.types import Audio
from vcstream.bench.latency import StreamRecorder
from vcstream.engines.base import Engine
from vcstream.media.rtp import OPUS_RATE, OpusCodecSettings, RtpOpusReceiver, RtpOpusSender
from vcstream.streaming.scheduler import BlockScheduler
from vcstream.transports.pacing import push_in_real_time
from vcstream.transports.rtp_relay import RtpRelay


@dataclass
class Chain:
    """A relay between a local receiver and (per test) one or more senders."""

    relay: RtpRelay
    receiver: RtpOpusReceiver
    collector: StreamRecorder
    scheduler: BlockScheduler
    senders: list[RtpOpusSender] = field(default_factory=list)
    address: str = "127.0.0.1"

    def sender(self, **options: Any) -> RtpOpusSender:
        sender = RtpOpusSender(self.address, self.relay.port, **options).start()
        self.senders.append(sender)
        return sender

    def send(
        self, sender: RtpOpusSender, audio: Audio, on_chunk: Callable[[int, float], None] | None = None
    ) -> None:
        push_in_real_time(audio, OPUS_RATE, sender.push, chunk_s=0.01, on_chunk=on_chunk)

    def finish(self, tail_s: float = 0.6) -> tuple[Audio, dict[str, Any], dict[str, Any]]:
        """Wait for the tail, stop everything; returns (received audio, relay snapshot, receiver stats)."""
        # A fixed tail: no event marks the end of what was sent, as the relay fills an open sender's
        # pause with silence and a decoder may keep its last frame after a BYE.
        time.sleep(tail_s)
        snapshot, received = self.relay.snapshot(), self.receiver.stats()
        self.close()
        return self.collector.audio(), snapshot, received

    def close(self) -> None:
        for sender in self.senders:
            if sender.running:
                sender.stop(drain_timeout_s=0.5)
        self.senders.clear()
        if self.relay.receiver.running:
            self.relay.stop()
        self.scheduler.close()
        if self.receiver.running:
            self.receiver.stop()


def open_chain(
    engine: Engine,
    reference: Audio,
    *,
    codec: OpusCodecSettings | None = None,
    block_time: float = 0.1,
    latency_ms: int = 60,
    address: str = "127.0.0.1",
) -> Chain:
    """Receiver and relay listening on ``address`` (loopback), the relay sending to the receiver."""
    collector = StreamRecorder()
    receiver = RtpOpusReceiver(
        0, collector, codec=codec, latency_ms=latency_ms, bind_address=address, name="test-rx"
    ).start()
    voice = engine.prepare_voice(reference, engine.sample_rate)
    scheduler = BlockScheduler(engine)
    relay = RtpRelay(
        engine,
        voice,
        0,
        (address, receiver.port),
        scheduler=scheduler,
        codec=codec,
        latency_ms=latency_ms,
        settings=engine.settings(block_time=block_time),
        bind_address=address,
    )
    relay.start()
    return Chain(relay, receiver, collector, scheduler, address=address)


def to_rate(samples: np.ndarray, rate: int, target: int = OPUS_RATE) -> Audio:
    g = np.gcd(rate, target)
    return resample_poly(samples, target // g, rate // g).astype(np.float32)


def align(
    reference: Audio, received: Audio, max_lag_s: float = 2.0, max_lead_s: float = 0.1
) -> tuple[int, Audio]:
    """Lag (samples) of ``received`` behind ``reference`` and the received audio cut to match it
    (zero-padded where it starts or ends early). The lag is negative where ``received`` starts
    early: a stream whose first packets were lost starts with its first packet that arrived, and no
    receiver can know what came before it."""
    c = correlate(received, reference, mode="full", method="fft")
    zero = reference.shape[0] - 1
    lead = min(round(max_lead_s * OPUS_RATE), zero)
    lag = int(np.argmax(c[zero - lead : zero + round(max_lag_s * OPUS_RATE)])) - lead
    cut = received[max(lag, 0) : lag + reference.shape[0]]
    before = np.zeros(max(-lag, 0), np.float32)
    after = np.zeros(reference.shape[0] - before.shape[0] - cut.shape[0], np.float32)
    return lag, np.concatenate([before, cut, after])


def timeline_drift_ms(reference: Audio, received: Audio, piece_s: float = 1.5) -> float:
    """How much later the end of ``reference`` sits in ``received`` than its beginning does: time
    lost (negative) or added (positive) in between."""
    piece = round(piece_s * OPUS_RATE)
    head_lag, _ = align(reference[:piece], received)
    start = reference.shape[0] - piece - OPUS_RATE // 4
    tail_lag, _ = align(reference[start : start + piece], received[start:])
    return 1000 * (tail_lag - head_lag) / OPUS_RATE


def frame_db(x: Audio, frame: int) -> np.ndarray:
    n = x.shape[0] // frame
    power = np.mean(x[: n * frame].astype(np.float64).reshape(n, frame) ** 2, axis=1)
    return 10 * np.log10(power + 1e-12)


def silence_gaps_ms(reference: Audio, aligned: Audio, frame_ms: float = 5.0) -> list[float]:
    """Runs (ms) where the reference holds sound (above -45 dBFS) but the received audio is near
    silence (below -65 dBFS): holes that concealment did not fill."""
    frame = round(OPUS_RATE * frame_ms / 1000)
    hole = (frame_db(reference, frame) > -45) & (frame_db(aligned, frame) < -65)
    runs, length = [], 0
    for flag in [*hole.tolist(), False]:
        if flag:
            length += 1
        elif length:
            runs.append(length * frame_ms)
            length = 0
    return runs


def tone(freq: float, seconds: float, level: float = 0.3) -> Audio:
    t = np.arange(round(OPUS_RATE * seconds)) / OPUS_RATE
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_hz(x: Audio) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    return float(np.argmax(spectrum[1:]) + 1) * OPUS_RATE / x.shape[0]


def free_udp_port_pair() -> int:
    """A UDP port whose successor is free too (RTP + RTCP), on 127.0.0.1, at the time of asking."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp:
            rtp.bind(("127.0.0.1", 0))
            port = int(rtp.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtcp:
                try:
                    rtcp.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free pair of UDP ports")


#: how long an RTP command may take to start listening (its JSON "listening" line)
LISTENING_WITHIN_S = 20.0


# -- the RTP commands as processes --------------------------------------------------------------------


@dataclass
class RelayCommands:
    """``vcstream rtp-receive`` and ``vcstream rtp`` running as processes, the relay sending to the
    receiver on loopback."""

    receiver: subprocess.Popen[str]
    relay: subprocess.Popen[str]
    relay_port: int

    def send(self, source: Path) -> subprocess.CompletedProcess[str]:
        """``vcstream rtp-send SOURCE`` to the relay, in real time; must succeed."""
        sent = subprocess.run(
            vcstream_argv("rtp-send", source, "--to", f"127.0.0.1:{self.relay_port}"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        return sent


@contextmanager
def relay_commands(
    reference: Path, out: Path, *relay_args: object, idle_timeout_s: float, duration_s: float
) -> Iterator[RelayCommands]:
    """The receiver (writing ``out``) and the relay (``relay_args``: engine and options) started;
    whatever is still running at the end is killed."""
    rx_port, relay_port = free_udp_port_pair(), free_udp_port_pair()
    receive = ["--listen", rx_port, "-o", out, "--idle-timeout", idle_timeout_s, "--duration", duration_s]
    relay = [
        "--listen",
        relay_port,
        "--send",
        f"127.0.0.1:{rx_port}",
        "-r",
        reference,
        "--duration",
        duration_s,
    ]
    processes: list[subprocess.Popen[str]] = []
    try:
        for command in (["rtp-receive", *receive], ["rtp", *relay, *relay_args]):
            processes.append(subprocess.Popen(vcstream_argv(*command), stdout=subprocess.PIPE, text=True))
        yield RelayCommands(processes[0], processes[1], relay_port)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
