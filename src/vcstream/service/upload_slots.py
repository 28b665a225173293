"""A bound on the voice uploads one server process handles at once (``max_uploads``).

Each upload in flight holds a spooled file of up to ``max_upload_bytes`` and, once read, a place in
the queue of the decoding pool; without a bound, 50 parallel uploads of 9 MB held 766 MB. An upload
that finds every slot taken waits a little (``wait_s``), so that two people pressing "upload" in the
same second are both served, then is refused with 503 and Retry-After before its body is read: a
flood is turned away cheaply instead of queueing without end. The wait stays far below the body
deadline of ``connection_guard`` (a body unread for ``header_timeout_s`` is cut as too slow).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from vcstream.errors import VcstreamError

#: how long an upload waits for a slot before it is refused
UPLOAD_WAIT_S = 2.0
#: what a refused client is told to wait before trying again
RETRY_AFTER_S = 2


class UploadsBusyError(VcstreamError):
    """Every upload slot of this process stayed taken for the whole wait."""


class UploadSlots:
    """``async with slots.claim():`` around an upload; raises UploadsBusyError when none frees."""

    def __init__(self, limit: int, wait_s: float = UPLOAD_WAIT_S) -> None:
        self.limit = limit
        self.wait_s = wait_s
        self.refused = 0
        #: uploads waiting for a slot now
        self.waiting = 0
        self._semaphore = asyncio.Semaphore(limit)

    @property
    def in_flight(self) -> int:
        return self.limit - self._semaphore._value  # asyncio keeps the count only there

    @contextlib.asynccontextmanager
    async def claim(self) -> AsyncIterator[None]:
        self.waiting += 1
        try:
            await asyncio.wait_for(self._semaphore.acquire(), self.wait_s)
        except TimeoutError:
            self.refused += 1
            raise UploadsBusyError(
                f"the server is handling {self.limit} uploads already; try again in {RETRY_AFTER_S} s"
            ) from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._semaphore.release()


UPLOAD_SLOTS_KEY: web.AppKey[UploadSlots] = web.AppKey("upload_slots", UploadSlots)
