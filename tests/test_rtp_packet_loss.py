"""Packet loss for real: the sender in one network namespace, the relay (and a receiver) in another,
joined by a veth pair. The lossy run drops 5 % of the RTP datagrams at random in the kernel
(nftables) and delays every packet by 20 +/- 10 ms (GStreamer's netsim on the sender); the clean
run uses the same path without impairment. The output must stay continuous (Opus PLC and in-band FEC
fill the holes), the relay must report the loss it saw, and the quality lost is measured, with FEC
and with concealment alone."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import snr_db, write_wav
from netns import NetnsPair, netns_pair, require_netns
from rtp_harness import (
    LISTENING_WITHIN_S,
    align,
    frame_db,
    silence_gaps_ms,
    timeline_drift_ms,
    to_rate,
)
from vcstream.bench.process_events import read_event
from vcstream.media import decode_file
from vcstream.media.rtp import OPUS_RATE

Speech = Callable[..., tuple[np.ndarray, int]]
RELAY_PORT, RECEIVER_PORT = 5004, 6004
LOSS_PCT = 5
JITTER_MS = (10, 30)
PACKET = OPUS_RATE // 50  # 20 ms


@dataclass
class Run:
    output: np.ndarray
    relay: dict[str, Any]
    sender: dict[str, Any]
    receiver: dict[str, Any]


def vcstream(*args: object) -> list[str]:
    return [sys.executable, "-m", "vcstream.cli", *map(str, args)]


def final(text: str) -> dict[str, Any]:
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert lines and lines[-1]["event"] == "final", text[-2000:]
    return dict(lines[-1])


def relay_once(
    pair: NetnsPair, source: Path, reference: Path, out: Path, impaired: bool, fec: bool = True
) -> Run:
    codec = [] if fec else ["--no-fec"]
    if impaired:
        pair.random_loss(pair.a, RELAY_PORT, LOSS_PCT)
    try:
        receiver = pair.start(
            pair.b,
            vcstream(
                "rtp-receive", "--listen", f"127.0.0.1:{RECEIVER_PORT}", "-o", out,
                "--idle-timeout", 1.5, "--duration", 60,
            ),
        )  # fmt: skip
        relay = pair.start(
            pair.b,
            vcstream(
                "rtp", "--listen", RELAY_PORT, "--send", f"127.0.0.1:{RECEIVER_PORT}", "-r", reference,
                "--engine", "passthrough", "--latency", 80, "--duration", 60, *codec,
            ),
        )  # fmt: skip
        read_event(receiver, "listening", LISTENING_WITHIN_S)
        read_event(relay, "listening", LISTENING_WITHIN_S)
        impairment = ["--netsim-delay", f"{JITTER_MS[0]}:{JITTER_MS[1]}"] if impaired else []
        sent = pair.run(
            pair.a,
            vcstream("rtp-send", source, "--to", f"{pair.address_b}:{RELAY_PORT}", *impairment, *codec),
            60,
        )
        assert sent.returncode == 0, sent.stderr[-2000:]
        rx_out, rx_err = receiver.communicate(timeout=30)
        assert receiver.returncode == 0, rx_err[-2000:]
        relay.send_signal(signal.SIGTERM)
        relay_out, relay_err = relay.communicate(timeout=30)
        assert relay.returncode == 0, relay_err[-2000:]
    finally:
        pair.stop_processes()
        pair.clear_loss(pair.a)
    return Run(decode_file(out, OPUS_RATE), final(relay_out), final(sent.stdout), final(rx_out))


@pytest.fixture(scope="module")
def pair() -> Iterator[NetnsPair]:
    require_netns()
    with netns_pair() as created:
        yield created


def log_spectral_distance_db(x: np.ndarray, y: np.ndarray, frame: int = 960) -> float:
    """Mean RMS difference of 20 ms log power spectra, 100 Hz - 7 kHz (the source's band), over
    frames where ``x`` holds sound."""
    n = min(x.shape[0], y.shape[0]) // frame
    window = np.hanning(frame)
    band = slice(round(100 * frame / OPUS_RATE), round(7000 * frame / OPUS_RATE))
    fx = np.abs(np.fft.rfft(x[: n * frame].reshape(n, frame) * window, axis=1))[:, band] ** 2
    fy = np.abs(np.fft.rfft(y[: n * frame].reshape(n, frame) * window, axis=1))[:, band] ** 2
    active = frame_db(x, frame)[:n] > -45
    diff = 10 * np.log10(fx[active] + 1e-8) - 10 * np.log10(fy[active] + 1e-8)
    return float(np.mean(np.sqrt(np.mean(diff**2, axis=1))))


def test_relay_through_a_lossy_jittery_link(pair: NetnsPair, flite_speech: Speech, tmp_path: Path) -> None:
    x = to_rate(np.concatenate([flite_speech("slt")[0], flite_speech("rms")[0]]), 16000)
    source = write_wav(tmp_path / "source.wav", x, OPUS_RATE)
    reference = write_wav(tmp_path / "reference.wav", *flite_speech("awb"))
    clean = relay_once(pair, source, reference, tmp_path / "clean.wav", impaired=False)
    lossy = relay_once(pair, source, reference, tmp_path / "lossy.wav", impaired=True)
    # the same impairment with concealment alone (no in-band FEC sent or used), for comparison
    plc_only = relay_once(pair, source, reference, tmp_path / "plc.wav", impaired=True, fec=False)
    results = {}
    for name, run in (("clean", clean), ("lossy", lossy), ("lossy, PLC only", plc_only)):
        lag, aligned = align(x, run.output)
        stats = run.relay["input"]
        results[name] = {
            "snr_db": snr_db(x, aligned),
            "lsd_db": log_spectral_distance_db(x, aligned),
            "gaps_ms": silence_gaps_ms(x, aligned),
            "drift_ms": timeline_drift_ms(x, run.output),
            "lag": lag,
            "extra_ms": 1000 * (run.output.shape[0] - lag - x.shape[0]) / OPUS_RATE,
            "lost": stats["packets_lost"],
            "received": stats["packets_received"],
            "jitter_ms": stats.get("jitter_ms", float("nan")),
            "late": stats["packets_late"],
            "sender_heard_lost": run.sender.get("remote_packets_lost"),
            "sent": run.sender["packets_sent"],
            "flushes": run.relay["stream_flushes"],
        }
        r = results[name]
        print(
            f"\n{name}: SNR {r['snr_db']:.1f} dB, log-spectral distance {r['lsd_db']:.2f} dB, "
            f"relay saw {r['lost']} of {r['lost'] + r['received']} packets lost "
            f"({100 * r['lost'] / max(1, r['lost'] + r['received']):.1f} %), {r['late']} late, "
            f"RTCP jitter {r['jitter_ms']:.1f} ms; "
            f"sender's RTCP receiver report: {r['sender_heard_lost']} lost; "
            f"silence gaps {r['gaps_ms']}, timeline drift {r['drift_ms']:+.1f} ms, "
            f"delay {1000 * r['lag'] / OPUS_RATE:.1f} ms, "
            f"length {r['extra_ms']:+.0f} ms, flushes {r['flushes']}"
        )
    c, lo, plc = results["clean"], results["lossy"], results["lossy, PLC only"]
    print(
        f"quality lost to {LOSS_PCT} % loss + {JITTER_MS} ms jitter: "
        f"SNR {c['snr_db']:.1f} -> {lo['snr_db']:.1f} dB ({lo['snr_db'] - c['snr_db']:+.1f} dB) with FEC, "
        f"{plc['snr_db']:.1f} dB with PLC alone; "
        f"log-spectral distance {c['lsd_db']:.2f} -> {lo['lsd_db']:.2f} dB ({plc['lsd_db']:.2f} dB PLC alone)"
    )

    # the clean path loses nothing and sounds like two Opus passes (rtpbin drops a last packet
    # that arrives after the sender's BYE, which travels on the RTCP socket)
    assert c["lost"] == 0 and c["received"] >= c["sent"] - 1
    assert c["snr_db"] > 12
    for r in (lo, plc):
        # the relay saw the kernel's drops (5 % of ~480 packets: 24 +/- 4.8)
        share = r["lost"] / (r["lost"] + r["received"])
        assert 0.015 < share < 0.10, share
        assert r["received"] + r["lost"] >= 0.97 * r["sent"]
        # the sender's last packets left though netsim delayed them (the kernel drops come later)
        assert r["sent"] == c["sent"]
        # the jitter the link added shows in RTCP's interarrival jitter
        assert r["jitter_ms"] > 2 > c["jitter_ms"]
        # and the sender heard about the loss in RTCP receiver reports
        assert r["sender_heard_lost"] is not None and r["sender_heard_lost"] > 0
    # continuous output: no holes, no time lost or added, the end of the speech delivered: the relay
    # completes its last block with silence when the sender's stream ends (up to a block more);
    # two decoders may each keep a FEC frame, and a lossy link may eat the last packets, which
    # no later packet reveals as lost
    for r in (c, lo, plc):
        # concealment alone fades out over two lost packets in a row (about 1 in 400 at 5 %)
        assert all(gap <= (60 if r is plc else 20) for gap in r["gaps_ms"]), r["gaps_ms"]
        assert abs(r["drift_ms"]) <= 2.5
        # the output starts where the clean run's does, or a whole packet earlier for each of the
        # sender's first packets that the link ate: no receiver can know of those (about 1 run in 10)
        early = c["lag"] - r["lag"]
        assert 0 <= early <= 2 * PACKET and min(early % PACKET, -early % PACKET) <= 4, early
        assert -(60 if r is c else 120) < r["extra_ms"] < 150
    # in-band FEC rebuilds lost frames nearly intact (speech below 8 kHz sits in the SILK layer
    # that FEC carries); concealment alone costs measurably, yet stays usable
    assert lo["snr_db"] > c["snr_db"] - 3
    assert 4 < plc["snr_db"] < c["snr_db"] - 0.5
    assert max(lo["lsd_db"], plc["lsd_db"]) < c["lsd_db"] + 6
