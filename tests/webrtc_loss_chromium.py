"""A call from headless Chromium over the lossy link of tests/webrtc_loss_harness.py: the browser runs
inside the caller's namespace and opens the server's own page there (http://<address_b>:8080/, Start
pressed as a user does), so the audio a caller hears comes out of Chromium's own NetEq: its jitter
buffer, Opus in-band FEC and loss concealment.

Chromium's fake microphone plays ``microphone.wav``, looped: a lead-in of continuous speech (the
call connects while the caller talks) and then the talk track of ``vcstream.bench.talk_markers``,
the Python client's. One AudioWorklet in the page taps the microphone track and the received track in
the same render quantum, so each received sample has its microphone sample beside it: a marker's
latency is the distance between the two in samples, with no clock but the page's audio clock.
The recording kept starts where the microphone starts the talk track, after the first audio came
back; from there it is a ``CallRecord`` as a Python call's, compared with ``webrtc_loss_harness.compare``.

The host side is ``chromium_call(link, ...)``; inside the namespace this file runs as
``python tests/webrtc_loss_chromium.py --base ... --out ...`` and prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from browser_harness import CHROMIUM_FLAGS, open_client_page, wait_for  # noqa: E402
from conftest import CHROMIUM, read_wav, write_wav  # noqa: E402
from vcstream.bench.talk_markers import envelope  # noqa: E402
from vcstream.media.webrtc import OPUS_RATE  # noqa: E402
from webrtc_loss_harness import CHUNK, CallRecord, LossyLink, _track, _wait_ready  # noqa: E402

#: continuous speech before the talk track: the call connects (bar: 1.5 s) during it
LEAD_S = 2.5
#: the talk track starts at least this long after the first audio came back
SETTLED_S = 0.2
#: recorded after the talk track, for the last bursts' way back (as the Python call's 0.5 s)
TAIL_S = 0.5
#: the received audio is cut into buffers of this many samples, each "arriving" at its last sample
BUFFER = OPUS_RATE // 1000

# Every RTCPeerConnection the page makes, kept for getStats() (the page keeps its call in a module).
KEEP_PEER_CONNECTIONS_JS = """
(() => {
  const Native = window.RTCPeerConnection;
  window.__peerConnections = [];
  window.RTCPeerConnection = class extends Native {
    constructor(...args) { super(...args); window.__peerConnections.push(this); }
  };
})();
"""

# One worklet with two inputs, the microphone and the received stream: both copied per render quantum,
# so index i of one is the same instant as index i of the other. The first quantum of received
# sound is noted (performance.now(), the page's clock, as the page's own timeline).
CAPTURE_BOTH_JS = """
async () => {
  const state = window.vcstream;
  const context = new AudioContext({ sampleRate: 48000 });
  const code = `class Tap extends AudioWorkletProcessor {
    process(inputs) {
      const copy = (input) => (input[0] ? input[0].slice(0) : new Float32Array(128));
      this.port.postMessage([copy(inputs[0]), copy(inputs[1])]);
      return true;
    }
  }
  registerProcessor("tap2", Tap);`;
  await context.audioWorklet.addModule(URL.createObjectURL(new Blob([code], { type: "text/javascript" })));
  const tap = new AudioWorkletNode(context, "tap2", { numberOfInputs: 2 });
  context.createMediaStreamSource(state.micStream).connect(tap, 0, 0);
  context.createMediaStreamSource(state.remoteStream).connect(tap, 0, 1);
  const mute = context.createGain();
  mute.gain.value = 0;
  tap.connect(mute).connect(context.destination);
  const capture = { context, mic: [], heard: [], first: null, firstIndex: null, n: 0 };
  tap.port.onmessage = (event) => {
    const [mic, heard] = event.data;
    capture.mic.push(mic);
    capture.heard.push(heard);
    if (capture.first === null) {
      let sum = 0;
      for (const v of heard) sum += v * v;
      if (Math.sqrt(sum / heard.length) > 0.003) {
        capture.first = performance.now();
        capture.firstIndex = capture.n;
      }
    }
    capture.n += heard.length;
  };
  await context.resume();
  window.__capture = capture;
}
"""

# both taps as base64 float32
TAKE_BOTH_JS = """
() => {
  const pack = (chunks) => {
    let n = 0;
    for (const c of chunks) n += c.length;
    const all = new Float32Array(n);
    let at = 0;
    for (const c of chunks) { all.set(c, at); at += c.length; }
    const bytes = new Uint8Array(all.buffer);
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    }
    return btoa(text);
  };
  return { mic: pack(window.__capture.mic), heard: pack(window.__capture.heard) };
}
"""

# Chromium's own figures of the call: what it received and concealed, the FEC it got, the NACKs and
# retransmissions each way
STATS_JS = """
async () => {
  const pc = window.__peerConnections[window.__peerConnections.length - 1];
  const report = await pc.getStats();
  const figures = {};
  const pick = (prefix, s, names) => {
    for (const n of names) if (s[n] !== undefined) figures[prefix + n] = s[n];
  };
  report.forEach((s) => {
    if (s.kind !== "audio" && s.type !== "candidate-pair") return;
    if (s.type === "inbound-rtp") {
      pick("in_", s, ["packetsReceived", "packetsLost", "packetsDiscarded", "concealedSamples",
        "silentConcealedSamples", "concealmentEvents", "totalSamplesReceived", "fecPacketsReceived",
        "fecPacketsDiscarded", "nackCount", "retransmittedPacketsReceived", "insertedSamplesForDeceleration",
        "removedSamplesForAcceleration", "jitterBufferDelay", "jitterBufferEmittedCount", "jitter"]);
    } else if (s.type === "outbound-rtp") {
      pick("out_", s, ["packetsSent", "nackCount", "retransmittedPacketsSent"]);
    } else if (s.type === "remote-inbound-rtp") {
      pick("remote_", s, ["packetsLost", "fractionLost", "roundTripTime"]);
    }
  });
  // what each end said about Opus: FEC (fmtp) and feedback (rtcp-fb: nack or not)
  const opus = (sdp) => {
    const pt = (sdp.match(/a=rtpmap:(\\d+) opus\\/48000/i) || [])[1];
    const said = (l) => l.startsWith(`a=fmtp:${pt} `) || l.startsWith(`a=rtcp-fb:${pt} `);
    return pt ? sdp.split("\\r\\n").filter(said) : [];
  };
  figures.offer_opus = opus(pc.localDescription.sdp);
  figures.answer_opus = opus(pc.remoteDescription.sdp);
  // RED: whether each end listed it, and before Opus (the payload order of the audio m= line)
  const red = (sdp) => sdp.split("\\r\\n").filter(
    (l) => l.startsWith("m=audio") || /^a=rtpmap:\\d+ red\\//i.test(l));
  figures.offer_red = red(pc.localDescription.sdp);
  figures.answer_red = red(pc.remoteDescription.sdp);
  return figures;
}
"""


def microphone_file(folder: Path, seconds: float) -> tuple[Path, int]:
    """The fake microphone's wav (lead-in + talk track) and the lead-in's length in samples."""
    from vcstream.bench.signals import flite_speech

    track = _track(seconds)
    speech = flite_speech("rms", OPUS_RATE)
    speech = 0.8 * speech / max(1e-6, float(np.max(np.abs(speech))))
    lead = np.tile(speech, int(np.ceil(LEAD_S * OPUS_RATE / speech.shape[0])))[: round(LEAD_S * OPUS_RATE)]
    path = write_wav(folder / "microphone.wav", np.concatenate([lead, track.samples]), OPUS_RATE)
    return path, lead.shape[0]


def file_phase(mic: np.ndarray, played: np.ndarray) -> int:
    """Where in ``played`` (the looped file) the tapped microphone audio starts, in samples: the best
    match of their energy envelopes (1 ms steps)."""
    from scipy.signal import correlate

    period = envelope(played, OPUS_RATE)
    looped = np.concatenate([period, period])
    heard = envelope(mic[: min(mic.shape[0], played.shape[0])], OPUS_RATE)
    heard = heard - heard.mean()
    scores = correlate(looped, heard, mode="valid", method="fft")[: period.size]
    return int(np.argmax(scores)) * OPUS_RATE // 1000


def _track_start(phase: int, lead: int, period: int, first_index: int) -> int:
    """The tap index where the microphone starts the talk track, first after the audio came back."""
    track_at = (lead - phase) % period
    while track_at < first_index + SETTLED_S * OPUS_RATE:
        track_at += period
    return track_at


def _decode(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<f4").copy()


# -- the caller's side (inside its namespace) --------------------------------------------------------


async def chromium_call(base: str, seconds: float, out: Path, executable: str) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    await _wait_ready(base, 30)
    microphone, lead = microphone_file(out.parent, seconds)
    played, _ = read_wav(microphone)  # as Chromium plays it (16-bit)
    async with async_playwright() as playwright:
        # the server's page is on the namespace's address, not localhost: a secure context only by flag
        browser = await playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=[
                *CHROMIUM_FLAGS,
                f"--use-file-for-fake-audio-capture={microphone}",
                f"--unsafely-treat-insecure-origin-as-secure={base}",
            ],
        )
        try:
            context = await browser.new_context(permissions=["microphone"])
            await context.add_init_script(KEEP_PEER_CONNECTIONS_JS)
            page = await open_client_page(context, base)
            await page.click("#start-button")
            await wait_for(page, "!!window.vcstream.remoteStream && !!window.vcstream.micStream", 20,
                           "the remote track")  # fmt: skip
            await page.evaluate(CAPTURE_BOTH_JS)
            await wait_for(page, "window.__capture.first", 20, "the first audio back")
            timeline = await page.evaluate("({...window.vcstream.timeline, first: window.__capture.first})")
            first_index = int(await page.evaluate("window.__capture.firstIndex"))
            # where the microphone is in its file: from a second of the tap, then wait for the talk track
            await wait_for(page, f"window.__capture.n > {first_index + OPUS_RATE}", 10, "a second tapped")
            taken = await page.evaluate(TAKE_BOTH_JS)
            phase = file_phase(_decode(taken["mic"]), played)
            track_at = _track_start(phase, lead, played.shape[0], first_index)
            end = track_at + round((seconds + TAIL_S) * OPUS_RATE)
            await wait_for(page, f"window.__capture.n >= {end}", end / OPUS_RATE + 5, "the talk track tapped")
            stats = await page.evaluate(STATS_JS)
            server_stats = await page.evaluate("window.vcstream.serverStats")
            taken = await page.evaluate(TAKE_BOTH_JS)
            await page.click("#start-button")  # Stop, as the user does
        finally:
            await browser.close()
    mic, heard = _decode(taken["mic"]), _decode(taken["heard"])
    # the phase again over the whole tap: the track's start as recorded, not as first predicted
    whole_phase = file_phase(mic, played)
    track_at = _track_start(whole_phase, lead, played.shape[0], first_index)
    received = heard[track_at : track_at + round((seconds + TAIL_S) * OPUS_RATE)]
    np.savez(out, received=received, microphone=mic[track_at : track_at + received.shape[0]])
    connected = timeline.get("connected")
    return {
        "connect_s": (timeline["first"] - timeline["offer"]) / 1000,
        "connected_s": None if connected is None else (connected - timeline["offer"]) / 1000,
        "track_start_s": (track_at - first_index) / OPUS_RATE,
        "phase_drift_ms": 1000 * ((whole_phase - phase) % played.shape[0]) / OPUS_RATE,
        "chromium": stats,
        "server_stats": server_stats or {},
    }


# -- the host's side ---------------------------------------------------------------------------------


def record(summary: dict[str, Any], path: Path, seconds: float) -> CallRecord:
    """A Chromium call as the Python harness's ``CallRecord``: pushes and arrivals on the page's audio
    clock, 0 being the talk track's first sample at the microphone."""
    data = np.load(path)
    received = data["received"].astype(np.float32)
    arrivals = [((start + BUFFER) / OPUS_RATE, BUFFER) for start in range(0, received.shape[0], BUFFER)]
    pushes = [index * CHUNK / OPUS_RATE for index in range(round(seconds * 50))]
    return CallRecord(summary, received, arrivals, pushes, seconds)


def chromium_call_on(link: LossyLink, loss_pct: float, seconds: float, legs: str = "both") -> CallRecord:
    """A call from Chromium in the caller's namespace at ``loss_pct`` (``legs`` as ``LossyLink.set_loss``)."""
    out = Path(tempfile.mkstemp(prefix="chromium-call-", suffix=".npz", dir=link.workdir)[1])
    link.set_loss(loss_pct, legs)
    try:
        done = link.pair.run(
            link.pair.a,
            [sys.executable, str(TESTS / "webrtc_loss_chromium.py"), "--base", link.base,
             "--seconds", str(seconds), "--out", str(out)],
            timeout_s=2 * seconds + 90,
        )  # fmt: skip
    finally:
        link.set_loss(0)
    if done.returncode != 0:
        raise AssertionError(f"the Chromium call at {loss_pct} % loss failed: {done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))  # beside the audio, for a look later
    return record(summary, out, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--chromium", default=CHROMIUM)
    args = parser.parse_args()
    result = asyncio.run(chromium_call(args.base, args.seconds, args.out, args.chromium))
    print(json.dumps(result, default=float), flush=True)


if __name__ == "__main__":
    main()
