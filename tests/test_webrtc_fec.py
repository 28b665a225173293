"""Opus in-band FEC and NACK/RTX on a real call (the Python client, a webrtcbin peer, offering as
browsers do), and the loss figures of the ``stats`` message."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conftest import Speech
from vcstream.engines.passthrough import PassthroughEngine
from vcstream.media.webrtc import OPUS_RATE, PeerConfig
from waiting import wait_until_async
from webrtc_harness import client, reference_wav, serving, speech_48k

LOSS_FIELDS = ("received_loss_pct", "sent_loss_pct", "fec", "fec_expected_loss_pct", "concealed_pct")


@pytest.mark.parametrize("offer_fec", [True, False], ids=["fec-offered", "fec-not-offered"])
def test_the_server_sends_fec_when_the_caller_asks_for_it(
    tmp_path: Path, flite_speech: Speech, offer_fec: bool
) -> None:
    speech = speech_48k(flite_speech, "slt")
    config = PeerConfig(inband_fec=offer_fec, count_received_fec=True)

    async def main() -> None:
        async with serving(tmp_path / "data", running=PassthroughEngine()) as server:
            voice = await server.upload(reference_wav(tmp_path, flite_speech, "awb"), "awb")
            async with client(server) as call:
                await call.hello()
                await call.start(voice, settings={"block_time": 0.1}, peer_config=config)
                await call.talk_until_converted(speech)
                peer = call.peer
                assert peer is not None

                def reported() -> bool:
                    stats = call.of_type("stats")
                    return bool(stats) and stats[-1]["sent_loss_pct"] is not None

                # one pass of the sentence; the client's receiver reports come meanwhile (RTCP)
                await call.talk(speech, lambda: False, timeout_s=speech.shape[0] / OPUS_RATE - 0.05)
                await wait_until_async(reported, 5, "a stats message with the caller's report")
                packets, with_fec = peer.received_fec
                answer = call.of_type("answer")[0]["sdp"]
                stats = call.of_type("stats")[-1]
                assert not call.of_type("error"), call.of_type("error")
        print(f"\nFEC offered={offer_fec}: {with_fec}/{packets} packets back with LBRR; stats {stats}")
        # either way the server's decoder uses FEC, and says so: a browser then sends it (RFC 7587)
        assert "a=fmtp:96 useinbandfec=1" in answer, answer
        # the client offered NACK and RTX (the default): the server's answer keeps both
        assert "a=rtcp-fb:96 nack" in answer and "rtx/48000" in answer, answer
        assert set(LOSS_FIELDS) <= set(stats), stats
        assert stats["fec"] is offer_fec
        assert stats["remote_jitter_ms"] is not None
        assert stats["received_loss_pct"] is not None and stats["concealed_pct"] is not None
        assert packets > 100
        if offer_fec:
            assert stats["fec_expected_loss_pct"] == 10  # the floor: loopback loses nothing
            assert with_fec > 0.5 * packets  # every packet with speech carries LBRR
        else:
            assert with_fec == 0

    asyncio.run(main())
