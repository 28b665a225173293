"""Reading what an offer asks of our Opus stream: in-band FEC, NACK, RTX (as browsers and webrtcbin
write them)."""

from __future__ import annotations

from vcstream.media.opus_sdp import OpusFeatures, opus_features, red_first

#: the audio section of a Chrome offer (abridged): FEC asked for, no NACK or RTX for audio
CHROME = """v=0
o=- 1 2 IN IP4 127.0.0.1
s=-
t=0 0
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:126 telephone-event/8000
"""

#: what WebRtcPeer offers: FEC, NACK and an RTX payload for Opus
WEBRTCBIN = """v=0
o=- 1 0 IN IP4 0.0.0.0
s=-
t=0 0
m=audio 9 UDP/TLS/RTP/SAVPF 96 97
a=rtpmap:96 OPUS/48000
a=rtcp-fb:96 nack
a=rtcp-fb:96 transport-cc
a=fmtp:96 useinbandfec=1
a=rtpmap:97 rtx/48000
a=fmtp:97 apt=96
"""


def test_a_browser_offer_asks_for_fec_without_retransmissions() -> None:
    assert opus_features(CHROME, 111) == OpusFeatures(111, inband_fec=True, nack=False, rtx_payload_type=None)


def test_webrtcbin_offer_asks_for_fec_nack_and_rtx() -> None:
    assert opus_features(WEBRTCBIN, 96) == OpusFeatures(96, inband_fec=True, nack=True, rtx_payload_type=97)


def test_fec_off_or_absent_is_not_asked_for() -> None:
    off = WEBRTCBIN.replace("useinbandfec=1", "useinbandfec=0")
    assert not opus_features(off, 96).inband_fec
    absent = WEBRTCBIN.replace("a=fmtp:96 useinbandfec=1\n", "")
    assert not opus_features(absent, 96).inband_fec


def test_attributes_of_another_payload_type_do_not_count() -> None:
    # FEC and NACK named for payload 100 (say, a second codec), RTX associated with it
    other = WEBRTCBIN.replace("rtcp-fb:96 nack", "rtcp-fb:100 nack").replace("fmtp:96", "fmtp:100")
    other = other.replace("apt=96", "apt=100")
    assert opus_features(other, 96) == OpusFeatures(96)


def test_picture_loss_nack_is_not_a_retransmission_request() -> None:
    pli = WEBRTCBIN.replace("a=rtcp-fb:96 nack\n", "a=rtcp-fb:96 nack pli\n")
    assert not opus_features(pli, 96).nack
    wildcard = WEBRTCBIN.replace("a=rtcp-fb:96 nack\n", "a=rtcp-fb:* nack\n")
    assert opus_features(wildcard, 96).nack


def test_only_the_first_active_audio_section_counts() -> None:
    rejected_first = WEBRTCBIN.replace("m=audio 9 ", "m=audio 0 ", 1)
    assert opus_features(rejected_first, 96) == OpusFeatures(96)
    video_after = WEBRTCBIN + "m=video 9 UDP/TLS/RTP/SAVPF 96\na=rtcp-fb:96 nack\n"
    stripped = video_after.replace(
        "a=rtcp-fb:96 nack\na=rtcp-fb:96 transport-cc", "a=rtcp-fb:96 transport-cc"
    )
    assert not opus_features(stripped, 96).nack  # the video section's nack is not the audio's


#: an answer as webrtcbin makes it with RED (fec-type ulp-red): Opus first, RED without its fmtp,
#: ULPFEC with an RTX payload of its own
WEBRTCBIN_RED = (
    "v=0\r\no=- 1 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 96 97 98 100 99 101\r\n"
    "a=rtpmap:96 OPUS/48000\r\na=rtcp-fb:96 nack\r\na=fmtp:96 useinbandfec=1\r\n"
    "a=rtpmap:97 red/48000\r\na=rtpmap:98 ulpfec/48000\r\n"
    "a=rtpmap:100 rtx/48000\r\na=fmtp:100 apt=97\r\n"
    "a=rtpmap:99 rtx/48000\r\na=fmtp:99 apt=96\r\n"
    "a=rtpmap:101 rtx/48000\r\na=fmtp:101 apt=98\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 VP8/90000\r\n"
)


def test_red_goes_first_with_its_fmtp_and_ulpfec_is_left_out() -> None:
    ready = red_first(WEBRTCBIN_RED)
    lines = ready.split("\r\n")
    audio = lines[lines.index("m=audio 9 UDP/TLS/RTP/SAVPF 97 96 100 99") :]
    # libwebrtc sends RED only when it comes before the codec it carries, with that codec in its fmtp
    # and with the channel count libwebrtc's own RED has: Chromium sent no RED to ``red/48000``
    assert audio.index("a=rtpmap:97 red/48000/2") + 1 == audio.index("a=fmtp:97 96/96")
    # ULPFEC and its retransmissions are gone; everything else stays, in order
    assert "ulpfec" not in ready and "apt=98" not in ready and "a=rtpmap:101" not in ready
    for kept in (
        "a=rtcp-fb:96 nack",
        "a=fmtp:100 apt=97",
        "a=fmtp:99 apt=96",
        "m=video 9 UDP/TLS/RTP/SAVPF 102",
    ):
        assert kept in lines
    assert opus_features(ready, 96) == OpusFeatures(96, inband_fec=True, nack=True, rtx_payload_type=99)


def test_red_first_keeps_an_fmtp_there_is_and_leaves_descriptions_without_red_alone() -> None:
    assert red_first(WEBRTCBIN) == WEBRTCBIN
    chrome_answer = CHROME.replace(
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126", "m=audio 9 UDP/TLS/RTP/SAVPF 111 63"
    )
    ready = red_first(chrome_answer)
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 63 111" in ready
    assert ready.count("a=fmtp:63") == 1
    assert red_first("v=0\nm=audio 0 UDP/TLS/RTP/SAVPF 97\na=rtpmap:97 red/48000\n").startswith("v=0")
