"""Reading the benchmarks' client processes (vcstream.bench.client_events) with real child processes:
events in order, a deadline that fails a silent client instead of hanging the run, a client that dies
or writes something else."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from vcstream.bench.client_events import ClientEvents, ClientProcessError

Start = Callable[[str], ClientEvents]


@pytest.fixture
def client() -> Iterator[Start]:
    """Runs Python ``code`` as a client process and reads it."""
    started: list[subprocess.Popen[str]] = []

    def start(code: str) -> ClientEvents:
        process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        started.append(process)
        return ClientEvents(process)

    yield start
    for process in started:
        process.kill()
        process.wait()


def test_events_come_in_order_also_when_written_together(client: Start) -> None:
    # both lines reach the reader at once: the second must not wait for more input
    events = client('print(\'{"event": "ready"}\\n{"event": "result", "calls": []}\', flush=True)')
    assert events.next(10, "ready") == {"event": "ready"}
    assert events.next(10, "result")["calls"] == []


def test_a_silent_client_fails_the_wait_in_time(client: Start) -> None:
    events = client("import time; time.sleep(60)")
    started = time.monotonic()
    with pytest.raises(ClientProcessError, match="no 'prepared' within 1 s"):
        events.next(1.0, "prepared")
    assert time.monotonic() - started < 5


def test_a_client_that_dies_or_talks_nonsense_is_named(client: Start) -> None:
    ended = client("import sys; sys.exit(3)")
    for _ in range(2):  # and it stays ended
        with pytest.raises(ClientProcessError, match=r"ended early \(exit 3\)"):
            ended.next(10)
    chatty = client("print('Traceback: boom'); print('{\"event\": \"x\"}', flush=True)")
    with pytest.raises(ClientProcessError, match="not JSON"):
        chatty.next(10)
    with pytest.raises(ClientProcessError, match="expected result"):
        chatty.next(10, "result")
