"""`vcstream bench capacity` runs both modes in one run, prints a row per point and the comparison
line, and writes a capacity file the server takes (figures are printed, not asserted: the machine's
load decides them)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from conftest import vcstream_argv
from vcstream.engines.passthrough import PassthroughEngine
from vcstream.streaming.capacity import Capacity, load_capacity_file


def test_capacity_bench_prints_both_modes_and_writes_a_capacity_file(tmp_path: Path) -> None:
    written = tmp_path / "capacity.json"
    argv = vcstream_argv(
        "bench",
        "capacity",
        "--engine",
        "passthrough",
        "--sessions",
        "1,2",
        "--seconds",
        "1",
        "--write",
        written,
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    lines = done.stdout.splitlines()
    rows = [line.split() for line in lines if re.match(r"(batched|unbatched)\s+\d", line)]
    assert {(r[0], r[1]) for r in rows} <= {(m, n) for m in ("batched", "unbatched") for n in ("1", "2")}
    assert {r[0] for r in rows} == {"batched", "unbatched"}
    for row in rows:
        blocks, skipped = int(row[2]), int(row[3])
        assert blocks + skipped >= 8  # 1 s of 0.1 s blocks per session
    assert re.fullmatch(r"real-time sessions: \d+ batched vs \d+ unbatched \(.+\)", lines[-2])
    capacity = load_capacity_file(written, PassthroughEngine())
    assert isinstance(capacity, Capacity) and capacity.source == "file" and capacity.sessions >= 1


def test_capacity_bench_refuses_bad_session_counts() -> None:
    done = subprocess.run(
        vcstream_argv("bench", "capacity", "--sessions", "0,2"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "at least 1" in done.stderr
