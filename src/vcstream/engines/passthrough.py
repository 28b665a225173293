"""Identity engine: the latency and quality baseline, run through the same streaming path as the
real engines (block framing and both sample-rate conversions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vcstream.audio.types import Audio
from vcstream.engines.base import Engine, EngineSession, VoiceProfile, check_block, seconds_to_samples
from vcstream.engines.settings import SessionSettings, setting


@dataclass(frozen=True)
class PassthroughSettings(SessionSettings):
    engine: ClassVar[str] = "passthrough"

    block_time: float = setting(
        0.1,
        "Block size",
        "seconds of audio per block (the latency a real engine's block would add)",
        unit="s",
        minimum=0.01,
        maximum=1.0,
        step=0.01,
        per_call=True,
    )


class PassthroughSession(EngineSession):
    def __init__(self, sample_rate: int, block_time: float) -> None:
        self.sample_rate = sample_rate
        self.block_size = seconds_to_samples(block_time, sample_rate)

    @property
    def latency_samples(self) -> int:
        return 0

    def process(self, block: Audio) -> Audio:
        return check_block(block, self.block_size).copy()

    def set_voice(self, voice: VoiceProfile) -> None:
        """Nothing to switch: the output is the input."""


class PassthroughEngine(Engine):
    name = "passthrough"
    settings_type = PassthroughSettings
    label = "passthrough engine"
    caveat = "no conversion, the output is the input (for testing)"

    def __init__(self, sample_rate: int = 22050) -> None:
        # 22.05 kHz by default so the baseline crosses the same rate conversions as Seed-VC.
        self.sample_rate = sample_rate

    def prepare_voice(self, reference: Audio, sample_rate: int) -> VoiceProfile:
        return VoiceProfile(self.name, sample_rate, reference.shape[0] / sample_rate, features=None)

    def open_session(self, voice: VoiceProfile, settings: SessionSettings | None = None) -> EngineSession:
        return PassthroughSession(
            self.sample_rate, self.own_settings(settings, PassthroughSettings).block_time
        )
