"""Seed-VC's per-session settings: the knobs of Seed-VC's real-time GUI, on its 20 ms grid.

Kept apart from the model code so the command line and the server can read the schema without
importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vcstream.engines.settings import SessionSettings, setting

#: Seed-VC's streaming algorithm works in 20 ms units
GRID_S = 0.02
#: reference kept per voice (for longer prompts and offline conversion), as Seed-VC's inference.py
MAX_REFERENCE_S = 25.0
#: shortest usable prompt: XLS-R, the filterbank and the mel padding all need a few frames
MIN_PROMPT_S = 0.1
DTYPE_NAMES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class SeedVCSettings(SessionSettings):
    """Per-session settings (times in seconds, multiples of 20 ms)."""

    engine: ClassVar[str] = "seedvc"

    block_time: float = setting(
        0.18,
        "Block size",
        "seconds of audio converted per step; shorter is quicker to hear, longer costs less",
        unit="s",
        minimum=0.04,
        maximum=1.0,
        step=GRID_S,
        per_call=True,
    )
    crossfade_time: float = setting(
        0.04, "Crossfade", "SOLA crossfade between blocks", unit="s", minimum=0.02, maximum=0.5, step=GRID_S
    )
    extra_time_ce: float = setting(
        2.5,
        "Content context",
        "left context the content encoder (XLS-R) sees",
        unit="s",
        minimum=0.0,
        maximum=10.0,
        step=GRID_S,
    )
    extra_time_dit: float = setting(
        0.5,
        "DiT context",
        "left context the DiT also sees (part of the content context)",
        unit="s",
        minimum=0.0,
        maximum=10.0,
        step=GRID_S,
    )
    extra_time_right: float = setting(
        0.02, "Look-ahead", "right context (adds to latency)", unit="s", minimum=0.0, maximum=1.0, step=GRID_S
    )
    diffusion_steps: int = setting(
        10,
        "Diffusion steps",
        "flow-matching Euler steps: more is cleaner and slower",
        minimum=1,
        maximum=30,
        step=1,
        per_call=True,
    )
    cfg_rate: float = setting(
        0.7,
        "Guidance",
        "classifier-free guidance rate (0 halves the DiT's cost)",
        minimum=0.0,
        maximum=1.0,
    )
    max_prompt_length: float = setting(
        3.0,
        "Prompt length",
        "seconds of the reference used as the DiT's prompt (attention cost grows with it)",
        unit="s",
        minimum=MIN_PROMPT_S,
        maximum=MAX_REFERENCE_S,
    )
    seed: int = setting(0, "Noise seed", "seed of the session's noise generator", minimum=0, step=1)
    dtype: str = setting("fp32", "Precision", "fp32, or fp16/bf16 autocast (CUDA only)", choices=DTYPE_NAMES)

    def relations(self) -> str | None:
        if self.extra_time_dit > self.extra_time_ce:
            return "extra_time_dit cannot exceed extra_time_ce (the encoder's context)"
        if self.extra_time_dit < GRID_S:
            return "extra_time_dit must be at least 0.02 s to cover the SOLA frame"
        return None
