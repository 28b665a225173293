"""WebRTC calls over a lossy link: a vcstream server (passthrough engine) in one network namespace, the
caller in another, nftables dropping a share of every UDP datagram arriving in either namespace (ICE,
DTLS, SRTP alike; signalling is TCP and untouched).

The host side (``LossyLink``, ``compare``) is what tests/test_webrtc_loss.py and
scripts/webrtc-loss-table.sh use; the caller side runs inside the caller's namespace as
``python tests/webrtc_loss_harness.py python-call ...`` and prints one JSON line, leaving the audio it
received in an ``.npz`` file:

* ``python-call``: the Python client (a ``WebRtcPeer`` offering over the signalling WebSocket);
  talks until converted audio comes back, then plays a talk track (speech bursts in silences,
  ``vcstream.bench.talk_markers``) in real time and records every push and every arrival, so each
  burst's latency is known.
* ``connect``: ``--calls`` calls from the Python client one after another, each hung up as soon as
  converted audio came back; prints their connection times.

Connection time is from the offer sent to the first converted audio (``connect_s``) and to
webrtcbin's connection state ``connected`` (ICE and DTLS done, ``connected_s``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from netns import NetnsPair  # noqa: E402
from vcstream.bench.talk_markers import MarkerLocator, TalkTrack, envelope, talk_track  # noqa: E402
from vcstream.media.handshake_protection import PROTECTION_VARIABLE  # noqa: E402
from vcstream.media.webrtc import OPUS_RATE, PeerConfig  # noqa: E402

if TYPE_CHECKING:
    from webrtc_harness import PyClient

HTTP_PORT = 8080
CHUNK = OPUS_RATE // 50
#: the part of the received audio left out of the comparison (the call settling)
SETTLE_S = 1.0
#: a speech frame this much quieter than in the clean run counts as lost to the network
TOO_QUIET_DB = 10.0
#: how far a burst of a call's audio may lie from where the call's overall lag puts it: Chromium's
#: jitter buffer has held a clean call 160 ms longer than at its start for 7 s, and a lossy one 90 ms
#: longer than the clean one throughout. Below the shortest pause between bursts (0.35 s), so a
#: burst is never matched to its neighbour
WANDER_S = 0.25
#: the pause compared on either side of a burst (frames): a frame lost at a burst's edge is still seen
BURST_MARGIN_FRAMES = 3
#: frames of the clean run this loud (dBFS) count as speech
SPEECH_DBFS = -40.0
FRAME = OPUS_RATE // 50
#: the server's settings for calls from the Python client: 20 ms engine blocks, one Opus frame. With
#: 100 ms blocks a gap held anywhere before a block's end delays the whole block, and where the block
#: boundaries fall moves every marker by up to 100 ms from call to call; this client, with no playout
#: buffer, would count both as the network's
PYTHON_CALL_SERVER_ENV = {"VCSTREAM_BLOCK_TIME": "0.02"}


def _track(seconds: float) -> TalkTrack:
    from vcstream.bench.signals import flite_speech

    return talk_track(flite_speech("rms", OPUS_RATE), OPUS_RATE, seconds=seconds, chunk=CHUNK)


# -- the caller's side (inside its namespace) --------------------------------------------------------


async def _wait_ready(base: str, timeout_s: float) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:  # the server starts in the other namespace at the same time
            try:
                async with http.get(f"{base}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the server did not become ready within {timeout_s} s")
            await asyncio.sleep(0.1)


async def _dial(
    http: Any, base: str, voice: str, warm: np.ndarray, config: PeerConfig | None = None
) -> tuple[PyClient, float, float]:
    """A call from the Python client up to its first converted audio: (the client, seconds from the
    offer to webrtcbin's ``connected``, seconds from the offer to the first audio back). The caller
    closes the client; it is closed here when the call fails on the way."""
    from waiting import wait_until_async
    from webrtc_harness import PyClient

    client = PyClient(await http.ws_connect(base.replace("http", "ws", 1) + "/ws"))
    connected: list[float] = []

    def on_state(name: str, value: str) -> None:
        if name == "connection" and value == "connected" and not connected:
            connected.append(time.perf_counter())

    client.events.on_state = on_state  # type: ignore[method-assign]
    try:
        await client.hello()
        await client.start(voice, peer_config=config)
        # nothing is said before the connection is up: audio pushed earlier waits in the send
        # queue (up to its 0.5 s) and would delay the whole call by the connection time
        await wait_until_async(lambda: bool(connected), 30, "the call connected", state=client.messages.copy)
        # warm-up speech until the echo comes back (the connection time)
        first = await client.talk_until_converted(np.tile(warm, 40), timeout_s=20)
    except BaseException:
        await client.close()
        raise
    assert client.offer_sent is not None
    return client, connected[0] - client.offer_sent, first - client.offer_sent


def _warm_up(track: TalkTrack) -> np.ndarray:
    """A third of a second of the track's first burst, looped by ``_dial`` until the echo comes."""
    return track.samples[track.onsets[0] : track.onsets[0] + OPUS_RATE // 3]


async def python_call(
    base: str, voice: str, seconds: float, out: Path, fec: bool, latency_ms: int = PeerConfig.latency_ms
) -> dict[str, Any]:
    import aiohttp

    await _wait_ready(base, 30)
    track = _track(seconds)
    # without FEC the offer asks for none (so the server sends none), nor NACK or RED: main's call
    config = PeerConfig(
        inband_fec=fec,
        nack=fec,
        red_distance=1 if fec else 0,
        count_received_fec=True,
        latency_ms=latency_ms,
    )
    async with aiohttp.ClientSession() as http:
        client, connected_s, connect_s = await _dial(http, base, voice, _warm_up(track), config)
        try:
            assert client.peer is not None
            with client.events.lock:
                start_index = len(client.events.received)
            pushes: list[float] = []
            started = time.perf_counter()
            for index in range(round(seconds * 50)):
                pushes.append(time.perf_counter())
                client.peer.push(track.samples[index * CHUNK : (index + 1) * CHUNK])
                await asyncio.sleep(max(0.0, started + (index + 1) / 50 - time.perf_counter()))
            await asyncio.sleep(0.5)  # the last bursts' way back
            with client.events.lock:
                received = list(client.events.received[start_index:])
                arrivals = list(client.events.arrivals[start_index:])
            stats = client.peer.stats()
            packets, with_fec = client.peer.received_fec
            server_stats = [m for m in client.messages if m["type"] == "stats"]
        finally:
            await client.close()
    audio = np.concatenate(received) if received else np.zeros(0, np.float32)
    np.savez(
        out,
        received=audio,
        arrival_times=np.array([t for t, _ in arrivals]),
        arrival_sizes=np.array([n for _, n in arrivals]),
        pushes=np.array(pushes),
    )
    return {
        "connect_s": connect_s,
        "connected_s": connected_s,
        "packets_lost": stats.packets_lost,
        "opus_packets": packets,
        "fec_packets": with_fec,
        "packets_received": stats.packets_received,
        "concealed_ms": stats.concealed_ms,
        "decoded_ms": stats.decoded_ms,
        "retransmissions": None if stats.retransmissions is None else vars(stats.retransmissions),
        "server_stats": server_stats[-1] if server_stats else {},
    }


async def python_connections(base: str, voice: str, calls: int) -> dict[str, Any]:
    """``calls`` calls one after another, each hung up as soon as its first converted audio came back:
    the connection times (offer -> first audio back; offer -> webrtcbin's ``connected``)."""
    import aiohttp

    await _wait_ready(base, 30)
    warm = _warm_up(_track(4.0))
    first_audio: list[float] = []
    connected_at: list[float] = []
    async with aiohttp.ClientSession() as http:
        for _ in range(calls):
            client, connected_s, connect_s = await _dial(http, base, voice, warm)
            await client.close()
            first_audio.append(connect_s)
            connected_at.append(connected_s)
            # the server ends its side of the call before the next offer: a call still closing
            # there must not count against the next one's admission
            await asyncio.sleep(0.3)
    return {"connect_s": first_audio, "connected_s": connected_at}


# -- the host's side ---------------------------------------------------------------------------------


@dataclass
class CallRecord:
    """What one call brought back: the caller's figures and the audio it received."""

    summary: dict[str, Any]
    received: np.ndarray
    arrivals: list[tuple[float, int]]
    pushes: list[float]
    seconds: float

    @classmethod
    def load(cls, summary: dict[str, Any], path: Path, seconds: float) -> CallRecord:
        data = np.load(path)
        arrivals = list(zip(data["arrival_times"].tolist(), data["arrival_sizes"].tolist(), strict=True))
        return cls(summary, data["received"].astype(np.float32), arrivals, data["pushes"].tolist(), seconds)

    def latencies_s(self) -> list[float]:
        track = _track(self.seconds)
        locator = MarkerLocator(track, CHUNK, self.pushes)
        since = self.pushes[0] + SETTLE_S
        found = locator.latencies(self.received, self.arrivals, since, self.pushes[-1], max_lag_s=1.0)
        return [lag for _, lag in found if lag is not None]


def _loss_rules(percent: float) -> str:
    # dropped as they arrive, not as they leave: a datagram dropped in the sender's output hook fails
    # its sendto() with EPERM, which no real network does, and libnice fails a connectivity-check pair
    # at once on a send error (no retransmission): that, not the loss, failed ICE in one call in
    # three to five at 10-20 % here (libnice's debug output: "state FAILED (candidate_check_pair_fail)"
    # the instant the check was sent)
    return (
        "table inet vcstream_loss {\n"
        "  chain arriving {\n"
        "    type filter hook input priority 0; policy accept;\n"
        f"    meta l4proto udp numgen random mod 1000 < {round(10 * percent)} drop\n"
        "  }\n"
        "}\n"
    )


class LossyLink:
    """A server in namespace B of ``pair``, calls from namespace A, and loss on the UDP both ways."""

    def __init__(self, pair: NetnsPair, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.pair = pair
        self.workdir = workdir
        self.env = env or {}
        self.base = f"http://{pair.address_b}:{HTTP_PORT}"
        self.voice = ""
        self._calls = 0
        self.server_log = workdir / "server.log"

    @contextmanager
    def serving(self, reference: Path) -> Iterator[LossyLink]:
        env = {
            **os.environ,
            "VCSTREAM_ENGINE": "passthrough",
            "VCSTREAM_MAX_SESSIONS": "2",
            "VCSTREAM_DATA_DIR": str(self.workdir / "data"),
            **self.env,
        }
        # the server's log goes to a file: a pipe nobody reads until the end blocks a server that logs
        # much; stdout too, where GLib writes debug messages (libnice's, with NICE_DEBUG=all and
        # G_MESSAGES_DEBUG=libnice in ``env``)
        self.server_log = self.workdir / "server.log"
        with self.server_log.open("w") as log_file:
            server = subprocess.Popen(
                self.pair.command(self.pair.b, [sys.executable, "-m", "vcstream.cli", "serve", "--port",
                                                str(HTTP_PORT)]),
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.pair.processes.append(server)
        try:
            self.voice = self._upload(reference)
            yield self
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()

    def _upload(self, reference: Path) -> str:
        code = (
            "import asyncio, sys, aiohttp\n"
            "sys.path.insert(0, sys.argv[3])\n"
            "from webrtc_loss_harness import _wait_ready\n"
            "async def main():\n"
            "    await _wait_ready(sys.argv[1], 30)\n"
            "    async with aiohttp.ClientSession() as http:\n"
            "        form = aiohttp.FormData(); form.add_field('name', 'voice')\n"
            "        form.add_field('file', open(sys.argv[2], 'rb').read(), filename='ref.wav')\n"
            "        async with http.post(sys.argv[1] + '/api/voices', data=form) as r:\n"
            "            print((await r.json())['id'])\n"
            "asyncio.run(main())\n"
        )
        done = self.pair.run(
            self.pair.a, [sys.executable, "-c", code, self.base, str(reference), str(TESTS)], 60
        )
        if done.returncode != 0:
            raise AssertionError(f"uploading the voice failed: {done.stderr[-2000:]}")
        return done.stdout.strip().splitlines()[-1]

    def set_loss(self, percent: float, legs: str = "both") -> None:
        """Drop ``percent`` of the UDP datagrams arriving in the server's namespace (``legs="up"``: the
        caller->server leg), the caller's (``"down"``) or both."""
        lossy = {"both": (self.pair.a, self.pair.b), "up": (self.pair.b,), "down": (self.pair.a,)}[legs]
        for namespace in (self.pair.a, self.pair.b):
            self.pair.clear_loss(namespace)
            if percent > 0 and namespace in lossy:
                subprocess.run(
                    self.pair.command(namespace, ["nft", "-f", "-"]),
                    input=_loss_rules(percent),
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=10,
                )

    def python_connections(self, loss_pct: float, calls: int) -> dict[str, list[float]]:
        """``calls`` short calls from the Python client at ``loss_pct`` each way, hung up once the
        first converted audio came back: their connection times (``python_connections``)."""
        self.set_loss(loss_pct)
        try:
            done = self.pair.run(
                self.pair.a,
                [sys.executable, str(TESTS / "webrtc_loss_harness.py"), "connect", "--base", self.base,
                 "--voice", self.voice, "--calls", str(calls)],
                timeout_s=30 + 10 * calls,
            )  # fmt: skip
        finally:
            self.set_loss(0)
        if done.returncode != 0:
            raise AssertionError(f"the calls at {loss_pct} % loss failed: {done.stderr[-3000:]}")
        result: dict[str, list[float]] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    def python_call(
        self,
        loss_pct: float,
        seconds: float,
        fec: bool = True,
        protection: bool = True,
        legs: str = "both",
        latency_ms: int = PeerConfig.latency_ms,
    ) -> CallRecord:
        """A call from the Python client at ``loss_pct`` each way; without ``fec`` it offers neither FEC
        nor NACK, without ``protection`` its handshake is webrtcbin's own (the server's is set by
        ``env`` at ``serving``); ``legs`` as in ``set_loss``; ``latency_ms``: the caller's jitter buffer
        (the server's is VCSTREAM_WEBRTC_LATENCY_MS in ``env``)."""
        self._calls += 1
        out = self.workdir / f"call-{self._calls}.npz"
        self.set_loss(loss_pct, legs)
        try:
            done = self.pair.run(
                self.pair.a,
                ["env", f"{PROTECTION_VARIABLE}={int(protection)}",
                 sys.executable, str(TESTS / "webrtc_loss_harness.py"), "python-call", "--base", self.base,
                 "--voice", self.voice, "--seconds", str(seconds), "--out", str(out),
                 "--latency-ms", str(latency_ms), *([] if fec else ["--no-fec"])],
                timeout_s=seconds + 60,
            )  # fmt: skip
        finally:
            self.set_loss(0)
        if done.returncode != 0:
            raise AssertionError(f"the call at {loss_pct} % loss failed: {done.stderr[-3000:]}")
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        return CallRecord.load(summary, out, seconds)


# -- comparison --------------------------------------------------------------------------------------


def _frame_db(x: np.ndarray) -> np.ndarray:
    n = x.shape[0] // FRAME
    frames = x[: n * FRAME].reshape(n, FRAME).astype(np.float64)
    result: np.ndarray = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    return result


def _align(clean: np.ndarray, lossy: np.ndarray, max_lag_s: float = 1.0) -> np.ndarray:
    """``lossy`` shifted onto ``clean`` by the lag that best matches their envelopes (up to a second:
    two calls' recordings have been seen 340 ms apart, the time each took to bring audio back)."""
    a, b = envelope(clean, OPUS_RATE), envelope(lossy, OPUS_RATE)
    n = min(a.size, b.size)
    a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
    limit = round(max_lag_s * 1000)
    scores = [float(np.dot(a[max(0, -k) : n - max(0, k)], b[max(0, k) : n - max(0, -k)]))
              for k in range(-limit, limit + 1)]  # fmt: skip
    lag_ms = int(np.argmax(scores)) - limit
    shift = lag_ms * OPUS_RATE // 1000
    if shift >= 0:
        return lossy[shift:]
    return np.concatenate([np.zeros(-shift, np.float32), lossy])


@dataclass(frozen=True)
class Comparison:
    too_quiet_pct: float
    envelope_correlation: float
    latency_p95_ms: float
    clean_latency_p95_ms: float
    connect_s: float
    connected_s: float | None

    @property
    def extra_latency_ms(self) -> float:
        return self.latency_p95_ms - self.clean_latency_p95_ms


def _aligned_bursts(clean: np.ndarray, lossy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The clean call's bursts after the first second, each with ``BURST_MARGIN_FRAMES`` of its pause
    on either side, and the lossy call's audio matched to each on its own: the lag between two calls
    wanders (jitter buffers, the server's blocks), and a pause is where a jitter buffer changes it
    most cheaply. Each burst is placed within ``WANDER_S`` of the lag of the whole call."""
    whole = _align(clean, lossy)
    reference, heard = envelope(clean, OPUS_RATE), envelope(whole, OPUS_RATE)
    per_ms = OPUS_RATE // 1000
    wander = round(WANDER_S * 1000)
    loud = np.concatenate([[False], _frame_db(clean) > SPEECH_DBFS, [False]])
    edges = np.flatnonzero(np.diff(loud.astype(np.int8)))  # rises and falls, in frames
    pieces_clean, pieces_lossy = [], []
    for first, end in zip(edges[::2], edges[1::2], strict=True):
        start = (first - BURST_MARGIN_FRAMES) * FRAME
        stop = (end + BURST_MARGIN_FRAMES) * FRAME
        if start < SETTLE_S * OPUS_RATE or stop > clean.shape[0]:
            continue
        first_ms, width = start // per_ms, (stop - start) // per_ms
        template = reference[first_ms : first_ms + width]
        if template.size < width:
            continue
        # a burst too near either end for the whole search is left out: a search cut short could
        # only offer wrong lags
        if first_ms - wander < 0 or first_ms + wander + width > min(heard.size, whole.shape[0] // per_ms):
            continue
        lags = range(-wander, wander + 1)
        # normalised: a plain dot product favours a stretch that takes in a louder neighbour
        candidates = [heard[first_ms + k : first_ms + k + width] for k in lags]
        scores = [float(np.dot(template, c)) / (float(np.linalg.norm(c)) + 1e-9) for c in candidates]
        shift = lags[int(np.argmax(scores))] * per_ms
        pieces_clean.append(clean[start:stop])
        pieces_lossy.append(whole[start + shift : stop + shift])
    if not pieces_clean:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(pieces_clean), np.concatenate(pieces_lossy)


def speech_frames(clean_db: np.ndarray) -> np.ndarray:
    """The frames inside speech: louder than ``SPEECH_DBFS``, and so are both neighbours. A frame at
    the edge of a burst holds speech for only part of its 20 ms, and its level follows where in the
    frame the burst starts: two clean calls of the same track land their onsets a few ms apart within
    an aligned burst (jitter buffers, the server's blocks), which turns such a frame 20-40 dB
    quieter with nothing lost (measured: the onset frames were most of the "too quiet" frames here,
    at the same places in calls with different losses). A lost frame inside speech still counts."""
    loud = clean_db > SPEECH_DBFS
    inside = loud.copy()
    inside[1:] &= loud[:-1]
    inside[:-1] &= loud[1:]
    inside[[0, -1]] = False
    return inside


def compare(clean: CallRecord, lossy: CallRecord) -> Comparison:
    """The lossy call's audio against the clean call's, after the first second."""
    reference, heard = _aligned_bursts(clean.received, lossy.received)
    clean_db, lossy_db = _frame_db(reference), _frame_db(heard)
    speech = speech_frames(clean_db)
    too_quiet = float(np.mean(lossy_db[speech] <= clean_db[speech] - TOO_QUIET_DB)) if speech.any() else 1.0
    a, b = envelope(reference, OPUS_RATE), envelope(heard, OPUS_RATE)
    correlation = float(np.corrcoef(a, b)[0, 1]) if a.size > 1 else 0.0
    lossy_lat, clean_lat = lossy.latencies_s(), clean.latencies_s()
    return Comparison(
        too_quiet_pct=100 * too_quiet,
        envelope_correlation=correlation,
        latency_p95_ms=1000 * float(np.percentile(lossy_lat, 95)) if lossy_lat else float("inf"),
        clean_latency_p95_ms=1000 * float(np.percentile(clean_lat, 95)) if clean_lat else float("inf"),
        connect_s=float(lossy.summary["connect_s"]),
        connected_s=lossy.summary.get("connected_s"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["python-call", "connect"])
    parser.add_argument("--base", required=True)
    parser.add_argument("--voice", required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--calls", type=int, default=20, help="connect: how many calls")
    parser.add_argument("--out", type=Path, help="python-call: where the audio received goes (.npz)")
    parser.add_argument("--no-fec", action="store_true", help="offer no FEC and no NACK (main's call)")
    parser.add_argument(
        "--latency-ms", type=int, default=PeerConfig.latency_ms, help="the caller's jitter buffer"
    )
    args = parser.parse_args()
    if args.mode == "connect":
        print(json.dumps(asyncio.run(python_connections(args.base, args.voice, args.calls))), flush=True)
        return
    if args.out is None:
        parser.error("python-call needs --out")
    call = python_call(args.base, args.voice, args.seconds, args.out, not args.no_fec, args.latency_ms)
    result = asyncio.run(call)
    print(json.dumps(result, default=float), flush=True)


if __name__ == "__main__":
    main()
