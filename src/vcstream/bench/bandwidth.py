"""`vcstream bench bandwidth`: bytes on the wire per minute of speech through the real RTP sender,
beside the old design's 320 kb/s MP3 stream and its planned 64 kb/s.

A minute of flite speech (four voices, half a second between turns) goes through ``RtpOpusSender`` to a local
``RtpOpusReceiver``, faster than real time (the encoder's output does not depend on the pace). The
sender counts every RTP packet; wire bytes add the IPv4 and UDP headers (28 bytes a packet).
Ethernet framing (38 bytes a packet with preamble and gap) would come on top on a real link.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vcstream.audio.types import Audio
from vcstream.bench.signals import flite_speech
from vcstream.media.rtp import (
    OPUS_RATE,
    RTP_HEADER_BYTES,
    OpusCodecSettings,
    RtpOpusReceiver,
    RtpOpusSender,
)
from vcstream.transports.pacing import push_in_real_time

#: the old design's figures, bits per second of payload
OLD_DESIGN = (("old design: MP3", 320_000), ("old design: planned", 64_000))
VOICES = ("slt", "rms", "awb", "kal16")


@dataclass(frozen=True)
class BandwidthResult:
    label: str
    codec: OpusCodecSettings
    seconds: float
    packets_sent: int
    packets_received: int
    rtp_bytes: int
    wire_bytes: int
    rtcp_bytes: int

    def per_minute(self, total: int) -> float:
        return total * 60.0 / self.seconds

    @property
    def opus_kbps(self) -> float:
        """Codec payload only (RTP bytes less the 12-byte RTP headers)."""
        return 8 * (self.rtp_bytes - RTP_HEADER_BYTES * self.packets_sent) / self.seconds / 1000

    @property
    def wire_kbps(self) -> float:
        return 8 * self.wire_bytes / self.seconds / 1000


def minute_of_speech(rate: int = OPUS_RATE, seconds: float = 60.0, pause_s: float = 0.5) -> Audio:
    """Sentences of four voices with a pause between turns, repeated to ``seconds``."""
    pause = np.zeros(round(pause_s * rate), dtype=np.float32)
    speech = np.concatenate([part for voice in VOICES for part in (flite_speech(voice, rate), pause)])
    return np.resize(speech, round(seconds * rate)).astype(np.float32)


def measure_bandwidth(
    codec: OpusCodecSettings, speech: Audio, label: str = "", speed: float = 8.0
) -> BandwidthResult:
    receiver = RtpOpusReceiver(0, lambda _samples: None, codec=codec, name="bw-rx").start()
    try:
        sender = RtpOpusSender("127.0.0.1", receiver.port, codec=codec, name="bw-tx").start()
        try:
            push_in_real_time(speech, OPUS_RATE, sender.push, chunk_s=0.02, speed=speed)
            time.sleep(0.3)
        finally:
            sender.stop()
        time.sleep(0.2)
        sent, received = sender.stats(), receiver.stats()
    finally:
        receiver.stop()
    return BandwidthResult(
        label=label,
        codec=codec,
        seconds=speech.shape[0] / OPUS_RATE,
        packets_sent=sent["packets_sent"],
        packets_received=received["packets_received"],
        rtp_bytes=sent["rtp_bytes_sent"],
        wire_bytes=sent["wire_bytes_sent"],
        rtcp_bytes=sent["rtcp_bytes_sent"],
    )


def run_bandwidth_bench(
    variants: Sequence[tuple[str, OpusCodecSettings]] | None = None,
    seconds: float = 60.0,
    speed: float = 8.0,
) -> list[BandwidthResult]:
    variants = variants or [
        ("default", OpusCodecSettings()),
        ("no FEC", OpusCodecSettings(fec=False)),
        ("DTX", OpusCodecSettings(dtx=True)),
        ("10 ms frames", OpusCodecSettings(frame_ms=10)),
        ("64 kb/s", OpusCodecSettings(bitrate=64000)),
    ]
    speech = minute_of_speech(seconds=seconds)
    print(f"{seconds:.0f} s of speech through RtpOpusSender (mono, 48 kHz), scaled to one minute")
    print(
        f"{'variant':14} {'codec':18} {'pkt/s':>6} {'Opus kb/s':>9} {'RTP kB/min':>11} {'wire kB/min':>12} "
        f"{'wire kb/s':>10} {'vs 320k':>8} {'vs 64k':>7}"
    )
    results = []
    for label, codec in variants:
        r = measure_bandwidth(codec, speech, label, speed)
        results.append(r)
        desc = f"{codec.bitrate // 1000}k {codec.frame_ms}ms" + " fec" * codec.fec + " dtx" * codec.dtx
        wire_min = r.per_minute(r.wire_bytes)
        print(
            f"{label:14} {desc:18} {r.packets_sent / r.seconds:6.1f} {r.opus_kbps:9.1f} "
            f"{r.per_minute(r.rtp_bytes) / 1000:11.1f} {wire_min / 1000:12.1f} {r.wire_kbps:10.1f} "
            f"{OLD_DESIGN[0][1] * 60 / 8 / wire_min:7.1f}x {OLD_DESIGN[1][1] * 60 / 8 / wire_min:6.1f}x",
            flush=True,
        )
        if r.packets_received < r.packets_sent:
            print(f"  (receiver got {r.packets_received} of {r.packets_sent} packets)")
    for label, bps in OLD_DESIGN:
        print(f"{label:33} {'':6} {bps / 1000:9.1f} {bps * 60 / 8 / 1000:11.1f}   (payload only)")
    print(
        "wire = RTP packets + IPv4/UDP headers (28 B/packet); the 'vs' columns set it against the old "
        "design's payload-only rates, so they understate the saving."
    )
    return results
