"""Seed-VC (v1 real-time model, 22.05 kHz) as a vcstream engine.

``create_seedvc_engine`` loads it (published weights, or random weights when asked for explicitly);
``SeedVCEngine``/``SeedVCSession`` stream it block by block; ``convert_offline`` converts a whole
utterance like Seed-VC's own inference script. Importing this package imports torch.
"""

from vcstream.engines.seedvc.offline import convert_offline
from vcstream.engines.seedvc.session import SeedVCEngine, SeedVCSession, StreamLayout, create_seedvc_engine
from vcstream.engines.seedvc.settings import SeedVCSettings

__all__ = [
    "SeedVCEngine",
    "SeedVCSession",
    "SeedVCSettings",
    "StreamLayout",
    "convert_offline",
    "create_seedvc_engine",
]
