"""Abusive but size-legal requests against a running server, for the isolation test and benchmark:
multipart uploads of many tiny parts to /api/voices, WebSockets flooding signalling messages (valid
and malformed), and /healthz probed for its latency.

Run as a script it is the load of another process (so the load's own Python work does not share the
server's or the call client's interpreter):

    python tests/isolation_load.py http://127.0.0.1:PORT --seconds 6

and prints one JSON line: what the server answered (statuses, close codes) and /healthz latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

BOUNDARY = "isolationboundary7d3c"
#: the issue's figures: 10,000 parts, ~659 KB in all, under every size limit
TINY_PARTS = 10_000
FLOOD_SOCKETS = 20


def many_parts_body(parts: int = TINY_PARTS) -> bytes:
    """A multipart/form-data body of ``parts`` one-byte fields (about 66 bytes a part)."""
    part = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n'.encode()
    return part * parts + f"--{BOUNDARY}--\r\n".encode()


MULTIPART_TYPE = f"multipart/form-data; boundary={BOUNDARY}"

#: what a flooding socket sends, in turn: valid messages and malformed ones
FLOOD_MESSAGES = (
    json.dumps({"v": 1, "type": "hello"}),
    json.dumps({"v": 1, "type": "settings", "settings": {"block_time": 0.1}}),
    "{not json",
    json.dumps({"v": 1, "type": "nonsense"}),
    json.dumps({"v": 2, "type": "hello"}),
    json.dumps({"v": 1, "type": "ice", "candidate": "x" * 2000}),
    json.dumps([1, 2, 3]),
)


@dataclass
class LoadReport:
    upload_statuses: Counter[int] = field(default_factory=Counter)
    upload_seconds: list[float] = field(default_factory=list)
    flood_sent: int = 0
    flood_closes: Counter[str] = field(default_factory=Counter)
    healthz_ms: list[float] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "upload_statuses": dict(self.upload_statuses),
            "upload_seconds": [round(s, 3) for s in self.upload_seconds],
            "flood_sent": self.flood_sent,
            "flood_closes": dict(self.flood_closes),
            "healthz_ms": [round(ms, 1) for ms in self.healthz_ms],
        }


async def upload_many_parts(
    http: aiohttp.ClientSession, base: str, report: LoadReport, until: float, body: bytes
) -> None:
    """One upload of ``body`` after another until ``until`` (time.monotonic)."""
    while time.monotonic() < until:
        started = time.monotonic()
        async with http.post(
            f"{base}/api/voices", data=body, headers={"Content-Type": MULTIPART_TYPE}
        ) as response:
            await response.read()
            report.upload_statuses[response.status] += 1
        report.upload_seconds.append(time.monotonic() - started)


async def flood_signalling(
    http: aiohttp.ClientSession, ws_url: str, report: LoadReport, until: float
) -> None:
    """One socket sending as fast as it can, reconnecting at once whenever the server closes it."""
    while time.monotonic() < until:
        try:
            ws = await http.ws_connect(ws_url)
        except aiohttp.WSServerHandshakeError as exc:  # refused before the upgrade
            report.flood_closes[f"refused {exc.status}"] += 1
            # as a client library would: a flood of bare HTTP requests is a proxy's to stop, not the app's
            retry = (exc.headers or {}).get("Retry-After", "1")
            await asyncio.sleep(min(float(retry), max(0.0, until - time.monotonic())))
            continue
        async with ws:
            drain = asyncio.create_task(_drain(ws))
            index = 0
            try:
                while not ws.closed and time.monotonic() < until:
                    await ws.send_str(FLOOD_MESSAGES[index % len(FLOOD_MESSAGES)])
                    report.flood_sent += 1
                    index += 1
                    if index % 50 == 0:
                        await asyncio.sleep(0)  # let the reader see a close
            except (ConnectionError, RuntimeError):
                pass
            finally:
                drain.cancel()
            await ws.close()
            report.flood_closes[f"{ws.close_code}"] += 1


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


async def probe_healthz(http: aiohttp.ClientSession, base: str, report: LoadReport, until: float) -> None:
    while time.monotonic() < until:
        started = time.perf_counter()
        async with http.get(f"{base}/healthz") as response:
            await response.read()
        report.healthz_ms.append(1000 * (time.perf_counter() - started))
        await asyncio.sleep(0.05)


async def run_load(
    base: str, seconds: float, *, uploads: int = 1, sockets: int = FLOOD_SOCKETS, healthz: bool = True
) -> LoadReport:
    """``uploads`` concurrent uploaders and ``sockets`` flooding sockets for ``seconds``."""
    report = LoadReport()
    until = time.monotonic() + seconds
    ws_url = base.replace("http", "ws", 1) + "/ws"
    body = many_parts_body()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        jobs = [upload_many_parts(http, base, report, until, body) for _ in range(uploads)]
        jobs += [flood_signalling(http, ws_url, report, until) for _ in range(sockets)]
        if healthz:
            jobs.append(probe_healthz(http, base, report, until))
        await asyncio.gather(*jobs)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("base", help="the server, http://HOST:PORT")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--uploads", type=int, default=1)
    parser.add_argument("--sockets", type=int, default=FLOOD_SOCKETS)
    args = parser.parse_args()
    report = asyncio.run(run_load(args.base, args.seconds, uploads=args.uploads, sockets=args.sockets))
    print(json.dumps(report.as_json()), flush=True)


if __name__ == "__main__":
    main()
