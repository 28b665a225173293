"""Per-session engine settings, declared once per engine.

Each engine has a frozen dataclass of its session settings whose fields carry their schema (label,
unit, range, grid, choices, whether a caller may change it in a call). Everything else reads that one
declaration: the command-line flags, the server's configuration, the ``settings_schema`` the server
sends to clients (and the page renders), and the engine session, which receives the typed object.
``SessionSettings.updated`` is the one validation path: a value off the grid or out of range is
refused with a message naming what is allowed, never rounded silently.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self

from vcstream.errors import ConfigurationError

#: tolerance for "on the grid": a JSON 0.18 is 0.18000000000000002 after arithmetic
_GRID_TOLERANCE = 1e-6


class SettingsError(ConfigurationError):
    """A session setting that cannot be used (unknown, wrong type, out of range, off the grid)."""


@dataclass(frozen=True)
class SettingSpec:
    """What a setting means and which values it takes."""

    label: str
    help: str
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    #: values must be ``minimum + k * step`` (a 20 ms grid, whole frames...)
    step: float | None = None
    choices: tuple[str, ...] = ()
    #: a caller may change it per call (signalling); otherwise only the operator (flags, environment)
    per_call: bool = False


def setting(
    default: Any,
    label: str,
    help: str,
    *,
    unit: str = "",
    minimum: float | None = None,
    maximum: float | None = None,
    step: float | None = None,
    choices: tuple[str, ...] = (),
    per_call: bool = False,
) -> Any:
    """A dataclass field of a ``SessionSettings`` with its spec."""
    spec = SettingSpec(label, help, unit, minimum, maximum, step, choices, per_call)
    return field(default=default, metadata={"spec": spec})


def _kind(annotation: object) -> type:
    """The field's Python type from its (string, under ``from __future__ import annotations``)
    annotation: settings are plain ``float``, ``int`` or ``str``."""
    name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    kinds: dict[str, type] = {"float": float, "int": int, "str": str}
    if name not in kinds:
        raise TypeError(f"a session setting is a float, int or str, not {annotation!r}")
    return kinds[name]


def _number(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class SessionSettings:
    """Base of every engine's settings. Subclasses declare fields with ``setting(...)`` and may check
    relations between fields in ``relations``."""

    #: the engine these settings belong to (for messages)
    engine: ClassVar[str] = "engine"

    #: every streaming engine works in blocks; each engine declares its own range and grid
    block_time: float = setting(0.1, "Block size", "seconds of audio per block", unit="s", minimum=0.01)

    def __post_init__(self) -> None:
        # every construction is checked, also a direct ``WorldSettings(block_time=...)``
        kinds = self.kinds()
        for name, spec in self.specs().items():
            value = self.checked(name, getattr(self, name), spec, kinds[name])
            object.__setattr__(self, name, value)  # typed (a flag's "0.2" -> 0.2), float noise removed
        problem = self.relations()
        if problem:
            raise SettingsError(problem)

    def relations(self) -> str | None:
        """A message when fields that are each valid do not go together."""
        return None

    # -- the declaration ------------------------------------------------------------------------

    @classmethod
    def specs(cls) -> dict[str, SettingSpec]:
        return {f.name: f.metadata["spec"] for f in fields(cls) if "spec" in f.metadata}

    @classmethod
    def kinds(cls) -> dict[str, type]:
        return {f.name: _kind(f.type) for f in fields(cls) if "spec" in f.metadata}

    @classmethod
    def per_call_names(cls) -> list[str]:
        return [name for name, spec in cls.specs().items() if spec.per_call]

    # -- validation -----------------------------------------------------------------------------

    def updated(self, values: Mapping[str, object], *, per_call_only: bool = False) -> Self:
        """These settings with ``values`` applied, each checked against its spec. ``per_call_only``:
        refuse the ones a caller may not change. Raises SettingsError naming what is allowed."""
        specs = self.specs()
        for name in values:
            if name not in specs:
                raise SettingsError(
                    f"{name!r} is not a {self.engine} setting; {self.engine} has {', '.join(specs)}"
                )
            if per_call_only and not specs[name].per_call:
                allowed = ", ".join(self.per_call_names()) or "none"
                raise SettingsError(
                    f"{name} is set by the server's operator, not per call; per call: {allowed}"
                )
        return dataclasses.replace(self, **values)  # type: ignore[arg-type]  # checked in __post_init__

    @classmethod
    def checked(cls, name: str, value: object, spec: SettingSpec, kind: type) -> Any:
        """``value`` as the setting's type, or SettingsError saying which values are allowed."""
        if kind is str:
            if not isinstance(value, str):
                raise SettingsError(f"{name} must be a string")
            if spec.choices and value not in spec.choices:
                raise SettingsError(f"{name} {value!r} is not allowed: use one of {', '.join(spec.choices)}")
            return value
        if isinstance(value, str):  # from a flag or an environment variable
            try:
                value = float(value)
            except ValueError:
                raise SettingsError(f"{name} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SettingsError(f"{name} must be a number")
        number = float(value)
        if kind is int and number != round(number):
            raise SettingsError(f"{name} must be a whole number, got {_number(number)}")
        unit = f" {spec.unit}" if spec.unit else ""
        low, high = spec.minimum, spec.maximum
        if (low is not None and number < low) or (high is not None and number > high):
            raise SettingsError(f"{name} {_number(number)}{unit} is not allowed: {cls.allowed(spec)}")
        if spec.step is not None:
            origin = low or 0.0
            units = (number - origin) / spec.step
            if abs(units - round(units)) > _GRID_TOLERANCE:
                below = origin + math.floor(units) * spec.step
                near = f"{_number(below)} or {_number(below + spec.step)}"
                raise SettingsError(
                    f"{name} {_number(number)}{unit} is not allowed: {cls.allowed(spec)} (nearest: {near})"
                )
            number = round(origin + round(units) * spec.step, 9)
        return round(number) if kind is int else number

    @staticmethod
    def allowed(spec: SettingSpec) -> str:
        """The allowed values in words, e.g. ``0.04 to 1 s in steps of 0.02 s``."""
        unit = f" {spec.unit}" if spec.unit else ""
        low = "" if spec.minimum is None else _number(spec.minimum)
        high = "" if spec.maximum is None else _number(spec.maximum)
        if low and high:
            text = f"{low} to {high}{unit}"
        elif low:
            text = f"at least {low}{unit}"
        elif high:
            text = f"at most {high}{unit}"
        else:
            text = "any value"
        if spec.step is not None:
            text += f" in steps of {_number(spec.step)}{unit}"
        return text

    # -- views ----------------------------------------------------------------------------------

    def values(self, *, per_call_only: bool = False) -> dict[str, Any]:
        specs = self.specs()
        return {
            name: getattr(self, name) for name, spec in specs.items() if spec.per_call or not per_call_only
        }

    def schema(self, *, per_call_only: bool = False) -> dict[str, dict[str, Any]]:
        """JSON schema of the settings with these values as defaults (signalling's
        ``settings_schema``; the page renders one control per entry)."""
        kinds = self.kinds()
        described: dict[str, dict[str, Any]] = {}
        for name, spec in self.specs().items():
            if per_call_only and not spec.per_call:
                continue
            kind = kinds[name]
            entry: dict[str, Any] = {
                "type": {float: "number", int: "integer", str: "string"}[kind],
                "label": spec.label,
                "help": spec.help,
                "default": getattr(self, name),
            }
            optional = {
                "unit": spec.unit or None,
                "min": spec.minimum,
                "max": spec.maximum,
                "step": spec.step,
                "choices": list(spec.choices) or None,
            }
            entry.update({key: value for key, value in optional.items() if value is not None})
            described[name] = entry
        return described


def parse_pairs(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``["diffusion_steps=8", "cfg_rate=0.5"]`` -> a dict of raw values (checked by the engine)."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise SettingsError(f"an engine setting is NAME=VALUE, got {pair!r}")
        parsed[name.strip().replace("-", "_")] = value.strip()
    return parsed
