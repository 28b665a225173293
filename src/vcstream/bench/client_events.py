"""The benchmarks' client processes report on stdout, one JSON object per line; this reads them with
a deadline. A plain ``readline`` waits for good: a client stuck on a server that stopped answering
(or a call that never converts) hung the whole benchmark instead of failing it with a reason."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from typing import Any

__all__ = ["ClientEvents", "ClientProcessError"]


class ClientProcessError(RuntimeError):
    """A client process ended early, said something unexpected, or said nothing in time."""


class ClientEvents:
    """The JSON lines of one client process, read on a thread of its own (a ``select`` on the pipe
    would miss lines already read into the text wrapper's buffer)."""

    _ENDED = object()

    def __init__(self, process: subprocess.Popen[str]) -> None:
        if process.stdout is None:
            raise ValueError("the client process needs stdout=subprocess.PIPE")
        self._process = process
        self._lines: queue.Queue[Any] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: Any) -> None:
        try:
            for line in stream:
                self._lines.put(line)
        except (OSError, ValueError):  # the pipe closed under us as the process was ended
            pass
        finally:
            self._lines.put(self._ENDED)

    def next(self, timeout_s: float, expected: str | None = None) -> dict[str, Any]:
        """The next event, within ``timeout_s``; with ``expected``, it must be that event."""
        what = f"{expected!r}" if expected else "an event"
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise ClientProcessError(
                f"client process {self._process.pid} sent no {what} within {timeout_s:.0f} s"
            ) from None
        if line is self._ENDED:
            self._lines.put(self._ENDED)  # every later call says so too
            raise ClientProcessError(f"a client process ended early (exit {self._process.wait()})")
        try:
            event: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            raise ClientProcessError(f"a client process wrote {line.strip()[:200]!r}, not JSON") from None
        if expected is not None and event.get("event") != expected:
            raise ClientProcessError(f"a client process said {event}, expected {expected}")
        return event
