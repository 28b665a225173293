"""Seed-VC (v1 real-time model, 22.05 kHz) as a vcstream engine.

``create_seedvc_engine`` loads it (published weights, or random weights when asked for explicitly);
``SeedVCEngine``/``SeedVCSession`` stream it block by block; ``convert_offline`` converts a whole
utterance like Seed-VC's own inference script. Torch is imported when one of those is first used;
``SeedVCSettings`` comes without it.
"""

from typing import TYPE_CHECKING

from vcstream.engines.seedvc.settings import SeedVCSettings
from vcstream.lazy import lazy_exports

if TYPE_CHECKING:
    from vcstream.engines.seedvc.offline import convert_offline
    from vcstream.engines.seedvc.session import (
        SeedVCEngine,
        SeedVCSession,
        StreamLayout,
        create_seedvc_engine,
    )

#: torch loads on first use: the command line reads Seed-VC's settings without it
_LAZY = {
    "convert_offline": "vcstream.engines.seedvc.offline",
    "SeedVCEngine": "vcstream.engines.seedvc.session",
    "SeedVCSession": "vcstream.engines.seedvc.session",
    "StreamLayout": "vcstream.engines.seedvc.session",
    "create_seedvc_engine": "vcstream.engines.seedvc.session",
}

__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "SeedVCEngine",
    "SeedVCSession",
    "SeedVCSettings",
    "StreamLayout",
    "convert_offline",
    "create_seedvc_engine",
]
