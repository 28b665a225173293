"""One conversion stream at the I/O rate: input resampling, block framing, the engine session, output
resampling. Live transports and file conversion drive the very same object, so a converted file is
what a live listener hears (only shifted by the known delay)."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vcstream.audio.resample import make_resampler
from vcstream.audio.types import Audio
from vcstream.engines.base import Engine, VoiceProfile
from vcstream.engines.settings import SessionSettings


@dataclass
class StreamStats:
    #: the most recent per-block inference times (bounded, for percentiles)
    inference_s: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=500))

    def inference_ms(self, percentile: float) -> float | None:
        """A percentile of the recent blocks' inference times, None before the first block."""
        times = np.array(self.inference_s) * 1000
        return float(np.percentile(times, percentile)) if times.size else None


class StreamConverter:
    """Push audio chunks of any size at ``io_rate``; get converted audio back as blocks complete.

    Output sample n corresponds to input sample ``n - delay_samples`` (an index delay). In wall-clock
    terms a listener also waits for a block to fill and for inference: see ``algorithmic_latency_s``.
    """

    def __init__(
        self,
        engine: Engine,
        voice: VoiceProfile,
        io_rate: int,
        settings: SessionSettings | None = None,
        on_block: Callable[[float], None] | None = None,
    ) -> None:
        self.engine = engine
        self._on_block = on_block  # e.g. a metrics histogram: called with each block's inference seconds
        self.io_rate = io_rate
        #: the settings the session was opened with (None: the engine's defaults)
        self.settings = settings
        self.session = engine.open_session(voice, settings)
        self._to_engine = make_resampler(io_rate, engine.sample_rate)
        self._from_engine = make_resampler(engine.sample_rate, io_rate)
        self._pending = np.zeros(0, dtype=np.float32)
        self.stats = StreamStats()

    @property
    def block_size(self) -> int:
        """Engine block size expressed at the I/O rate (rounded)."""
        return round(self.session.block_size * self.io_rate / self.session.sample_rate)

    @property
    def delay_samples(self) -> int:
        """Index delay of output against input at the I/O rate (from the engine's algorithm)."""
        return round(self.session.latency_samples * self.io_rate / self.session.sample_rate)

    @property
    def algorithmic_latency_s(self) -> float:
        """Worst-case time a sample spends in this stream, not counting inference: waiting for its
        block to fill, the engine's own delay and what both resamplers hold back."""
        engine_rate = self.session.sample_rate
        held = (
            self._to_engine.latency_samples / engine_rate + self._from_engine.latency_samples / self.io_rate
        )
        return (self.session.block_size + self.session.latency_samples) / engine_rate + held

    # -- the three steps a live session takes one at a time --------------------------------------

    def accept(self, chunk: Audio) -> None:
        """Input at ``io_rate``, resampled to the engine's rate and held until a block is whole."""
        resampled = self._to_engine.process(np.asarray(chunk, dtype=np.float32))
        self._pending = np.concatenate([self._pending, resampled])

    def take_block(self) -> Audio | None:
        """The oldest whole block of input at the engine's rate, or None."""
        block = self.session.block_size
        if self._pending.shape[0] < block:
            return None
        taken, self._pending = self._pending[:block], self._pending[block:]
        return taken

    def deliver(self, block: Audio, inference_s: float | None) -> Audio:
        """A converted block (or its concealment, ``inference_s`` None) back at ``io_rate``."""
        if inference_s is not None:
            self.stats.inference_s.append(inference_s)
            if self._on_block is not None:
                self._on_block(inference_s)
        return self._from_engine.process(block)

    # -- all at once, on the caller's thread (file conversion, benchmarks) -------------------------

    def push(self, chunk: Audio) -> Audio:
        self.accept(chunk)
        converted = []
        while (block := self.take_block()) is not None:
            start = time.perf_counter()
            out = self.session.process(block)
            converted.append(self.deliver(out, time.perf_counter() - start))
        return np.concatenate(converted) if converted else np.zeros(0, np.float32)

    def set_voice(self, voice: VoiceProfile) -> None:
        self.session.set_voice(voice)

    def close(self) -> None:
        self.session.close()


def convert_stream(converter: StreamConverter, samples: Audio, chunk_size: int | None = None) -> Audio:
    """Run a whole signal through a live converter in ``chunk_size`` pieces (default 20 ms, like an
    RTP packet), then trailing silence to drain it, and return output aligned to the input (delay
    removed) with exactly the input's length."""
    chunk = chunk_size or converter.io_rate // 50
    n = samples.shape[0]
    drain = converter.delay_samples + 2 * converter.block_size + chunk
    padded = np.concatenate([samples.astype(np.float32), np.zeros(drain, dtype=np.float32)])
    pieces = [converter.push(padded[i : i + chunk]) for i in range(0, padded.shape[0], chunk)]
    out = np.concatenate(pieces)
    delay = converter.delay_samples
    return np.ascontiguousarray(out[delay : delay + n])
