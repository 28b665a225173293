"""How much the Opus encoder protects what it sends, from the loss the remote end reports.

Opus in-band FEC (LBRR: a low-bitrate copy of the previous frame inside each SILK or hybrid packet)
is steered by two encoder settings: ``packet-loss-percentage`` (how strongly LBRR is coded; with
0 libopus codes none) and the bitrate (LBRR is paid from it). The policy here:

* the expected loss never goes below a floor (10%), so the first losses of a call are already
  protected: a receiver report comes only every few seconds;
* it rises at once to the loss the receiver reports (fraction lost of its last report interval),
  and decays slowly (a few points per report), so a bursty link stays protected between bursts;
* it stops at a ceiling (30%): libopus no longer strengthens LBRR past 25%;
* the bitrate grows with it by a quarter of the expected loss (base x (1 + loss/4)), up to a cap,
  so the LBRR copies do not take the primary frames' bits. LBRR is cheap (measured at a 48 kb/s
  target: 48.4 kb/s with LBRR in 87% of packets against 47.5 kb/s without), and a link that loses
  packets is often a congested one: more than that would add load where it hurts. Measured offline
  against a fixed ``packet-loss-percentage`` of 10 at 48 kb/s, the adaptive setting changes the
  damage of 5-30% random loss by -0.1 to +0.2 dB SNR (noise); FEC itself is worth +8 to +13 dB
  there. The adaptation's worth is the margin: a floor for the first losses, more for heavy ones.
  With FEC on and loss expected, libopus keeps voice in SILK/hybrid mode, where LBRR lives, even
  at bitrates where it would otherwise code CELT only (measured: 80 kb/s).

Without FEC (the remote decoder did not ask for it) nothing changes: loss 0, the base bitrate.

RED (RFC 2198, where both ends negotiated it) is the second layer: each packet also carries the
previous frame whole, and the LBRR inside that copy covers the frame before it, so a frame is lost
only when three packets in a row are. It costs a second copy of the audio, so it is on from the start
(the first losses of a call are protected before any report comes) and while reports show loss, and
off once ``RED_CLEAN_REPORTS`` reports in a row showed none.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

__all__ = ["FEC_CEILING_PCT", "FEC_FLOOR_PCT", "RED_CLEAN_REPORTS", "LossProtection", "Protection"]

#: expected loss the encoder is told at least, with FEC on (%)
FEC_FLOOR_PCT = 10
#: and at most: libopus caps the LBRR strength it derives from it at 25%
FEC_CEILING_PCT = 30
#: points the expected loss falls per receiver report without loss above it
DECAY_PCT_PER_REPORT = 2
#: highest bitrate the protection raises to (bits/s)
MAX_BITRATE = 64000
#: receiver reports in a row without loss after which RED redundancy stops (RTCP reports come every
#: 1-5 s: about half a minute of a clean link)
RED_CLEAN_REPORTS = 10


@dataclass(frozen=True)
class Protection:
    """Encoder settings: ``opusenc``'s ``inband-fec``, ``packet-loss-percentage`` and ``bitrate``, and
    whether RED packets carry an older frame (``redundancy``; where RED was negotiated)."""

    inband_fec: bool
    packet_loss_pct: int
    bitrate: int
    redundancy: bool = False


class LossProtection:
    """The encoder settings for the loss reported so far (thread-safe)."""

    def __init__(
        self,
        base_bitrate: int,
        inband_fec: bool,
        *,
        floor_pct: int = FEC_FLOOR_PCT,
        ceiling_pct: int = FEC_CEILING_PCT,
        max_bitrate: int = MAX_BITRATE,
    ) -> None:
        self.base_bitrate = base_bitrate
        self.inband_fec = inband_fec
        self.floor_pct = floor_pct
        self.ceiling_pct = ceiling_pct
        self.max_bitrate = max(max_bitrate, base_bitrate)
        self._lock = threading.Lock()
        self._expected_pct = floor_pct if inband_fec else 0
        self._clean_reports = 0

    def _settings(self, expected_pct: int) -> Protection:
        redundancy = self._clean_reports < RED_CLEAN_REPORTS
        if not self.inband_fec:
            return Protection(False, 0, self.base_bitrate, redundancy)
        bitrate = min(self.max_bitrate, self.base_bitrate * (400 + expected_pct) // 400)
        return Protection(True, expected_pct, bitrate, redundancy)

    def current(self) -> Protection:
        with self._lock:
            return self._settings(self._expected_pct)

    def report(self, fraction_lost: float) -> Protection:
        """A receiver report's fraction lost (0..1): the settings to apply from now on."""
        reported = math.ceil(100 * min(1.0, max(0.0, fraction_lost)))
        with self._lock:
            self._clean_reports = 0 if reported > 0 else self._clean_reports + 1
            if not self.inband_fec:
                return self._settings(0)
            decayed = self._expected_pct - DECAY_PCT_PER_REPORT
            self._expected_pct = min(self.ceiling_pct, max(self.floor_pct, reported, decayed))
            return self._settings(self._expected_pct)
