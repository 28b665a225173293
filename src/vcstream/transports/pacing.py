"""Pushing recorded audio at the pace a microphone would deliver it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from vcstream.audio.types import Audio


def push_in_real_time(
    samples: Audio,
    sample_rate: int,
    push: Callable[[Audio], object],
    *,
    chunk_s: float = 0.01,
    speed: float = 1.0,
    stop: threading.Event | None = None,
    on_chunk: Callable[[int, float], None] | None = None,
) -> int:
    """Hand ``samples`` to ``push`` in ``chunk_s`` pieces, each once it would have been captured
    (chunk k at start + (k + 1) * chunk_s). The schedule is absolute, so sleep jitter does not add
    up. ``speed`` > 1 runs faster than real time. ``on_chunk(first_sample, push_time)`` sees the
    monotonic time of each push. Stops early when ``stop`` is set; returns the samples pushed."""
    chunk = max(1, round(chunk_s * sample_rate))
    start = time.monotonic()
    pushed = 0
    for k, offset in enumerate(range(0, samples.shape[0], chunk)):
        due = start + (k + 1) * chunk / (sample_rate * speed)
        wait = due - time.monotonic()
        if stop is not None:
            if stop.wait(max(0.0, wait)):
                break
        elif wait > 0:
            time.sleep(wait)
        piece = samples[offset : offset + chunk]
        now = time.monotonic()
        push(piece)
        if on_chunk is not None:
            on_chunk(offset, now)
        pushed += piece.shape[0]
    return pushed
