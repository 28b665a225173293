"""The caller's end of ``vcstream bench quality --transport webrtc``: one real WebRTC call that talks a
file and records what comes back.

Run as ``python -m vcstream.bench.quality_call --base URL --reference REF --source SRC --out OUT.npy``
(also inside a network namespace, where nothing but this process can reach the server). It waits for
the server to be ready, uploads REF through the REST API as a user would, calls that voice (a
``BenchCall``: the same offer and signalling as ``bench calls``), sends silence until audio comes back
(media flows both ways), then SRC in real time followed by silence until the converted SRC has had
time to come back. OUT holds the audio received from the first sample of SRC on (float32, 48 kHz)
and the last line of stdout is a JSON object with the call's timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from vcstream.audio.types import Audio
from vcstream.bench.call_client import CHUNK, BenchCall
from vcstream.bench.calls import upload_reference
from vcstream.media import decode_file
from vcstream.media.webrtc import OPUS_RATE

#: audio to receive beyond the source's length before hanging up: the path's delay fits in it
TAIL_S = 1.5
#: media must flow within this once the offer is sent
CONNECT_WITHIN_S = 20.0


@dataclass
class RecordingCall(BenchCall):
    """A ``BenchCall`` that keeps every sample it receives."""

    recorded: list[Audio] = field(default_factory=list)
    recorded_samples: int = 0

    def on_audio(self, samples: Audio) -> None:
        super().on_audio(samples)
        with self.lock:
            self.recorded.append(np.array(samples, dtype=np.float32))
            self.recorded_samples += samples.shape[0]

    def audio_since(self, sample: int) -> Audio:
        with self.lock:
            chunks = list(self.recorded)
        return np.concatenate(chunks)[sample:] if chunks else np.zeros(0, np.float32)


async def wait_ready(http: aiohttp.ClientSession, base: str, within_s: float) -> None:
    """Until ``/readyz`` answers 200 (the engine loaded and warmed up)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            async with http.get(f"{base}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:  # not listening yet
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the server at {base} was not ready within {within_s:g} s")
        await asyncio.sleep(0.2)


async def talk(call: RecordingCall, samples: Audio, until: Callable[[], bool], timeout_s: float) -> bool:
    """Send ``samples`` then silence, 20 ms at a time on the clock, until ``until()`` holds (True) or
    ``timeout_s`` passed (False)."""
    assert call.peer is not None
    silence = np.zeros(CHUNK, np.float32)
    started = time.perf_counter()
    index = 0
    while not until():
        if time.perf_counter() - started > timeout_s:
            return False
        chunk = samples[index * CHUNK : (index + 1) * CHUNK]
        call.peer.push(chunk if chunk.shape[0] else silence)
        index += 1
        # pace on the clock, not on sleep alone, so slow iterations do not stretch the audio
        await asyncio.sleep(max(0.0, started + index / 50 - time.perf_counter()))
    return True


async def run(base: str, reference: Path, source: Path, out: Path, ready_within_s: float) -> dict[str, Any]:
    speech = await asyncio.to_thread(decode_file, source, OPUS_RATE)
    speech = np.concatenate([speech, np.zeros((-speech.shape[0]) % CHUNK, np.float32)])
    async with aiohttp.ClientSession() as http:
        began = time.perf_counter()
        await wait_ready(http, base, ready_within_s)
        ready = time.perf_counter()
        data = await asyncio.to_thread(reference.read_bytes)
        # a name of its own: the server's data folder (and its names, unique per library) outlives one run
        name = f"quality-{reference.stem[:40]}-{secrets.token_hex(3)}"
        voice = await asyncio.to_thread(upload_reference, base, data, reference.name, name)
        call = RecordingCall(
            asyncio.get_running_loop(), await http.ws_connect(base.replace("http", "ws", 1) + "/ws")
        )
        try:
            await call.dial(voice)
            dialled = time.perf_counter()
            empty = np.zeros(0, np.float32)
            if not await talk(call, empty, lambda: call.recorded_samples > 0, CONNECT_WITHIN_S):
                raise SystemExit(
                    f"no audio came back within {CONNECT_WITHIN_S:g} s: {call.errors} {call.states}"
                )
            connected = time.perf_counter()
            mark = call.recorded_samples
            wanted = speech.shape[0] + round(TAIL_S * OPUS_RATE)
            complete = await talk(
                call, speech, lambda: call.recorded_samples - mark >= wanted, speech.shape[0] / OPUS_RATE + 10
            )
            finished = time.perf_counter()
            received = call.audio_since(mark)
        finally:
            await call.close()
    await asyncio.to_thread(np.save, out, received)
    return {
        "event": "done",
        "ready_s": round(ready - began, 3),
        "dial_s": round(dialled - ready, 3),
        "connect_s": round(connected - dialled, 3),
        "talk_s": round(finished - connected, 3),
        "received_s": round(received.shape[0] / OPUS_RATE, 3),
        "complete": complete,
        "errors": call.errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the server's URL (http://host:port)")
    parser.add_argument("--reference", type=Path, required=True, help="audio of the voice to upload")
    parser.add_argument("--source", type=Path, required=True, help="audio to talk into the call")
    parser.add_argument("--out", type=Path, required=True, help="where to save what came back (.npy)")
    parser.add_argument(
        "--ready-within", type=float, default=120.0, help="seconds for the server to be ready"
    )
    args = parser.parse_args()
    result = asyncio.run(run(args.base, args.reference, args.source, args.out, args.ready_within))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
