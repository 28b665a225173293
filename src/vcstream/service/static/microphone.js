// The microphone: opened for a call (and metered), closed while the call waits or after it.

import { meters } from "./meters.js";
import { state } from "./page.js";

export function micErrorText(err) {
  if (!window.isSecureContext || !navigator.mediaDevices) {
    return "The microphone needs a secure page: open this site over HTTPS (or on localhost).";
  }
  if (err?.name === "NotAllowedError" || err?.name === "SecurityError") {
    return "Microphone access was denied. Allow it in the browser's site settings, then press Start again.";
  }
  if (err?.name === "NotFoundError" || err?.name === "OverconstrainedError") {
    return "No microphone was found. Connect one and press Start again.";
  }
  if (err?.name === "NotReadableError") {
    return "The microphone is in use by another application.";
  }
  return `The microphone could not be opened: ${err?.message || err}`;
}

export async function openMicrophone() {
  if (state.micStream) return state.micStream;
  if (!navigator.mediaDevices?.getUserMedia) throw new Error("insecure");
  // echo cancellation keeps the converted voice out of the microphone on loudspeakers; no noise
  // suppression or gain control: they colour the voice the engine converts
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
  });
  state.micStream = stream;
  meters.watch("in", stream);
  return stream;
}

export function closeMicrophone() {
  if (!state.micStream) return;
  state.micStream.getTracks().forEach((track) => track.stop());
  state.micStream = null;
  meters.unwatch("in");
}
