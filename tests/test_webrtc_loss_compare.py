"""The comparison the loss tests rest on (``webrtc_loss_harness.compare``), on calls made up from the
talk track: one heard whole compares clean, one with lost speech frames fails the 1 % bar, and one
whose delay wanders the way Chromium's jitter buffer was seen to in a call without loss (+160 ms for
7 s) is not taken for lost audio."""

from __future__ import annotations

import numpy as np

from vcstream.bench.talk_markers import TalkTrack
from webrtc_loss_harness import (
    BURST_MARGIN_FRAMES,
    CHUNK,
    FRAME,
    OPUS_RATE,
    SPEECH_DBFS,
    CallRecord,
    _track,
    compare,
)

SECONDS = 12.0
DELAY_S = 0.2
BUFFER = OPUS_RATE // 1000


def _record(received: np.ndarray) -> CallRecord:
    # pushes on the talk track's clock, each millisecond of the received audio arriving as it ends
    pushes = [index * CHUNK / OPUS_RATE for index in range(round(SECONDS * 50))]
    arrivals = [((start + BUFFER) / OPUS_RATE, BUFFER) for start in range(0, received.shape[0], BUFFER)]
    return CallRecord({"connect_s": 0.3, "connected_s": 0.1}, received, arrivals, pushes, SECONDS)


def _heard(track: TalkTrack) -> np.ndarray:
    lead = np.zeros(round(DELAY_S * OPUS_RATE), np.float32)
    return np.concatenate([lead, track.samples, np.zeros(OPUS_RATE // 2, np.float32)])


def _pause_before(track: TalkTrack, after_s: float) -> int:
    """A sample of the received audio 0.3 s before the first burst after ``after_s``: in a pause, which
    is at least 0.35 s long (``vcstream.bench.talk_markers.SILENCE_S``)."""
    onset = next(o for o in track.onsets if o > after_s * OPUS_RATE)
    return onset + round((DELAY_S - 0.3) * OPUS_RATE)


def test_a_call_heard_whole_compares_clean() -> None:
    heard = _heard(_track(SECONDS))
    result = compare(_record(heard), _record(heard.copy()))
    assert result.too_quiet_pct == 0 and result.envelope_correlation > 0.999
    # the delay, and up to a chunk and a buffer more: a burst starts anywhere in its 20 ms chunk
    assert abs(result.extra_latency_ms) < 1 and 200 <= result.clean_latency_p95_ms <= 222


def test_lost_speech_frames_fail_the_bar() -> None:
    heard = _heard(_track(SECONDS))
    lossy = heard.copy()
    frames = lossy[: lossy.shape[0] // CHUNK * CHUNK].reshape(-1, CHUNK)  # a view: 20 ms frames
    loud = np.flatnonzero(np.sqrt(np.mean(frames**2, axis=1)) > 0.05)
    frames[loud[::25]] = 0  # one speech frame in 25 gone: 4 %
    result = compare(_record(heard), _record(lossy))
    assert 2.5 < result.too_quiet_pct < 5.5, result


def test_a_delay_that_wanders_for_seconds_is_not_lost_audio() -> None:
    track = _track(SECONDS)
    heard = _heard(track)
    # 160 ms more delay from about 3 s to about 10 s: silence added in one pause, taken out of a later one
    start, end, extra = _pause_before(track, 3.0), _pause_before(track, 10.0), round(0.16 * OPUS_RATE)
    wandering = np.concatenate(
        [heard[:start], np.zeros(extra, np.float32), heard[start:end], heard[end + extra :]]
    )
    result = compare(_record(heard), _record(wandering))
    assert result.too_quiet_pct <= 0.2 and result.envelope_correlation > 0.95, result


def test_recordings_of_other_lengths_compare_on_what_both_hold() -> None:
    heard = _heard(_track(SECONDS))
    # one ending just where the last burst's compared stretch ends (its envelope is then a
    # millisecond short of the stretch: that crashed a Chromium comparison), one 0.4 s short
    frames = heard[: heard.shape[0] // FRAME * FRAME].reshape(-1, FRAME)
    loud = np.flatnonzero(10 * np.log10(np.mean(frames**2, axis=1) + 1e-12) > SPEECH_DBFS)
    ends = ((loud[-1] + 1 + BURST_MARGIN_FRAMES) * FRAME, heard.shape[0] - round(0.4 * OPUS_RATE))
    for end in ends:
        assert compare(_record(heard[:end]), _record(heard)).too_quiet_pct == 0
        assert compare(_record(heard), _record(heard[:end])).too_quiet_pct == 0
