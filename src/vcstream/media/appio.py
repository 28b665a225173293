"""numpy <-> GStreamer bridges for float32 audio: ``AudioSource`` (an appsrc) feeds a pipeline,
``AudioSink`` (an appsink) takes audio out of one. Both speak interleaved F32LE at a fixed rate and
channel count; arrays are shaped (n,) for mono and (n, channels) otherwise.

They only own their element: add ``.element`` to a pipeline, link it, and run the pipeline as usual.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from vcstream.audio.types import Audio
from vcstream.errors import ConfigurationError
from vcstream.media.gst import Gst, GstAudio, ensure_gst, make_element, seconds_to_ns

log = logging.getLogger(__name__)

#: appsrc leaky-type value (GstAppLeakyType) that drops the oldest queued buffers
_LEAKY_DOWNSTREAM = 2


def audio_caps(sample_rate: int, channels: int) -> Any:
    """Caps for interleaved float32 audio at ``sample_rate`` with ``channels`` channels."""
    ensure_gst()  # GstCaps before Gst.init segfaults instead of raising
    if sample_rate <= 0:
        raise ConfigurationError(f"sample rate must be positive, got {sample_rate}")
    if not 1 <= channels <= 8:
        raise ConfigurationError(f"channel count must be 1..8, got {channels}")
    caps = f"audio/x-raw,format=F32LE,layout=interleaved,rate={int(sample_rate)},channels={int(channels)}"
    if channels > 2:
        # >2 channels need positions for audioconvert to mix into them: use the usual layout
        caps += f",channel-mask=(bitmask){GstAudio.audio_channel_get_fallback_mask(channels):#x}"
    return Gst.Caps.from_string(caps)


def sample_to_array(sample: Any, channels: int) -> Audio:
    """Copy the F32LE data of a GstSample into a writable array shaped (n,) or (n, channels)."""
    buffer = sample.get_buffer()
    data = np.frombuffer(buffer.extract_dup(0, buffer.get_size()), dtype="<f4").astype(np.float32)
    return data if channels == 1 else data.reshape(-1, channels)


class AudioSource:
    """An ``appsrc`` fed with numpy float32 audio.

    Timestamps come from a sample counter (``do-timestamp`` off), so they are exact and free of
    clock jitter: buffer k starts at ``base + samples_before_k / sample_rate``. For a live source that
    is pushed to after the pipeline started playing, ``align_to_clock`` sets ``base`` to the running
    time of the first push, so sinks that sync do not see the first buffers as late.

    ``max_queue_s`` bounds the internal queue: when downstream falls behind by more than that, the
    oldest audio is dropped (a real-time stream would rather lose audio than grow latency). ``None``
    queues without limit, which file encoding needs.

    ``max_ahead_s`` keeps a live, clock-aligned stream from running ahead of the clock: a sink that
    syncs plays each buffer at its timestamp, so a stream pushed ahead (more audio than time has
    passed since the first push) holds every later buffer back for good. When the next sample would
    be due more than ``max_ahead_s`` after the current running time, the start of the pushed audio
    is dropped, as much as the stream is ahead (``frames_trimmed`` counts it), as a receiver's
    jitter buffer speeds up to catch up. ``None``: never trimmed.

    ``push`` is thread-safe; pushes from several threads are serialised in call order.
    """

    def __init__(
        self,
        sample_rate: int,
        channels: int = 1,
        *,
        name: str | None = None,
        live: bool = True,
        align_to_clock: bool = True,
        max_queue_s: float | None = None,
        max_ahead_s: float | None = None,
    ) -> None:
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self._align = live and align_to_clock
        self._max_ahead_ns = None if max_ahead_s is None or not self._align else seconds_to_ns(max_ahead_s)
        self._trimmed = 0
        self._lock = threading.Lock()
        self._samples = 0
        self._base_ns = 0
        self._ended = False
        self.element: Any = make_element(
            "appsrc",
            name,
            caps=audio_caps(sample_rate, channels),
            format=Gst.Format.TIME,
            is_live=live,
            do_timestamp=False,
            block=False,
        )
        self.element.set_property("max-bytes", 0)  # 0 = no byte limit
        if max_queue_s is not None:
            self.element.set_property("max-time", seconds_to_ns(max_queue_s))
            self.element.set_property("leaky-type", _LEAKY_DOWNSTREAM)

    @property
    def samples_pushed(self) -> int:
        """Frames (samples per channel) accepted so far."""
        return self._samples

    @property
    def frames_trimmed(self) -> int:
        """Frames dropped so far because the stream ran ahead of the clock (``max_ahead_s``)."""
        return self._trimmed

    def _time_ns(self, frames: int) -> int:
        return int(self._base_ns + frames * Gst.SECOND // self.sample_rate)

    def push(self, samples: Audio) -> bool:
        """Queue ``samples`` ((n,) for mono or (n, channels)). Returns False when the source no longer
        accepts data (after ``end_of_stream`` or while the pipeline is stopped/flushing)."""
        data = np.ascontiguousarray(samples, dtype="<f4")
        if (data.ndim == 1 and self.channels == 1) or (data.ndim == 2 and data.shape[1] == self.channels):
            frames = data.shape[0]
        else:
            raise ValueError(f"expected audio shaped (n,) or (n, {self.channels}), got {data.shape}")
        if frames == 0:
            return not self._ended
        with self._lock:
            if self._ended:
                return False
            ahead = self._frames_ahead()
            if ahead > 0:
                dropped = min(frames, ahead)
                data, frames = data[dropped:], frames - dropped
                self._trimmed += dropped
                log.info(
                    "appsrc %s: the stream ran %.0f ms ahead of the clock; %.0f ms of audio dropped",
                    self.element.get_name(),
                    1000 * ahead / self.sample_rate,
                    1000 * dropped / self.sample_rate,
                )
                if frames == 0:
                    return True
            buffer = Gst.Buffer.new_wrapped(data.tobytes())
            if self._samples == 0:
                if self._align:
                    self._base_ns = self._running_time_ns()
                buffer.set_flags(Gst.BufferFlags.DISCONT)
            start, end = self._samples, self._samples + frames
            buffer.pts = self._time_ns(start)
            buffer.duration = self._time_ns(end) - buffer.pts
            buffer.offset, buffer.offset_end = start, end
            flow = self.element.push_buffer(buffer)
            if flow != Gst.FlowReturn.OK:
                log.debug("appsrc %s refused a buffer: %s", self.element.get_name(), flow)
                return False
            self._samples = end
            return True

    def _frames_ahead(self) -> int:
        """Frames to drop before the next push (under the lock): how far the next sample's time is
        ahead of the running time, when that is more than ``max_ahead_s``; else 0."""
        if self._max_ahead_ns is None or self._samples == 0:
            return 0
        ahead_ns = self._time_ns(self._samples) - self._running_time_ns()
        if ahead_ns <= self._max_ahead_ns:
            return 0
        return int(ahead_ns * self.sample_rate // Gst.SECOND)

    def _running_time_ns(self) -> int:
        clock = self.element.get_clock()
        if clock is None:  # not playing yet: start at running time 0
            return 0
        return max(0, int(clock.get_time() - self.element.get_base_time()))

    def end_of_stream(self) -> None:
        """Signal EOS after the queued audio (idempotent)."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            self.element.end_of_stream()


def _new_sample_handler(on_audio: Callable[[Audio], None], channels: int) -> Callable[[Any], Any]:
    def on_new_sample(sink: Any) -> Any:
        sample = sink.pull_sample()
        if sample is None:
            return Gst.FlowReturn.EOS
        try:
            on_audio(sample_to_array(sample, channels))
        except Exception:
            log.exception("on_audio callback of %s failed; stopping the stream", sink.get_name())
            return Gst.FlowReturn.ERROR
        return Gst.FlowReturn.OK

    return on_new_sample


class AudioSink:
    """An ``appsink`` that hands out numpy float32 audio.

    Either give ``on_audio``: it is called on the GStreamer streaming thread with each block as it
    arrives (keep it quick, hand heavy work to another thread; an exception stops the stream with a
    pipeline error), or leave it out and call ``pull``.

    ``sync=False`` (default) passes audio on as soon as it arrives instead of waiting for the clock.
    ``max_buffers`` bounds the queue for ``pull`` (0 = unlimited); when full, upstream waits, or the
    oldest buffer is dropped with ``drop=True``.
    """

    def __init__(
        self,
        sample_rate: int,
        channels: int = 1,
        *,
        on_audio: Callable[[Audio], None] | None = None,
        name: str | None = None,
        sync: bool = False,
        max_buffers: int = 0,
        drop: bool = False,
    ) -> None:
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.element: Any = make_element(
            "appsink",
            name,
            caps=audio_caps(sample_rate, channels),
            sync=sync,
            max_buffers=max_buffers,
            drop=drop,
            emit_signals=on_audio is not None,
        )
        if on_audio is not None:
            # the handler must not reference self: element -> closure -> self -> element would be a
            # cycle through GObject that Python's GC cannot collect
            self.element.connect("new-sample", _new_sample_handler(on_audio, self.channels))

    def pull(self, timeout_s: float) -> Audio | None:
        """The next block, waiting up to ``timeout_s``; None on timeout or at end of stream."""
        sample = self.element.try_pull_sample(seconds_to_ns(timeout_s))
        return None if sample is None else sample_to_array(sample, self.channels)

    @property
    def is_eos(self) -> bool:
        """True once EOS arrived and every block before it was pulled."""
        return bool(self.element.is_eos())
