"""Opus in-band FEC and NACK/RTX on a real call (the Python client, a webrtcbin peer, offering as
browsers do), and the loss figures of the ``stats`` message."""

from __future__ import annotations

import asyncio
import math
import random
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import Speech
from vcstream.engines.passthrough import PassthroughEngine
from vcstream.media.gst import Gst
from vcstream.media.webrtc import OPUS_RATE, PeerConfig, WebRtcPeer
from waiting import wait_until_async
from webrtc_harness import PyClient, Server, client, reference_wav, serving, speech_48k

LOSS_FIELDS = ("received_loss_pct", "sent_loss_pct", "fec", "fec_expected_loss_pct", "concealed_pct")


@asynccontextmanager
async def _converting_call(
    tmp_path: Path, flite_speech: Speech, speech: Any, block_time: float, config: PeerConfig
) -> AsyncIterator[tuple[Server, PyClient]]:
    """A passthrough server and a call from the Python client (``config``) that has said ``speech``
    until its echo came back: the start every test here shares."""
    async with serving(tmp_path / "data", running=PassthroughEngine()) as server:
        voice = await server.upload(reference_wav(tmp_path, flite_speech, "awb"), "awb")
        async with client(server) as call:
            await call.hello()
            await call.start(voice, settings={"block_time": block_time}, peer_config=config)
            await call.talk_until_converted(speech)
            assert call.peer is not None
            yield server, call


@pytest.mark.parametrize("offer_fec", [True, False], ids=["fec-offered", "fec-not-offered"])
def test_the_server_sends_fec_when_the_caller_asks_for_it(
    tmp_path: Path, flite_speech: Speech, offer_fec: bool
) -> None:
    speech = speech_48k(flite_speech, "slt")
    # without FEC the client offers no RED either: the server must then send plain Opus
    config = PeerConfig(inband_fec=offer_fec, count_received_fec=True, red_distance=2 if offer_fec else 0)

    async def main() -> None:
        async with _converting_call(tmp_path, flite_speech, speech, 0.1, config) as (server, call):
            peer = call.peer
            assert peer is not None

            def reported() -> bool:
                stats = call.of_type("stats")
                return bool(stats) and stats[-1]["sent_loss_pct"] is not None

            # one pass of the sentence; the client's receiver reports come meanwhile (RTCP)
            await call.talk(speech, lambda: False, timeout_s=speech.shape[0] / OPUS_RATE - 0.05)
            await wait_until_async(reported, 5, "a stats message with the caller's report")
            packets, with_fec = peer.received_fec
            red_packets = peer.red_received
            answer = call.of_type("answer")[0]["sdp"]
            stats = call.of_type("stats")[-1]
            assert not call.of_type("error"), call.of_type("error")
            async with server.http.get(f"{server.base}/metrics") as response:
                metrics = await response.text()
        print(f"\nFEC offered={offer_fec}: {with_fec}/{packets} packets back with LBRR; stats {stats}")
        # either way the server's decoder uses FEC, and says so: a browser then sends it (RFC 7587)
        assert "a=fmtp:96 useinbandfec=1" in answer, answer
        if offer_fec:
            # RED offered: the answer lists it first, as libwebrtc needs to send it, without the
            # ULPFEC webrtcbin offers with it, and the server sends RED packets
            listed_first = re.search(r"^m=audio \S+ \S+ (\d+) 96\b", answer, re.MULTILINE)
            assert listed_first, answer
            red = listed_first.group(1)
            assert f"a=rtpmap:{red} red/48000" in answer and f"a=fmtp:{red} 96/96" in answer, answer
            assert "ulpfec" not in answer, answer
            assert red_packets > 0.9 * packets
        else:
            assert "red/48000" not in answer and red_packets == 0, answer
        # the client offered NACK and RTX (the default): the server's answer keeps both
        assert "a=rtcp-fb:96 nack" in answer and "rtx/48000" in answer, answer
        assert set(LOSS_FIELDS) <= set(stats), stats
        # the caller offered NACK (PeerConfig's default): the server counts retransmissions both ways
        assert set(stats["retransmissions"]) == {"requested", "recovered", "late", "asked", "resent"}
        assert all(isinstance(n, int) and n >= 0 for n in stats["retransmissions"].values()), stats
        assert stats["fec"] is offer_fec
        assert stats["remote_jitter_ms"] is not None
        assert stats["received_loss_pct"] is not None and stats["concealed_pct"] is not None
        assert packets > 100
        # since the call began: what the caller sent, and whether it sent RED (it does with FEC)
        totals = stats["received_totals"]
        assert totals["packets"] > 100 and totals["decoded_ms"] > 2000, totals
        # RED's copies rebuild only lost packets (loopback loses none, unless a socket overflows)
        assert totals["red_recovered"] <= totals["packets_lost"], totals
        if offer_fec:
            assert totals["red_packets"] > 0.9 * totals["packets"], totals
        else:
            assert totals["red_packets"] == 0, totals
        for series in (
            'vcstream_call_packet_loss_ratio_count{direction="received"}',
            'vcstream_call_packet_loss_ratio_count{direction="sent"}',
            "vcstream_call_concealed_ratio_count",
        ):
            observed = re.search(rf"^{re.escape(series)} (\S+)$", metrics, re.MULTILINE)
            assert observed and float(observed.group(1)) > 0, series
        if offer_fec:
            assert stats["fec_expected_loss_pct"] == 10  # the floor: loopback loses nothing
            assert with_fec > 0.5 * packets  # every packet with speech carries LBRR
        else:
            assert with_fec == 0

    asyncio.run(main())


def _drop_rtp(peer: WebRtcPeer, fraction: float, way: str = "received") -> None:
    """Lose ``fraction`` of the RTP packets at random: ``received``, those reaching the peer's RTP
    session (what a lossy link does to them; RTCP, on its own pad, still passes), or ``sent``, those
    leaving it (RED-wrapped, before SRTP). Reaches into webrtcbin's rtpbin: a test device only, for
    loss without a network namespace."""
    rng = random.Random(7 if way == "received" else 11)
    rtpbin = next(e for e in _elements(peer._pipeline) if e.get_factory().get_name() == "rtpbin")
    pad = rtpbin.get_static_pad("recv_rtp_sink_0" if way == "received" else "send_rtp_src_0")
    assert pad is not None

    def maybe_drop(_pad: Any, _info: Any) -> Any:
        return Gst.PadProbeReturn.DROP if rng.random() < fraction else Gst.PadProbeReturn.OK

    pad.add_probe(Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, maybe_drop)


def _elements(pipeline: Any) -> list[Any]:
    found, iterator = [], pipeline.iterate_recurse()
    while True:
        result, element = iterator.next()
        if result != Gst.IteratorResult.OK:
            return found
        if element.get_factory() is not None:
            found.append(element)


def test_the_server_protects_more_when_the_caller_reports_loss(tmp_path: Path, flite_speech: Speech) -> None:
    speech = speech_48k(flite_speech, "slt")

    async def main() -> None:
        # without NACK, as browsers call: with it, retransmissions repair 20% loss on loopback
        # completely and the receiver reports show none
        config = PeerConfig(nack=False)
        async with _converting_call(tmp_path, flite_speech, speech, 0.1, config) as (_server, call):
            assert call.peer is not None
            _drop_rtp(call.peer, 0.2)

            def lossy_report() -> dict[str, Any] | None:
                """The first stats message carrying a receiver report with the loss."""
                reports = [m for m in call.of_type("stats") if (m["sent_loss_pct"] or 0) > 5]
                return reports[0] if reports else None

            await call.talk(speech, lambda: lossy_report() is not None, timeout_s=20)
            stats = lossy_report()
        print(f"\n20% of the server's packets lost on the way: stats {stats}")
        assert stats is not None, "no receiver report with the loss reached the server"
        assert stats["fec"] is True
        assert stats["retransmissions"] is None  # no NACK offered
        # the same reading applied it: the encoder now expects what was reported (up to the ceiling)
        assert stats["fec_expected_loss_pct"] >= min(30, math.ceil(stats["sent_loss_pct"])), stats

    asyncio.run(main())


def test_red_copies_fill_the_gaps_of_lost_packets(tmp_path: Path, flite_speech: Speech) -> None:
    """10 % of the packets reaching the client are lost (at random, before its RTP session): RED's
    copy of each, in the packet after it, must reach the jitter buffer before the gap is seen, so
    the decoder hears of a gap (a GAP event: ``concealed_ms``) only where two or more packets in a
    row were lost. webrtcbin's RED decoder flags its copies REDUNDANT, and the ``rtpstorage`` behind
    it keeps flagged packets back: before ``WebRtcPeer`` cleared the flag, every lost packet was a gap
    (concealed 10 % of the time, as much as was lost)."""
    speech = speech_48k(flite_speech, "slt")

    async def main() -> tuple[float, float, int, int, int]:
        config = PeerConfig(nack=False)
        async with _converting_call(tmp_path, flite_speech, speech, 0.02, config) as (_server, call):
            peer = call.peer
            assert peer is not None
            before = peer.stats()
            red_before = peer.red_received
            _drop_rtp(peer, 0.1)
            await call.talk(speech, lambda: False, timeout_s=6)
            after = peer.stats()
            red_packets = peer.red_received - red_before
            # the peer's own figures agree with what the client counted on the wire (the server goes
            # on sending between the two readings: a few packets apart at most)
            assert abs(after.red_packets - before.red_packets - red_packets) <= 5
        lost = (after.packets_lost or 0) - (before.packets_lost or 0)
        concealed = after.concealed_ms - before.concealed_ms
        recovered = after.red_recovered - before.red_recovered
        return concealed, after.decoded_ms - before.decoded_ms, lost, red_packets, recovered

    concealed_ms, decoded_ms, lost, red_packets, recovered = asyncio.run(main())
    print(
        f"\n{lost} of {red_packets} RED packets lost, {recovered} rebuilt from RED: "
        f"{concealed_ms:.0f} ms concealed of {decoded_ms:.0f}"
    )
    assert red_packets > 200  # 6 s of RED packets, from the server's encoder
    # a lost packet is rebuilt from the copy the next one carries (measured: 20 of 31 in two runs;
    # a run of two loses its first, and why the rest were not rebuilt was not looked into)
    assert 0.4 * lost < recovered <= lost, (recovered, lost)
    assert lost > 0.05 * red_packets  # the drops happened, and the RTP session counted them
    # measured: 193-204 ms for 31 lost packets (runs of two or more are not recovered); 593 ms
    # before, when no copy reached the jitter buffer
    assert concealed_ms < 0.5 * lost * 20, (concealed_ms, lost)


def test_the_server_rebuilds_the_callers_lost_packets_from_red(tmp_path: Path, flite_speech: Speech) -> None:
    """The other way: the caller sends RED (``PeerConfig.red_distance``), 10 % of its packets are
    lost, and the server's ``stats`` (``received_totals``, since the call began) and ``/metrics``
    count the packets RED's copies rebuilt."""
    speech = speech_48k(flite_speech, "slt")

    async def main() -> tuple[dict[str, Any], str]:
        config = PeerConfig(nack=False)
        async with _converting_call(tmp_path, flite_speech, speech, 0.02, config) as (server, call):
            assert call.peer is not None
            _drop_rtp(call.peer, 0.1, "sent")
            await call.talk(speech, lambda: False, timeout_s=6)

            def rebuilt() -> dict[str, Any] | None:
                stats = call.of_type("stats")
                totals = stats[-1]["received_totals"] if stats else None
                return totals if totals and totals["red_recovered"] > 0 and totals["packets_lost"] else None

            totals = await wait_until_async(rebuilt, 5, "stats counting packets rebuilt from RED")
            async with server.http.get(f"{server.base}/metrics") as response:
                return totals, await response.text()

    totals, metrics = asyncio.run(main())
    print(f"\nthe server's totals: {totals}")
    assert totals["red_packets"] > 0.9 * totals["packets"], totals
    # lost packets are counted when a later one arrives; some come back from RED, not all
    assert totals["red_recovered"] <= totals["packets_lost"], totals
    counted = re.search(r"^vcstream_red_recovered_packets_total (\S+)$", metrics, re.MULTILINE)
    assert counted and float(counted.group(1)) > 0, metrics
