"""Schemathesis against the served OpenAPI description of a real ``vcstream serve`` process with
``--auth required`` and a tenant's API key: every operation gets generated requests (valid and
invalid), and no answer may be a 5xx, carry an undocumented status or content type, or break its
documented schema. The number of examples per operation is bounded for CI (VCSTREAM_FUZZ_EXAMPLES,
default 15)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cluster_harness import http_get
from ports import free_port
from tenants_harness import TOKEN_SECRET, tenant_keys
from waiting import wait_until

EXAMPLES = int(os.environ.get("VCSTREAM_FUZZ_EXAMPLES", "15"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def paid_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real server (passthrough engine, auth required) and an API key of a tenant on it."""
    data = tmp_path_factory.mktemp("fuzz")
    (key,) = tenant_keys(data, "Fuzz", plan="unlimited")
    port = free_port()
    env = {**os.environ, "VCSTREAM_AUTH": "required", "VCSTREAM_TOKEN_SECRET": TOKEN_SECRET}
    command = [
        sys.executable,
        "-m",
        "vcstream.cli",
        "serve",
        "--engine",
        "passthrough",
        "--host",
        "127.0.0.1",
    ]
    command += ["--port", str(port), "--data-dir", str(data), "--max-sessions", "2"]
    log = (data / "serve.log").open("wb")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, 90, "the server became ready")
        yield base, key
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def test_no_operation_answers_5xx_or_off_its_schema(paid_server: tuple[str, str]) -> None:
    base, key = paid_server
    api = schemathesis.openapi.from_url(f"{base}/api/openapi.json")
    headers = {"Authorization": f"Bearer {key}"}
    tried = []
    for result in api.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=base, headers=headers, checks=CHECKS, timeout=30)

        fuzz()
        tried.append(operation.label)
    print(f"\nfuzzed {len(tried)} operations, up to {EXAMPLES} examples each: {', '.join(tried)}")
    assert len(tried) >= 8
