// The voice library: listing, choosing, uploading, deleting and playing voices (REST).

import { VOICES_REFRESH_MS } from "./config.js";
import { current, state, ui } from "./page.js";
import { apiJson, authHeaders } from "./token.js";

export function chosenVoice() {
  return ui.voiceSelect.value || null;
}

// Only a voice this browser chose (or just added) is selected: a shared library holds other
// visitors' voices, and none of them is picked for a newcomer.
export function renderVoices(voices, select) {
  state.voices = voices;
  const keep = select || chosenVoice() || localStorage.getItem("vcstream.voice");
  const known = keep && voices.some((v) => v.id === keep);
  ui.voiceSelect.replaceChildren();
  if (!known) {
    // nothing chosen yet: a prompt, not somebody's voice
    const placeholder = new Option(voices.length ? "Choose a voice…" : "No voices yet: add one first", "");
    placeholder.disabled = true;
    ui.voiceSelect.add(placeholder);
  }
  for (const voice of voices) {
    ui.voiceSelect.add(new Option(`${voice.name} (${voice.duration_s.toFixed(1)} s)`, voice.id));
  }
  ui.voiceSelect.value = known ? keep : "";
  ui.voiceDelete.disabled = ui.voicePlay.disabled = !chosenVoice();
  showFirstSteps(!voices.length);
}

// the first screen of an empty library: how to begin (add or record a voice) comes first
function showFirstSteps(empty) {
  ui.firstSteps.hidden = !empty;
  document.body.classList.toggle("no-voices", empty);
}

let voicesRequest = 0;

export async function loadVoices(select) {
  // only the newest listing renders: an older response arriving late must not hide a new voice
  const request = ++voicesRequest;
  try {
    const body = await apiJson("/api/voices");
    if (request === voicesRequest) renderVoices(body.voices, select);
  } catch (err) {
    ui.uploadStatus.textContent = `Could not load the voices: ${err.message}`;
  }
}

export async function uploadVoice(blob, filename, name) {
  const form = new FormData();
  form.append("name", name);
  form.append("file", blob, filename);
  ui.uploadStatus.dataset.state = "busy";
  ui.uploadStatus.textContent = "Uploading and analysing the voice…";
  try {
    const voice = await apiJson("/api/voices", { method: "POST", body: form });
    state.errors = state.errors.filter((e) => e.source !== "upload");
    const notes = voice.notices.length ? ` (${voice.notices.join("; ")})` : "";
    // the list first, then the message: once "Added" shows, the voice is in the selector
    await loadVoices(voice.id);
    ui.uploadStatus.dataset.state = "ok";
    ui.uploadStatus.textContent = `Added “${voice.name}”, ${voice.duration_s.toFixed(1)} s${notes}.`;
    onVoiceChosen();
    return true;
  } catch (err) {
    ui.uploadStatus.dataset.state = "error";
    ui.uploadStatus.textContent = `Not added: ${err.message}. Your name and file are kept: fix and upload again.`;
    return false;
  }
}

ui.uploadForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const file = ui.voiceFile.files[0];
  const name = ui.voiceName.value.trim() || file?.name.replace(/\.[^.]+$/, "") || "";
  if (!file) {
    ui.uploadStatus.dataset.state = "error";
    ui.uploadStatus.textContent = "Choose a recording first (or record one in the page).";
    return;
  }
  // the inputs are cleared only once the voice was added: a failed upload keeps them for another try
  uploadVoice(file, file.name, name).then((added) => added && ui.uploadForm.reset());
});

ui.voiceDelete.addEventListener("click", async () => {
  const id = chosenVoice();
  const voice = state.voices.find((v) => v.id === id);
  if (!voice || !confirm(`Delete the voice “${voice.name}” from the library?`)) return;
  try {
    await apiJson(`/api/voices/${id}`, { method: "DELETE" });
    await loadVoices();
  } catch (err) {
    ui.uploadStatus.textContent = `Not deleted: ${err.message}`;
  }
});

// play the chosen voice's recording before using it (fetched with the access token, if any)
ui.voicePlay.addEventListener("click", async () => {
  const id = chosenVoice();
  if (!id) return;
  try {
    const response = await fetch(`/api/voices/${id}/audio`, { headers: authHeaders() });
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    const player = new Audio(URL.createObjectURL(await response.blob()));
    player.onended = () => URL.revokeObjectURL(player.src);
    await player.play();
  } catch (err) {
    ui.uploadStatus.textContent = `Could not play the voice: ${err.message}`;
  }
});

// voices deleted (or added) elsewhere: the list is refreshed when the page is looked at again
export function refreshVoicesWhenSeen() {
  document.addEventListener("visibilitychange", () => document.visibilityState === "visible" && loadVoices());
  window.addEventListener("focus", () => loadVoices());
  setInterval(() => document.visibilityState === "visible" && loadVoices(), VOICES_REFRESH_MS);
}

function onVoiceChosen() {
  const id = chosenVoice();
  ui.voiceDelete.disabled = ui.voicePlay.disabled = !id;
  if (!id) return;
  localStorage.setItem("vcstream.voice", id);
  if (current.signalling?.isReady()) current.signalling.send("voice", { voice: id });
}
ui.voiceSelect.addEventListener("change", onVoiceChosen);
