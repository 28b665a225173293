"""Which datagrams the handshake protection copies (vcstream.media.handshake_protection): DTLS handshake
and change_cipher_spec records, nothing else; the first SRTP packet ends it. The effect on calls is
measured across namespaces in tests/test_webrtc_loss.py."""

from __future__ import annotations

import pytest

from vcstream.media import handshake_protection
from vcstream.media.gst import Gst, ensure_gst


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
