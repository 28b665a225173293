"""What a remote session description asks of our Opus stream (in-band FEC, NACK and RTX), and our own
descriptions made ready for RED (``red_first``).

Read from the first active audio section's attributes for the Opus payload type:
``a=fmtp:<pt> ...;useinbandfec=1`` (RFC 7587: the remote decoder uses in-band FEC, so our encoder
should send it), ``a=rtcp-fb:<pt> nack`` (it sends NACKs and takes retransmissions) and an
``a=rtpmap:<rtx> rtx/48000`` with ``a=fmtp:<rtx> apt=<pt>`` (RFC 4588 retransmission payload).
Plain text parsing, no GStreamer: ``WebRtcPeer`` checks the description's validity before this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["OpusFeatures", "opus_features", "red_first"]

_FMTP = re.compile(r"^a=fmtp:(\d{1,3})\s+(.*)$", re.IGNORECASE)
_RTCP_FB = re.compile(r"^a=rtcp-fb:(\d{1,3}|\*)\s+(\S+)(?:\s+(\S+))?\s*$", re.IGNORECASE)
_RTX = re.compile(r"^a=rtpmap:(\d{1,3})\s+rtx/48000\s*$", re.IGNORECASE)
_RED = re.compile(r"^a=rtpmap:(\d{1,3})\s+red/48000(?:/\d+)?\s*$", re.IGNORECASE)
_ULPFEC = re.compile(r"^a=rtpmap:(\d{1,3})\s+ulpfec/48000\s*$", re.IGNORECASE)
_PAYLOAD_ATTRIBUTE = re.compile(r"^a=(?:rtpmap|fmtp|rtcp-fb):(\d{1,3})\s", re.IGNORECASE)
_OPUS = re.compile(r"^a=rtpmap:(\d{1,3})\s+opus/48000(?:/\d+)?\s*$", re.IGNORECASE)


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
    lines = [raw.strip() for raw in sdp.splitlines()]
    bounds = _active_audio_bounds(lines)
    return [] if bounds is None else lines[bounds[0] + 1 : bounds[1]]


def _active_audio_bounds(lines: list[str]) -> tuple[int, int] | None:
    """Where the first audio section whose port is not 0 starts (its ``m=`` line) and ends."""
    start = next((i for i, line in enumerate(lines) if _active_audio(line)), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
    return start, end


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


def red_first(sdp: str) -> str:
    """``sdp`` (our own offer or answer, as webrtcbin made it) ready for RED (RFC 2198) on its first
    active audio section:

    * RED listed before Opus, as ``red/48000/2``, with the ``a=fmtp:<red> <opus>/<opus>`` line
      webrtcbin leaves out. libwebrtc sends RED only when the RED payload comes before the codec it
      carries, its fmtp names that codec and its channels match its own ``red/48000/2``: to
      webrtcbin's ``red/48000`` Chromium 156 sent plain Opus (the server's RED decoder counted 0
      RED packets in a call; about 50 a second with ``/2``).
    * No ULPFEC payload, which webrtcbin adds next to RED but audio does not use: with it
      negotiated, webrtcbin's ULPFEC decoder marks every unrecovered loss "might have been FEC" and
      the depayloader then drops it instead of letting the decoder conceal it (measured: 40 of 52
      lost frames vanished from the timeline).

    Unchanged without RED or Opus."""
    newline = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(newline)
    bounds = _active_audio_bounds(lines)
    if bounds is None:
        return sdp
    start, end = bounds
    section = lines[start:end]
    red = _payload_of(_RED, section)
    opus = _payload_of(_OPUS, section)
    if red is None or opus is None:
        return sdp
    ulpfec = _payload_of(_ULPFEC, section)
    dropped = set() if ulpfec is None else {ulpfec, *_retransmissions_of(ulpfec, section)}
    kept = [line for line in section[1:] if _payload_type_of_attribute(line) not in dropped]
    fields = section[0].split()
    formats = [red, *(f for f in fields[3:] if f != red and f not in dropped)]
    rtpmap = next(i for i, line in enumerate(kept) if _RED.match(line))
    if kept[rtpmap].rstrip().lower().endswith("red/48000"):
        kept[rtpmap] = f"a=rtpmap:{red} red/48000/2"
    if not any((m := _FMTP.match(line)) and m.group(1) == red for line in kept):
        kept.insert(rtpmap + 1, f"a=fmtp:{red} {opus}/{opus}")
    return newline.join([*lines[:start], " ".join([*fields[:3], *formats]), *kept, *lines[end:]])


def _active_audio(line: str) -> bool:
    fields = line[2:].split() if line.startswith("m=") else []
    return len(fields) >= 2 and fields[0] == "audio" and fields[1] != "0"


def _payload_of(pattern: re.Pattern[str], section: list[str]) -> str | None:
    return next((m.group(1) for line in section if (m := pattern.match(line))), None)


def _retransmissions_of(payload_type: str, section: list[str]) -> list[str]:
    """The RTX payload types that resend ``payload_type`` (``a=fmtp:<rtx> apt=<payload_type>``)."""
    return [
        m.group(1)
        for line in section
        if (m := _FMTP.match(line)) and m.group(2).strip() == f"apt={payload_type}"
    ]


def _payload_type_of_attribute(line: str) -> str | None:
    """The payload type an ``a=rtpmap``/``a=fmtp``/``a=rtcp-fb`` line is about (None for others)."""
    match = _PAYLOAD_ATTRIBUTE.match(line)
    return match.group(1) if match else None
