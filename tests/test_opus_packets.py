"""Reading Opus packet headers (mode, LBRR flag) on packets a real ``opusenc`` made, and what the
encoder settings WebRtcPeer relies on do: FEC only with ``inband-fec`` and a loss percentage, in
SILK/hybrid mode, never in restricted-low-delay mode."""

from __future__ import annotations

from collections import Counter

import numpy as np

from conftest import Speech
from opus_encoding import LiveEncoder, opus_packets
from vcstream.media.opus_packets import carries_fec, opus_mode


def _speech_48k(flite_speech: Speech) -> np.ndarray:
    samples, _rate = flite_speech("slt", None, 48000)
    return np.asarray(samples, dtype=np.float32)


def test_voice_with_fec_at_the_peer_bitrates_is_hybrid_and_carries_lbrr(flite_speech: Speech) -> None:
    speech = _speech_48k(flite_speech)
    for bitrate in (48000, 64000, 80000):  # 80 kb/s: CELT-only without FEC (below)
        packets = opus_packets(
            speech, 48000, bitrate=bitrate, audio_type="voice", inband_fec=True, packet_loss_percentage=10
        )
        assert Counter(map(opus_mode, packets)) == {"hybrid": len(packets)}, bitrate
        # every frame with speech; the silent start and end have no LBRR
        assert sum(map(carries_fec, packets)) > 0.7 * len(packets), bitrate


def test_no_fec_without_inband_fec_or_without_expected_loss(flite_speech: Speech) -> None:
    speech = _speech_48k(flite_speech)
    for fec, loss in ((False, 10), (True, 0)):
        packets = opus_packets(
            speech, 48000, bitrate=48000, audio_type="voice", inband_fec=fec, packet_loss_percentage=loss
        )
        assert not any(map(carries_fec, packets)), (fec, loss)
    celt = opus_packets(speech, 48000, bitrate=80000, audio_type="voice", inband_fec=False)
    assert Counter(map(opus_mode, celt)) == {"celt": len(celt)}


def test_restricted_low_delay_never_carries_fec(flite_speech: Speech) -> None:
    packets = opus_packets(
        _speech_48k(flite_speech),
        48000,
        bitrate=48000,
        audio_type="restricted-lowdelay",
        inband_fec=True,
        packet_loss_percentage=30,
    )
    assert Counter(map(opus_mode, packets)) == {"celt": len(packets)}
    assert not any(map(carries_fec, packets))


def test_headers_of_hand_made_packets() -> None:
    # TOC config 9: SILK wideband 20 ms, code 0; first frame byte: VAD=1, LBRR=1
    assert opus_mode(bytes([9 << 3, 0b1100_0000])) == "silk"
    assert carries_fec(bytes([9 << 3, 0b1100_0000]))
    assert not carries_fec(bytes([9 << 3, 0b1000_0000]))
    # config 11: SILK wideband 60 ms: three VAD flags, then LBRR
    assert carries_fec(bytes([11 << 3, 0b0001_0000]))
    assert not carries_fec(bytes([11 << 3, 0b1110_0000]))
    # config 31: CELT fullband: no SILK layer, whatever the bits
    assert not carries_fec(bytes([31 << 3, 0xFF]))
    # frame-count code 3: the first frame is not at byte 1
    assert not carries_fec(bytes([(9 << 3) | 3, 0xFF, 0xFF]))
    assert opus_mode(b"") == "empty" and not carries_fec(b"")


def test_loss_protection_takes_effect_on_a_playing_encoder(flite_speech: Speech) -> None:
    """``packet-loss-percentage`` and ``bitrate`` (what LossProtection changes during a call) apply to
    an ``opusenc`` that is PLAYING, from its next frames."""
    speech = _speech_48k(flite_speech)
    with LiveEncoder(48000, bitrate=48000, audio_type="voice", inband_fec=True) as encoder:
        unprotected = encoder.encode(speech)
        encoder.set("packet-loss-percentage", 20)
        encoder.set("bitrate", 57600)
        protected = encoder.encode(speech)
    assert not any(map(carries_fec, unprotected))
    assert sum(map(carries_fec, protected)) > 0.7 * len(protected)
    # the higher bitrate pays for the LBRR copies
    assert sum(map(len, protected)) > 1.1 * sum(map(len, unprotected))
