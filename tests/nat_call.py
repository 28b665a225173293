"""One call from behind the NAT of tests/test_webrtc_nat.py, run inside the client's network
namespace: waits for the server, uploads the voice, calls with the Python client (``PyClient``),
talks until converted audio comes back, and prints one JSON line of what it saw."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp

from conftest import median_f0
from vcstream.bench.signals import flite_speech
from vcstream.media.webrtc import OPUS_RATE
from webrtc_harness import PyClient


async def call(base: str, reference: Path) -> dict[str, object]:
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 30
        while True:  # the server starts in the other namespace at the same time
            try:
                async with http.get(f"{base}/readyz") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not become ready within 30 s")
            await asyncio.sleep(0.2)
        form = aiohttp.FormData()
        form.add_field("name", "voice")
        form.add_field("file", await asyncio.to_thread(reference.read_bytes), filename=reference.name)
        async with http.post(f"{base}/api/voices", data=form) as response:
            voice = str((await response.json())["id"])
        speech = flite_speech("rms", OPUS_RATE)
        client = PyClient(await http.ws_connect(base.replace("http", "ws", 1) + "/ws"))
        try:
            await client.dial(voice)
            await client.talk_until_converted(speech, timeout_s=15)
            talked = client.events.audio().shape[0]
            await client.talk(speech, lambda: client.events.audio().shape[0] - talked > 2 * OPUS_RATE, 8)
            converted = client.events.audio()[talked:]
            return {
                "candidates": [m["candidate"] for m in client.of_type("ice") if m.get("candidate")],
                "f0_in": median_f0(speech, OPUS_RATE),
                "f0_out": median_f0(converted, OPUS_RATE),
            }
        finally:
            await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True)
    parser.add_argument("--reference", type=Path, required=True)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(call(args.base, args.reference))), flush=True)


if __name__ == "__main__":
    main()
