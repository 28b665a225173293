"""What a remote session description asks of our Opus stream: in-band FEC, NACK and RTX.

Read from the first active audio section's attributes for the Opus payload type:
``a=fmtp:<pt> ...;useinbandfec=1`` (RFC 7587: the remote decoder uses in-band FEC, so our encoder
should send it), ``a=rtcp-fb:<pt> nack`` (it sends NACKs and takes retransmissions) and an
``a=rtpmap:<rtx> rtx/48000`` with ``a=fmtp:<rtx> apt=<pt>`` (RFC 4588 retransmission payload).
Plain text parsing, no GStreamer: ``WebRtcPeer`` checks the description's validity before this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["OpusFeatures", "opus_features"]

_FMTP = re.compile(r"^a=fmtp:(\d{1,3})\s+(.*)$", re.IGNORECASE)
_RTCP_FB = re.compile(r"^a=rtcp-fb:(\d{1,3}|\*)\s+(\S+)(?:\s+(\S+))?\s*$", re.IGNORECASE)
_RTX = re.compile(r"^a=rtpmap:(\d{1,3})\s+rtx/48000\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class OpusFeatures:
    """The remote end's wishes for the Opus stream on ``payload_type``."""

    payload_type: int
    #: the remote decoder uses Opus in-band FEC (``useinbandfec=1``)
    inband_fec: bool = False
    #: the remote end sends generic NACKs (``a=rtcp-fb:<pt> nack``, not ``nack pli``)
    nack: bool = False
    #: the RTX payload type associated with ``payload_type`` (``apt=``), if any
    rtx_payload_type: int | None = None


def _audio_section(sdp: str) -> list[str]:
    """The lines of the first audio section whose port is not 0 (empty if there is none)."""
    section: list[str] | None = None
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            if section is not None:
                return section
            fields = line[2:].split()
            if len(fields) >= 2 and fields[0] == "audio" and fields[1] != "0":
                section = []
        elif section is not None:
            section.append(line)
    return section or []


def _fmtp_parameters(text: str) -> dict[str, str]:
    parameters: dict[str, str] = {}
    for item in text.split(";"):
        key, _, value = item.partition("=")
        if key.strip():
            parameters[key.strip().lower()] = value.strip()
    return parameters


def opus_features(sdp: str, payload_type: int) -> OpusFeatures:
    """What ``sdp``'s first active audio section asks for Opus on ``payload_type``."""
    lines = _audio_section(sdp)
    fmtp: dict[int, dict[str, str]] = {}
    nack = False
    rtx_types: list[int] = []
    for line in lines:
        if match := _FMTP.match(line):
            fmtp[int(match.group(1))] = _fmtp_parameters(match.group(2))
        elif match := _RTCP_FB.match(line):
            applies = match.group(1) in ("*", str(payload_type))
            # "nack pli" asks for picture loss indications (video), not retransmissions
            nack = nack or (applies and match.group(2).lower() == "nack" and match.group(3) is None)
        elif match := _RTX.match(line):
            rtx_types.append(int(match.group(1)))
    rtx = next((pt for pt in rtx_types if fmtp.get(pt, {}).get("apt") == str(payload_type)), None)
    return OpusFeatures(
        payload_type=payload_type,
        inband_fec=fmtp.get(payload_type, {}).get("useinbandfec") == "1",
        nack=nack,
        rtx_payload_type=rtx,
    )
