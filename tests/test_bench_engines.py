"""The engine benchmark runs and reports sane figures (the numbers themselves are printed, not
asserted against targets)."""

import pytest

from vcstream.bench.engines import run_engine_bench


def test_bench_reports_each_engine_and_block_size(capsys: pytest.CaptureFixture[str]) -> None:
    rows = run_engine_bench(["world"], [0.1, 0.2], blocks=3)
    assert [(r.engine, r.block_time) for r in rows] == [
        ("passthrough", 0.1),
        ("passthrough", 0.2),
        ("world", 0.1),
        ("world", 0.2),
    ]
    for row in rows:
        assert row.blocks == 3
        assert 0 < row.p50_ms <= row.p95_ms
        assert row.cpu_ms > 0
    printed = capsys.readouterr().out
    assert "streams/core" in printed and "x passthrough" in printed
    assert printed.count("\nworld ") == 2
