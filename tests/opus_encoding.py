"""Opus packets from a real ``opusenc`` (appsrc -> opusenc -> appsink), for tests that read them."""

from __future__ import annotations

from typing import Any

import numpy as np

from vcstream.media.gst import Gst, ensure_gst


def opus_packets(samples: np.ndarray, rate: int, **encoder: Any) -> list[bytes]:
    """Encode mono float32 ``samples`` at ``rate`` with ``opusenc`` set as ``encoder`` says (20 ms
    frames, ``audio-type`` a string); returns the packets in order."""
    ensure_gst()
    pipeline = Gst.parse_launch(
        "appsrc name=src format=time "
        f"caps=audio/x-raw,format=F32LE,rate={rate},channels=1,layout=interleaved ! audioconvert "
        "! audioresample ! opusenc name=enc frame-size=20 ! appsink name=sink sync=false"
    )
    enc = pipeline.get_by_name("enc")
    for name, value in encoder.items():
        enc.set_property(name.replace("_", "-"), value)
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    buffer = Gst.Buffer.new_wrapped(np.ascontiguousarray(samples, dtype=np.float32).tobytes())
    buffer.pts, buffer.duration = 0, samples.shape[0] * Gst.SECOND // rate
    src = pipeline.get_by_name("src")
    src.emit("push-buffer", buffer)
    src.emit("end-of-stream")
    packets: list[bytes] = []
    try:
        while (sample := sink.emit("try-pull-sample", 5 * Gst.SECOND)) is not None:
            packets.append(sample.get_buffer().extract_dup(0, sample.get_buffer().get_size()))
    finally:
        pipeline.set_state(Gst.State.NULL)
    return packets
