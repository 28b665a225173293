"""The receiver's live pause filling, driven on a clock the test controls: the silence it delivers
while no packets come never runs ahead of real time (else it outruns a loss burst and the timeline
grows), and within a DTX pause it follows each comfort-noise update sooner."""

from __future__ import annotations

import numpy as np

from vcstream.engines.base import Audio
from vcstream.media.rtp import IN_PAUSE_WAIT_MS, OPUS_RATE, _Delivery, _ReceiverState

FRAME = 960  # 20 ms
CELT_20MS = bytes([31 << 3, 0])  # TOC byte: CELT fullband, 20 ms, one frame
GRACE_S = 0.21


def delivery() -> tuple[_Delivery, list[Audio]]:
    received: list[Audio] = []
    state = _ReceiverState(received.append, None)
    state.active_ssrc = 1
    return _Delivery(1, state, decoder_holds_one=False), received


def decode_packet(d: _Delivery, timestamp: int) -> float:
    """One 20 ms packet through the account and the decoder; returns when it was decoded."""
    d._account_packet(timestamp, CELT_20MS)
    d(np.zeros(FRAME, dtype=np.float32))
    assert d._decoded_at is not None
    return d._decoded_at


def test_silence_for_a_gap_in_packets_is_delivered_in_real_time_only() -> None:
    d, received = delivery()
    decoded_at = decode_packet(d, 0)
    d.fill_pause(decoded_at + GRACE_S - 0.01, GRACE_S)
    assert d.state.pause_filled_samples == 0  # within the grace: packets may only be late
    for elapsed in np.arange(GRACE_S + 0.02, GRACE_S + 0.5, 0.02):
        d.fill_pause(decoded_at + elapsed, GRACE_S)
        due = (elapsed - GRACE_S) * OPUS_RATE
        # whole 10 ms pieces, never ahead of the time that passed since the grace ran out
        assert due - 480 <= d.state.pause_filled_samples <= due + 1, elapsed
    assert sum(chunk.shape[0] for chunk in received) == FRAME + d.state.pause_filled_samples


def test_after_a_comfort_noise_update_the_fill_resumes_sooner() -> None:
    d, _ = delivery()
    decode_packet(d, 0)
    # DTX: the next packet comes 400 ms of stream time later, the sequence numbers continue
    decoded_at = decode_packet(d, FRAME + round(0.4 * OPUS_RATE))
    d.fill_pause(decoded_at + IN_PAUSE_WAIT_MS / 1000 + 0.05, GRACE_S)
    assert abs(d.state.pause_filled_samples - 0.05 * OPUS_RATE) <= 480
    # the stream goes on without a break: back to the full grace
    decoded_at = decode_packet(d, FRAME + round(0.4 * OPUS_RATE) + FRAME)
    filled = d.state.pause_filled_samples
    d.fill_pause(decoded_at + GRACE_S - 0.01, GRACE_S)
    assert d.state.pause_filled_samples == filled
