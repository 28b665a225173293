"""WebRTC calls over a link that loses 10 % of the datagrams each way (nftables, random, in the kernel:
ICE checks, DTLS handshake and SRTP alike), the server in one network namespace and the Python client
in another (tests/webrtc_loss_harness.py). Passthrough engine: what the caller hears back is what it
said, through the network twice.

What a caller must get on such a link (issue 12's bars):

* connection (offer -> first converted audio back) within 1.5 s at p95, over many calls: the
  handshake protection of vcstream.media.handshake_protection (still open, below);
* the server's packets carrying Opus in-band FEC, and the client's RED rebuilding lost packets at
  the server;
* audio close to a clean call's with the same talk track: at most 1 % of the speech frames (inside
  bursts: ``webrtc_loss_harness.speech_frames``) 10 dB or more too quiet after the first second,
  energy envelopes correlated at 0.9 or better;
* a p95 latency at most 30 ms above the clean call's (still open, below)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from conftest import Speech, write_wav
from netns import netns_pair, require_netns
from webrtc_loss_harness import PYTHON_CALL_SERVER_ENV, CallRecord, Comparison, LossyLink, compare

LOSS_PCT = 10
SECONDS = 20.0
#: short calls for the connection bar, the issue's p95 (one call's time is a draw from a tail)
CONNECT_CALLS = 100


@pytest.fixture(scope="module")
def lossy_link(tmp_path_factory: pytest.TempPathFactory, flite_speech: Speech) -> Iterator[LossyLink]:
    require_netns()
    workdir = tmp_path_factory.mktemp("python-loss")
    reference = write_wav(workdir / "reference.wav", *flite_speech("slt", None, 16000))
    with (
        netns_pair() as pair,
        LossyLink(pair, workdir, env=PYTHON_CALL_SERVER_ENV).serving(reference) as link,
    ):
        yield link


@pytest.fixture(scope="module")
def clean_and_lossy(lossy_link: LossyLink) -> tuple[CallRecord, CallRecord, Comparison]:
    clean = lossy_link.python_call(0, SECONDS)
    lossy = lossy_link.python_call(LOSS_PCT, SECONDS)
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
    return clean, lossy, result


# issue 12 is open on this bar for the Python client. libnice 0.1.21 sends a lost connectivity check
# again after 500 ms at the earliest, then 1 and 2 s (a floor in its code), webrtcbin makes its agents
# nominate with one more check on those timers, and both ends here are libnice: each exchange fails
# with about 19 % at 10 % loss each way, so about a quarter of the calls connect in 0.6-0.9 s and 4 %
# lose two exchanges in a row (1.6-1.8 s, 3.6 s for three). Five runs of 100 calls this session: p95
# 0.72, 0.78, 1.20, 1.69 and 1.71 s, 1 to 7 calls over 1.5 s each (19 of 500). Chromium as the caller
# retries sooner and is held to 1.5 s per call in CI (tests/test_webrtc_loss_chromium.py).
# Run it with `pytest -m open_issue tests/test_webrtc_loss.py -s`
@pytest.mark.open_issue
def test_python_calls_connect_within_1_5_s_p95_at_10_percent_loss_each_way(lossy_link: LossyLink) -> None:
    times = lossy_link.python_connections(LOSS_PCT, CONNECT_CALLS)
    connect, connected = np.array(times["connect_s"]), np.array(times["connected_s"])
    p50, p95 = np.percentile(connect, [50, 95])
    print(
        f"\n{CONNECT_CALLS} calls at {LOSS_PCT} % loss each way, offer -> first audio back: median "
        f"{p50:.2f} s, p95 {p95:.2f} s, slowest {connect.max():.2f} s, over 1.5 s: "
        f"{int(np.sum(connect > 1.5))} (ICE+DTLS median {np.median(connected):.2f} s)\n"
        f"  {sorted(round(float(t), 2) for t in connect)}"
    )
    assert connect.size == CONNECT_CALLS
    assert p95 <= 1.5


def test_python_call_at_10_percent_loss_each_way_keeps_the_audio(
    clean_and_lossy: tuple[CallRecord, CallRecord, Comparison],
) -> None:
    clean, lossy, result = clean_and_lossy
    packets, with_fec = lossy.summary["opus_packets"], lossy.summary["fec_packets"]
    # the link really lost packets, and the server's encoder protected what it sent
    assert lossy.summary["packets_lost"] and lossy.summary["packets_lost"] > 0.03 * packets
    # LBRR is coded for active speech only: the talk track is bursts in silences, about 40 % speech
    assert with_fec > 0.25 * packets
    assert clean.summary["fec_packets"] > 0.25 * clean.summary["opus_packets"]  # whatever the loss
    # the client sends RED, whose copies rebuilt lost packets at the server
    totals = lossy.summary["server_stats"]["received_totals"]
    assert totals["red_packets"] > 0.5 * totals["packets"] and totals["red_recovered"] > 0, totals
    assert result.too_quiet_pct <= 1.0
    assert result.envelope_correlation >= 0.9


# issue 12 is open on this bar. This client has no playout buffer: a marker comes when its packets
# come, so a frame rebuilt from the next packet's RED copy or FEC comes 20 ms late, one rebuilt on both
# legs or after two losses in a row 40 ms late. Per marker over 14 runs (280 markers, this and the last
# session) the lossy call added: under 10 ms to 80.7 % of them, 10-30 ms to 15.0 %, 30-50 ms to 2.5 %
# and more to 1.8 % (64-140 ms, not explained). The p95 of what loss adds is therefore about +28 ms,
# at the bar itself, and a call's 20 markers put its p95 on either side of it (1 of 8 runs failed this
# session, +65 ms). Run it with `pytest -m open_issue tests/test_webrtc_loss.py -s`
@pytest.mark.open_issue
def test_python_call_at_10_percent_loss_each_way_adds_at_most_30_ms(
    clean_and_lossy: tuple[CallRecord, CallRecord, Comparison],
) -> None:
    assert clean_and_lossy[2].extra_latency_ms <= 30
