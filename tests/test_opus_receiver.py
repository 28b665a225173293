"""Decoding received Opus (``ReceivedOpus`` on libopus): each packet at once, a lost frame rebuilt from
the FEC of the packet after it, the timeline kept whatever length the jitter buffer guessed for a gap,
and a malformed packet concealed, not raised. Packets from a real ``opusenc`` at the settings the
server's encoder uses."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import Speech
from opus_encoding import opus_packets
from vcstream.media.libopus import OpusDecoder
from vcstream.media.opus_packets import carries_fec
from vcstream.media.opus_receiver import ReceivedOpus, decoding_rate

RATE = 48000
FRAME = RATE // 50


@pytest.fixture(scope="module")
def packets(flite_speech: Speech) -> list[bytes]:
    samples, _ = flite_speech("slt", None, RATE)
    speech = np.asarray(samples, dtype=np.float32)
    return opus_packets(
        speech, RATE, bitrate=48000, audio_type="voice", inband_fec=True, packet_loss_percentage=10
    )


def _decode_all(packets: list[bytes], lost: set[int], gap_s: float = 0.02) -> tuple[np.ndarray, ReceivedOpus]:
    receiver = ReceivedOpus(RATE)
    pieces = []
    for index, packet in enumerate(packets):
        if index in lost:
            receiver.lost(gap_s)
        else:
            pieces.append(receiver.packet(packet))
    return np.concatenate(pieces), receiver


def _snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.sum((reference - test) ** 2)) + 1e-12
    return 10 * np.log10(float(np.sum(reference**2)) / noise + 1e-12)


def test_every_packet_is_decoded_as_it_comes(packets: list[bytes]) -> None:
    receiver = ReceivedOpus(RATE)
    for packet in packets[:50]:
        # nothing held back: each packet's own 20 ms, at once
        assert receiver.packet(packet).shape == (FRAME,)
    assert receiver.concealed_s == receiver.recovered_s == 0


def test_a_lost_frame_comes_back_from_the_fec_of_the_next_packet(packets: list[bytes]) -> None:
    clean, _ = _decode_all(packets, set())
    speech = [i for i in range(5, len(packets) - 1) if carries_fec(packets[i + 1])]
    lost = set(speech[::10])  # isolated losses inside speech
    lossy, receiver = _decode_all(packets, lost)
    assert lossy.shape == clean.shape  # the timeline keeps its length
    assert receiver.recovered_s == pytest.approx(0.02 * len(lost))
    assert receiver.concealed_s == 0
    # against concealment alone: the same losses, with the next packets' FEC ignored
    concealed = ReceivedOpus(RATE)
    pieces = []
    for index, packet in enumerate(packets):
        if index in lost:
            pieces.append(concealed._decoder.conceal(FRAME))
        else:
            pieces.append(concealed.packet(packet))
    plc_only = np.concatenate(pieces)
    rebuilt = np.concatenate([lossy[i * FRAME : (i + 2) * FRAME] for i in sorted(lost)])
    made_up = np.concatenate([plc_only[i * FRAME : (i + 2) * FRAME] for i in sorted(lost)])
    reference = np.concatenate([clean[i * FRAME : (i + 2) * FRAME] for i in sorted(lost)])
    fec_snr, plc_snr = _snr_db(reference, rebuilt), _snr_db(reference, made_up)
    print(f"\n{len(lost)} frames lost: SNR {fec_snr:.1f} dB rebuilt from FEC, {plc_snr:.1f} dB concealed")
    assert fec_snr > plc_snr + 3


@pytest.mark.parametrize("gap_s", [0.0125, 0.0225, 0.025])
def test_a_gap_counts_in_whole_frames_whatever_length_was_guessed(packets: list[bytes], gap_s: float) -> None:
    clean, _ = _decode_all(packets, set())
    lossy, _ = _decode_all(packets, {40, 80}, gap_s)
    assert lossy.shape == clean.shape


def test_a_long_outage_is_made_up_whole(packets: list[bytes]) -> None:
    # 0.6 s lost: more than the 120 ms libopus makes up in one call
    clean, _ = _decode_all(packets, set())
    lossy, receiver = _decode_all(packets, set(range(40, 70)))
    assert lossy.shape == clean.shape
    assert receiver.concealed_s + receiver.recovered_s == pytest.approx(0.6)


def test_two_lost_in_a_row_conceal_the_first_and_rebuild_the_second(packets: list[bytes]) -> None:
    index = next(i for i in range(10, len(packets) - 2) if carries_fec(packets[i + 2]))
    clean, _ = _decode_all(packets, set())
    receiver = ReceivedOpus(RATE)
    for packet in packets[:index]:
        receiver.packet(packet)
    receiver.lost(0.04)  # one event for two packets, as the jitter buffer sends it
    audio = receiver.packet(packets[index + 2])
    assert audio.shape == (3 * FRAME,)
    assert receiver.concealed_s == pytest.approx(0.02) and receiver.recovered_s == pytest.approx(0.02)
    assert clean.shape[0] >= (index + 3) * FRAME


def test_a_malformed_packet_is_concealed_not_raised(packets: list[bytes]) -> None:
    receiver = ReceivedOpus(RATE)
    receiver.packet(packets[0])
    # frame-count code 3 announcing more frames than the packet holds: libopus refuses it
    audio = receiver.packet(bytes([0x03, 0xFF]))
    assert audio.shape == (FRAME,)
    assert receiver.refused == 1 and receiver.concealed_s == pytest.approx(0.02)
    assert receiver.packet(packets[1]).shape == (FRAME,)  # and the stream goes on


def test_other_rates_decode_at_the_next_opus_rate_and_resample() -> None:
    assert decoding_rate(16000) == 16000 and decoding_rate(22050) == 24000 and decoding_rate(44100) == 48000
    silence = bytes([0xF8, 0xFF, 0xFE])  # a CELT 20 ms frame of silence, as DTX senders send
    receiver = ReceivedOpus(22050)
    total = sum(receiver.packet(silence).shape[0] for _ in range(50))
    assert abs(total - 22050) <= 64  # a second of audio, less the resampler's fixed delay
    with pytest.raises(ValueError):
        OpusDecoder(22050)
