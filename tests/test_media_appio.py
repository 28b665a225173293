"""AudioSource / AudioSink in a real pipeline: appsrc ! audioconvert ! audioresample ! appsink."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import numpy as np
import pytest

from vcstream.errors import ConfigurationError, MediaError
from vcstream.media.appio import AudioSink, AudioSource
from vcstream.media.gst import Gst, ensure_gst, link_many, make_element, poll_bus, run_to_eos, start


def tone(freq: float, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.shape[0])))
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
    return float((k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / samples.shape[0])


def resampling_pipeline(source: AudioSource, sink: AudioSink) -> Any:
    ensure_gst()
    pipeline = Gst.Pipeline.new("appio-test")
    elements = [source.element, make_element("audioconvert"), make_element("audioresample"), sink.element]
    for element in elements:
        pipeline.add(element)
    link_many(*elements)
    return pipeline


def record_stamps(sink: AudioSink) -> list[tuple[int, int]]:
    """The (pts, duration) of every buffer reaching ``sink``, filled in as they pass."""
    stamps: list[tuple[int, int]] = []

    def probe(_pad: Any, info: Any) -> Any:
        buffer = info.get_buffer()
        stamps.append((buffer.pts, buffer.duration))
        return Gst.PadProbeReturn.OK

    sink.element.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, probe)
    return stamps


def blocks(samples: np.ndarray, size: int) -> list[np.ndarray]:
    return [samples[i : i + size] for i in range(0, samples.shape[0], size)]


def pull_all(sink: AudioSink, bus: Any, timeout_s: float = 10.0) -> np.ndarray:
    out: list[np.ndarray] = []
    deadline = time.monotonic() + timeout_s
    while not sink.is_eos:
        assert time.monotonic() < deadline, "no EOS"
        block = sink.pull(0.1)
        if block is not None:
            out.append(block)
        poll_bus(bus, 0)
    return np.concatenate(out)


@pytest.mark.parametrize("live", [True, False])
def test_pull_with_rate_change_keeps_tone(live: bool) -> None:
    source = AudioSource(16000, live=live)
    sink = AudioSink(48000)
    pipeline = resampling_pipeline(source, sink)
    x = tone(440, 16000, 1.0)
    try:
        start(pipeline)
        for block in blocks(x, 320):  # 20 ms blocks, as a live stream would send them
            assert source.push(block)
        source.end_of_stream()
        y = pull_all(sink, pipeline.get_bus())
    finally:
        pipeline.set_state(Gst.State.NULL)
    assert source.samples_pushed == 16000
    assert y.dtype == np.float32 and y.ndim == 1
    # 16k -> 48k: three times the samples; audioresample trims its own latency and drains at EOS
    assert abs(y.shape[0] - 3 * x.shape[0]) <= 3
    assert peak_hz(y, 48000) == pytest.approx(440, rel=0.01)
    assert np.max(np.abs(y)) == pytest.approx(0.5, abs=0.02)


def test_callback_receives_stereo_from_streaming_thread() -> None:
    received: list[np.ndarray] = []
    threads: set[int] = set()

    def on_audio(block: np.ndarray) -> None:
        threads.add(threading.get_ident())
        received.append(block)

    source = AudioSource(48000, channels=2)
    sink = AudioSink(16000, channels=2, on_audio=on_audio)
    pipeline = resampling_pipeline(source, sink)
    x = np.stack([tone(440, 48000, 0.5), tone(3000, 48000, 0.5)], axis=1)
    for block in blocks(x, 960):
        source.push(block)
    source.end_of_stream()
    run_to_eos(pipeline, timeout_s=10)

    y = np.concatenate(received)
    assert y.shape[1] == 2
    assert abs(y.shape[0] - x.shape[0] // 3) <= 2
    assert peak_hz(y[:, 0], 16000) == pytest.approx(440, rel=0.01)
    assert peak_hz(y[:, 1], 16000) == pytest.approx(3000, rel=0.01)
    assert threading.get_ident() not in threads
    received[0][0, 0] = 1.0  # blocks are the caller's own writable arrays


def test_concurrent_pushes_are_all_delivered() -> None:
    source = AudioSource(16000, live=False)
    sink = AudioSink(16000)  # same rate: audioresample passes buffers through
    pipeline = resampling_pipeline(source, sink)
    block = np.full(160, 0.25, np.float32)

    def pusher() -> None:
        for _ in range(50):
            assert source.push(block)

    try:
        start(pipeline)
        workers = [threading.Thread(target=pusher) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        source.end_of_stream()
        y = pull_all(sink, pipeline.get_bus())
    finally:
        pipeline.set_state(Gst.State.NULL)
    assert source.samples_pushed == 4 * 50 * 160
    assert y.shape == (4 * 50 * 160,)
    assert np.all(y == np.float32(0.25))


def test_timestamps_follow_the_sample_counter() -> None:
    source = AudioSource(16000, live=False)
    # a consumer is needed: an appsink in pull mode holds EOS back until its queue was pulled empty
    sink = AudioSink(16000, on_audio=lambda _block: None)
    pipeline = resampling_pipeline(source, sink)
    stamps = record_stamps(sink)
    for size in (160, 333, 1000, 7):
        source.push(np.zeros(size, np.float32))
    source.end_of_stream()
    run_to_eos(pipeline, timeout_s=10)
    starts = np.cumsum([0, 160, 333, 1000])
    assert [pts for pts, _ in stamps] == [int(n) * Gst.SECOND // 16000 for n in starts]
    # durations tile the timeline exactly: no drift from rounding
    assert all(p + d == q for (p, d), (q, _) in itertools.pairwise(stamps))


def test_push_after_end_of_stream_is_refused() -> None:
    source = AudioSource(16000)
    assert source.push(np.zeros(10, np.float32))
    source.end_of_stream()
    source.end_of_stream()  # idempotent
    assert not source.push(np.zeros(10, np.float32))
    assert source.samples_pushed == 10


def test_push_checks_shape() -> None:
    source = AudioSource(16000, channels=2)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        source.push(np.zeros(10, np.float32))


@pytest.mark.parametrize(("rate", "channels"), [(0, 1), (16000, 0), (16000, 9)])
def test_bad_caps_settings(rate: int, channels: int) -> None:
    with pytest.raises(ConfigurationError):
        AudioSink(rate, channels)


def test_failing_callback_stops_the_pipeline_with_an_error() -> None:
    def on_audio(_block: np.ndarray) -> None:
        raise RuntimeError("consumer broke")

    source = AudioSource(16000, live=False)
    sink = AudioSink(16000, on_audio=on_audio)
    pipeline = resampling_pipeline(source, sink)
    source.push(np.zeros(1600, np.float32))
    source.end_of_stream()
    with pytest.raises(MediaError, match="GStreamer pipeline failed"):
        run_to_eos(pipeline, timeout_s=10)


def test_pull_times_out_without_data() -> None:
    source = AudioSource(16000)
    sink = AudioSink(16000)
    pipeline = resampling_pipeline(source, sink)
    try:
        start(pipeline)
        started = time.monotonic()
        assert sink.pull(0.2) is None
        assert 0.15 <= time.monotonic() - started < 2
        assert not sink.is_eos
    finally:
        pipeline.set_state(Gst.State.NULL)


def test_ensure_gst_from_many_threads() -> None:
    errors: list[BaseException] = []

    def init() -> None:
        try:
            ensure_gst()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=init) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert Gst.is_initialized()


def test_live_source_starts_at_the_running_time_of_its_first_push() -> None:
    source = AudioSource(16000)  # live, align_to_clock
    sink = AudioSink(16000, on_audio=lambda _block: None)
    pipeline = resampling_pipeline(source, sink)
    stamps = record_stamps(sink)
    try:
        start(pipeline)
        time.sleep(0.3)  # running time passes before the first push: its stamp must show it
        source.push(np.zeros(320, np.float32))
        source.push(np.zeros(320, np.float32))
        source.end_of_stream()
        assert poll_bus(pipeline.get_bus(), 10)
    finally:
        pipeline.set_state(Gst.State.NULL)
    (first, _), (second, _) = stamps[:2]
    assert 0.25 * Gst.SECOND <= first < 2 * Gst.SECOND
    assert second - first == 20 * Gst.MSECOND


def test_bounded_live_queue_drops_oldest_audio() -> None:
    source = AudioSource(16000, max_queue_s=0.1)
    sink = AudioSink(16000, max_buffers=1)  # nobody pulls yet: the pipeline backs up into appsrc
    pipeline = resampling_pipeline(source, sink)
    try:
        start(pipeline)
        x = np.arange(32000, dtype=np.float32) / 32000  # a ramp shows which audio survived
        for block in blocks(x, 320):
            assert source.push(block)
        source.end_of_stream()
        y = pull_all(sink, pipeline.get_bus())
    finally:
        pipeline.set_state(Gst.State.NULL)
    # about 0.1 s queued in appsrc plus a few buffers in flight, not the 2 s pushed
    assert y.shape[0] < 0.5 * x.shape[0]
    assert y[-1] == x[-1]  # the newest audio is kept


def test_live_source_ahead_of_the_clock_drops_the_excess() -> None:
    rate = 16000
    source = AudioSource(rate, max_ahead_s=0.02)
    sink = AudioSink(rate, on_audio=lambda _block: None)
    pipeline = resampling_pipeline(source, sink)
    stamps = record_stamps(sink)
    try:
        start(pipeline)
        assert source.push(np.zeros(rate // 5, np.float32))  # 200 ms at once: 200 ms ahead
        assert source.push(np.zeros(rate // 50, np.float32))  # at once again: all of it dropped
        assert source.frames_trimmed == rate // 50
        time.sleep(0.19)  # the clock catches up to within 20 ms: taken whole
        assert source.push(np.zeros(rate // 50, np.float32))
        assert source.frames_trimmed == rate // 50
        time.sleep(0.1)  # behind the clock: never trimmed, whatever the lag
        assert source.push(np.zeros(rate // 50, np.float32))
        source.end_of_stream()
        assert poll_bus(pipeline.get_bus(), 10)
    finally:
        pipeline.set_state(Gst.State.NULL)
    assert source.frames_trimmed == rate // 50
    assert source.samples_pushed == rate // 5 + 2 * rate // 50
    # the timeline stays continuous: what is kept starts where the audio before it ended
    for (pts, duration), (next_pts, _) in itertools.pairwise(stamps):
        assert next_pts == pts + duration


def test_a_source_without_max_ahead_is_never_trimmed() -> None:
    source = AudioSource(16000)
    pipeline = resampling_pipeline(source, AudioSink(16000, on_audio=lambda _block: None))
    try:
        start(pipeline)
        for _ in range(10):
            assert source.push(np.zeros(1600, np.float32))
    finally:
        pipeline.set_state(Gst.State.NULL)
    assert source.frames_trimmed == 0 and source.samples_pushed == 16000
