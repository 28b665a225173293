"""The JSON event lines a child process prints on stdout (``{"event": "listening", ...}``), read with
a deadline: a process that hangs or dies before it says what was awaited fails the wait in bounded
time, with what happened, instead of blocking its parent on ``readline``."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from typing import IO, Any

from vcstream.errors import VcstreamError


class EventNotSeenError(VcstreamError):
    """The process ended, or the deadline passed, before it printed the awaited event."""


def read_event(process: subprocess.Popen[str], event: str, timeout_s: float) -> dict[str, Any]:
    """The first JSON line on ``process``'s stdout whose "event" is ``event``; earlier lines are
    skipped. Raises EventNotSeenError (its message says which: ended, with the exit status, or
    silent until the deadline)."""
    stream = process.stdout
    assert stream is not None, "the process's stdout must be a pipe"
    lines: queue.Queue[str] = queue.Queue()

    def pump(out: IO[str]) -> None:
        # a thread, because a pipe's readline has no timeout; it stops at the event, leaving the
        # rest of the stream to the caller
        for line in out:
            lines.put(line)
            if f'"{event}"' in line:
                return
        lines.put("")  # end of the stream: the process closed it (it ended)

    threading.Thread(target=pump, args=(stream,), name=f"read-{event}", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        if not line:
            raise EventNotSeenError(f"ended before {event!r} (exit {_exit_status(process)})")
        if line.startswith("{") and json.loads(line).get("event") == event:
            return dict(json.loads(line))
    raise EventNotSeenError(f"printed no {event!r} within {timeout_s:g} s")


def _exit_status(process: subprocess.Popen[str]) -> int | None:
    """The status of a process whose stdout just closed (it may take a moment to be reaped)."""
    try:
        return process.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        return None
