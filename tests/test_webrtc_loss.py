"""A WebRTC call over a link that loses 10 % of the datagrams each way (nftables, random, in the kernel:
ICE checks, DTLS handshake and SRTP alike), against a clean call with the same talk track, the server in
one network namespace and the Python client in another (tests/webrtc_loss_harness.py). Passthrough
engine: what the caller hears back is what it said, through the network twice.

What a caller must get on such a link: the call connected within 1.5 s of the offer (the handshake
protection of vcstream.media.handshake_protection), the server's packets carrying Opus in-band FEC, and
audio close to the clean call's: at most 1 % of the speech frames (inside bursts:
``webrtc_loss_harness.speech_frames``) 10 dB or more too quiet after the first second, energy envelopes
correlated at 0.9 or better, and a p95 latency at most 30 ms above the clean call's."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import Speech, write_wav
from netns import netns_pair, require_netns
from webrtc_loss_harness import PYTHON_CALL_SERVER_ENV, LossyLink, compare

# issue 12 is open. Since RED's copies reach the jitter buffers (WebRtcPeer._pass_red_copies_on),
# received Opus is decoded without holding frames back (ReceivedOpus) and a DTLS flight waits for ICE
# instead of being dropped (handshake_protection._FlightSender), 9 of 10 runs at 10 % loss each way
# passed (too quiet 0.00-0.82 %, latency +0 to +28 ms over a clean call of 64-70 ms, first audio
# 0.18-0.69 s); the tenth came back +39 ms (104 against 65 ms: with 20 markers the p95 is nearly the second
# worst, and a marker whose packets were lost on both legs comes 40 ms late). The connection bar is
# the other open part: libnice 0.1.21 sends a lost connectivity check again after 500 ms at the
# earliest, then 1 and 2 s (a floor in its code), webrtcbin makes its agents nominate with one more
# check on those timers, and both ends here are libnice (seen: 1.65 s in 60 connections with the hold).
# Run it with `pytest -m open_issue tests/test_webrtc_loss.py -s`
pytestmark = pytest.mark.open_issue

LOSS_PCT = 10
SECONDS = 20.0


def test_python_call_at_10_percent_loss_each_way(tmp_path: Path, flite_speech: Speech) -> None:
    require_netns()
    reference = write_wav(tmp_path / "reference.wav", *flite_speech("slt", None, 16000))
    with (
        netns_pair() as pair,
        LossyLink(pair, tmp_path, env=PYTHON_CALL_SERVER_ENV).serving(reference) as link,
    ):
        clean = link.python_call(0, SECONDS)
        lossy = link.python_call(LOSS_PCT, SECONDS)
    result = compare(clean, lossy)
    packets, with_fec = lossy.summary["opus_packets"], lossy.summary["fec_packets"]
    print(
        f"\nat {LOSS_PCT} % loss each way: connected in {result.connect_s:.2f} s to first audio "
        f"(ICE+DTLS {result.connected_s:.2f} s; clean {clean.summary['connect_s']:.2f} s), "
        f"speech frames too quiet {result.too_quiet_pct:.2f} %, envelope correlation "
        f"{result.envelope_correlation:.3f}, latency p95 {result.latency_p95_ms:.0f} ms "
        f"(clean {result.clean_latency_p95_ms:.0f} ms), server packets with FEC {with_fec} of {packets}\n"
        f"  each marker's latency (ms): {[round(1000 * lag) for lag in lossy.latencies_s()]}; clean call "
        f"{[round(1000 * lag) for lag in clean.latencies_s()]}"
    )
    # the link really lost packets, and the server's encoder protected what it sent
    assert lossy.summary["packets_lost"] and lossy.summary["packets_lost"] > 0.03 * packets
    # LBRR is coded for active speech only: the talk track is bursts in silences, about 40 % speech
    assert with_fec > 0.25 * packets
    assert clean.summary["fec_packets"] > 0.25 * clean.summary["opus_packets"]  # whatever the loss
    # the client sends RED, whose copies rebuilt lost packets at the server
    totals = lossy.summary["server_stats"]["received_totals"]
    assert totals["red_packets"] > 0.5 * totals["packets"] and totals["red_recovered"] > 0, totals
    assert result.connect_s <= 1.5
    assert result.too_quiet_pct <= 1.0
    assert result.envelope_correlation >= 0.9
    assert result.extra_latency_ms <= 30
