// Recording a reference voice in the page (MediaRecorder), uploaded like a file.

import { RECORD_MAX_S } from "./config.js";
import { micErrorText } from "./microphone.js";
import { ui } from "./page.js";
import { uploadVoice } from "./voices.js";

let recorder = null;
ui.record.addEventListener("click", async () => {
  if (recorder) {
    recorder.stop();
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: false, noiseSuppression: false } });
  } catch (err) {
    ui.uploadStatus.dataset.state = "error";
    ui.uploadStatus.textContent = micErrorText(err);
    return;
  }
  const chunks = [];
  const type = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/mp4"].find((t) => MediaRecorder.isTypeSupported(t));
  recorder = new MediaRecorder(stream, type ? { mimeType: type } : undefined);
  recorder.ondataavailable = (event) => event.data.size && chunks.push(event.data);
  const started = performance.now();
  const ticker = setInterval(() => {
    const left = RECORD_MAX_S - (performance.now() - started) / 1000;
    ui.uploadStatus.textContent = `Recording… speak now (${Math.max(0, left).toFixed(0)} s left, press Stop to finish)`;
    if (left <= 0) recorder?.stop();
  }, 250);
  recorder.onstop = () => {
    clearInterval(ticker);
    stream.getTracks().forEach((track) => track.stop());
    const mime = recorder.mimeType || "audio/webm";
    recorder = null;
    ui.record.textContent = "Record in the page";
    const extension = mime.includes("ogg") ? "ogg" : mime.includes("mp4") ? "m4a" : "webm";
    const name = ui.voiceName.value.trim() || `Recording ${new Date().toLocaleTimeString()}`;
    uploadVoice(new Blob(chunks, { type: mime }), `recording.${extension}`, name);
  };
  recorder.start(250);
  ui.record.textContent = "Stop recording";
  ui.uploadStatus.dataset.state = "busy";
});
