"""Waiting in tests: on a condition, with a deadline, and a failure that says what did not happen.

A fixed sleep either waits too long (a slower suite) or too little (a flaky one under load); these
poll a condition instead and return as soon as it holds. ``condition`` returns a value, and the
first truthy one is handed back (a response body, a page value, ...)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

T = TypeVar("T")

#: how often a condition is checked: well below the waits in the suite, cheap on shared cores
POLL_S = 0.02


def wait_until(
    condition: Callable[[], T],
    timeout_s: float,
    what: str,
    *,
    state: Callable[[], object] | None = None,
) -> T:
    """The first truthy value of ``condition()`` within ``timeout_s``; else AssertionError naming
    ``what`` should have happened (and ``state()``, when given, as it was at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_failure(what, timeout_s, state() if state else None))
        time.sleep(POLL_S)


async def wait_until_async(
    condition: Callable[[], T | Awaitable[T]],
    timeout_s: float,
    what: str,
    *,
    state: Callable[[], object] | None = None,
) -> T:
    """``wait_until`` for asyncio code: polls without blocking the loop. ``condition`` and ``state``
    may be coroutine functions (a page evaluation, an HTTP request)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await _resolved(condition())
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_failure(what, timeout_s, await _resolved(state()) if state else None))
        await asyncio.sleep(POLL_S)


async def _resolved(value: T | Awaitable[T]) -> T:
    if inspect.isawaitable(value):
        return cast(T, await value)
    return value


def _failure(what: str, timeout_s: float, state: object) -> str:
    message = f"not within {timeout_s:g} s: {what}"
    return message if state is None else f"{message} ({state})"
