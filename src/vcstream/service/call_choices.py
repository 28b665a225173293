"""The values callers may pick for their per-call settings on this server.

A batch of the block scheduler holds requests of one shape only (Seed-VC: block size, steps, guidance,
precision), so a server where every caller picks their own block time and step count runs batches of
one. The operator (VCSTREAM_CALL_CHOICES, ``NAME=V|V,...``) or, on a GPU, the engine's own presets
(``Engine.call_presets``) narrow each per-call setting to a few values: at most the product of their
counts of shapes share the device. The server's default for a setting is always one of its choices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vcstream.engines.base import Engine
from vcstream.engines.settings import SessionSettings, SettingsError

#: VCSTREAM_CALL_CHOICES value that lets callers pick any allowed value (no presets, also on a GPU)
FREE = "free"


@dataclass(frozen=True)
class CallChoices:
    #: setting name -> the values a caller may choose (empty: any value the engine allows)
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    @classmethod
    def for_engine(
        cls, engine: Engine, defaults: SessionSettings, configured: tuple[str, ...]
    ) -> CallChoices:
        """The operator's choices, else the engine's presets where it batches on a GPU, else none.
        Each value is checked by the engine (SettingsError names what is allowed)."""
        wanted: dict[str, list[str]] = {}
        if configured == (FREE,):
            return cls()
        if configured:
            for pair in configured:
                name, sep, values = pair.partition("=")
                if not sep or not values.strip():
                    raise SettingsError(f"a call choice is NAME=VALUE|VALUE..., got {pair!r}")
                wanted[name.strip()] = [v.strip() for v in values.split("|") if v.strip()]
        elif engine.batched_forward and engine.on_gpu:
            wanted = {name: [str(v) for v in values] for name, values in engine.call_presets.items()}
        else:
            return cls()
        per_call = set(defaults.per_call_names())
        checked: dict[str, tuple[Any, ...]] = {}
        for name, raw in wanted.items():
            if name not in per_call:
                raise SettingsError(f"call choices are for per-call settings ({', '.join(sorted(per_call))})")
            picked = [getattr(defaults.updated({name: v}), name) for v in raw]
            default = getattr(defaults, name)
            checked[name] = tuple(sorted(set(picked) | {default}))
        return cls(checked)

    def check(self, settings: SessionSettings) -> SessionSettings:
        """``settings`` if every restricted value is one of its choices, else SettingsError."""
        for name, allowed in self.choices.items():
            value = getattr(settings, name)
            if value not in allowed:
                shown = ", ".join(str(v) for v in allowed)
                raise SettingsError(f"{name} {value} is not offered on this server: choose {shown}")
        return settings

    def schema(self, schema: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The settings schema with each restricted setting's ``choices``."""
        return {
            name: ({**entry, "choices": list(self.choices[name])} if name in self.choices else entry)
            for name, entry in schema.items()
        }

    def shapes(self) -> int:
        """Distinct combinations of the restricted settings (an upper bound on batch shapes)."""
        count = 1
        for values in self.choices.values():
            count *= len(values)
        return count
