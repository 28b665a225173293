"""Opus packets from a real ``opusenc`` (appsrc -> opusenc -> appsink), for tests that read them."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import numpy as np

from vcstream.media.gst import Gst, ensure_gst


class LiveEncoder:
    """A PLAYING ``opusenc`` (20 ms frames) set as ``encoder`` says (``audio_type`` a string): audio in,
    packets out, its properties changeable in between as a call changes them."""

    def __init__(self, rate: int, **encoder: Any) -> None:
        ensure_gst()
        self.rate = rate
        self._pts = 0
        self._pipeline = Gst.parse_launch(
            "appsrc name=src format=time "
            f"caps=audio/x-raw,format=F32LE,rate={rate},channels=1,layout=interleaved ! audioconvert "
            "! audioresample ! opusenc name=enc frame-size=20 ! appsink name=sink sync=false"
        )
        self._encoder = self._pipeline.get_by_name("enc")
        for name, value in encoder.items():
            self.set(name, value)
        self._src = self._pipeline.get_by_name("src")
        self._sink = self._pipeline.get_by_name("sink")
        self._pipeline.set_state(Gst.State.PLAYING)

    def set(self, name: str, value: Any) -> None:
        self._encoder.set_property(name.replace("_", "-"), value)

    def encode(self, samples: np.ndarray) -> list[bytes]:
        """The packets of mono float32 ``samples`` (whole 20 ms frames of them)."""
        frame = self.rate // 50
        samples = np.ascontiguousarray(samples[: samples.shape[0] // frame * frame], dtype=np.float32)
        buffer = Gst.Buffer.new_wrapped(samples.tobytes())
        buffer.pts, buffer.duration = self._pts, samples.shape[0] * Gst.SECOND // self.rate
        self._pts += buffer.duration
        self._src.emit("push-buffer", buffer)
        packets: list[bytes] = []
        # the encoder holds back its look-ahead: a frame or so comes with the next audio
        while len(packets) < samples.shape[0] // frame - 2:
            sample = self._sink.emit("try-pull-sample", 5 * Gst.SECOND)
            assert sample is not None, f"opusenc gave {len(packets)} packets"
            buffer = sample.get_buffer()
            packets.append(buffer.extract_dup(0, buffer.get_size()))
        return packets

    def __enter__(self) -> LiveEncoder:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._pipeline.set_state(Gst.State.NULL)


def opus_packets(samples: np.ndarray, rate: int, **encoder: Any) -> list[bytes]:
    """Encode mono float32 ``samples`` at ``rate`` with ``opusenc`` set as ``encoder`` says."""
    with LiveEncoder(rate, **encoder) as live:
        return live.encode(samples)
