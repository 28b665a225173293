"""Reading an Opus packet's header (RFC 6716): its coding mode and whether it carries in-band FEC.

The TOC byte names the mode (SILK-only, hybrid or CELT-only), the frame length and the frame-count
code (section 3.1). A SILK or hybrid frame begins with per-channel header flags coded with equal
probability, so they are the first bits of the frame's first byte (section 4.2.3): one VAD flag per
20 ms SILK frame, then the LBRR flag, which says the packet holds FEC data for the previous frame.
"""

from __future__ import annotations

__all__ = ["carries_fec", "opus_mode"]

#: TOC configurations 0-11 are SILK-only, 12-15 hybrid, 16-31 CELT-only
_HYBRID_FIRST, _CELT_FIRST = 12, 16
#: SILK-only frame lengths (ms) by configuration modulo 4; hybrid uses 10 or 20 ms
_SILK_MS = (10, 20, 40, 60)


def opus_mode(packet: bytes) -> str:
    """``"silk"``, ``"hybrid"`` or ``"celt"`` (``"empty"`` for a packet of no bytes)."""
    if not packet:
        return "empty"
    config = packet[0] >> 3
    return "silk" if config < _HYBRID_FIRST else "hybrid" if config < _CELT_FIRST else "celt"


def carries_fec(packet: bytes) -> bool:
    """Whether the packet's first frame sets the LBRR flag (of its first channel). False for CELT-only
    packets (no SILK layer) and packets whose first frame is not at byte 1 (frame-count codes 2
    and 3, which ``opusenc`` does not produce for single 20 ms frames)."""
    mode = opus_mode(packet)
    if mode in ("empty", "celt") or len(packet) < 2 or packet[0] & 0x3 not in (0, 1):
        return False
    config = packet[0] >> 3
    frame_ms = _SILK_MS[config % 4] if mode == "silk" else (10, 20)[config % 2]
    vad_flags = max(1, frame_ms // 20)
    return bool((packet[1] >> (7 - vad_flags)) & 1)
