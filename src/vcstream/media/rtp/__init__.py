"""Opus over RTP with RTCP: ``RtpOpusSender`` (float32 audio in, packets out) and ``RtpOpusReceiver``
(packets in, float32 48 kHz mono audio out to a callback on the streaming thread).

Both are live pipelines around ``rtpbin``. Their bus, restarts and teardown run on the shared
``GLibLoop``; the only Python code on streaming threads is cheap (packet checks, counters, handing
decoded audio to the callback).

Robustness of the receiver, by construction rather than by luck:

* a pad probe on the RTP socket drops datagrams that are not RTP version 2 or carry another payload
  type before ``rtpbin`` sees them (and counts them), so garbage and foreign streams cost nothing;
* ``rtpsession``'s probation (two consecutive sequence numbers) keeps a lone datagram that happens to
  look like RTP from creating a stream;
* every SSRC gets its own depayloader/decoder branch, added on ``pad-added`` and torn down on
  ``pad-removed`` (source timeout or BYE); the newest SSRC is the one delivered, so a restarted sender
  (new SSRC, new sequence numbers) takes over at once;
* the jitter buffer reports lost packets (``do-lost``) and ``opusdec`` conceals them (PLC, and the
  next packet's in-band FEC when enabled), so the output stays continuous through loss;
* a pipeline error is logged and counted, and the pipeline is restarted on the GLib thread.

RTCP is symmetric (RFC 4961): each end sends its reports from the socket it receives reports on, and
the receiver answers the address the sender's reports came from, so no return address is configured.

One module per job: ``codec`` (settings, packet arithmetic), ``sockets``, ``pipeline`` (the restartable
live pipeline), ``trace`` (packet times), ``sender``, ``gate`` (the receiver's packet check and session
resets), ``rtcp``, ``timeline`` (the received stream's timeline through loss and pauses, without
GStreamer) and ``receiver``.
"""

from typing import TYPE_CHECKING

from vcstream.lazy import lazy_exports
from vcstream.media.rtp.codec import (
    OPUS_RATE,
    RTP_HEADER_BYTES,
    NetworkSimulation,
    OpusCodecSettings,
    ip_overhead_bytes,
    opus_packet_samples,
)

if TYPE_CHECKING:
    from vcstream.media.rtp.receiver import RtpOpusReceiver
    from vcstream.media.rtp.sender import RtpOpusSender
    from vcstream.media.rtp.sockets import resolve_host
    from vcstream.media.rtp.trace import PacketTrace

#: what needs GStreamer loads on first use: the timeline and the codec arithmetic import without it
_LAZY = {
    "RtpOpusReceiver": "vcstream.media.rtp.receiver",
    "RtpOpusSender": "vcstream.media.rtp.sender",
    "resolve_host": "vcstream.media.rtp.sockets",
    "PacketTrace": "vcstream.media.rtp.trace",
}

__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "OPUS_RATE",
    "RTP_HEADER_BYTES",
    "NetworkSimulation",
    "OpusCodecSettings",
    "PacketTrace",
    "RtpOpusReceiver",
    "RtpOpusSender",
    "ip_overhead_bytes",
    "opus_packet_samples",
    "resolve_host",
]
