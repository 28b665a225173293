"""Plans: what a tenant may use. Limits live in configuration, not in the database, so an operator
changes a plan by editing one file (``VCSTREAM_PLANS_FILE``) and restarting; tenants name their plan.

The file is JSON::

    {"default": "free",
     "plans": {"free": {"concurrent_calls": 1, "monthly_minutes": 10, "voices": 3},
               "team": {"concurrent_calls": 20, "monthly_minutes": 6000, "voices": 200},
               "unlimited": {"concurrent_calls": null, "monthly_minutes": null, "voices": null}}}

``null`` (or a missing field) means no limit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vcstream.errors import ConfigurationError

_LIMITS = ("concurrent_calls", "monthly_minutes", "voices")


@dataclass(frozen=True)
class Plan:
    name: str
    #: calls at the same time, across every replica sharing the database
    concurrent_calls: int | None = None
    #: converted minutes per calendar month (UTC)
    monthly_minutes: float | None = None
    #: voices stored
    voices: int | None = None


@dataclass(frozen=True)
class Plans:
    by_name: dict[str, Plan]
    #: the plan a tenant gets when created without one
    default: str

    def get(self, name: str) -> Plan:
        try:
            return self.by_name[name]
        except KeyError:
            known = ", ".join(sorted(self.by_name))
            raise ConfigurationError(f"unknown plan {name!r} (plans: {known})") from None


BUILT_IN = Plans(
    by_name={
        "free": Plan("free", concurrent_calls=1, monthly_minutes=10.0, voices=3),
        "unlimited": Plan("unlimited"),
    },
    default="free",
)


def load_plans(path: Path | None) -> Plans:
    """The plans in ``path`` (see the module's docstring), or the built-in free and unlimited plans."""
    if path is None:
        return BUILT_IN
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"plans file {path} cannot be read: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("plans"), dict) or not document["plans"]:
        raise ConfigurationError(f'plans file {path}: expected {{"plans": {{NAME: {{...}}, ...}}}}')
    plans = {name: _plan(path, name, limits) for name, limits in document["plans"].items()}
    default = document.get("default", next(iter(plans)))
    if default not in plans:
        raise ConfigurationError(f"plans file {path}: the default plan {default!r} is not defined")
    return Plans(plans, default)


def _plan(path: Path, name: str, limits: object) -> Plan:
    if not isinstance(limits, dict) or set(limits) - set(_LIMITS):
        raise ConfigurationError(f"plans file {path}: plan {name!r} may set only {', '.join(_LIMITS)}")
    values: dict[str, float | int | None] = {}
    for key in _LIMITS:
        value = limits.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise ConfigurationError(f"plans file {path}: {name}.{key} must be a number >= 0 or null")
        values[key] = value
    calls, voices = values["concurrent_calls"], values["voices"]
    minutes = values["monthly_minutes"]
    return Plan(
        name,
        concurrent_calls=None if calls is None else int(calls),
        monthly_minutes=None if minutes is None else float(minutes),
        voices=None if voices is None else int(voices),
    )
