"""Reading a child process's JSON event lines with a deadline (``vcstream.bench.process_events``), with
real child processes: the event after other output, a process that ends first, one that stays silent."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from vcstream.bench.process_events import EventNotSeenError, read_event


@contextmanager
def child(code: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


def test_the_event_is_found_after_other_lines_and_the_rest_is_left_to_read() -> None:
    code = (
        "import json, sys\n"
        "print('starting up')\n"
        "print(json.dumps({'event': 'warming', 'n': 1}))\n"
        "print(json.dumps({'event': 'listening', 'port': 5004}), flush=True)\n"
        "print(json.dumps({'event': 'result', 'ok': True}), flush=True)\n"
        "sys.stdin.read()\n"
    )
    with child(code) as process:
        assert read_event(process, "listening", 20) == {"event": "listening", "port": 5004}
        assert process.stdout is not None
        assert '"result"' in process.stdout.readline()  # not swallowed by the reader


def test_a_process_that_ends_first_is_reported_with_its_exit_status() -> None:
    ends = 'print(\'{"event": "warming"}\'); raise SystemExit(3)'
    refused = pytest.raises(EventNotSeenError, match=r"ended before 'listening' \(exit 3\)")
    with child(ends) as process, refused:
        read_event(process, "listening", 20)


def test_a_silent_process_fails_the_wait_at_the_deadline() -> None:
    with child("import time; time.sleep(60)") as process:
        started = time.monotonic()
        with pytest.raises(EventNotSeenError, match=r"printed no 'listening' within 0.5 s"):
            read_event(process, "listening", 0.5)
        assert time.monotonic() - started < 10  # bounded: not until the process ends
