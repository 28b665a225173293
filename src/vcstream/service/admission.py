"""Which engine a new session runs on, and whether it may start at all.

The server runs its engine (the primary: Seed-VC on a GPU, or the CPU engine) and, where the operator
asks for it (VCSTREAM_OVERFLOW_ENGINE), a CPU engine that takes new sessions once the primary is full.
Each is an ``EngineSlot``: the engine, its block scheduler, its session defaults and its measured
capacity (``vcstream.streaming.capacity``). ``Admission`` owns the places: one object per process,
which the cluster's admission (the deployment's) builds on.

Places are taken and given back from any thread (sessions end on worker threads), under one lock;
``take`` checks and counts at once, so two requests cannot both get the last place. Whoever waits for
a place (the signalling's waiting room) hears of each one given back through ``on_release``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from vcstream.engines.base import Engine
from vcstream.engines.settings import SessionSettings
from vcstream.service.call_choices import CallChoices
from vcstream.streaming.capacity import Capacity
from vcstream.streaming.scheduler import BlockScheduler


@dataclass(eq=False)
class EngineSlot:
    """An engine the server runs sessions on."""

    #: "primary" or "overflow"
    role: str
    engine: Engine
    scheduler: BlockScheduler
    #: the engine's session settings with the operator's defaults applied
    defaults: SessionSettings
    #: one sentence for people: which engine, on what, why (a fallback or an overflow says so)
    note: str
    #: the CPU engine stands in for Seed-VC here (no GPU, no weights, or the GPU is full)
    cpu_fallback: bool
    #: the per-call values callers may pick on this engine
    choices: CallChoices = field(default_factory=CallChoices)
    #: None until measured (the server is not ready before)
    capacity: Capacity | None = None
    active: int = field(default=0)

    @property
    def places(self) -> int:
        return self.capacity.sessions if self.capacity is not None else 0


class Admission:
    def __init__(self, primary: EngineSlot, overflow: EngineSlot | None = None) -> None:
        self.primary = primary
        self.overflow = overflow
        self._lock = threading.Lock()
        self._release_listeners: list[Callable[[], None]] = []

    def on_release(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after each place given back, on the releasing thread, outside the lock."""
        self._release_listeners.append(listener)

    @property
    def slots(self) -> list[EngineSlot]:
        return [self.primary] if self.overflow is None else [self.primary, self.overflow]

    @property
    def places(self) -> int:
        return sum(slot.places for slot in self.slots)

    @property
    def active(self) -> int:
        with self._lock:
            return sum(slot.active for slot in self.slots)

    def usage(self) -> list[tuple[str, int, int]]:
        """(role, places, places taken) of each slot, read at once."""
        with self._lock:
            return [(slot.role, slot.places, slot.active) for slot in self.slots]

    def choose(self) -> EngineSlot | None:
        """The slot a session starting now would get (the primary while it has room), or None when
        every place is taken. Takes nothing: see ``take``."""
        with self._lock:
            return next((slot for slot in self.slots if slot.active < slot.places), None)

    def take(self, slot: EngineSlot) -> bool:
        """Count a session on ``slot`` (the one ``choose`` gave when the client was told its
        engine) if it still has room."""
        with self._lock:
            if slot.active >= slot.places:
                return False
            slot.active += 1
            return True

    def release(self, slot: EngineSlot) -> None:
        with self._lock:
            slot.active = max(0, slot.active - 1)
        for listener in self._release_listeners:
            listener()
