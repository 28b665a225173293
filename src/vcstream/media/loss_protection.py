"""How much the Opus encoder protects what it sends, from the loss the remote end reports.

Opus in-band FEC (LBRR: a low-bitrate copy of the previous frame inside each SILK or hybrid packet)
is steered by two encoder settings: ``packet-loss-percentage`` (how strongly LBRR is coded; with
0 libopus codes none) and the bitrate (LBRR is paid from it). The policy here:

* the expected loss never goes below a floor (10%), so the first losses of a call are already
  protected: a receiver report comes only every few seconds;
* it rises at once to the loss the receiver reports (fraction lost of its last report interval),
  and decays slowly (a few points per report), so a bursty link stays protected between bursts;
* it stops at a ceiling (30%): libopus no longer strengthens LBRR past 25%;
* the bitrate grows with it (base x (1 + loss)), up to a cap, so LBRR does not eat the bits of the
  primary frames. With FEC on and loss expected, libopus keeps voice in SILK/hybrid mode, which is
  where LBRR lives, at any of these bitrates.

Without FEC (the remote decoder did not ask for it) nothing changes: loss 0, the base bitrate.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

__all__ = ["FEC_CEILING_PCT", "FEC_FLOOR_PCT", "LossProtection", "Protection"]

#: expected loss the encoder is told at least, with FEC on (%)
FEC_FLOOR_PCT = 10
#: and at most: libopus caps the LBRR strength it derives from it at 25%
FEC_CEILING_PCT = 30
#: points the expected loss falls per receiver report without loss above it
DECAY_PCT_PER_REPORT = 2
#: highest bitrate the protection raises to (bits/s)
MAX_BITRATE = 64000


@dataclass(frozen=True)
class Protection:
    """Encoder settings: ``opusenc``'s ``inband-fec``, ``packet-loss-percentage`` and ``bitrate``."""

    inband_fec: bool
    packet_loss_pct: int
    bitrate: int


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

    def _settings(self, expected_pct: int) -> Protection:
        if not self.inband_fec:
            return Protection(False, 0, self.base_bitrate)
        bitrate = min(self.max_bitrate, self.base_bitrate * (100 + expected_pct) // 100)
        return Protection(True, expected_pct, bitrate)

    def current(self) -> Protection:
        with self._lock:
            return self._settings(self._expected_pct)

    def report(self, fraction_lost: float) -> Protection:
        """A receiver report's fraction lost (0..1): the settings to apply from now on."""
        if not self.inband_fec:
            return self.current()
        reported = math.ceil(100 * min(1.0, max(0.0, fraction_lost)))
        with self._lock:
            decayed = self._expected_pct - DECAY_PCT_PER_REPORT
            self._expected_pct = min(self.ceiling_pct, max(self.floor_pct, reported, decayed))
            return self._settings(self._expected_pct)
