"""Which datagrams the handshake protection copies (vcstream.media.handshake_protection): DTLS handshake
and change_cipher_spec records, nothing else; the first SRTP packet ends it. A flight written before
ICE has a pair waits for one instead of being dropped: shown with two real libnice agents on
loopback, one sending through ``nicesink``, the other receiving through ``nicesrc``. The effect on
calls is measured across namespaces in tests/test_webrtc_loss.py. The server answers as the DTLS
server, so that the handshake's last flight is its own (a call between the Python client and a real
server, and the SDP rewrite on its own)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import Speech
from vcstream.engines.passthrough import PassthroughEngine
from vcstream.media import handshake_protection
from vcstream.media.gst import Gst, ensure_gst
from vcstream.media.webrtc import _elements
from waiting import wait_until
from webrtc_harness import client, reference_wav, serving, speech_48k


def _buffer(data: bytes) -> object:
    ensure_gst()
    return Gst.Buffer.new_wrapped(data)


@pytest.mark.parametrize(
    ("first", "expected"),
    [(22, True), (20, True), (23, False), (21, False), (0x00, False), (0x80, None), (0x90, None)],
)
def test_flight_datagrams_are_told_from_the_rest(first: int, expected: bool | None) -> None:
    # 22 handshake, 20 change_cipher_spec, 23 application data, 21 alert, 0 STUN, 0x80/0x90 (S)RTP
    assert handshake_protection._is_flight_datagram(_buffer(bytes([first, 0xFE, 0xFD, 0, 0]))) is expected


def test_the_protection_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(handshake_protection.PROTECTION_VARIABLE, raising=False)
    assert handshake_protection.protected()
    monkeypatch.setenv(handshake_protection.PROTECTION_VARIABLE, "0")
    assert not handshake_protection.protected()


def _sdp(*setups: str) -> str:
    head = "v=0\r\no=- 1 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE " + " ".join(
        str(i) for i in range(len(setups))
    )
    sections = [
        f"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:{i}\r\na=setup:{setup}\r\n"
        for i, setup in enumerate(setups)
    ]
    return head + "\r\n" + "".join(sections)


def test_the_answer_takes_the_dtls_server_role_only_where_the_offer_left_it_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(handshake_protection.PROTECTION_VARIABLE, raising=False)
    offer, answer = _sdp("actpass", "passive", "active"), _sdp("active", "active", "passive")
    assert handshake_protection.answer_as_dtls_server(answer, offer) == _sdp("passive", "active", "passive")
    monkeypatch.setenv(handshake_protection.PROTECTION_VARIABLE, "0")
    assert handshake_protection.answer_as_dtls_server(answer, offer) == answer


@pytest.mark.parametrize("protect", [True, False])
def test_the_server_is_the_dtls_server_of_a_call(
    tmp_path: Path, flite_speech: Speech, monkeypatch: pytest.MonkeyPatch, protect: bool
) -> None:
    monkeypatch.setenv(handshake_protection.PROTECTION_VARIABLE, str(int(protect)))

    async def main() -> tuple[str, list[bool]]:
        async with serving(tmp_path / "data", running=PassthroughEngine()) as server:
            voice = await server.upload(reference_wav(tmp_path, flite_speech, "awb"), "awb")
            async with client(server) as call:
                await call.hello()
                await call.start(voice)
                await call.talk_until_converted(speech_48k(flite_speech, "slt"))
                assert call.peer is not None
                encoders = _elements(call.peer._webrtc, "dtlssrtpenc")
                roles = [bool(encoder.get_property("is-client")) for encoder in encoders]
                return call.of_type("answer")[0]["sdp"], roles

    answer, caller_is_client = asyncio.run(main())
    # the call ran (audio came back), and the caller, which offered actpass, is the DTLS client
    assert ("a=setup:passive" in answer) is protect and ("a=setup:active" in answer) is not protect
    assert caller_is_client == [protect]


#: a DTLS handshake record's first bytes (content type 22, DTLS 1.2) and an SRTP packet's (RTP v2)
FLIGHT = bytes([22, 0xFE, 0xFD]) + b"client hello"
SRTP = bytes([0x80, 111, 0, 1]) + b"media"


class _AgentPair:
    """Two libnice agents on 127.0.0.1: ``push`` writes to the sender's ``nicesink``, ``received``
    is what the receiver's ``nicesrc`` got, and ``connect`` runs ICE between them."""

    def __init__(self) -> None:
        ensure_gst()
        import gi

        gi.require_version("Nice", "0.1")
        from gi.repository import GLib, Nice

        self._context = GLib.MainContext.new()
        self._loop = GLib.MainLoop.new(self._context, False)
        self._thread = threading.Thread(target=self._loop.run, daemon=True)
        self._thread.start()
        self.received: list[bytes] = []
        self._gathered = threading.Semaphore(0)
        self.sender, self.receiver = self._agent(Nice, True), self._agent(Nice, False)
        self.send_pipeline = Gst.parse_launch("appsrc name=src format=time ! nicesink name=ice")
        self.sink = self._attach(self.send_pipeline, self.sender)
        # both agents read their socket only through a nicesrc (the connectivity checks come in there)
        self.pipelines = [self.send_pipeline]
        for agent, tail in ((self.sender, "fakesink"), (self.receiver, "appsink name=out emit-signals=true")):
            pipeline = Gst.parse_launch(f"nicesrc name=ice ! {tail} sync=false")
            self._attach(pipeline, agent)
            self.pipelines.append(pipeline)
        self.pipelines[-1].get_by_name("out").connect("new-sample", self._on_sample)

    def _agent(self, nice: Any, controlling: bool) -> tuple[Any, int]:
        agent = nice.Agent.new(self._context, nice.Compatibility.RFC5245)
        agent.set_property("controlling-mode", controlling)
        agent.set_property("upnp", False)
        agent.set_property("ice-tcp", False)
        loopback = nice.Address()
        loopback.set_from_string("127.0.0.1")
        agent.add_local_address(loopback)
        agent.connect("candidate-gathering-done", lambda *_: self._gathered.release())
        return agent, agent.add_stream(1)

    @staticmethod
    def _attach(pipeline: Any, agent: tuple[Any, int]) -> Any:
        element = pipeline.get_by_name("ice")
        element.set_property("agent", agent[0])
        element.set_property("stream", agent[1])
        element.set_property("component", 1)
        return element

    def _on_sample(self, appsink: Any) -> Any:
        buffer = appsink.emit("pull-sample").get_buffer()
        self.received.append(buffer.extract_dup(0, buffer.get_size()))
        return Gst.FlowReturn.OK

    def start(self) -> None:
        for pipeline in self.pipelines:
            pipeline.set_state(Gst.State.PLAYING)
        for agent, stream in (self.sender, self.receiver):
            agent.gather_candidates(stream)
        for _ in range(2):
            assert self._gathered.acquire(timeout=10), "libnice gathered no candidates"

    def push(self, data: bytes) -> None:
        self.send_pipeline.get_by_name("src").emit("push-buffer", Gst.Buffer.new_wrapped(data))

    def connected(self) -> bool:
        agent, stream = self.sender
        return int(agent.get_component_state(stream, 1)) == 4  # READY

    def connect(self) -> None:
        for (local, local_stream), (remote, remote_stream) in (
            (self.sender, self.receiver),
            (self.receiver, self.sender),
        ):
            _ok, ufrag, password = local.get_local_credentials(local_stream)
            remote.set_remote_credentials(remote_stream, ufrag, password)
            remote.set_remote_candidates(remote_stream, 1, local.get_local_candidates(local_stream, 1))
        wait_until(self.connected, 10, "ICE between the two agents completed")

    def close(self) -> None:
        for pipeline in self.pipelines:
            pipeline.set_state(Gst.State.NULL)
        self._loop.quit()
        self._thread.join(timeout=5)


@contextmanager
def _agent_pair(protect: bool) -> Iterator[_AgentPair]:
    pair = _AgentPair()
    try:
        if protect:
            handshake_protection.protect_flights(pair.sink, pair.sender[0])
        pair.start()
        yield pair
    finally:
        pair.close()


def test_a_flight_written_before_ice_connects_leaves_once_it_has(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(handshake_protection.PROTECTION_VARIABLE, raising=False)
    with _agent_pair(protect=True) as pair:
        pair.push(FLIGHT)  # ICE has not even started: nicesink alone drops this
        pair.connect()
        copies = handshake_protection.HANDSHAKE_COPIES
        held = lambda: len(pair.received) >= copies  # noqa: E731
        wait_until(held, 5, "the held flight arrived", state=lambda: pair.received)
        pair.push(FLIGHT + b"2")  # connected: sent at once, as often
        pair.push(SRTP)  # the handshake is over: once, and nothing is copied after it
        pair.push(FLIGHT + b"3")
        expected = [FLIGHT] * copies + [FLIGHT + b"2"] * copies + [SRTP, FLIGHT + b"3"]
        wait_until(lambda: len(pair.received) >= len(expected), 5, "all arrived", state=lambda: pair.received)
        assert pair.received == expected


def test_without_the_protection_that_flight_is_lost() -> None:
    # what the hold is for: the same datagram, through webrtcbin's own path, never arrives
    with _agent_pair(protect=False) as pair:
        pair.push(FLIGHT)
        pair.connect()
        pair.push(SRTP)
        wait_until(lambda: pair.received, 5, "the packet sent after connecting arrived")
        assert pair.received == [SRTP]
