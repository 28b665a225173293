"""The WORLD engine's per-session settings, apart from its DSP so that the command line reads them
without loading pyworld and scipy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vcstream.engines.settings import SessionSettings, setting

#: WORLD analyses at 16 kHz in 5 ms frames
SAMPLE_RATE = 16000
FRAME = 80


@dataclass(frozen=True)
class WorldSettings(SessionSettings):
    engine: ClassVar[str] = "world"

    block_time: float = setting(
        0.1,
        "Block size",
        "seconds of audio per block, whole 5 ms analysis frames",
        unit="s",
        minimum=0.02,
        maximum=0.5,
        step=FRAME / SAMPLE_RATE,
        per_call=True,
    )
