"""What the browser tests share: Debian's Chromium and its flags, and page scripts that capture the
audio a page receives (an AudioWorklet tap) and hand it back to the test."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np

from conftest import write_wav
from vcstream.audio.types import Audio
from vcstream.media.webrtc import OPUS_RATE
from waiting import wait_until_async

#: flags from STACK-NOTES: no sandbox (containers), no GPU, and none of Chromium's background traffic
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-device-for-media-stream",
]
CAPTURE_S = 5.0

# An AudioWorklet that copies every render quantum of the stream it is fed; the page keeps the
# copies and notes when sound first arrived (performance.now(), the page's clock).
CAPTURE_JS = """
async () => {
  const state = window.vcstream;
  if (!state.remoteStream) throw new Error("no remote stream yet");
  const context = new AudioContext({ sampleRate: 48000 });
  const code = `class Tap extends AudioWorkletProcessor {
    process(inputs) { const x = inputs[0][0]; if (x) this.port.postMessage(x.slice(0)); return true; }
  }
  registerProcessor("tap", Tap);`;
  await context.audioWorklet.addModule(URL.createObjectURL(new Blob([code], { type: "text/javascript" })));
  const source = context.createMediaStreamSource(state.remoteStream);
  const tap = new AudioWorkletNode(context, "tap");
  const mute = context.createGain();
  mute.gain.value = 0;
  source.connect(tap).connect(mute).connect(context.destination);
  const capture = { context, chunks: [], first: null, stream: state.remoteStream };
  tap.port.onmessage = (event) => {
    const x = event.data;
    capture.chunks.push(x);
    if (capture.first === null) {
      let sum = 0;
      for (const v of x) sum += v * v;
      if (Math.sqrt(sum / x.length) > 0.003) capture.first = performance.now();
    }
  };
  await context.resume();
  window.__capture = capture;
}
"""

# the captured samples since ``from`` (an index), as base64 float32 (compact for a few seconds)
TAKE_JS = """
(from) => {
  const chunks = window.__capture.chunks;
  let n = 0;
  for (const c of chunks) n += c.length;
  const all = new Float32Array(n);
  let at = 0;
  for (const c of chunks) { all.set(c, at); at += c.length; }
  const bytes = new Uint8Array(all.buffer, from * 4);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return { b64: btoa(text), total: n };
}
"""


async def take(page: Any, start: int = 0) -> tuple[np.ndarray, int]:
    result = await page.evaluate(TAKE_JS, start)
    return np.frombuffer(base64.b64decode(result["b64"]), dtype="<f4"), int(result["total"])


async def captured(page: Any) -> int:
    return int(await page.evaluate("window.__capture.chunks.reduce((n, c) => n + c.length, 0)"))


async def wait_for(page: Any, expression: str, timeout_s: float, what: str) -> Any:
    """The first truthy value of a page expression within ``timeout_s`` (the failure names ``what``
    and the page's call state)."""

    async def page_state() -> Any:
        return await page.evaluate(
            "[window.vcstream.callState, document.getElementById('call-status').textContent]"
        )

    return await wait_until_async(lambda: page.evaluate(expression), timeout_s, what, state=page_state)


def voiced_fraction(x: np.ndarray, rate: int) -> float:
    frame = rate // 50
    frames = x[: x.shape[0] // frame * frame].reshape(-1, frame)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    return float(np.mean(rms > 10 ** (-45 / 20)))


async def launch_chromium(playwright: Any, executable: str, microphone: Path) -> Any:
    """Headless Chromium whose fake microphone plays ``microphone`` (a wav file, looped)."""
    return await playwright.chromium.launch(
        executable_path=executable,
        headless=True,
        args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={microphone}"],
    )


async def open_client_page(context: Any, base_url: str) -> Any:
    """A new page on the browser client, once it says the server is ready. The page's console
    errors are printed: pytest shows them with a failure."""
    page = await context.new_page()
    page.on("console", lambda message: print(f"[page] {message.text}") if message.type == "error" else None)
    await page.goto(base_url + "/")
    await page.wait_for_selector("#server-state[data-state='ready']", timeout=10000)
    await choose_newest_voice(page)
    return page


async def choose_newest_voice(page: Any) -> None:
    """Choose the library's newest voice, as a user does: the page itself selects none for a newcomer."""
    await page.evaluate(
        """() => {
          const select = document.getElementById('voice-select');
          if (select.value || select.options.length < 2) return;
          select.value = select.options[select.options.length - 1].value;
          select.dispatchEvent(new Event('change'));
        }"""
    )


def looping_microphone(folder: Path, speech: Audio) -> Path:
    """A wav for Chromium's fake microphone: the sentence twice with short pauses (Chromium loops
    the file, so speech keeps coming)."""
    pause = np.zeros(OPUS_RATE // 4, dtype=np.float32)
    return write_wav(folder / "microphone.wav", np.concatenate([speech, pause, speech, pause]), OPUS_RATE)
