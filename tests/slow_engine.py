"""Real passthrough engines slowed down on purpose, like an overloaded GPU: ``SlowEngine`` takes
``slowdown`` times a block's duration per block, ``BatchedEngine`` a settable time per batch. Used by the
tests of what the streaming path and the block scheduler do when the engine cannot keep up."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from vcstream.audio.types import Audio
from vcstream.engines.base import EngineSession, VoiceProfile
from vcstream.engines.passthrough import PassthroughEngine, PassthroughSession, PassthroughSettings
from vcstream.engines.settings import SessionSettings


class SlowSession(PassthroughSession):
    def __init__(self, sample_rate: int, block_time: float, slowdown: float) -> None:
        super().__init__(sample_rate, block_time)
        self.slowdown = slowdown

    def process(self, block: Audio) -> Audio:
        time.sleep(self.slowdown * self.block_size / self.sample_rate)  # the inference time it simulates
        return super().process(block)


class SlowEngine(PassthroughEngine):
    def __init__(self, slowdown: float, sample_rate: int = 22050) -> None:
        super().__init__(sample_rate)
        self.slowdown = slowdown

    def open_session(self, voice: VoiceProfile, settings: SessionSettings | None = None) -> EngineSession:
        block_time = self.own_settings(settings, PassthroughSettings).block_time
        return SlowSession(self.sample_rate, block_time, self.slowdown)


class BatchedEngine(PassthroughEngine):
    """A passthrough engine with a batched forward pass, as a GPU runs one: each ``run_batch`` takes
    ``batch_s`` whatever its size (set it at any time), records its size, and fails for a request
    whose block is marked (its first sample is ``FAIL``)."""

    batched_forward = True
    FAIL = 99.0

    def __init__(self, batch_s: float = 0.0, sample_rate: int = 16000) -> None:
        super().__init__(sample_rate)
        self.batch_s = batch_s
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def run_batch(self, sessions: Sequence[EngineSession], requests: Sequence[Any]) -> list[Any]:
        with self.lock:
            self.batches.append(len(requests))
        time.sleep(self.batch_s)
        if any(float(r[0]) == self.FAIL for r in requests):
            raise RuntimeError("a marked block")
        return [np.asarray(r, dtype=np.float32).copy() for r in requests]
