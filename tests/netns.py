"""The namespace helpers of ``vcstream.bench.netns`` for tests, and the check that they can run."""

from __future__ import annotations

import os

import pytest

from vcstream.bench.netns import NetnsPair, netns_pair, netns_unavailable_reason

__all__ = ["NetnsPair", "netns_pair", "require_netns"]


def require_netns() -> None:
    """Fail (not skip) when namespaces cannot be made: CI runs as root and must run these tests.
    Set VCSTREAM_SKIP_NETNS=1 to skip them deliberately elsewhere."""
    if os.environ.get("VCSTREAM_SKIP_NETNS") == "1":
        pytest.skip("VCSTREAM_SKIP_NETNS=1")
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.fail(f"{reason} (or set VCSTREAM_SKIP_NETNS=1 to skip these tests)")
