"""The latency bench's marker location, a short real run of it over RTP, and the bandwidth bench."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.signal import butter, sosfilt

from vcstream.bench.bandwidth import measure_bandwidth
from vcstream.bench.latency import TARGET_BEYOND_BLOCK_MS, locate_markers, marker_signal, measure_rtp_latency
from vcstream.engines.passthrough import PassthroughEngine
from vcstream.media.rtp import OPUS_RATE, OpusCodecSettings

Speech = Callable[..., tuple[np.ndarray, int]]


def test_markers_are_found_to_the_sample_in_a_delayed_copy() -> None:
    signal, onsets = marker_signal(OPUS_RATE, 5.0)
    delay = 7919
    noise = 0.003 * np.random.default_rng(0).standard_normal(signal.shape[0] + delay)
    stream = (np.concatenate([np.zeros(delay), signal]) + noise).astype(np.float32)
    found = locate_markers(stream, signal, onsets, OPUS_RATE)
    assert np.array_equal(np.array(found) - np.array(onsets), np.full(len(onsets), delay))


def test_markers_are_found_by_envelope_when_the_waveform_changed() -> None:
    signal, onsets = marker_signal(OPUS_RATE, 5.0)
    # a different "voice": band-limited and phase-scrambled by a high-order filter, inverted
    sos = butter(8, [500, 2000], btype="bandpass", fs=OPUS_RATE, output="sos")
    changed = -sosfilt(sos, signal).astype(np.float32)
    delay = 4800
    stream = np.concatenate([np.zeros(delay, np.float32), changed])
    found = np.array(locate_markers(stream, signal, onsets, OPUS_RATE)) - np.array(onsets)
    assert np.all(np.abs(found - delay) < 0.005 * OPUS_RATE)


def test_missing_markers_are_reported_as_missing() -> None:
    signal, onsets = marker_signal(OPUS_RATE, 3.0)
    stream = signal.copy()
    stream[onsets[2] - 100 : onsets[2] + 2000] = 0
    found = locate_markers(stream, signal, onsets, OPUS_RATE)
    assert np.isnan(found[2]) and np.isfinite(found[0]) and np.isfinite(found[3])


def test_short_latency_run_over_rtp(flite_speech: Speech) -> None:
    engine = PassthroughEngine()
    report = measure_rtp_latency(
        engine, flite_speech("awb")[0], settings=engine.settings(block_time=0.1), seconds=4.0
    )
    assert report.found >= 0.9 * report.markers
    # passthrough with 100 ms blocks: at least the block wait of late markers, and the media path's
    # budget with headroom for a loaded CI machine (the bench reports the figure itself)
    assert 50 < report.percentile(95) < report.block_ms + TARGET_BEYOND_BLOCK_MS + 30
    assert all(0 <= leg < 100 for leg in report.leg_in_ms)
    assert 0 <= report.network_ms < 5 and 0 <= report.jitterbuffer_ms < 10
    assert report.relay_stats["input"]["packets_lost"] == 0


def test_bandwidth_of_default_settings(flite_speech: Speech) -> None:
    speech = np.tile(np.concatenate([flite_speech("slt", rate=OPUS_RATE)[0]]), 2)[: 8 * OPUS_RATE]
    result = measure_bandwidth(OpusCodecSettings(), speech.astype(np.float32), speed=8.0)
    assert result.packets_received == result.packets_sent
    assert abs(result.packets_sent / result.seconds - 50) < 1.5  # 20 ms frames
    assert 25 < result.opus_kbps < 40  # constrained VBR around 32 kb/s
    # IPv4 + UDP + RTP headers: 40 bytes x 50 packets/s = 16 kb/s on top
    assert abs(result.wire_kbps - result.opus_kbps - 16.0) < 0.5
