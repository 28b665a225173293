"""Opus and RTP settings and the plain packet arithmetic (no ``gi`` at import: the receiver's timeline
builds on this module; GStreamer objects are made only on demand)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vcstream.errors import ConfigurationError

#: Opus's RTP clock rate and the rate audio enters and leaves these pipelines at
OPUS_RATE = 48000
RTP_HEADER_BYTES = 12
#: RTCP packet types 192-223 alias RTP payload types 64-95 once the marker bit is masked
_RTCP_ALIASED_PTS = range(64, 96)


def ip_overhead_bytes(address: str) -> int:
    """IP + UDP header bytes per datagram to ``address`` (numeric IPv4 or IPv6)."""
    return 48 if ":" in address else 28


@dataclass(frozen=True)
class OpusCodecSettings:
    """Opus encoder and RTP settings. Receivers use ``payload_type``, and ``fec`` as the default for
    decoding with in-band FEC (which makes opusdec decode every packet one frame late)."""

    bitrate: int = 32000
    frame_ms: int = 20
    #: in-band FEC: the encoder adds a low-rate copy of the previous frame to each packet
    fec: bool = True
    #: loss the encoder plans for (it sizes the FEC data by it)
    expected_loss_pct: int = 10
    #: discontinuous transmission: near-silent frames are not sent
    dtx: bool = False
    payload_type: int = 96

    def __post_init__(self) -> None:
        if not 6000 <= self.bitrate <= 510000:
            raise ConfigurationError(f"Opus bitrate must be 6000..510000 b/s, got {self.bitrate}")
        if self.frame_ms not in (10, 20):
            raise ConfigurationError(f"Opus frame size must be 10 or 20 ms, got {self.frame_ms}")
        if not 0 <= self.expected_loss_pct <= 100:
            raise ConfigurationError(f"expected loss must be 0..100 %, got {self.expected_loss_pct}")
        if not 0 <= self.payload_type <= 127 or self.payload_type in _RTCP_ALIASED_PTS:
            raise ConfigurationError(
                f"RTP payload type must be 0..127 outside 64..95 (RTCP), got {self.payload_type}"
            )

    @property
    def frame_samples(self) -> int:
        return OPUS_RATE * self.frame_ms // 1000

    def rtp_caps(self) -> Any:
        from vcstream.media.gst import Gst, ensure_gst

        ensure_gst()
        return Gst.Caps.from_string(
            f"application/x-rtp,media=audio,clock-rate={OPUS_RATE},encoding-name=OPUS,"
            f"payload={self.payload_type}"
        )


@dataclass(frozen=True)
class NetworkSimulation:
    """Impairments GStreamer's ``netsim`` applies to outgoing RTP (tests and demos): a delay drawn
    uniformly from [min_delay_ms, max_delay_ms] for every packet, and random drops."""

    min_delay_ms: int = 0
    max_delay_ms: int = 0
    drop_pct: float = 0.0
    allow_reordering: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.min_delay_ms <= self.max_delay_ms:
            raise ConfigurationError(
                "netsim delay range must satisfy 0 <= min <= max, "
                f"got {self.min_delay_ms}..{self.max_delay_ms}"
            )
        if not 0 <= self.drop_pct <= 100:
            raise ConfigurationError(f"netsim drop must be 0..100 %, got {self.drop_pct}")

    def element(self) -> Any:
        from vcstream.media.gst import make_element

        delayed = self.max_delay_ms > 0
        return make_element(
            "netsim",
            min_delay=self.min_delay_ms,
            max_delay=self.max_delay_ms,
            delay_probability=1.0 if delayed else 0.0,
            drop_probability=self.drop_pct / 100.0,
            allow_reordering=self.allow_reordering,
        )


def opus_packet_samples(payload: bytes) -> int:
    """Duration of an Opus packet at 48 kHz from its TOC byte (RFC 6716 section 3.1); 0 if empty."""
    if not payload:
        return 0
    config, code = payload[0] >> 3, payload[0] & 0x3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        frame = (480, 960, 1920, 2880)[config % 4]
    elif config < 16:  # hybrid: 10, 20 ms
        frame = (480, 960)[config % 2]
    else:  # CELT: 2.5, 5, 10, 20 ms
        frame = (120, 240, 480, 960)[config % 4]
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        frames = payload[1] & 0x3F if len(payload) > 1 else 0
    return frame * frames


def rtp_payload(data: bytes) -> bytes:
    """The payload of an RTP packet (after CSRCs and header extension, before padding)."""
    offset = RTP_HEADER_BYTES + 4 * (data[0] & 0x0F)
    if data[0] & 0x10 and len(data) >= offset + 4:
        offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
    end = len(data) - (data[-1] if data[0] & 0x20 and data else 0)
    return data[offset:end]
