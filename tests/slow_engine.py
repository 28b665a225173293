"""A real passthrough engine slower than real time, like an overloaded GPU: each block takes
``slowdown`` times its own duration. Used by the tests of what the streaming path does when the
engine cannot keep up (drops by policy, bounded backlog, media threads never waiting)."""

from __future__ import annotations

import time

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
