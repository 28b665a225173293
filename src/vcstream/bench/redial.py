"""The call client's reconnect policy: opening a call through a balancer, and opening it again
elsewhere when its replica goes away (the cluster test and ``vcstream bench load`` use it).

Before a call starts it can be refused in three ways, all retried by ``open_call``:

* the WebSocket upgrade is answered 503 or 429 with ``Retry-After`` (a balancer with no free replica,
  a replica's connection cap);
* a replica answers ``hello`` with a fatal ``server_full``, ``server_draining`` or ``server_not_ready``
  carrying ``retry_after_s``;
* no connection at all (a replica just killed, before the balancer noticed).

The wait before the next try is the hint, cut to ``RedialPolicy.max_wait_s``: behind a balancer the
next try may land on another replica with a free place, so a replica's long hint is not law. Any
other refusal (an unknown voice...) is raised at once.

``RedialingCall`` keeps one call going: when the WebSocket closes without the client hanging up (the
replica died) it opens a new call; when the replica announces ``draining`` it opens the new call
first and hangs up the old one once the new one converts (make-before-break).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import aiohttp

from vcstream.bench.call_client import BenchCall, CallRefused, Refusal

__all__ = ["RETRIED_CODES", "Handover", "RedialPolicy", "RedialingCall", "open_call"]

#: refusals that say "not here, not now": another try (maybe on another replica) can succeed
RETRIED_CODES = frozenset(
    {"server_full", "server_draining", "server_not_ready", "unreachable", "closed", "http_503", "http_429"}
)


@dataclass(frozen=True)
class RedialPolicy:
    #: tries in all, the first included
    attempts: int = 10
    #: the wait before the next try when the refusal carries no hint
    backoff_s: float = 0.25
    #: the longest wait honoured, whatever the hint
    max_wait_s: float = 2.0

    def wait_s(self, refusal: Refusal) -> float:
        hint = self.backoff_s if refusal.retry_after_s is None else refusal.retry_after_s
        return max(0.0, min(self.max_wait_s, hint))


def retry_after_seconds(header: str | None) -> float | None:
    """A ``Retry-After`` in seconds (the HTTP-date form is not used by balancers in front of us)."""
    try:
        return None if header is None else float(header)
    except ValueError:
        return None


async def _attempt(http: aiohttp.ClientSession, ws_url: str, voice: str, relay_only: bool) -> BenchCall:
    try:
        ws = await http.ws_connect(ws_url)
    except aiohttp.WSServerHandshakeError as exc:
        hint = retry_after_seconds(exc.headers.get("Retry-After") if exc.headers else None)
        raise CallRefused(Refusal(f"http_{exc.status}", exc.message, hint)) from exc
    except (aiohttp.ClientConnectionError, OSError) as exc:
        raise CallRefused(Refusal("unreachable", str(exc) or type(exc).__name__)) from exc
    call = BenchCall(asyncio.get_running_loop(), ws, relay_only=relay_only)
    try:
        await call.dial(voice)
    except BaseException:
        await call.close()
        raise
    return call


async def open_call(
    http: aiohttp.ClientSession,
    ws_url: str,
    voice: str,
    *,
    policy: RedialPolicy | None = None,
    relay_only: bool = False,
) -> BenchCall:
    """A call that was accepted (its offer sent), after at most ``policy.attempts`` tries; the last
    ``CallRefused`` when none was."""
    policy = policy or RedialPolicy()
    attempt = 1
    while True:
        try:
            return await _attempt(http, ws_url, voice, relay_only)
        except CallRefused as refused:
            if refused.refusal.code not in RETRIED_CODES or attempt >= policy.attempts:
                raise
            await asyncio.sleep(policy.wait_s(refused.refusal))
        attempt += 1


@dataclass
class Handover:
    """One call given up for another: why, when (time.perf_counter) and when the new one's converted
    audio arrived (None until it has; ``failure`` if no new call could be opened)."""

    reason: str
    at: float
    converting_at: float | None = None
    failure: str | None = None

    @property
    def outage_s(self) -> float | None:
        return None if self.converting_at is None else self.converting_at - self.at


@dataclass
class RedialingCall:
    """A call that moves when its replica dies or drains. ``current`` is the call carrying audio now,
    ``calls`` every call opened, ``handovers`` every move."""

    http: aiohttp.ClientSession
    ws_url: str
    voice: str
    policy: RedialPolicy = field(default_factory=RedialPolicy)
    relay_only: bool = False
    calls: list[BenchCall] = field(default_factory=list)
    handovers: list[Handover] = field(default_factory=list)
    _watcher: asyncio.Task[None] | None = None

    @property
    def current(self) -> BenchCall:
        """The latest call opened (during a move: the new one)."""
        return self.calls[-1]

    def live(self) -> list[BenchCall]:
        """The calls to feed the microphone to: during a make-before-break move both the old and
        the new one, so the old one keeps carrying the voice until the new one does."""
        return [call for call in self.calls if not call.ended.is_set()]

    async def start(self) -> None:
        self.calls.append(await self._open())
        self._watcher = asyncio.create_task(self._watch())

    async def _open(self) -> BenchCall:
        return await open_call(
            self.http, self.ws_url, self.voice, policy=self.policy, relay_only=self.relay_only
        )

    async def _watch(self) -> None:
        while True:
            old = self.current
            waits = [asyncio.create_task(old.ended.wait()), asyncio.create_task(old.draining.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for wait in waits:
                wait.cancel()
            draining = old.draining.is_set()
            handover = Handover("draining" if draining else old.end_reason, time.perf_counter())
            self.handovers.append(handover)
            try:
                new = await self._open()
            except CallRefused as refused:
                handover.failure = str(refused)
                return
            self.calls.append(new)
            if not draining:  # the old one is dead: release its peer now
                await old.close()
            await new.converting.wait()
            handover.converting_at = time.perf_counter()
            if draining:  # make-before-break: the old call is hung up once the new one carries audio
                await old.close()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for call in self.calls:
            await call.close()
