"""The queue of signalling connections waiting for a place on a full server.

A client whose ``hello`` asks to wait (``"reserve": true, "wait": true``) and finds every place taken is
not turned away while the queue has room: it is told its position (``waiting``) and stays connected.
Each place given back (``Admission.on_release``) goes to the first in line, first come first served:
the room takes the place for it, so nobody arriving later can take it in between, and the connection
answers ``ready`` as a reserved hello would. The queue holds at most ``QUEUE_FACTOR`` times the
server's places; beyond, ``hello`` gets the fatal ``server_full`` as before. A waiter that goes away
leaves the queue; a draining server turns every waiter away at once.

Everything here runs on the asyncio loop; places may be given back on other threads, so the release
listener only schedules the hand-out on the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from vcstream.service.admission import Admission, EngineSlot
from vcstream.service.metrics import ServiceMetrics

__all__ = ["QUEUE_FACTOR", "Waiter", "WaitingRoom"]

log = logging.getLogger(__name__)

#: waiters allowed per place: enough for a page to be next when a call ends, few enough that a
#: waiter is not kept for many calls' lengths
QUEUE_FACTOR = 2


class Waiter(Protocol):
    """A connection in the queue."""

    def admitted(self, slot: EngineSlot) -> None:
        """A place on ``slot`` was taken for it: it holds it as a reservation and says ``ready``."""

    def moved_up(self, position: int) -> None:
        """Its place in the queue (1: next) is now ``position``."""

    def turned_away(self) -> None:
        """The server drains: no place will come; it is told so and closed."""


class WaitingRoom:
    """First come, first served: places given back go to the waiters in the order they came.
    ``may_admit`` says whether the server takes sessions at all now (not draining, warm)."""

    def __init__(self, admission: Admission, may_admit: Callable[[], bool], metrics: ServiceMetrics) -> None:
        self._admission = admission
        self._may_admit = may_admit
        self._metrics = metrics
        # a dict keeps insertion order and removes in O(1): the queue
        self._queue: dict[Waiter, None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hear of released places (from any thread) and hand them out on ``loop``."""
        self._loop = loop
        self._admission.on_release(self._place_released)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def limit(self) -> int:
        return QUEUE_FACTOR * self._admission.places

    def join(self, waiter: Waiter) -> int | None:
        """Queue ``waiter``; its position (1: next), or None when the queue is full (or closed)."""
        if self._closed or len(self._queue) >= self.limit:
            return None
        self._queue[waiter] = None
        self._metrics.waiting(len(self._queue))
        return len(self._queue)

    def leave(self, waiter: Waiter) -> None:
        """``waiter`` goes away (closed, or admitted): those behind it move up."""
        if waiter in self._queue:
            del self._queue[waiter]
            self._metrics.waiting(len(self._queue))
            self._tell_positions()

    def turn_away(self) -> None:
        """The server drains: every waiter is told at once, and nobody queues from now on."""
        self._closed = True
        waiters, self._queue = list(self._queue), {}
        self._metrics.waiting(0)
        for waiter in waiters:
            waiter.turned_away()

    def admit(self) -> int:
        """Hand free places to the first waiters (while there are both); how many were admitted."""
        admitted = 0
        while self._queue and not self._closed and self._may_admit():
            slot = self._admission.choose()
            if slot is None or not self._admission.take(slot):
                break
            waiter = next(iter(self._queue))
            del self._queue[waiter]
            admitted += 1
            waiter.admitted(slot)
        if admitted:
            self._metrics.waiting(len(self._queue))
            self._tell_positions()
        return admitted

    def _place_released(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self.admit)
        except RuntimeError:  # the loop closed meanwhile (shutdown): nobody is waiting any more
            log.debug("a place was given back after the loop closed")

    def _tell_positions(self) -> None:
        for position, waiter in enumerate(self._queue, 1):
            waiter.moved_up(position)
