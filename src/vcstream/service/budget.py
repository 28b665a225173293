"""Budgets that keep one client from taking the event loop: a token bucket (messages of one
connection), and one bucket per client address for opening connections (a client that is cut off
for flooding and reconnects at once would otherwise get a fresh message budget every time)."""

from __future__ import annotations

import time
from collections import OrderedDict

__all__ = ["AddressBudget", "TokenBucket"]


class TokenBucket:
    """``burst`` tokens at most, refilled at ``per_s``; ``take`` says whether there were enough."""

    def __init__(self, per_s: float, burst: float) -> None:
        self.per_s, self.burst = per_s, burst
        self._tokens = burst
        self._at = time.monotonic()

    def take(self, cost: float = 1.0) -> bool:
        """Spend ``cost`` if the bucket holds it (a refusal spends nothing)."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_s)
        self._at = now
        if self._tokens < cost:
            return False
        self._tokens -= cost
        return True

    def wait_s(self, cost: float = 1.0) -> float:
        """Seconds until the bucket holds ``cost`` (as of the last ``take``)."""
        return max(0.0, (cost - self._tokens) / self.per_s)


class AddressBudget:
    """A ``TokenBucket`` per client address; the oldest addresses are forgotten beyond
    ``max_addresses`` (so a spread of addresses cannot grow it without bound)."""

    def __init__(self, per_s: float, burst: float, max_addresses: int = 4096) -> None:
        self.per_s, self.burst, self.max_addresses = per_s, burst, max_addresses
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, address: str, cost: float = 1.0) -> float | None:
        """None if ``address`` may go ahead, else the seconds after which it may try again."""
        bucket = self._buckets.pop(address, None) or TokenBucket(self.per_s, self.burst)
        self._buckets[address] = bucket  # most recently used last
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
        if bucket.take(cost):
            return None
        return bucket.wait_s(cost)

    def blocked_s(self, address: str, cost: float = 1.0) -> float | None:
        """Like ``take`` without spending: None if ``address`` could spend ``cost`` now."""
        bucket = self._buckets.get(address)
        if bucket is None:
            return None
        bucket.take(0.0)  # refill to now
        wait = bucket.wait_s(cost)
        return wait if wait > 0 else None
